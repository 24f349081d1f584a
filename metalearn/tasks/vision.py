"""Image datasets read from a local folder: CIFAR-10 and SVHN, never downloaded.

The folder is a task's ``data_dir`` option or else the ``METALEARN_DATA``
environment variable. Each dataset is read in its standard distributed format by
torchvision's own dataset class, with downloading off:

- CIFAR-10 (Krizhevsky 2009), the "python version": ``<folder>/cifar-10-batches-py/``
  holding ``data_batch_1`` ... ``data_batch_5``, ``test_batch`` and ``batches.meta``.
- SVHN (Netzer et al. 2011), the cropped digits: ``train_32x32.mat`` and
  ``test_32x32.mat`` in ``<folder>/svhn/`` or in ``<folder>`` itself. Label 10 of the
  files is digit 0, and becomes class 0.

Images are kept as uint8 tensors (N, 3, 32, 32): 150 MB for CIFAR-10's 50,000
training images, so the whole dataset can live on the GPU; the training loop scales
and normalises each batch on the device (:meth:`~metalearn.tasks.train.Splits.prepare`).
The validation split is carved from the training images with a fixed permutation
(45,000/5,000 for CIFAR-10, as He et al. 2016 did); the test split is read only by
retraining and reports.

torchvision checks the files' MD5 sums before reading them; that check is left out
here (we check that the files are present, and name any that are missing), so that
small files in the same formats, written by the tests, go through the same reading code.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UserError
from .data import carve_validation, register_dataset
from .train import Splits

#: per-channel mean and standard deviation of CIFAR-10's 50,000 training images, in [0, 1]
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
#: the same for SVHN's 73,257 training images
SVHN_MEAN = (0.4377, 0.4438, 0.4728)
SVHN_STD = (0.1980, 0.2010, 0.1970)

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_FILES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta")
SVHN_FILES = ("train_32x32.mat", "test_32x32.mat")
#: training examples per epoch once the default validation split is carved off
CIFAR10_EPOCH = 45_000
SVHN_EPOCH = 73_257 - 5_000


def data_root(data_dir: str | os.PathLike[str] | None, dataset: str, expected: str) -> Path:
    """The folder to read ``dataset`` from: ``data_dir``, else ``$METALEARN_DATA``."""
    root = data_dir if data_dir is not None else os.environ.get("METALEARN_DATA")
    if not root:
        raise UserError(f"{dataset} is read from a local folder and never downloaded: give the "
                        f"task's data_dir option or set METALEARN_DATA to a folder holding {expected}")
    return Path(root).expanduser()


def _missing(folder: Path, files: tuple[str, ...]) -> list[str]:
    return [name for name in files if not (folder / name).is_file()]


def cifar10_folder(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The ``cifar-10-batches-py`` folder under the data folder (or the data folder itself)."""
    expected = f"{CIFAR10_FOLDER}/ with {', '.join(CIFAR10_FILES)}"
    root = data_root(data_dir, "CIFAR-10", expected)
    folder = root / CIFAR10_FOLDER
    if not _missing(folder, CIFAR10_FILES):
        return folder
    if not _missing(root, CIFAR10_FILES):  # the data folder is the batches folder itself
        return root
    missing = _missing(folder, CIFAR10_FILES)
    what = "folder does not exist" if not folder.is_dir() else f"missing {', '.join(missing)}"
    raise UserError(f"CIFAR-10 not found in {folder} ({what}); expected the python version of "
                    f"CIFAR-10 (cifar-10-python.tar.gz unpacked) there: {', '.join(CIFAR10_FILES)}")


