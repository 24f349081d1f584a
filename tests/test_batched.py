"""Population batching: each member of a population is its sequential job's twin."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from metalearn.batched_executor import BatchedExecutor, _rule_key
from metalearn.errors import UserError
from metalearn.evaluator import Evaluator, Job, Status
from metalearn.recipe import Recipe
from metalearn.registry import get_space
from metalearn.search import search
from metalearn.tasks import TASKS, Diverged, SupervisedTask
from metalearn.tasks.batched import BatchedTrainer, Member, model_refusal, shares_update
from metalearn.tasks.data import DATASETS
from metalearn.tasks.models import MODELS
from metalearn.tasks.train import Splits

STEPS = 50
_task = TASKS["mnist1d-mlp"]
assert isinstance(_task, SupervisedTask)
TASK: SupervisedTask = _task



@pytest.fixture(params=["layers", "vmap"])
def vectorised(request) -> str:
    """Both ways a population is vectorised: population layers (the default on CUDA), and
    vmap of the model (the default on the CPU, and the fallback for any other model)."""
    return request.param


def assert_vectorised(trainer: BatchedTrainer, how: str) -> None:
    assert (trainer.population is not None) == (how == "layers")


def optimizer_space_or_skip():  # the optimizer DSL is another engineer's; skip until it exists
    try:
        return get_space("optimizer")
    except Exception as err:  # pragma: no cover - only before the DSL lands
        pytest.skip(f"optimizer space not available: {err}")


def sequential(task: SupervisedTask, recipe: Recipe, seed: int, steps: int = STEPS):
    """The sequential Trainer's run of one job: (state, metrics or the Diverged raised)."""
    state = task.start(recipe, seed, "cpu", total_steps=steps)
    try:
        state.train(steps)
        return state, state.evaluate()
    except Diverged as err:
        return state, err


def assert_twins(trainer: BatchedTrainer, task: SupervisedTask, recipes: list[Recipe],
                 seeds: list[int], steps: int = STEPS, rtol: float = 1e-5) -> None:
    """Every member's parameters, buffers, fitness and curve equal its sequential run's."""
    metrics = trainer.evaluate()
    for i, (recipe, seed) in enumerate(zip(recipes, seeds)):
        state, result = sequential(task, recipe, seed, steps)
        if isinstance(result, Diverged):
            failure = trainer.failures[i]
            assert failure is not None and failure.status == "diverged"
            assert str(failure.error) == str(result)
            continue
        assert trainer.failures[i] is None, trainer.failures[i]
        batched = trainer.member_state(i)
        for name, value in state.model.state_dict().items():  # type: ignore[attr-defined]
            torch.testing.assert_close(batched[name], value, rtol=rtol, atol=1e-6,
                                       msg=f"member {i} {name}")
        scores = metrics[i]
        assert scores is not None
        assert scores["accuracy"] == pytest.approx(result["accuracy"], abs=1.5e-3)  # <= 1 example
        assert scores["loss"] == pytest.approx(result["loss"], rel=1e-4)
        curve = trainer.member_curve(i)
        assert [s for s, _ in curve] == [s for s, _ in state.curve]
        np.testing.assert_allclose([v for _, v in curve], [v for _, v in state.curve], rtol=1e-4)


def test_taylorglo_population_matches_sequential_runs(vectorised):
    space = get_space("loss")
    rng = np.random.default_rng(0)
    genomes = [space.named()["cross_entropy_taylor"]]
    while len(genomes) < 8:
        genomes.append(space.mutate(genomes[0], rng))
    recipes = [space.fill(TASK.default_recipe(), g) for g in genomes]
    seeds = list(range(8))
    trainer = BatchedTrainer(TASK, [Member(r, s) for r, s in zip(recipes, seeds)],
                             total_steps=STEPS, vectorise=vectorised)
    assert_vectorised(trainer, vectorised)
    trainer.train(STEPS)
    assert len(trainer.updates) == 1  # one functional SGD for all eight members
    assert_twins(trainer, TASK, recipes, seeds)
    # the losses really differ: members with other theta end elsewhere than cross-entropy's
    first, second = trainer.member_state(0), trainer.member_state(1)
    assert not torch.allclose(first["1.weight"], second["1.weight"], rtol=1e-3)


