"""Image data: a tensor dataset, an image-folder loader, scikit-learn's digits, augmentations.

Shape legend: ``N`` images, ``B`` batch, ``K`` channels, ``H``/``W`` height/width.

Everything is held in memory as one ``(N, K, H, W)`` float tensor in ``[0, 1]`` (the data sets
this package trains on offline are small). ``load_dataset(spec)`` accepts ``"digits"`` (needs
the optional ``[data]`` extra, scikit-learn), a directory in image-folder layout
(``root/<class>/<image>``, needs Pillow) or a ``.pt`` file holding
``{"images": (N, K, H, W), "labels": (N,)}``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ptrain.core.cli import UserError

__all__ = [
    "IMAGE_SUFFIXES",
    "TensorImageDataset",
    "augment",
    "digits_dataset",
    "image_folder_dataset",
    "load_dataset",
    "tensor_file_dataset",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


class DataError(UserError, ValueError):
    """Bad data on disk or a bad data spec (one line naming the file or value)."""


@dataclass(frozen=True, slots=True)
class TensorImageDataset:
    """Images ``(N, K, H, W)`` in ``[0, 1]`` with integer labels ``(N,)`` (or -1 if unlabelled).

    Attributes:
        images: float tensor ``(N, K, H, W)``.
        labels: long tensor ``(N,)``.
        classes: class names, index = label.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.images.dim() != 4:
            raise DataError(f"images must be (N, K, H, W), got shape {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise DataError(
                f"labels must be ({self.images.shape[0]},), got {tuple(self.labels.shape)}"
            )
        if self.images.shape[2] != self.images.shape[3]:
            raise DataError(f"images must be square, got {tuple(self.images.shape[2:])}")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_size(self) -> int:
        """``H`` (= ``W``)."""
        return int(self.images.shape[2])

    @property
    def channels(self) -> int:
        """``K``."""
        return int(self.images.shape[1])

    def subset(self, index: torch.Tensor) -> TensorImageDataset:
        """The images at ``index``."""
        return TensorImageDataset(self.images[index], self.labels[index], self.classes)

    def split(self, test_fraction: float, seed: int = 0) -> tuple[TensorImageDataset, ...]:
        """A seeded random ``(train, test)`` split.

        Raises:
            DataError: ``test_fraction`` is not in (0, 1).
        """
        if not 0 < test_fraction < 1:
            raise DataError(f"test_fraction must be in (0, 1), got {test_fraction}")
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        test_count = max(1, round(test_fraction * len(self)))
        return self.subset(order[test_count:]), self.subset(order[:test_count])