def svhn_folder(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The folder holding SVHN's ``.mat`` files: ``<data folder>/svhn`` or the data folder."""
    root = data_root(data_dir, "SVHN", f"svhn/ with {' and '.join(SVHN_FILES)}")
    for folder in (root / "svhn", root):
        if not _missing(folder, SVHN_FILES):
            return folder
    folder = root / "svhn" if (root / "svhn").is_dir() else root
    missing = _missing(folder, SVHN_FILES)
    raise UserError(f"SVHN not found in {folder} (missing {', '.join(missing)}); expected the "
                    f"cropped-digits files {' and '.join(SVHN_FILES)} in {root / 'svhn'} or {root}")


def _cifar10_class(base_folder: str) -> type:
    from torchvision.datasets import CIFAR10

    class LocalCIFAR10(CIFAR10):
        """torchvision's CIFAR-10 reader, without downloading and without the MD5 check."""

        def _check_integrity(self) -> bool:
            return True

        def _load_meta(self) -> None:
            with open(Path(self.root) / self.base_folder / self.meta["filename"], "rb") as f:
                self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
            self.class_to_idx = {name: i for i, name in enumerate(self.classes)}

    LocalCIFAR10.base_folder = base_folder  # torchvision reads root/base_folder/data_batch_1...
    return LocalCIFAR10


def _svhn_class() -> type:
    from torchvision.datasets import SVHN

    class LocalSVHN(SVHN):
        """torchvision's SVHN reader, without downloading and without the MD5 check."""

        def _check_integrity(self) -> bool:
            return True

    return LocalSVHN


def read_cifar10(folder: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 3, 32, 32) uint8 and labels (N,) int64 of one CIFAR-10 split."""
    dataset = _cifar10_class(folder.name)(str(folder.parent), train=train, download=False)
    images = torch.from_numpy(np.ascontiguousarray(dataset.data.transpose(0, 3, 1, 2)))  # HWC -> CHW
    return images, torch.as_tensor(dataset.targets, dtype=torch.long)


def read_svhn(folder: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 3, 32, 32) uint8 and labels (N,) int64 in 0..9 of one SVHN split."""
    dataset = _svhn_class()(str(folder), split=split, download=False)
    images = torch.from_numpy(np.ascontiguousarray(dataset.data, dtype=np.uint8))
    return images, torch.as_tensor(dataset.labels, dtype=torch.long)


def _splits(train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor],
            val_size: int, seed: int, stats: tuple[tuple[float, ...], tuple[float, ...]] | None
            ) -> Splits:
    if not 0 < val_size < len(train[1]):
        raise UserError(f"val_size must be between 1 and {len(train[1]) - 1} (the training "
                        f"images), got {val_size}")
    x_train, y_train, x_val, y_val = carve_validation(*train, val_size, seed)
    mean, std = stats if stats is not None else (None, None)
    return Splits(x_train, y_train, x_val, y_val, *test, num_classes=10, mean=mean, std=std)


def _reject(unknown: dict[str, Any], dataset: str) -> None:
    if unknown:
        raise UserError(f"unknown option(s) {sorted(unknown)} of dataset {dataset!r}; "
                        "accepted: data_dir, val_size, normalize, seed")


@register_dataset("cifar10")
def cifar10(data_dir: str | None = None, val_size: int = 5_000, normalize: bool = True,
            seed: int = 0, **unknown: Any) -> Splits:
    """CIFAR-10 from its python batches; ``normalize=False`` only scales to [0, 1]."""
    _reject(unknown, "cifar10")
    folder = cifar10_folder(data_dir)
    return _splits(read_cifar10(folder, True), read_cifar10(folder, False), val_size, seed,
                   (CIFAR10_MEAN, CIFAR10_STD) if normalize else None)


@register_dataset("svhn")
def svhn(data_dir: str | None = None, val_size: int = 5_000, normalize: bool = True,
         seed: int = 0, **unknown: Any) -> Splits:
    """SVHN's train and test splits (not ``extra``); ``normalize=False`` only scales to [0, 1]."""
    _reject(unknown, "svhn")
    folder = svhn_folder(data_dir)
    return _splits(read_svhn(folder, "train"), read_svhn(folder, "test"), val_size, seed,
                   (SVHN_MEAN, SVHN_STD) if normalize else None)