def test_optimizer_rule_population_matches_sequential_runs_and_shares_equal_rules():
    space = optimizer_space_or_skip()
    named = space.named()
    genomes = [named[n] for n in ("adam", "powersign", "adam", "lion", "sign_sgd", "momentum",
                                  "addsign_ld")] + [space.parse("add(g, noise)")]
    recipes = [space.fill(TASK.default_recipe().replace(hparams={"lr": 0.01}), g) for g in genomes]
    seeds = [3, 4, 5, 6, 7, 8, 9, 10]
    members = [Member(r, s, _rule_key(space, g, r)) for r, s, g in zip(recipes, seeds, genomes)]
    trainer = BatchedTrainer(TASK, members, total_steps=STEPS)
    # the two Adam members are neighbours under one optimizer; the noisy rule has its own
    spans = sorted(u.stop - u.start for u in trainer.updates)
    assert spans == [1, 1, 1, 1, 1, 1, 2]
    trainer.train(STEPS)
    assert_twins(trainer, TASK, recipes, seeds)
    # a shared optimizer still gives each member its own sequential optimizer state
    state, _ = sequential(TASK, recipes[2], seeds[2])
    mine = trainer.member_checkpoint(2)["optimizer"]["state"]
    theirs = state.state_dict()["optimizer"]["state"]
    assert set(mine) == set(theirs)
    for index, entry in theirs.items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                torch.testing.assert_close(mine[index][key], value, rtol=1e-5, atol=1e-7)
            else:
                assert mine[index][key] == value


def test_per_member_sgd_hyperparameters_match_torch_sgd():
    space = get_space("hparams")
    rng = np.random.default_rng(1)
    recipes = [space.fill(TASK.default_recipe(), space.sample(rng)) for _ in range(4)]
    recipes += [TASK.default_recipe().replace(hparams={"nesterov": 1.0, "weight_decay": 1e-3}),
                TASK.default_recipe().replace(hparams={"momentum": 0.0, "lr": 0.2})]
    seeds = [11, 12, 13, 14, 15, 16]
    trainer = BatchedTrainer(TASK, [Member(r, s) for r, s in zip(recipes, seeds)],
                             total_steps=STEPS)
    trainer.train(STEPS)
    assert_twins(trainer, TASK, recipes, seeds)


def test_diverging_member_is_recorded_and_the_others_go_on():
    recipes = [TASK.default_recipe(), TASK.default_recipe().replace(hparams={"lr": 100.0}),
               TASK.default_recipe().replace(hparams={"lr": 0.02})]
    seeds = [3, 3, 4]
    trainer = BatchedTrainer(TASK, [Member(r, s) for r, s in zip(recipes, seeds)],
                             total_steps=STEPS)
    trainer.train(STEPS)
    failure = trainer.failures[1]
    assert failure is not None and failure.status == "diverged"
    assert str(failure.error) == "loss became nan by step 5"  # as the sequential loop says
    assert trainer.member_step(0) == STEPS and trainer.failures[0] is None
    assert trainer.size == 2  # the diverged member left the stacked tensors: no more compute
    assert_twins(trainer, TASK, recipes, seeds)
    assert trainer.evaluate()[1] is None


def test_members_keep_shared_optimizer_state_when_a_diverged_member_is_dropped():
    space = optimizer_space_or_skip()
    adam, sgd = space.named()["adam"], space.named()["sgd"]
    recipes = [space.fill(TASK.default_recipe().replace(hparams={"lr": 0.01}), adam),
               space.fill(TASK.default_recipe().replace(hparams={"lr": 100.0}), sgd),
               space.fill(TASK.default_recipe().replace(hparams={"lr": 0.01}), adam)]
    seeds = [3, 3, 4]
    members = [Member(r, s, _rule_key(space, g, r))
               for r, s, g in zip(recipes, seeds, (adam, sgd, adam))]
    trainer = BatchedTrainer(TASK, members, total_steps=30)
    assert sorted(u.stop - u.start for u in trainer.updates) == [1, 2]
    trainer.train(30)
    assert trainer.size == 2 and sorted(u.stop - u.start for u in trainer.updates) == [2]
    failure = trainer.failures[1]
    assert failure is not None and failure.status == "diverged"
    assert_twins(trainer, TASK, recipes, seeds, steps=30)


