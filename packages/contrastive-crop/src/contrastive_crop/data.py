"""Datasets: shared-memory boxes, CIFAR/STL-10 binary readers, image folders, clutter-digits.

Images are ``torch.uint8`` tensors ``(C, H, W)``; datasets return ``(image, label)``.
``BoxedDataset`` wraps any of them for ContrastiveCrop training and returns
``(views, label, index)``.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from contrastive_crop.transforms import FULL_BOX, check_box

__all__ = [
    "CIFAR_MEAN",
    "CIFAR_STD",
    "ArrayDataset",
    "BoxedDataset",
    "ClutterDigits",
    "ImageFolder",
    "make_clutter_digits",
    "read_cifar10_bin",
    "read_cifar100_bin",
    "read_stl10_bin",
]

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


# --------------------------------------------------------------------------- boxes in shared memory
class BoxedDataset(torch.utils.data.Dataset[tuple[Any, int, int]]):
    """A dataset whose per-image crop boxes live in shared memory.

    ``boxes`` is an ``(N, 4)`` float32 tensor in shared memory and ``use_box`` a shared flag:
    :meth:`set_boxes` and the ``use_box`` setter update them in place, so DataLoader workers —
    persistent ones included — see every update on their next item. (The official code replaces
    the attribute, which persistent workers never see, design reference §2.2.)

    Args:
        base: a dataset of ``(image, label)`` items (or of images; label is then -1).
        transform: called as ``transform(image, box)`` when boxes are in use (e.g. a
            :class:`~contrastive_crop.transforms.Compose` starting with ContrastiveCrop).
        plain_transform: called as ``plain_transform(image)`` when boxes are not in use
            (warm-up epochs: RandomResizedCrop); default ``transform`` without a box.
        init_box: the initial box of every image.
        num_views: views returned per item (each an independent draw, same box).
        use_box: initial value of the flag.
    """

    def __init__(
        self,
        base: Any,
        transform: Callable[..., Any],
        plain_transform: Callable[[Any], Any] | None = None,
        init_box: Sequence[float] = FULL_BOX,
        num_views: int = 2,
        use_box: bool = True,
    ) -> None:
        if isinstance(num_views, bool) or not isinstance(num_views, int) or num_views < 1:
            raise ValueError(f"num_views must be a positive int, got {num_views!r}")
        self.base = base
        self.transform = transform
        self.plain_transform = plain_transform
        self.num_views = num_views
        box = torch.tensor(check_box(init_box), dtype=torch.float32)
        self.boxes = box.repeat(len(base), 1).share_memory_()
        self._use_box = torch.tensor([bool(use_box)], dtype=torch.bool).share_memory_()

    def __len__(self) -> int:
        return len(self.base)

    @property
    def use_box(self) -> bool:
        """Whether items are cropped with their boxes (shared with the workers)."""
        return bool(self._use_box[0])

    @use_box.setter
    def use_box(self, value: bool) -> None:
        self._use_box[0] = bool(value)

    def set_boxes(self, boxes_N4: Tensor) -> None:
        """Replaces every box in place (visible to running workers).

        Raises:
            ValueError: wrong shape, values outside [0, 1] or an inverted box.
        """
        boxes_N4 = torch.as_tensor(boxes_N4, dtype=torch.float32)
        if boxes_N4.shape != self.boxes.shape:
            raise ValueError(
                f"boxes must have shape {tuple(self.boxes.shape)}, got {tuple(boxes_N4.shape)}"
            )
        bad = ~(
            (boxes_N4 >= 0).all(1)
            & (boxes_N4 <= 1).all(1)
            & (boxes_N4[:, 0] <= boxes_N4[:, 2])
            & (boxes_N4[:, 1] <= boxes_N4[:, 3])
        )
        if bad.any():
            index = int(bad.nonzero()[0, 0])
            raise ValueError(
                f"box {index} is outside [0, 1] or inverted: {boxes_N4[index].tolist()}"
            )
        self.boxes.copy_(boxes_N4)

    def __getitem__(self, index: int) -> tuple[Any, int, int]:
        item = self.base[index]
        if isinstance(item, tuple | list):
            image, label = item[0], int(item[1])
        else:
            image, label = item, -1
        if self.use_box:
            box = tuple(self.boxes[index].tolist())
            views = [self.transform(image, box) for _ in range(self.num_views)]
        else:
            plain = self.plain_transform
            views = [
                plain(image) if plain is not None else self.transform(image)
                for _ in range(self.num_views)
            ]
        return views, label, index


class ArrayDataset(torch.utils.data.Dataset[tuple[Any, int]]):
    """In-memory images ``(N, C, H, W)`` and labels ``(N,)``, with an optional transform.

    Attributes:
        images: the images (uint8 or float).
        labels: int64 labels.
        boxes: optional true object boxes ``(N, 4)`` (clutter-digits), else None.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        transform: Callable[[Tensor], Any] | None = None,
        boxes: Tensor | None = None,
    ) -> None:
        if images.dim() != 4:
            raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError(
                f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}"
            )
        self.images = images
        self.labels = labels.long()
        self.transform = transform
        self.boxes = boxes

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = self.images[index]
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])

    def with_transform(self, transform: Callable[[Tensor], Any] | None) -> ArrayDataset:
        """The same data with another transform."""
        return ArrayDataset(self.images, self.labels, transform, self.boxes)


