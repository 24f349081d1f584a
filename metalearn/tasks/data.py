"""Datasets as device-ready tensors.

MNIST-1D (Greydanus 2020) is generated locally by the ``mnist1d`` package and
cached on disk, so only the first use pays for generation. Image datasets are
read from a local folder (``METALEARN_DATA`` or a task's ``data_dir``); nothing
is ever downloaded. The validation split is carved from the training split with
a fixed permutation; the test split is kept apart.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .train import Splits

DatasetLoader = Callable[..., Splits]
DATASETS: dict[str, DatasetLoader] = {}
_MEMORY: dict[str, Splits] = {}


def register_dataset(name: str) -> Callable[[DatasetLoader], DatasetLoader]:
    def add(loader: DatasetLoader) -> DatasetLoader:
        DATASETS[name] = loader
        return loader
    return add


def cache_dir() -> Path:
    root = os.environ.get("METALEARN_CACHE") or Path.home() / ".cache" / "metalearn"
    return Path(root)


def load_dataset(name: str, **args: Any) -> Splits:
    """The named dataset's splits, memoised in this process."""
    memo = f"{name}:{json.dumps(args, sort_keys=True, default=str)}"
    if memo not in _MEMORY:
        _MEMORY[memo] = DATASETS[name](**args)
    return _MEMORY[memo]


def carve_validation(x: torch.Tensor, y: torch.Tensor, val_size: int, seed: int = 0
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split training data into (train, validation) with a fixed permutation."""
    if not 0 < val_size < len(y):
        raise ValueError(f"validation size must be between 1 and {len(y) - 1}, got {val_size}")
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    train, val = order[:-val_size], order[-val_size:]
    return x[train], y[train], x[val], y[val]


@register_dataset("mnist1d")
def mnist1d(num_samples: int = 10_000, val_size: int = 1_000, seed: int = 42, **_: Any) -> Splits:
    """MNIST-1D: 40-sample 1D signals of 10 digit templates, generated locally."""
    from mnist1d.data import get_dataset_args, make_dataset

    settings = get_dataset_args(as_dict=True)
    settings.update(num_samples=num_samples, seed=seed)
    settings.pop("url", None)
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    path = cache_dir() / f"mnist1d-{digest}.npz"
    if path.exists():
        arrays = dict(np.load(path))
    else:
        args = get_dataset_args()
        for key, value in settings.items():
            setattr(args, key, value)
        data = make_dataset(args)
        arrays = {k: np.asarray(data[k]) for k in ("x", "y", "x_test", "y_test")}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(path)
    x = torch.as_tensor(arrays["x"], dtype=torch.float32)
    y = torch.as_tensor(arrays["y"], dtype=torch.long)
    x_train, y_train, x_val, y_val = carve_validation(x, y, val_size)
    return Splits(x_train, y_train, x_val, y_val,
                  torch.as_tensor(arrays["x_test"], dtype=torch.float32),
                  torch.as_tensor(arrays["y_test"], dtype=torch.long), num_classes=10)