def test_executor_records_a_diverged_member_as_the_evaluator_does():
    space = get_space("hparams")
    points = [(-1.3, 0.9, -7.0), (2.0, 0.9, -7.0), (-2.0, 0.5, -5.0)]  # lr 10**2 diverges
    jobs = [Job(space.candidate(p), steps=20, seed=3, task=TASK) for p in points]
    evaluator = Evaluator(device="cpu")
    batched = BatchedExecutor(evaluator, population=3).evaluate(jobs)
    inline = [evaluator.evaluate(job) for job in jobs]
    assert [e.status for e in batched] == [Status.OK, Status.DIVERGED, Status.OK]
    assert [e.status for e in inline] == [e.status for e in batched]
    assert batched[1].error == inline[1].error and batched[1].fitness is None
    # the curve ends where inline's does, at the last flush before the divergence
    assert [s for s, _ in batched[1].curve] == [s for s, _ in inline[1].curve]
    np.testing.assert_allclose([v for _, v in batched[1].curve], [v for _, v in inline[1].curve],
                               rtol=1e-5)
    assert batched[0].fitness == pytest.approx(inline[0].fitness, abs=1.5e-3)


def test_batchnorm_members_keep_their_own_statistics(monkeypatch, vectorised):
    def conv_bn(in_shape, num_classes, **_):
        return nn.Sequential(nn.Unflatten(1, (1, in_shape[0])), nn.Conv1d(1, 4, 5, padding=2),
                             nn.BatchNorm1d(4), nn.ReLU(), nn.Flatten(),
                             nn.Linear(4 * in_shape[0], num_classes))

    monkeypatch.setitem(MODELS, "test-conv-bn", conv_bn)
    # 20 steps: batch norm's float differences grow along a TaylorGLO trajectory (1e-7 at
    # step 20, 1e-3 by step 50 here): members are twins in distribution, bitwise only nearly
    steps = 20
    task = TASK.with_options(name="mnist1d-conv-bn", model="test-conv-bn", steps=steps)
    loss = get_space("loss")
    recipes = [task.default_recipe(), loss.fill(task.default_recipe(),
                                                loss.named()["cross_entropy_taylor"]),
               task.default_recipe().replace(hparams={"lr": 0.01})]
    seeds = [0, 1, 2]
    trainer = BatchedTrainer(task, [Member(r, s) for r, s in zip(recipes, seeds)],
                             total_steps=steps, vectorise=vectorised)
    assert_vectorised(trainer, vectorised)
    trainer.train(steps)
    assert_twins(trainer, task, recipes, seeds, steps)  # with running_mean/var, num_batches_tracked
    means = [trainer.member_state(i)["2.running_mean"] for i in range(3)]
    assert not torch.allclose(means[0], means[2])


def test_image_members_match_with_augmentation_schedule_and_nesterov(monkeypatch, vectorised):
    def images(**_):
        g = torch.Generator().manual_seed(0)
        x = torch.randint(0, 256, (240, 3, 16, 16), generator=g, dtype=torch.uint8)
        y = torch.randint(0, 10, (240,), generator=g)
        return Splits(x[:160], y[:160], x[160:200], y[160:200], x[200:], y[200:], 10,
                      mean=(0.5, 0.4, 0.3), std=(0.25, 0.25, 0.25))

    def conv_bn(in_shape, num_classes, **_):
        return nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=False),
                             nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                             nn.Linear(4 * 8 * 8, num_classes))

    monkeypatch.setitem(DATASETS, "batched-test-images", images)
    monkeypatch.setitem(MODELS, "test-conv2d-bn", conv_bn)
    steps = 12
    task = SupervisedTask(name="test-images", dataset="batched-test-images", model="test-conv2d-bn",
                          steps=steps, batch_size=16, augment="crop-flip",
                          lr_schedule="multistep:0.3,0.6:0.2",
                          hparams={"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4,
                                   "nesterov": 1.0})
    loss = get_space("loss")
    recipes = [task.default_recipe(), task.default_recipe().replace(hparams={"lr": 0.03}),
               loss.fill(task.default_recipe(), loss.named()["cross_entropy_taylor"])]
    seeds = [5, 6, 7]
    trainer = BatchedTrainer(task, [Member(r, s) for r, s in zip(recipes, seeds)],
                             total_steps=steps, vectorise=vectorised)
    assert_vectorised(trainer, vectorised)
    trainer.train(steps)
    assert_twins(trainer, task, recipes, seeds, steps)


