"""The ``metalearn`` command: maps flags onto the Python API, nothing more.

A user's mistake (unknown name, bad option, missing data) ends with one line on
stderr saying what was wrong and what is accepted, and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from .errors import UserError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UserError(f"{message} (see '{self.prog} --help')")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def _value(text: str) -> Any:
    """``KEY=VALUE`` values: int, float, true/false, or the text itself (never evaluated)."""
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def _options(items: Sequence[str]) -> dict[str, Any]:
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--option takes KEY=VALUE, got {item!r}")
        options[key.replace("-", "_")] = _value(value)
    return options


def _cmd_list(args: argparse.Namespace) -> None:
    import metalearn as ml

    print("spaces:     " + ", ".join(ml.list_spaces()) + "   (join with + for a product, e.g. hparams+loss)")
    print("strategies: " + ", ".join(ml.list_strategies()))
    print("tasks:      " + ", ".join(ml.list_tasks()))
    if args.space:
        space = ml.get_space(args.space)
        for name, genome in space.named().items():
            print(f"  {name}: {space.format(genome)}")


def _cmd_search(args: argparse.Namespace) -> None:
    from .search import search

    _cpu_threads(args)

    task_options: dict[str, Any] = {}
    if args.data_dir:
        task_options["data_dir"] = args.data_dir
    run = search(
        space=args.space, strategy=args.strategy, task=args.task, budget=args.budget,
        run=args.run, seed=args.seed, steps=args.steps, executor=args.executor,
        device=args.device, init=[p for p in (args.init or "").split(",") if p],
        strategy_options=_options(args.option), task_options=task_options,
        job_timeout=args.job_timeout, progress=not args.no_progress,
        executor_options=_executor_options(args),
    )
    from .report import show

    print(show(run.path, top=args.top))


def _executor_options(args: argparse.Namespace) -> dict[str, Any]:
    """``--address`` and ``--workers``, for the executors that take them (pool, ray)."""
    options = {k: v for k, v in (("address", args.address), ("workers", args.workers))
               if v is not None}
    if options and args.executor == "inline":
        raise UserError("--address and --workers need --executor pool (this machine) or ray")
    population = args.population
    if population is not None:
        if args.executor != "batched":
            raise UserError("--population needs --executor batched")
        options["population"] = population
    return options


def _cmd_show(args: argparse.Namespace) -> None:
    from .report import show

    print(show(args.run, top=args.top))
    if args.schedule or args.plot:
        from .report_pbt import format_schedule, plot_schedule, schedule

        if args.schedule:
            print()
            print(format_schedule(schedule(args.run, lineage=args.lineage)))
        if args.plot:
            plot_schedule(args.run, args.plot, lineage=args.lineage)
            print(f"wrote {args.plot}")


def _cmd_export(args: argparse.Namespace) -> None:
    from .export import export_run

    path = export_run(args.run, args.output, rank=args.rank)
    print(f"wrote {path}")


def _cpu_threads(args: argparse.Namespace) -> None:
    """One PyTorch thread for jobs trained on the CPU, unless told otherwise.

    MNIST-1D's small networks gain nothing from a second intra-op thread, and on a
    shared machine threads that wait for each other made a 500-step job 10-20 times
    slower (1.4-3 s with one thread, 25 s with two, on a loaded 2-core CPU). A population
    of the batched executor is one large job: it keeps torch's default (every core), which
    made it 1.8x faster than one thread on 2 cores (benchmarks/batched_throughput.py).
    """
    import os

    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    elif "OMP_NUM_THREADS" not in os.environ and args.executor != "batched" and (
            args.device == "cpu" or (args.device == "auto" and not torch.cuda.is_available())):
        torch.set_num_threads(1)


def _cmd_compare(args: argparse.Namespace) -> None:
    from .compare import compare, format_table

    _cpu_threads(args)

    task_options: dict[str, Any] = {}
    if args.data_dir:
        task_options["data_dir"] = args.data_dir
    spaces = [s.strip() for s in args.spaces.split(",") if s.strip()] if args.spaces else None
    result = compare(
        task=args.task, budget=args.budget, out=args.out, spaces=spaces, strategy=args.strategy,
        seed=args.seed, seeds=args.seeds, top=args.top, steps=args.steps,
        retrain_steps=args.retrain_steps, task_options=task_options, executor=args.executor,
        device=args.device, job_timeout=args.job_timeout, progress=not args.no_progress,
        executor_options=_executor_options(args), init=args.init,
    )
    print(format_table(result.table))
    print(f"\nwrote {result.files['report.html']} and {result.files['report.md']} "
          f"({result.wall_s:.0f} s)")


def _cmd_retrain(args: argparse.Namespace) -> None:
    from .retrain import format_summary, retrain

    _cpu_threads(args)

    task_options: dict[str, Any] = {}
    if args.data_dir:
        task_options["data_dir"] = args.data_dir
    summary = retrain(args.run, task=args.task, top=args.top, seeds=args.seeds, steps=args.steps,
                      out=args.out, baseline=not args.no_baseline, executor=args.executor,
                      device=args.device, task_options=task_options, job_timeout=args.job_timeout,
                      progress=not args.no_progress, executor_options=_executor_options(args))
    print(format_summary(summary))


def _add_execution_flags(parser: argparse.ArgumentParser) -> None:
    """Where and how jobs run: the flags shared by ``search``, ``compare`` and ``retrain``."""
    parser.add_argument("--executor", default="inline", help="inline, pool, ray or batched")
    parser.add_argument("--address", help="Ray cluster to join, HOST:PORT (--executor ray; "
                        "without it a local cluster is started)")
    parser.add_argument("--workers", type=_positive_int,
                        help="worker processes (pool) or most jobs in flight (ray)")
    parser.add_argument("--population", type=_positive_int,
                        help="jobs trained at once as one vectorised model "
                             "(--executor batched; default 32)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--data-dir", help="folder with the task's dataset files")
    parser.add_argument("--job-timeout", type=float, help="seconds a job may train")
    parser.add_argument("--threads", type=_positive_int,
                        help="PyTorch CPU threads (default: 1 when training on the CPU, "
                             "every core for --executor batched)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="metalearn", description=__doc__.splitlines()[0] if __doc__ else None)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    listing = commands.add_parser("list", help="registered spaces, strategies and tasks")
    listing.add_argument("--space", help="also list this space's named points")
    listing.set_defaults(run_command=_cmd_list)

    s = commands.add_parser("search", help="search a space with a strategy on a task")
    s.add_argument("--space", required=True, help="optimizer, backprop, loss, hparams, or a+b")
    s.add_argument("--strategy", required=True, help="random, evolution, cmaes, ...")
    s.add_argument("--task", default="mnist1d-mlp")
    s.add_argument("--budget", type=_positive_int, required=True, help="number of evaluations")
    s.add_argument("--run", help="run folder (resumed if it exists)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--steps", type=_positive_int, help="training steps of each job")
    s.add_argument("--init", help="comma-separated named points to evaluate first")
    s.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="strategy option, e.g. population_size=32 (repeatable)")
    s.add_argument("--top", type=int, default=10, help="leaderboard rows to print")
    _add_execution_flags(s)
    s.set_defaults(run_command=_cmd_search)

    show = commands.add_parser("show", help="leaderboard and statuses of a run")
    show.add_argument("run")
    show.add_argument("--top", type=int, default=10)
    show.add_argument("--schedule", action="store_true",
                      help="each member's hyperparameters/loss per interval (pbt, epbt)")
    show.add_argument("--plot", metavar="PNG", help="draw each member's schedule into PNG")
    show.add_argument("--lineage", action="store_true",
                      help="schedules along the parents of each member's final weights")
    show.set_defaults(run_command=_cmd_show)

    export = commands.add_parser("export", help="a discovered candidate as a standalone PyTorch file")
    export.add_argument("run")
    export.add_argument("-o", "--output", required=True)
    export.add_argument("--rank", type=_positive_int, default=1, help="1 = the best candidate")
    export.set_defaults(run_command=_cmd_export)

    from .compare import DEFAULT_BUDGET, DEFAULT_SEEDS, DEFAULT_TOP

    c = commands.add_parser("compare", help="which kind of meta-learning pays off on a task: "
                            "search each space, retrain the best with seeds, report")
    c.add_argument("--task", default="mnist1d-mlp")
    c.add_argument("--budget", type=_positive_int, default=DEFAULT_BUDGET,
                   help=f"evaluations per space (default {DEFAULT_BUDGET})")
    c.add_argument("--out", default="runs/compare", help="comparison folder (resumed if it exists)")
    c.add_argument("--spaces", help="comma-separated spaces (default: backprop,optimizer,loss "
                   "where available)")
    c.add_argument("--strategy", help="one strategy for every space (default: each space's own)")
    c.add_argument("--seed", type=int, default=0, help="seed of every search")
    c.add_argument("--seeds", type=_positive_int, default=DEFAULT_SEEDS,
                   help=f"retraining seeds per candidate (default {DEFAULT_SEEDS})")
    c.add_argument("--top", type=_positive_int, default=DEFAULT_TOP,
                   help=f"candidates of each space to retrain (default {DEFAULT_TOP})")
    c.add_argument("--steps", type=_positive_int,
                   help="training steps of a search job (default: a quarter of the task's)")
    c.add_argument("--retrain-steps", type=_positive_int,
                   help="training steps of a retraining job (default: the task's)")
    c.add_argument("--init", choices=("known", "none"), default="known",
                   help="known (default): each search first evaluates its space's named points "
                        "(at most half its budget); none: every search starts from scratch")
    _add_execution_flags(c)
    c.set_defaults(run_command=_cmd_compare)

    r = commands.add_parser("retrain", help="retrain a run's best candidates with several seeds "
                            "and score them on test data (also on another task: transfer)")
    r.add_argument("run")
    r.add_argument("--task", help="task to retrain on (default: the run's)")
    r.add_argument("--top", type=_positive_int, default=5, help="candidates to retrain")
    r.add_argument("--seeds", type=_positive_int, default=3, help="seeds per candidate")
    r.add_argument("--steps", type=_positive_int, help="training steps (default: the task's)")
    r.add_argument("--out", help="folder of the retraining (default: RUN/retrain-TASK)")
    r.add_argument("--no-baseline", action="store_true", help="do not retrain the default recipe")
    _add_execution_flags(r)
    r.set_defaults(run_command=_cmd_retrain)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        command: Callable[[argparse.Namespace], None] = args.run_command
        command(args)
    except UserError as err:
        print(f"metalearn: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("metalearn: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