# --------------------------------------------------------------------------- binary readers
def _read_records(path: Path, record_bytes: int, what: str) -> np.ndarray:
    path = Path(path)
    data = np.fromfile(path, dtype=np.uint8)
    if data.size == 0 or data.size % record_bytes != 0:
        raise ValueError(
            f"{path}: {data.size} bytes is not a whole number of {record_bytes}-byte {what} "
            f"records (last record truncated at byte {data.size - data.size % record_bytes})"
        )
    return data.reshape(-1, record_bytes)


def _check_labels(path: Path, labels: np.ndarray, num_classes: int, first: int = 0) -> None:
    bad = np.flatnonzero((labels < first) | (labels >= num_classes + first))
    if bad.size:
        index = int(bad[0])
        raise ValueError(
            f"{path}: record {index}: label {int(labels[index])} outside "
            f"[{first}, {num_classes + first - 1}]"
        )


def read_cifar10_bin(root: str | Path, train: bool = True) -> ArrayDataset:
    """Reads CIFAR-10's binary version (``cifar-10-batches-bin``).

    Each record: 1 label byte, then 3072 bytes of a 32×32 image, channel-major (R, G, B planes).

    Args:
        root: the folder holding ``data_batch_1.bin`` … ``data_batch_5.bin`` and
            ``test_batch.bin`` (or its parent with ``cifar-10-batches-bin/``).
        train: the five training batches, else the test batch.

    Raises:
        FileNotFoundError: a batch file is missing.
        ValueError: a truncated file or a label outside 0–9 (naming file and record).
    """
    folder = Path(root)
    if (folder / "cifar-10-batches-bin").is_dir():
        folder = folder / "cifar-10-batches-bin"
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] if train else ["test_batch.bin"]
    images, labels = [], []
    for name in names:
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(f"{path}: CIFAR-10 batch file not found")
        records = _read_records(path, 1 + 3072, "CIFAR-10")
        _check_labels(path, records[:, 0], 10)
        labels.append(records[:, 0].astype(np.int64))
        images.append(records[:, 1:].reshape(-1, 3, 32, 32))
    return ArrayDataset(
        torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))
    )


