"""CIFAR-10 and SVHN read from tiny files in their real distributed formats.

The fixtures are written here: CIFAR-10's pickled python batches (``data_batch_1..5``,
``test_batch``, ``batches.meta``) and SVHN's MATLAB files (``X`` of shape (32, 32, 3, N),
``y`` of shape (N, 1) with label 10 for digit 0), so torchvision's readers and ours
run in CI exactly as on the real data. Every image carries its own index in pixel
(0, 0, 0), and each class its own colour and a bright band of rows, so tests can tell
images apart and small models learn them in a few steps (tests/test_vision_tasks.py).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from metalearn.errors import UserError
from metalearn.tasks.data import DATASETS
from metalearn.tasks.vision import CIFAR10_MEAN, CIFAR10_STD

PER_BATCH, N_TEST, N_SVHN_TRAIN, N_SVHN_TEST = 12, 10, 40, 10


#: the colour of each class's background (learnable through crops and flips)
COLOURS = np.array([[20 * c + 10, 200 - 20 * c, 60 + 120 * (c % 2)] for c in range(10)])


def fixture_images(labels: np.ndarray, first_index: int, seed: int) -> np.ndarray:
    """(N, 3, 32, 32) uint8: the class colour plus noise, a bright band of rows 3c+1..3c+3
    for class c, the image's index at (0, 0, 0)."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 40, size=(len(labels), 3, 32, 32))
    images = (COLOURS[labels][:, :, None, None] + noise).astype(np.uint8)
    for i, label in enumerate(labels):
        images[i, :, 3 * label + 1:3 * label + 4, :] = 250
        images[i, 1, :, 0] = 7  # a left/right and channel asymmetry, so layout mistakes show
        images[i, 0, 0, 0] = first_index + i
    return images


def write_cifar10(root: Path) -> dict[str, np.ndarray]:
    """The python version of CIFAR-10, ``PER_BATCH`` images per training batch."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train_x, train_y = [], []
    for b in range(1, 6):
        labels = (np.arange(PER_BATCH) + b) % 10
        images = fixture_images(labels, first_index=(b - 1) * PER_BATCH, seed=b)
        batch = {"batch_label": f"training batch {b} of 5", "labels": labels.tolist(),
                 "data": images.reshape(PER_BATCH, 3072),  # rows: 1024 red, 1024 green, 1024 blue
                 "filenames": [f"img_{b}_{i}.png" for i in range(PER_BATCH)]}
        with open(folder / f"data_batch_{b}", "wb") as f:
            pickle.dump(batch, f, protocol=2)
        train_x.append(images)
        train_y.append(labels)
    test_y = np.arange(N_TEST) % 10
    test_x = fixture_images(test_y, first_index=200, seed=99)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"batch_label": "testing batch 1 of 1", "labels": test_y.tolist(),
                     "data": test_x.reshape(N_TEST, 3072),
                     "filenames": [f"test_{i}.png" for i in range(N_TEST)]}, f, protocol=2)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog",
                                     "frog", "horse", "ship", "truck"],
                     "num_cases_per_batch": PER_BATCH, "num_vis": 3072}, f, protocol=2)
    return {"x_train": np.concatenate(train_x), "y_train": np.concatenate(train_y),
            "x_test": test_x, "y_test": test_y}


def write_svhn(folder: Path) -> dict[str, np.ndarray]:
    """SVHN's cropped digits: X (32, 32, 3, N) uint8, y (N, 1) with 10 meaning digit 0."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, n, seed in (("train", N_SVHN_TRAIN, 1), ("test", N_SVHN_TEST, 2)):
        digits = np.arange(n) % 10
        images = fixture_images(digits, first_index=0, seed=seed)
        files_y = np.where(digits == 0, 10, digits).astype(np.uint8).reshape(n, 1)
        scipy.io.savemat(folder / f"{split}_32x32.mat",
                         {"X": images.transpose(2, 3, 1, 0), "y": files_y})  # (H, W, C, N)
        arrays[f"x_{split}"], arrays[f"y_{split}"] = images, digits
    return arrays


