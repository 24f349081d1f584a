"""A run: the folder of one search, read back from its ledger."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from .errors import UserError
from .evaluator import Evaluation
from .ledger import COLUMNS, Ledger

LEDGER = "ledger.db"
CHECKPOINTS = "checkpoints"


class Run:
    """A run folder (``runs/NAME``) and its ledger, for inspection and comparison."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        db = self.path / LEDGER
        if not db.exists():
            raise UserError(f"no run at {self.path}: expected a ledger file {db}")
        self.ledger = Ledger(db, readonly=True)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, evaluations={len(self)})"

    def __len__(self) -> int:
        return self.ledger.count(cached=False)

    @property
    def options(self) -> dict[str, Any]:
        return self.ledger.options()

    def evaluations(self) -> list[Evaluation]:
        return self.ledger.evaluations()

    def to_pandas(self, include_cached: bool = False) -> pd.DataFrame:
        """One row per evaluation: candidate, key, space, status, fitness, steps, seed, wall_s, ..."""
        where = "" if include_cached else "WHERE cached = 0"
        frame = pd.read_sql_query(f"SELECT {', '.join(COLUMNS)} FROM evaluations {where} ORDER BY id",
                                  self.ledger.db)
        for column in ("metrics", "curve"):
            frame[column] = frame[column].map(lambda s: json.loads(s) if s else None)
        frame["cached"] = frame["cached"].astype(bool)
        frame["checkpoint"] = frame["checkpoint"].astype(bool)
        return frame

    def best(self, k: int = 1) -> pd.DataFrame:
        """The ``k`` evaluations of highest fitness (status ``ok`` only)."""
        rows = self.ledger.best_rows(k)
        return pd.DataFrame(rows, columns=list(COLUMNS))

    def status_counts(self) -> dict[str, int]:
        return self.ledger.status_counts()

    def close(self) -> None:
        self.ledger.close()


def load_run(path: str | Path) -> Run:
    """Open the run folder at ``path`` for reading."""
    return Run(path)