def read_cifar100_bin(root: str | Path, train: bool = True, label: str = "fine") -> ArrayDataset:
    """Reads CIFAR-100's binary version (``cifar-100-binary``).

    Each record: a coarse label byte (0–19), a fine label byte (0–99), 3072 image bytes.

    Args:
        root: the folder holding ``train.bin``/``test.bin`` (or its parent).
        train: ``train.bin``, else ``test.bin``.
        label: ``"fine"`` (100 classes) or ``"coarse"`` (20 superclasses).

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: a bad ``label``, a truncated file or a label out of range.
    """
    if label not in ("fine", "coarse"):
        raise ValueError(f"label must be 'fine' or 'coarse', got {label!r}")
    folder = Path(root)
    if (folder / "cifar-100-binary").is_dir():
        folder = folder / "cifar-100-binary"
    path = folder / ("train.bin" if train else "test.bin")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: CIFAR-100 file not found")
    records = _read_records(path, 2 + 3072, "CIFAR-100")
    _check_labels(path, records[:, 0], 20)
    _check_labels(path, records[:, 1], 100)
    labels = records[:, 1 if label == "fine" else 0].astype(np.int64)
    images = records[:, 2:].reshape(-1, 3, 32, 32)
    return ArrayDataset(torch.from_numpy(images.copy()), torch.from_numpy(labels))


def read_stl10_bin(root: str | Path, split: str = "train") -> ArrayDataset:
    """Reads STL-10's binary version (``stl10_binary``).

    ``<split>_X.bin`` holds 96×96×3 images, each stored column-major (every channel plane is
    written column by column); ``<split>_y.bin`` holds labels 1–10 (returned as 0–9). The
    ``unlabeled`` split has no labels (returned as -1); ``train+unlabeled`` concatenates them.

    Raises:
        FileNotFoundError: a file is missing.
        ValueError: a bad split, a truncated file, a label outside 1–10, or a count mismatch.
    """
    splits = {"train": ["train"], "test": ["test"], "unlabeled": ["unlabeled"]}
    splits["train+unlabeled"] = ["train", "unlabeled"]
    if split not in splits:
        raise ValueError(f"split must be one of {sorted(splits)}, got {split!r}")
    folder = Path(root)
    if (folder / "stl10_binary").is_dir():
        folder = folder / "stl10_binary"
    images, labels = [], []
    for part in splits[split]:
        x_path = folder / f"{part}_X.bin"
        if not x_path.is_file():
            raise FileNotFoundError(f"{x_path}: STL-10 image file not found")
        records = _read_records(x_path, 3 * 96 * 96, "STL-10 image")
        # Stored as (N, C, W, H) in C order: transpose the last two axes to get (N, C, H, W).
        images.append(records.reshape(-1, 3, 96, 96).transpose(0, 1, 3, 2))
        if part == "unlabeled":
            labels.append(np.full(len(records), -1, dtype=np.int64))
            continue
        y_path = folder / f"{part}_y.bin"
        if not y_path.is_file():
            raise FileNotFoundError(f"{y_path}: STL-10 label file not found")
        y = np.fromfile(y_path, dtype=np.uint8)
        _check_labels(y_path, y, 10, first=1)
        if len(y) != len(records):
            raise ValueError(f"{y_path}: {len(y)} labels for {len(records)} images in {x_path}")
        labels.append(y.astype(np.int64) - 1)
    return ArrayDataset(
        torch.from_numpy(np.ascontiguousarray(np.concatenate(images))),
        torch.from_numpy(np.concatenate(labels)),
    )


_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".tif", ".tiff", ".webp"}


