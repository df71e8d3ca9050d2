"""Shared-memory boxes, binary readers on generated files, image folders, clutter-digits."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from contrastive_crop.data import (
    ArrayDataset,
    BoxedDataset,
    ImageFolder,
    make_clutter_digits,
    read_cifar10_bin,
    read_cifar100_bin,
    read_stl10_bin,
)

HAS_SKLEARN = importlib.util.find_spec("sklearn") is not None


def _box_of(image, box):
    """A 'transform' that returns the box it was given (to observe what workers see)."""
    return torch.tensor(box)


def _plain(image):
    return torch.full((4,), -1.0)


def test_box_updates_reach_persistent_workers() -> None:
    base = ArrayDataset(torch.zeros(8, 3, 4, 4, dtype=torch.uint8), torch.arange(8))
    dataset = BoxedDataset(base, _box_of, plain_transform=_plain, num_views=1, use_box=False)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=4, num_workers=2, persistent_workers=True
    )
    first = torch.cat([views[0] for views, _, _ in loader])
    assert (first == -1).all()  # use_box off: plain transform
    dataset.use_box = True
    new_boxes = torch.rand(8, 2).sort(dim=1).values.repeat_interleave(2, dim=1)[:, [0, 2, 1, 3]]
    dataset.set_boxes(new_boxes)
    seen, indices = [], []
    for views, _labels, index in loader:  # the same (persistent) workers
        seen.append(views[0])
        indices.append(index)
    assert torch.equal(torch.cat(indices), torch.arange(8))
    assert torch.allclose(torch.cat(seen), new_boxes)
    dataset.set_boxes(torch.tensor([[0.0, 0.0, 0.5, 0.5]]).repeat(8, 1))
    again = torch.cat([views[0] for views, _, _ in loader])
    assert torch.allclose(again, torch.tensor([0.0, 0.0, 0.5, 0.5]).repeat(8, 1))


def test_set_boxes_validates() -> None:
    dataset = BoxedDataset(ArrayDataset(torch.zeros(2, 3, 4, 4), torch.zeros(2)), _box_of)
    with pytest.raises(ValueError, match="box 1"):
        dataset.set_boxes(torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.5, 0.0, 0.2, 1.0]]))
    with pytest.raises(ValueError, match="shape"):
        dataset.set_boxes(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="box"):
        BoxedDataset(
            ArrayDataset(torch.zeros(2, 3, 4, 4), torch.zeros(2)), _box_of, init_box=(0, 0, 2, 1)
        )


def _cifar_records(count: int, label_bytes: int, rng: np.random.Generator, classes: int):
    labels = rng.integers(0, classes, (count, label_bytes), dtype=np.uint8)
    images = rng.integers(0, 256, (count, 3, 32, 32), dtype=np.uint8)
    return labels, images, np.concatenate([labels, images.reshape(count, -1)], axis=1)


def test_cifar10_binary_reader(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    all_labels, all_images = [], []
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        labels, images, records = _cifar_records(3, 1, rng, 10)
        records.tofile(folder / name)
        all_labels.append(labels[:, 0])
        all_images.append(images)
    train = read_cifar10_bin(tmp_path, train=True)
    assert train.images.shape == (15, 3, 32, 32) and train.images.dtype == torch.uint8
    assert np.array_equal(train.images.numpy(), np.concatenate(all_images[:5]))
    assert np.array_equal(train.labels.numpy(), np.concatenate(all_labels[:5]))
    test = read_cifar10_bin(folder, train=False)
    assert np.array_equal(test.images.numpy(), all_images[5])
    # truncated file: one line naming the file
    (folder / "test_batch.bin").write_bytes((folder / "test_batch.bin").read_bytes()[:-5])
    with pytest.raises(ValueError, match=r"test_batch\.bin.*3073-byte"):
        read_cifar10_bin(folder, train=False)


def test_cifar10_bad_label_names_record(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    _, _, records = _cifar_records(4, 1, rng, 10)
    records[2, 0] = 12
    records.tofile(tmp_path / "test_batch.bin")
    with pytest.raises(ValueError, match="record 2: label 12"):
        read_cifar10_bin(tmp_path, train=False)


def test_cifar100_binary_reader(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    labels, images, records = _cifar_records(5, 2, rng, 20)
    records.tofile(tmp_path / "train.bin")
    fine = read_cifar100_bin(tmp_path, train=True)
    coarse = read_cifar100_bin(tmp_path, train=True, label="coarse")
    assert np.array_equal(fine.labels.numpy(), labels[:, 1])
    assert np.array_equal(coarse.labels.numpy(), labels[:, 0])
    assert np.array_equal(fine.images.numpy(), images)
    with pytest.raises(FileNotFoundError, match=r"test\.bin"):
        read_cifar100_bin(tmp_path, train=False)


def test_stl10_binary_reader_column_major(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    images_hwc = rng.integers(0, 256, (4, 96, 96, 3), dtype=np.uint8)
    # STL-10 stores each image channel-plane by channel-plane, each plane column-major.
    stored = np.stack([img.transpose(2, 1, 0) for img in images_hwc])  # (N, C, W, H)
    stored.tofile(tmp_path / "train_X.bin")
    np.array([1, 10, 3, 4], dtype=np.uint8).tofile(tmp_path / "train_y.bin")
    stored[:2].tofile(tmp_path / "unlabeled_X.bin")
    data = read_stl10_bin(tmp_path, "train")
    assert np.array_equal(data.images.numpy(), images_hwc.transpose(0, 3, 1, 2))
    assert data.labels.tolist() == [0, 9, 2, 3]
    both = read_stl10_bin(tmp_path, "train+unlabeled")
    assert len(both) == 6 and both.labels[-2:].tolist() == [-1, -1]
    np.array([1, 11, 3, 4], dtype=np.uint8).tofile(tmp_path / "train_y.bin")
    with pytest.raises(ValueError, match=r"train_y\.bin: record 1: label 11"):
        read_stl10_bin(tmp_path, "train")


def test_image_folder(tmp_path: Path) -> None:
    image_module = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(4)
    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
        for index in range(2):
            pixels = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
            image_module.fromarray(pixels).save(tmp_path / name / f"{index}.png")
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    folder = ImageFolder(tmp_path)
    assert folder.classes == ["cat", "dog"] and len(folder) == 4
    image, label = folder[3]
    assert image.shape == (3, 20, 30) and image.dtype == torch.uint8 and label == 1
    assert ImageFolder(tmp_path, size=16)[0][0].shape == (3, 16, 16)
    (tmp_path / "dog" / "2.png").write_bytes(b"broken")
    with pytest.raises(ValueError, match=r"2\.png"):
        ImageFolder(tmp_path)[4]


@pytest.mark.skipif(not HAS_SKLEARN, reason="clutter-digits needs scikit-learn (extra [data])")
def test_clutter_digits_true_boxes_hold_the_digit() -> None:
    data = make_clutter_digits(50, seed=3)
    again = make_clutter_digits(50, seed=3)
    assert torch.equal(data.images, again.images)
    assert data.images.shape == (50, 3, 32, 32) and data.images.dtype == torch.uint8
    side = (data.boxes[:, 2:] - data.boxes[:, :2]) * 32
    assert (side >= 3).all() and (side <= 16).all()
    # the canvas is more varied inside the digit's box than the same window elsewhere is on
    # average: the digit is there
    inside, outside = [], []
    for image, box in zip(data.images.float(), data.boxes, strict=True):
        top, left, bottom, right = (box * 32).round().int().tolist()
        inside.append(image[:, top:bottom, left:right].std().item())
        outside.append(image.std().item())
    assert np.mean(inside) > np.mean(outside)
    test = make_clutter_digits(20, split="test")
    assert not torch.equal(test.images[:20], data.images[:20])
