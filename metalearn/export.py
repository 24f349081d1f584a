"""Export a discovered candidate as a standalone PyTorch source file (depending only on torch)."""

from __future__ import annotations

from pathlib import Path

from .errors import UserError


def export_candidate(space_name: str, text: str) -> str:
    """The source of a standalone module reproducing candidate ``text`` of ``space_name``."""
    from .registry import get_space

    space = get_space(space_name)
    try:
        return space.export_source(space.parse(text))
    except NotImplementedError as err:
        raise UserError(str(err)) from None


def export_run(run: str | Path, output: str | Path, rank: int = 1) -> Path:
    """Write the ``rank``-th best candidate of ``run`` to ``output``."""
    from .run import load_run

    best = load_run(run).best(k=rank)
    if len(best) < rank:
        raise UserError(f"run {run} has {len(best)} successful evaluation(s); cannot export rank {rank}")
    row = best.iloc[rank - 1]
    path = Path(output)
    path.write_text(export_candidate(row["space"], row["candidate"]))
    return path