class ImageFolder(torch.utils.data.Dataset[tuple[Any, int]]):
    """``root/<class>/<image>`` folders (classes sorted by name), decoded with Pillow.

    Args:
        root: the folder of class folders.
        size: resize every image to ``(size, size)`` (bilinear; a non-aspect-preserving resize,
            so boxes stay valid fractions), or None to keep each image's size.
        transform: applied to the uint8 ``(3, H, W)`` tensor.

    Raises:
        FileNotFoundError: ``root`` does not exist.
        ValueError: no class folder with images.
        ImportError: Pillow is not installed (``pip install contrastive-crop[image]``).
    """

    def __init__(
        self,
        root: str | Path,
        size: int | None = None,
        transform: Callable[[Tensor], Any] | None = None,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: image folder not found")
        self.classes = sorted(p.name for p in self.root.iterdir() if p.is_dir())
        self.samples: list[tuple[Path, int]] = []
        for label, name in enumerate(self.classes):
            for path in sorted((self.root / name).rglob("*")):
                if path.suffix.lower() in _IMAGE_SUFFIXES and path.is_file():
                    self.samples.append((path, label))
        if not self.samples:
            raise ValueError(f"{self.root}: no images in class sub-folders (<class>/<image>)")
        self.size = size
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> Tensor:
        """The uint8 ``(3, H, W)`` image at ``index``."""
        try:
            from PIL import Image
        except ImportError as error:  # pragma: no cover - Pillow is in the dev environment
            raise ImportError(
                "ImageFolder needs Pillow: pip install contrastive-crop[image]"
            ) from error
        path = self.samples[index][0]
        try:
            with Image.open(path) as opened:
                image = opened.convert("RGB")
        except OSError as error:
            raise ValueError(f"{path}: cannot decode image ({error})") from error
        if self.size is not None:
            image = image.resize((self.size, self.size), Image.Resampling.BILINEAR)
        array = np.asarray(image, dtype=np.uint8)
        return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = self.load(index)
        if self.transform is not None:
            image = self.transform(image)
        return image, self.samples[index][1]


# --------------------------------------------------------------------------- clutter-digits
@dataclass(frozen=True, slots=True)
class ClutterDigits:
    """The clutter-digits data: digits on cluttered canvases, with their true boxes.

    Attributes:
        images: uint8 ``(N, 3, S, S)``.
        labels: int64 ``(N,)``, the digit 0–9.
        boxes: float32 ``(N, 4)`` true boxes ``(h_min, w_min, h_max, w_max)`` of the digit's
            ink (pixels with ink above 10%), as fractions.
    """

    images: Tensor
    labels: Tensor
    boxes: Tensor

    def dataset(self, transform: Callable[[Tensor], Any] | None = None) -> ArrayDataset:
        """An :class:`ArrayDataset` of these images (boxes attached)."""
        return ArrayDataset(self.images, self.labels, transform, self.boxes)


@functools.cache
def _load_sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8×8 digits (1797 images in [0, 1], labels), read directly.

    The file ``sklearn/datasets/data/digits.csv.gz`` is located without importing scikit-learn
    (that import costs seconds); the format is what ``load_digits`` reads: 64 pixel columns
    (0–16) and the label.
    """
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "clutter-digits needs scikit-learn's bundled digits: pip install contrastive-crop[data]"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
    if not path.is_file():
        raise ImportError(f"{path}: scikit-learn is installed but its digits file is missing")
    table = np.loadtxt(path, delimiter=",", dtype=np.float32)
    if table.ndim != 2 or table.shape[1] != 65:
        raise ValueError(f"{path}: expected 65 columns (64 pixels + label), got {table.shape}")
    return table[:, :64].reshape(-1, 8, 8) / 16.0, table[:, 64].astype(np.int64)


def _smooth_noise(rng: np.random.Generator, n: int, size: int, cells: int) -> np.ndarray:
    coarse = torch.from_numpy(rng.random((n, 3, cells, cells), dtype=np.float32))
    fine = torch.nn.functional.interpolate(
        coarse, size=(size, size), mode="bicubic", align_corners=False
    )
    return fine.numpy()


def make_clutter_digits(
    n: int,
    split: str = "train",
    size: int = 32,
    digit_size: tuple[int, int] = (11, 16),
    seed: int = 0,
    clutter: float = 1.0,
) -> ClutterDigits:
    """Builds clutter-digits: scikit-learn's 8×8 digits, upscaled and tinted, on clutter.

    Each canvas: a smooth random colour field plus pixel noise and a few random line segments
    (``clutter`` scales their contrast); one digit, bilinearly upscaled to a random side in
    ``digit_size``, tinted with a random saturated colour and alpha-blended at a uniformly random
    position. The true box is the tight box of the digit's ink. The 1797 digits are split by
    index: the first 1200 feed ``"train"``, the other 597 ``"test"`` (no digit appears in both);
    ``n`` larger than the pool reuses digits on new canvases.

    Args:
        n: images to make.
        split: ``"train"`` or ``"test"``.
        size: canvas side S.
        digit_size: (min, max) digit side in pixels, inclusive.
        seed: random seed (the same seed gives the same images).
        clutter: background clutter strength (0: plain smooth background).

    Returns:
        The images, labels and true boxes.

    Raises:
        ImportError: scikit-learn is missing (``pip install contrastive-crop[data]``).
        ValueError: bad sizes or split.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    low, high = digit_size
    if not 4 <= low <= high <= size:
        raise ValueError(f"digit_size must satisfy 4 <= min <= max <= size, got {digit_size!r}")
    digits, targets = _load_sklearn_digits()
    pool = np.arange(0, 1200) if split == "train" else np.arange(1200, len(digits))
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    chosen = rng.permutation(np.resize(rng.permutation(pool), n))
    # Background: a smooth, mostly grey field with some colour, texture and pixel noise.
    base = _smooth_noise(rng, n, size, 4)
    grey = base.mean(axis=1, keepdims=True)
    canvas = 0.2 + 0.6 * (grey + 0.35 * (base - grey))
    canvas += clutter * 0.2 * (_smooth_noise(rng, n, size, 12) - 0.5)
    canvas += clutter * 0.03 * rng.standard_normal(canvas.shape).astype(np.float32)
    # Clutter: 3 thin line segments of random colour per canvas (vectorised over images).
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    for _ in range(3 if clutter > 0 else 0):
        y0, x0, y1, x1 = (
            rng.uniform(0, size, n).astype(np.float32)[:, None, None] for _ in range(4)
        )
        length_sq = np.maximum((y1 - y0) ** 2 + (x1 - x0) ** 2, 1e-6)
        dist = np.abs((xx - x0) * (y1 - y0) - (yy - y0) * (x1 - x0)) / np.sqrt(length_sq)
        t = ((xx - x0) * (x1 - x0) + (yy - y0) * (y1 - y0)) / length_sq
        mask = ((dist < 0.7) & (t >= 0) & (t <= 1)).astype(np.float32)[:, None] * 0.5 * clutter
        colour = rng.random((n, 3, 1, 1)).astype(np.float32)
        canvas = canvas * (1 - mask) + colour * mask
    # Digits: upscaled glyphs (batched per side), tinted, alpha-blended at random positions.
    sides = rng.integers(low, high + 1, size=n)
    tops = rng.integers(0, size - sides + 1)
    lefts = rng.integers(0, size - sides + 1)
    hues = rng.random(n)
    bright = rng.random(n) < 0.5
    glyphs = torch.from_numpy(digits[chosen])[:, None]
    inks: dict[int, np.ndarray] = {}
    for unique_side in np.unique(sides).tolist():
        members = np.flatnonzero(sides == unique_side)
        up = torch.nn.functional.interpolate(
            glyphs[members], size=(unique_side, unique_side), mode="bilinear", align_corners=False
        )
        for position, value in zip(members, up[:, 0].numpy().clip(0, 1), strict=True):
            inks[int(position)] = value
    boxes = np.zeros((n, 4), dtype=np.float32)
    for index in range(n):
        side, top, left = int(sides[index]), int(tops[index]), int(lefts[index])
        ink = inks[index]
        colour = np.array(
            [0.5 + 0.5 * math.cos(2 * math.pi * (hues[index] + k / 3)) for k in range(3)],
            dtype=np.float32,
        )
        colour = 0.55 + 0.45 * colour if bright[index] else 0.35 * colour
        region = canvas[index][:, top : top + side, left : left + side]
        canvas[index][:, top : top + side, left : left + side] = (
            region * (1 - ink) + colour[:, None, None] * ink
        )
        rows = np.flatnonzero((ink > 0.1).any(axis=1))
        cols = np.flatnonzero((ink > 0.1).any(axis=0))
        boxes[index] = [
            (top + rows[0]) / size,
            (left + cols[0]) / size,
            (top + rows[-1] + 1) / size,
            (left + cols[-1] + 1) / size,
        ]
    images = torch.from_numpy((canvas.clip(0, 1) * 255 + 0.5).astype(np.uint8))
    return ClutterDigits(images, torch.from_numpy(targets[chosen]), torch.from_numpy(boxes))