def digits_dataset() -> TensorImageDataset:
    """scikit-learn's bundled digits: 1,797 images ``(1, 8, 8)`` in ``[0, 1]``, 10 classes.

    Raises:
        DataError: scikit-learn is not installed (``pip install 'ptrain-moe[data]'``).
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise DataError(
            "the digits data set needs scikit-learn: pip install 'ptrain-moe[data]'"
        ) from error
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(digits.target, dtype=torch.long)
    return TensorImageDataset(images, labels, tuple(str(i) for i in range(10)))


def image_folder_dataset(
    root: str | Path, image_size: int, channels: int = 3
) -> TensorImageDataset:
    """Loads ``root/<class>/<image>`` files, resized to ``image_size`` squares.

    Args:
        root: the directory; each sub-directory is a class (sorted names → labels 0, 1, ...).
        image_size: output side length.
        channels: 1 (grey) or 3 (RGB).

    Raises:
        DataError: no class directories or images, an unreadable image (names the file), or
            Pillow is missing.
    """
    try:
        from PIL import Image
    except ImportError as error:
        raise DataError("image folders need Pillow: pip install 'ptrain-moe[data]'") from error
    if channels not in (1, 3):
        raise DataError(f"channels must be 1 or 3, got {channels}")
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a directory")
    classes = sorted(entry.name for entry in root.iterdir() if entry.is_dir())
    if not classes:
        raise DataError(f"{root}: no class sub-directories (expected root/<class>/<image>)")
    images, labels = [], []
    for label, name in enumerate(classes):
        for file in sorted((root / name).iterdir()):
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(file) as image:
                    converted = image.convert("L" if channels == 1 else "RGB").resize(
                        (image_size, image_size), Image.Resampling.BILINEAR
                    )
                    data = torch.frombuffer(bytearray(converted.tobytes()), dtype=torch.uint8)
            except (OSError, ValueError) as error:
                raise DataError(f"{file}: cannot read image ({error})") from error
            images.append(data.view(image_size, image_size, channels).permute(2, 0, 1))
            labels.append(label)
    if not images:
        raise DataError(f"{root}: no images with suffixes {', '.join(IMAGE_SUFFIXES)}")
    stacked = torch.stack(images).float() / 255.0
    return TensorImageDataset(stacked, torch.tensor(labels), tuple(classes))


def tensor_file_dataset(path: str | Path) -> TensorImageDataset:
    """Loads ``{"images": (N, K, H, W), "labels": (N,)}`` saved with ``torch.save``.

    Raises:
        DataError: unreadable, or the keys/shapes are wrong (names the file).
    """
    path = Path(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise DataError(f"{path}: cannot read tensor file ({error})") from error
    if not isinstance(data, dict) or "images" not in data:
        raise DataError(f"{path}: expected a dict with 'images' (N, K, H, W) and 'labels' (N,)")
    images = data["images"].float()
    labels = data.get("labels")
    if labels is None:
        labels = torch.full((images.shape[0],), -1, dtype=torch.long)
    try:
        return TensorImageDataset(images, labels.long())
    except DataError as error:
        raise DataError(f"{path}: {error}") from error


def load_dataset(spec: str, image_size: int | None = None, channels: int = 3) -> TensorImageDataset:
    """``"digits"``, an image-folder directory, or a ``.pt`` tensor file.

    Args:
        spec: what to load.
        image_size: resize target for image folders (required for them).
        channels: channels for image folders.
    """
    if spec == "digits":
        return digits_dataset()
    path = Path(spec)
    if path.is_dir():
        if image_size is None:
            raise DataError(f"{path}: an image folder needs --image-size")
        return image_folder_dataset(path, image_size, channels)
    if path.suffix == ".pt":
        if not path.is_file():
            raise DataError(f"{path}: no such tensor file")
        return tensor_file_dataset(path)
    raise DataError(
        f"unknown data {spec!r}: expected 'digits', an image-folder directory or a .pt file"
    )


def augment(
    images_BKHW: torch.Tensor,
    generator: torch.Generator,
    *,
    min_scale: float = 0.6,
    max_shift: float = 0.15,
    max_rotation_deg: float = 10.0,
    jitter: float = 0.2,
    noise: float = 0.05,
) -> torch.Tensor:
    """A random view per image: scale, shift, rotation, brightness/contrast jitter, noise.

    Vectorised (one ``grid_sample`` for the batch); draws only from ``generator`` so a run is
    reproducible and resumable. No flips (they change digits' meaning).

    Args:
        images_BKHW: ``(B, K, H, W)`` in ``[0, 1]``.
        generator: the random source.
        min_scale: smallest zoom-in factor of the crop (area-like; 1 = no zoom).
        max_shift: largest translation (fraction of the half-width).
        max_rotation_deg: largest rotation.
        jitter: largest relative brightness/contrast change.
        noise: std of added Gaussian noise.

    Returns:
        ``(B, K, H, W)`` augmented views.
    """
    batch = images_BKHW.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(batch, generator=generator)

    scale = uniform(min_scale, 1.0)
    angle = uniform(-max_rotation_deg, max_rotation_deg) * (math.pi / 180.0)
    shift_x, shift_y = uniform(-max_shift, max_shift), uniform(-max_shift, max_shift)
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    theta_B23 = torch.stack(
        [torch.stack([cos, -sin, shift_x], 1), torch.stack([sin, cos, shift_y], 1)], 1
    ).to(images_BKHW.dtype)
    grid = F.affine_grid(theta_B23, list(images_BKHW.shape), align_corners=False)
    views = F.grid_sample(images_BKHW, grid, padding_mode="zeros", align_corners=False)
    brightness = uniform(-jitter, jitter).view(batch, 1, 1, 1) * 0.5
    contrast = (1.0 + uniform(-jitter, jitter)).view(batch, 1, 1, 1)
    mean = views.mean(dim=(1, 2, 3), keepdim=True)
    views = (views - mean) * contrast + mean + brightness
    views = views + noise * torch.randn(views.shape, generator=generator)
    return views.clamp(0.0, 1.0)