def test_models_with_their_own_dropout_generator_are_refused():
    wrn = MODELS["wrn"]((3, 32, 32), 10, depth=10, width=1, dropout=0.3)
    reason = model_refusal(wrn)
    assert reason is not None and "SeededDropout" in reason
    assert model_refusal(MODELS["wrn"]((3, 32, 32), 10, depth=10, width=1)) is None
    assert model_refusal(nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))) is None


def test_shared_update_probe_accepts_elementwise_rules_only():
    device = torch.device("cpu")

    def adam(params, generator):
        return torch.optim.Adam(params, lr=0.1)

    def noisy(params, generator):  # draws from its generator: members must not share it
        class Noisy(torch.optim.SGD):
            def step(self, closure=None):
                for p in self.param_groups[0]["params"]:
                    p.add_(torch.randn(p.shape, generator=generator))
                return super().step(closure)
        return Noisy(params, lr=0.1)

    def normalised(params, generator):  # a per-tensor norm mixes members' elements
        class Normalised(torch.optim.SGD):
            def step(self, closure=None):
                for p in self.param_groups[0]["params"]:
                    p.grad.div_(p.grad.norm())
                return super().step(closure)
        return Normalised(params, lr=0.1)

    assert shares_update(adam, device)
    assert not shares_update(noisy, device)
    assert not shares_update(normalised, device)


@pytest.mark.parametrize("space_name, point", [("loss", "cross_entropy_taylor"),
                                               ("optimizer", "adam")])
def test_batched_checkpoint_continues_like_a_sequential_one(tmp_path, space_name, point):
    """Saved from a population (Adam: from one optimizer shared by both members), loaded by
    the sequential Trainer and by a population alike."""
    evaluator = Evaluator(device="cpu", checkpoint_dir=tmp_path)
    executor = BatchedExecutor(evaluator, population=4)
    space = optimizer_space_or_skip() if space_name == "optimizer" else get_space(space_name)
    ce = space.candidate(space.named()[point])
    first = [Job(ce, steps=20, seed=s, task=TASK, total_steps=40, checkpoint=True)
             for s in (0, 1)]
    for job in first:
        executor.submit(job)
    assert [e.status for e in executor.wait()] == [Status.OK, Status.OK]
    second = [Job(ce, steps=20, seed=s, task=TASK, total_steps=40, resume_from=j.key)
              for s, j in zip((0, 1), first)]
    batched = executor.evaluate(second)
    assert executor.batches == [2, 2]
    for job, result in zip(second, batched):
        inline = evaluator.evaluate(job)  # the sequential Trainer loads the batched checkpoint
        assert result.fitness == pytest.approx(inline.fitness, abs=1.5e-3)
        assert result.metrics["loss"] == pytest.approx(inline.metrics["loss"], rel=1e-4)
        assert [s for s, _ in result.curve] == [s for s, _ in inline.curve]


def test_jobs_that_cannot_be_batched_run_sequentially_with_a_note(monkeypatch):
    class Rule:  # a backward rule: the model's layers change, so no vmapped population
        def apply(self, model, generator):
            return model

        def observe_output(self, logits):
            pass

    loss = get_space("loss")
    real_fill = type(loss).fill

    def fill(self, recipe, genome):
        return real_fill(self, recipe, genome).replace(backward=Rule())

    monkeypatch.setattr(type(loss), "fill", fill)
    executor = BatchedExecutor(Evaluator(device="cpu"), population=4)
    ce = loss.candidate(loss.named()["cross_entropy_taylor"])
    results = executor.evaluate([Job(ce, steps=5, seed=s, task=TASK) for s in (0, 1)])
    assert [r.status for r in results] == [Status.OK, Status.OK]
    assert executor.batches == []
    assert any("backward rules" in note for note in executor.notes)
    assert all("batch" not in r.device for r in results)


