"""The image tasks: the papers' defaults, the epochs option, and a few CPU steps that learn.

Training runs on the tiny CIFAR-10 / SVHN files of tests/test_vision_data.py, through
the same loading, on-device augmentation and normalisation as on the real data.
"""

from __future__ import annotations

import copy

import pytest
import torch
from test_vision_data import write_cifar10, write_svhn

import metalearn as ml
from metalearn.errors import UserError
from metalearn.tasks import SupervisedTask
from metalearn.tasks.train import Trainer, lr_factor
from metalearn.tasks.vision_models import SeededDropout

VISION_TASKS = ["cifar10-wrn-16-2", "cifar10-wrn-10-1", "cifar10-wrn-28-10", "svhn-wrn-16-2",
                "cifar10-resnet20", "cifar10-nos-convnet", "cifar10-proxprop-mlp",
                "cifar10-proxprop-convnet"]



@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("data")
    write_cifar10(root)
    write_svhn(root / "svhn")
    return str(root)


def supervised(name: str, **options: object) -> SupervisedTask:
    task = ml.get_task(name, **options)
    assert isinstance(task, SupervisedTask)
    return task


def tiny(name: str, data_dir: str, **options: object) -> SupervisedTask:
    task = supervised(name)
    return task.with_options(data_dir=data_dir, data_args={**task.data_args, "val_size": 10},
                             **options)


def full_batch_training_loss(state: Trainer) -> float:
    """Cross-entropy on all training images at once, batch statistics in BN, no dropout."""
    model = copy.deepcopy(state.model).train()
    for module in model.modules():
        if isinstance(module, SeededDropout):
            module.eval()
    with torch.no_grad():
        logits = model(state.data.prepare(state.data.x_train))
        return float(torch.nn.functional.cross_entropy(logits, state.data.y_train))


def test_all_vision_tasks_are_registered():
    assert set(VISION_TASKS) <= set(ml.list_tasks())


@pytest.mark.parametrize(("name", "steps", "batch_size"), [
    ("cifar10-wrn-16-2", 10, 8), ("cifar10-wrn-10-1", 12, 16), ("svhn-wrn-16-2", 16, 8),
    ("cifar10-resnet20", 12, 16), ("cifar10-nos-convnet", 12, 16),
    ("cifar10-proxprop-mlp", 8, 50), ("cifar10-proxprop-convnet", 20, 16)])
def test_a_few_cpu_steps_lower_the_training_loss(data_dir, name, steps, batch_size):
    task = tiny(name, data_dir, steps=steps, batch_size=batch_size)
    state = task.start(task.default_recipe(), seed=0)
    assert isinstance(state, Trainer)
    before = full_batch_training_loss(state)
    assert before == pytest.approx(2.3, abs=0.5)  # about log(10) at the start
    state.train(steps)
    after = full_batch_training_loss(state)
    assert after < 0.9 * before, (before, after)
    metrics = state.evaluate("val")
    assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["loss"] > 0


def test_images_stay_uint8_on_the_device_and_batches_are_normalised(data_dir):
    task = tiny("cifar10-wrn-10-1", data_dir, steps=1, batch_size=50)
    state = task.start(task.default_recipe(), seed=0)
    assert isinstance(state, Trainer)
    assert state.data.x_train.dtype == torch.uint8 and state.data.x_val.dtype == torch.uint8
    x, y = state._next_batch()
    assert x.dtype == torch.float32 and x.shape == (50, 3, 32, 32)
    # per-channel (x/255 - mean)/std of the colourful fixture images: far from raw bytes
    assert float(x.abs().max()) < 3.0 and float(x.min()) < -1.0