@pytest.fixture(scope="module")
def cifar(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    root = tmp_path_factory.mktemp("data")
    return root, write_cifar10(root)


@pytest.fixture(scope="module")
def svhn(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    root = tmp_path_factory.mktemp("data")
    return root, write_svhn(root / "svhn")


def test_cifar10_loads_uint8_images_labels_and_carves_validation(cifar):
    root, written = cifar
    splits = DATASETS["cifar10"](data_dir=str(root), val_size=15)
    assert splits.x_train.shape == (5 * PER_BATCH - 15, 3, 32, 32)
    assert splits.x_val.shape == (15, 3, 32, 32) and splits.y_val.shape == (15,)
    assert splits.x_test.shape == (N_TEST, 3, 32, 32)
    assert splits.x_train.dtype == torch.uint8 and splits.y_train.dtype == torch.long
    assert splits.num_classes == 10
    # the test split is in file order and pixel-exact (channel planes, rows, columns)
    assert torch.equal(splits.x_test, torch.from_numpy(written["x_test"]))
    assert splits.y_test.tolist() == written["y_test"].tolist()
    # train + validation are the 60 training images, each once, with its own label
    ids = torch.cat([splits.x_train[:, 0, 0, 0], splits.x_val[:, 0, 0, 0]]).long()
    assert sorted(ids.tolist()) == list(range(5 * PER_BATCH))
    labels = torch.cat([splits.y_train, splits.y_val])
    assert labels.tolist() == written["y_train"][ids.numpy()].tolist()
    for x, i in zip(splits.x_train, splits.x_train[:, 0, 0, 0].long()):
        assert torch.equal(x, torch.from_numpy(written["x_train"][i]))
    assert splits.mean == CIFAR10_MEAN and splits.std == CIFAR10_STD


def test_cifar10_normalize_false_only_scales_to_unit_interval(cifar):
    root, _ = cifar
    splits = DATASETS["cifar10"](data_dir=str(root), val_size=10, normalize=False)
    assert splits.mean is None
    x = splits.prepare(splits.x_test[:2])
    assert x.dtype == torch.float32
    assert torch.allclose(x, splits.x_test[:2].float() / 255)


def test_prepare_normalises_uint8_per_channel_on_the_fly(cifar):
    root, _ = cifar
    splits = DATASETS["cifar10"](data_dir=str(root), val_size=10)
    x = splits.x_test[:3]
    expected = (x.float() / 255 - torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)) \
        / torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    assert torch.allclose(splits.prepare(x), expected, atol=1e-5)
    # 250 in the red plane: (250/255 - 0.4914) / 0.2470
    assert splits.prepare(x)[0, 0, 1, 5].item() == pytest.approx((250 / 255 - 0.4914) / 0.2470,
                                                                  abs=1e-5)


def test_cifar10_folder_is_found_from_metalearn_data(cifar, monkeypatch):
    root, written = cifar
    monkeypatch.setenv("METALEARN_DATA", str(root))
    splits = DATASETS["cifar10"](val_size=10)
    assert torch.equal(splits.x_test, torch.from_numpy(written["x_test"]))


def test_svhn_maps_label_10_to_digit_0_and_reads_mat_layout(svhn):
    root, written = svhn
    splits = DATASETS["svhn"](data_dir=str(root), val_size=8)
    assert splits.x_train.shape == (N_SVHN_TRAIN - 8, 3, 32, 32)
    assert splits.x_val.shape == (8, 3, 32, 32)
    assert splits.x_test.shape == (N_SVHN_TEST, 3, 32, 32)
    assert splits.x_test.dtype == torch.uint8
    assert splits.y_test.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert int(torch.cat([splits.y_train, splits.y_val]).max()) == 9
    assert int((torch.cat([splits.y_train, splits.y_val]) == 0).sum()) == N_SVHN_TRAIN // 10
    assert torch.equal(splits.x_test, torch.from_numpy(written["x_test"]))


def test_svhn_files_may_sit_in_the_data_folder_itself(tmp_path):
    written = write_svhn(tmp_path)
    splits = DATASETS["svhn"](data_dir=str(tmp_path), val_size=5)
    assert torch.equal(splits.x_test, torch.from_numpy(written["x_test"]))


def _one_line_error(loader: str, **args: object) -> str:
    with pytest.raises(UserError) as info:
        DATASETS[loader](**args)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_cifar10_is_one_clear_line_naming_folder_and_files(tmp_path):
    message = _one_line_error("cifar10", data_dir=str(tmp_path))
    assert str(tmp_path / "cifar-10-batches-py") in message
    for name in ("data_batch_1", "data_batch_5", "test_batch", "batches.meta"):
        assert name in message
    assert "does not exist" in message


def test_partly_missing_cifar10_names_the_missing_file(tmp_path):
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    message = _one_line_error("cifar10", data_dir=str(tmp_path))
    assert "missing test_batch" in message


def test_missing_svhn_is_one_clear_line_naming_folder_and_files(tmp_path):
    message = _one_line_error("svhn", data_dir=str(tmp_path))
    assert str(tmp_path) in message
    assert "train_32x32.mat" in message and "test_32x32.mat" in message


def test_no_data_folder_at_all_says_how_to_give_one(monkeypatch):
    monkeypatch.delenv("METALEARN_DATA", raising=False)
    message = _one_line_error("cifar10")
    assert "data_dir" in message and "METALEARN_DATA" in message and "cifar-10-batches-py" in message


def test_bad_validation_size_and_unknown_option_are_user_errors(cifar):
    root, _ = cifar
    assert "val_size must be between 1 and 59" in _one_line_error(
        "cifar10", data_dir=str(root), val_size=60)
    assert "valsize" in _one_line_error("cifar10", data_dir=str(root), valsize=3)