def test_batched_search_records_the_same_ledger_as_inline(tmp_path):
    common: dict[str, Any] = dict(space="loss", strategy="random", task="mnist1d-mlp", budget=5, steps=20,
                  seed=0, device="cpu", progress=False)
    batched = search(run=tmp_path / "batched", executor="batched",
                     executor_options={"population": 3}, **common)
    inline = search(run=tmp_path / "inline", **common)
    b = batched.to_pandas().set_index("key").sort_index()
    i = inline.to_pandas().set_index("key").sort_index()
    assert len(b) == 5 and list(b.index) == list(i.index)
    assert (b["status"] == i["status"]).all()
    assert b["device"].str.contains("batch of 3").sum() == 3  # a population of 3, then of 2
    assert b["device"].str.contains("batch of 2").sum() == 2
    ok = i["status"] == "ok"
    np.testing.assert_allclose(b.loc[ok, "fitness"], i.loc[ok, "fitness"], atol=1.5e-3)


def test_cli_population_flag_reaches_the_batched_executor():
    from metalearn.cli import _executor_options, build_parser, main

    args = build_parser().parse_args(["search", "--space", "loss", "--strategy", "random",
                                      "--budget", "2", "--executor", "batched",
                                      "--population", "5"])
    assert _executor_options(args) == {"population": 5}
    assert main(["search", "--space", "loss", "--strategy", "random", "--budget", "2",
                 "--population", "5"]) == 2  # --population without --executor batched


def test_cpu_searches_use_one_thread_per_job_but_every_core_for_a_population(monkeypatch):
    from metalearn.cli import _cpu_threads, build_parser

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    common = ["search", "--space", "loss", "--strategy", "random", "--budget", "2", "--device", "cpu"]
    torch.set_num_threads(2)  # the conftest fixture restores the count afterwards
    _cpu_threads(build_parser().parse_args(common + ["--executor", "batched"]))
    assert torch.get_num_threads() == 2
    _cpu_threads(build_parser().parse_args(common))
    assert torch.get_num_threads() == 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_population_on_cuda_matches_sequential_cuda_runs():
    space = get_space("loss")
    recipes = [space.fill(TASK.default_recipe(), space.named()["cross_entropy_taylor"]),
               TASK.default_recipe()]
    trainer = BatchedTrainer(TASK, [Member(r, s) for s, r in enumerate(recipes)], device="cuda",
                             total_steps=STEPS)
    trainer.train(STEPS)
    metrics = trainer.evaluate()
    for i, recipe in enumerate(recipes):
        state = TASK.start(recipe, i, "cuda", total_steps=STEPS)
        state.train(STEPS)
        expected = state.evaluate()
        for name, value in state.model.state_dict().items():  # type: ignore[attr-defined]
            torch.testing.assert_close(trainer.member_state(i)[name], value, rtol=1e-3, atol=1e-4)
        scores = metrics[i]
        assert scores is not None
        assert scores["accuracy"] == pytest.approx(expected["accuracy"], abs=5e-3)