def test_same_seed_same_job_including_augmentation(data_dir):
    task = tiny("cifar10-nos-convnet", data_dir, steps=4, batch_size=16, augment="crop-flip")
    runs = []
    for seed in (3, 3, 4):
        state = task.start(task.default_recipe(), seed=seed)
        state.train(4)
        runs.append([loss for _, loss in state.curve])
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_defaults_are_the_papers_budgets_and_schedules():
    wrn = supervised("cifar10-wrn-16-2")
    assert wrn.steps == 200 * 352  # 200 epochs of ceil(45000 / 128) steps
    assert (wrn.batch_size, wrn.lr_schedule, wrn.augment) == (128, "multistep:0.3,0.6,0.8:0.2",
                                                              "crop-flip")
    assert dict(wrn.hparams) == {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": 1.0}
    assert supervised("cifar10-wrn-28-10").model_args == {"depth": 28, "width": 10}
    # lr x0.2 at epochs 60, 120 and 160
    assert [lr_factor(wrn.lr_schedule, s, wrn.steps) for s in
            (60 * 352 - 1, 60 * 352, 120 * 352, 160 * 352)] == pytest.approx([1, 0.2, 0.04, 0.008])
    resnet = supervised("cifar10-resnet20")
    assert (resnet.steps, resnet.lr_schedule, resnet.hparams["weight_decay"]) == (64_000, "step", 1e-4)
    assert lr_factor("step", 31_999, 64_000) == 1 and lr_factor("step", 32_000, 64_000) == 0.1
    assert lr_factor("step", 48_000, 64_000) == pytest.approx(0.01)
    svhn = supervised("svhn-wrn-16-2")
    assert svhn.steps == 160 * 534 and svhn.hparams["lr"] == 0.01  # ceil(68257 / 128) = 534
    assert svhn.model_args["dropout"] == 0.4 and svhn.augment == "none"
    assert supervised("cifar10-nos-convnet").steps == 5 * 352
    for name in ("cifar10-proxprop-mlp", "cifar10-proxprop-convnet"):
        task = supervised(name)
        assert (task.steps, task.batch_size) == (50 * 90, 500)
    assert supervised("cifar10-proxprop-convnet").config["optimizer"] == "adam"


def test_existing_task_identity_is_unchanged_by_the_new_fields():
    assert set(ml.get_task("mnist1d-mlp").config) >= {"name", "steps", "hparams"}
    assert "optimizer" not in ml.get_task("mnist1d-mlp").config
    assert "epoch_size" not in ml.get_task("cifar10-wrn-16-2").config


def test_epochs_option_converts_to_steps():
    assert ml.get_task("cifar10-wrn-16-2", epochs=10).steps == 10 * 352
    assert ml.get_task("cifar10-wrn-16-2", epochs=2, batch_size=100).steps == 2 * 450
    assert ml.get_task("cifar10-proxprop-mlp", epochs=0.5).steps == 45
    with pytest.raises(UserError, match="either steps or epochs"):
        ml.get_task("cifar10-wrn-16-2", epochs=1, steps=5)
    with pytest.raises(UserError, match="no epoch size"):
        ml.get_task("mnist1d-mlp", epochs=1)


def test_missing_data_through_a_task_is_a_user_error(tmp_path):
    task = ml.get_task("cifar10-resnet20", data_dir=str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match="cifar-10-batches-py"):
        task.start(task.default_recipe(), seed=0)


def test_bad_schedule_and_optimizer_are_refused():
    with pytest.raises(ValueError, match="multistep:F1"):
        lr_factor("multistep:0.5", 1, 10)
    with pytest.raises(UserError, match="unknown optimizer"):
        ml.get_task("cifar10-resnet20", optimizer="adamw")


@pytest.mark.gpu
def test_gpu_path_trains_with_amp_channels_last_and_resident_uint8(data_dir):
    task = tiny("cifar10-wrn-16-2", data_dir, steps=10, batch_size=16)
    state = task.start(task.default_recipe(), seed=0, device="cuda")
    assert isinstance(state, Trainer)
    assert state.data.x_train.is_cuda and state.data.x_train.dtype == torch.uint8
    assert state.amp
    conv = next(m for m in state.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    before = full_batch_training_loss(state)
    state.train(10)
    assert full_batch_training_loss(state) < 0.9 * before