def graphed_and_eager(task: SupervisedTask, members: Any, compared: Any
                      ) -> tuple[BatchedTrainer, BatchedTrainer]:
    """The same population trained on CUDA with its CUDA graph and eagerly; the members
    ``compared`` end with the same parameters either way."""
    trainers = []
    for graphed in (True, False):
        trainer = BatchedTrainer(task, members(), device="cuda", total_steps=STEPS)
        if not graphed:
            trainer._graph_off = "eager, for comparison"
        trainer.train(STEPS)
        trainers.append(trainer)
    graphed_run, eager = trainers
    for i in compared:
        for name, value in eager.member_state(i).items():
            torch.testing.assert_close(graphed_run.member_state(i)[name], value, rtol=1e-5,
                                       atol=1e-6)
    return graphed_run, eager


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_step_equals_the_eager_step_and_survives_a_divergence():
    space = get_space("loss")
    task = TASK.with_options(lr_schedule="multistep:0.5:0.1")  # factors reach the graph as tensors
    recipes = [space.fill(task.default_recipe(), space.named()["cross_entropy_taylor"]),
               task.default_recipe(), task.default_recipe().replace(hparams={"lr": 0.01}),
               task.default_recipe().replace(hparams={"lr": 1e6})]  # diverges
    graphed, eager = graphed_and_eager(task, lambda: [Member(r, s) for s, r in enumerate(recipes)],
                                       compared=range(3))
    assert graphed._graph_off is None  # the graph ran until the divergence, and after it
    assert [f.status if f else None for f in graphed.failures] == [None, None, None, "diverged"]
    assert graphed.failures[3].step == eager.failures[3].step  # type: ignore[union-attr]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_batchnorm_population_trains_in_bf16_on_cuda_like_its_sequential_runs():
    task = TASKS["cifar10-wrn-10-1"]
    assert isinstance(task, SupervisedTask)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (600, 3, 32, 32), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 10, (600,), generator=g)
    splits = Splits(x[:400], y[:400], x[400:500], y[400:500], x[500:], y[500:], 10,
                    mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    DATASETS["batched-gpu-images"] = lambda **_: splits
    try:
        task = task.with_options(dataset="batched-gpu-images", data_args={}, steps=20,
                                 compile="none")
        recipes = [task.default_recipe(), task.default_recipe().replace(hparams={"lr": 0.02})]
        trainer = BatchedTrainer(task, [Member(r, s) for s, r in enumerate(recipes)],
                                 device="cuda", total_steps=20)
        assert trainer.population is not None and trainer.amp and trainer.channels_last
        trainer.train(20)
        metrics = trainer.evaluate()
        for i, recipe in enumerate(recipes):
            state = task.start(recipe, i, "cuda", total_steps=20)
            state.train(20)
            expected = state.evaluate()
            assert metrics[i] is not None
            assert metrics[i]["loss"] == pytest.approx(expected["loss"], rel=0.05)  # bf16 twins
    finally:
        del DATASETS["batched-gpu-images"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_rule_populations_replay_forward_and_backward_and_update_eagerly():
    space = optimizer_space_or_skip()
    named = space.named()
    genomes = [named[n] for n in ("adam", "powersign", "momentum", "lion")]
    recipes = [space.fill(TASK.default_recipe().replace(hparams={"lr": 0.01}), g) for g in genomes]
    graphed, _ = graphed_and_eager(
        TASK, lambda: [Member(r, s, _rule_key(space, g, r))
                       for s, (r, g) in enumerate(zip(recipes, genomes))],
        compared=range(len(recipes)))
    assert graphed._graph_off is None and graphed._graph_of == "gradients"


def test_executor_passes_vectorise_on_and_names_what_it_accepts(monkeypatch):
    seen = []
    original = BatchedTrainer.__init__

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("vectorise"))
        original(self, *args, **kwargs)

    monkeypatch.setattr(BatchedTrainer, "__init__", spy)
    space = get_space("hparams")
    jobs = [Job(space.candidate((-1.3, 0.9, -7.0)), steps=5, seed=s, task=TASK) for s in (0, 1)]
    results = BatchedExecutor(Evaluator(device="cpu"), population=2, vectorise="layers").evaluate(jobs)
    assert seen == ["layers"] and all(r.ok for r in results)
    with pytest.raises(UserError, match="accepted: auto, layers, vmap"):
        BatchedExecutor(Evaluator(device="cpu"), vectorise="grouped")


def test_a_lone_job_runs_sequentially_on_the_cpu():
    job = Job(get_space("hparams").candidate((-1.3, 0.9, -7.0)), steps=10, seed=0, task=TASK)
    result = BatchedExecutor(Evaluator(device="cpu"), population=4).evaluate([job])[0]
    assert result.ok and "batch" not in (result.device or "")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_lone_job_on_cuda_is_a_population_of_one_like_its_sequential_run():
    space = get_space("loss")
    job = Job(space.candidate(space.named()["cross_entropy_taylor"]), steps=STEPS, seed=0,
              task=TASK)
    evaluator = Evaluator(device="cuda")
    alone = BatchedExecutor(evaluator, population=4).evaluate([job])[0]
    inline = evaluator.evaluate(job)
    assert alone.ok and alone.device == "cuda (batch of 1)"
    assert alone.fitness == pytest.approx(inline.fitness, abs=0.02)
