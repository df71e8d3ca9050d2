"""Crop transforms: ContrastiveCrop, SimCCrop and a RandomResizedCrop with torchvision's semantics.

Images are tensors ``(C, H, W)`` of ``torch.uint8`` or a floating dtype (the dtype is kept), or
PIL images when Pillow is installed (a PIL image comes back). A box is
``(h_min, w_min, h_max, w_max)`` as fractions of the image height and width, row first, in
``[0, 1]`` with ``min <= max`` (design reference §3).

Every crop is called as ``crop(img, box=None)``; :class:`RandomResizedCrop` ignores the box, so
one pipeline (:class:`Compose`, which hands the box to its first transform only) serves both the
warm-up epochs and the box-guided epochs.

Randomness: crop sizes and RRC offsets come from Python's ``random`` module (or the
``random.Random`` passed as ``generator``); DataLoader reseeds ``random`` in every worker. The
Beta(α, α) centre draws of :class:`ContrastiveCrop` come from a :class:`BetaSampler`: blocks of
draws made with one vectorised ``torch.distributions.Beta`` call from torch's global RNG (also
reseeded per worker) and handed out one by one. The official code makes two
``Beta.sample()`` calls per crop, ~100 µs each, which is what made it slower than RRC.
"""

from __future__ import annotations

import math
import os
import random
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "FULL_BOX",
    "SIMCCROP_BOX",
    "BetaSampler",
    "ColorJitter",
    "Compose",
    "ContrastiveCrop",
    "Normalize",
    "RandomApply",
    "RandomGrayscale",
    "RandomHorizontalFlip",
    "RandomResizedCrop",
    "SimCCrop",
    "ToFloat",
    "check_box",
    "image_size",
    "reset_beta_buffers",
    "resized_crop",
]

Box = tuple[float, float, float, float]
#: The whole image.
FULL_BOX: Box = (0.0, 0.0, 1.0, 1.0)
#: SimCCrop's fixed centre box (official ``configs/small/*/moco_simccrop.py``).
SIMCCROP_BOX: Box = (0.25, 0.25, 0.75, 0.75)


# --------------------------------------------------------------------------- validation
def check_box(box: Any) -> Box:
    """Validates a box and returns it as four Python floats.

    Args:
        box: ``(h_min, w_min, h_max, w_max)``: a sequence of 4 numbers or a tensor of 4 elements.

    Returns:
        The box as a tuple of floats.

    Raises:
        ValueError: not 4 finite numbers, outside [0, 1], or inverted (min > max).
    """
    if type(box) is tuple and len(box) == 4:  # fast path: what BoxedDataset passes
        h0, w0, h1, w1 = box
        if (
            type(h0) is float and type(w0) is float and type(h1) is float and type(w1) is float
            and 0.0 <= h0 <= h1 <= 1.0 and 0.0 <= w0 <= w1 <= 1.0
        ):  # fmt: skip
            return box
    if isinstance(box, Tensor):
        if box.numel() != 4:
            raise ValueError(f"box must have 4 elements, got a tensor of shape {tuple(box.shape)}")
        values = box.reshape(4).tolist()
    else:
        try:
            values = [float(v) for v in box]
        except (TypeError, ValueError):
            raise ValueError(
                f"box must be 4 numbers (h_min, w_min, h_max, w_max), got {box!r}"
            ) from None
        if len(values) != 4:
            raise ValueError(f"box must have 4 numbers (h_min, w_min, h_max, w_max), got {box!r}")
    h0, w0, h1, w1 = (float(v) for v in values)
    if not all(0.0 <= v <= 1.0 for v in (h0, w0, h1, w1)):  # also rejects NaN
        raise ValueError(f"box values must lie in [0, 1], got {(h0, w0, h1, w1)}")
    if h0 > h1 or w0 > w1:
        raise ValueError(f"box is inverted (need h_min <= h_max, w_min <= w_max), got {values}")
    return h0, w0, h1, w1


def _is_pil(img: Any) -> bool:
    return type(img).__module__.startswith("PIL.")


def image_size(img: Any) -> tuple[int, int]:
    """``(H, W)`` of a ``(C, H, W)`` uint8/float tensor or a PIL image.

    Raises:
        ValueError: a tensor that is not rank 3, has an empty side, or has another dtype; an
            object that is neither a tensor nor a PIL image.
    """
    if isinstance(img, Tensor):
        if img.dim() != 3:
            raise ValueError(
                f"image tensor must have shape (C, H, W), got rank {img.dim()} "
                f"shape {tuple(img.shape)}"
            )
        if img.dtype != torch.uint8 and not img.dtype.is_floating_point:
            raise ValueError(f"image tensor must be uint8 or floating point, got {img.dtype}")
        height, width = int(img.shape[1]), int(img.shape[2])
        if height < 1 or width < 1:
            raise ValueError(f"image has an empty side: shape {tuple(img.shape)}")
        return height, width
    if _is_pil(img):
        return int(img.height), int(img.width)
    raise ValueError(f"expected a (C, H, W) tensor or a PIL image, got {type(img).__name__}")


def _check_range(name: str, value: Sequence[float]) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be two numbers (low, high), got {value!r}") from None
    if not (0.0 < low <= high) or not math.isfinite(high):
        raise ValueError(f"{name} must satisfy 0 < low <= high < inf, got {value!r}")
    return low, high


def _check_size(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int) and not isinstance(size, bool):
        pair = (size, size)
    else:
        try:
            pair = tuple(int(v) for v in size)  # type: ignore[union-attr,assignment]
        except (TypeError, ValueError):
            raise ValueError(f"size must be an int or (height, width), got {size!r}") from None
    if len(pair) != 2 or min(pair) < 1:
        raise ValueError(f"size must be a positive int or (height, width), got {size!r}")
    return pair[0], pair[1]


# --------------------------------------------------------------------------- resize kernel
def resized_crop(
    img: Any, top: int, left: int, height: int, width: int, size: tuple[int, int], antialias: bool
) -> Any:
    """Crops ``img[..., top:top+height, left:left+width]`` and resizes it to ``size`` (bilinear).

    The kernel of torchvision's ``resized_crop`` on tensors: ``F.interpolate(mode="bilinear",
    align_corners=False, antialias=...)``; uint8 stays uint8 (torch's native uint8 kernel) and a
    crop already of the output size is returned without resampling. PIL images use
    ``Image.resize(box=...)`` with bilinear filtering.

    Returns:
        ``(C, size[0], size[1])`` tensor of the input dtype, or a PIL image.
    """
    if isinstance(img, Tensor):
        crop_CHW = img[:, top : top + height, left : left + width]
        if (height, width) == size:
            return crop_CHW.clone()
        return F.interpolate(
            crop_CHW.unsqueeze(0),
            size=size,
            mode="bilinear",
            align_corners=False,
            antialias=antialias,
        ).squeeze(0)
    from PIL import Image

    return img.resize(
        (size[1], size[0]), Image.Resampling.BILINEAR, box=(left, top, left + width, top + height)
    )


# --------------------------------------------------------------------------- Beta draws
_LIVE_SAMPLERS: weakref.WeakSet[BetaSampler] = weakref.WeakSet()


def _forget_draws_after_fork() -> None:
    # A forked DataLoader worker must not replay the parent's pre-drawn values: every worker
    # would then produce the same crop positions. Empty the buffers; they refill from the
    # worker's own (reseeded) torch RNG on the next draw.
    for sampler in list(_LIVE_SAMPLERS):
        sampler.reset()


os.register_at_fork(after_in_child=_forget_draws_after_fork)


def reset_beta_buffers() -> None:
    """Empties the buffered Beta draws of every :class:`BetaSampler` in this process.

    The training loop calls it at the start of each epoch, so the crops of an epoch depend only
    on the RNG state at its start (which checkpoints store): a resumed run repeats them.
    """
    _forget_draws_after_fork()


class BetaSampler:
    """Beta(α, α) draws, made in vectorised blocks and handed out one at a time.

    Each refill is one ``torch.distributions.Beta(α, α).sample((block,))`` call on torch's global
    RNG (seed it with ``torch.manual_seed``; DataLoader reseeds it per worker). Buffers are
    emptied in a forked child process, so workers never repeat the parent's draws.

    Args:
        alpha: the concentration α > 0 (both shape parameters).
        block: draws per refill.
    """

    def __init__(self, alpha: float, block: int = 4096) -> None:
        if not (isinstance(alpha, int | float) and math.isfinite(alpha) and alpha > 0):
            raise ValueError(f"alpha must be a positive finite number, got {alpha!r}")
        if isinstance(block, bool) or not isinstance(block, int) or block < 1:
            raise ValueError(f"block must be a positive int, got {block!r}")
        self.alpha = float(alpha)
        self.block = block
        self._draws: list[float] = []
        self._next = 0
        _LIVE_SAMPLERS.add(self)

    def reset(self) -> None:
        """Drops the buffered draws (the next draw refills from the current RNG state)."""
        self._draws = []
        self._next = 0

    def _refill(self) -> None:
        concentration = torch.tensor(self.alpha, dtype=torch.float64)
        beta = torch.distributions.Beta(concentration, concentration)
        self._draws = beta.sample((self.block,)).tolist()
        self._next = 0

    def draw_pair(self) -> tuple[float, float]:
        """Two independent Beta(α, α) values (one call per crop)."""
        index = self._next
        if index + 2 > len(self._draws):
            self._refill()
            index = 0
        self._next = index + 2
        draws = self._draws
        return draws[index], draws[index + 1]

    def draw(self) -> float:
        """One Beta(α, α) value in [0, 1]."""
        if self._next >= len(self._draws):
            self._refill()
        value = self._draws[self._next]
        self._next += 1
        return value

    def __getstate__(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "block": self.block}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["alpha"], state["block"])  # type: ignore[misc]


# --------------------------------------------------------------------------- crops
class RandomResizedCrop:
    """Random-resized crop with torchvision's ``RandomResizedCrop`` semantics, tensor-first.

    Parameter sampling is torchvision's ``get_params``: up to 10 attempts of
    ``area·U(scale)`` and ``exp(U(log ratio))`` with rounded sides, an offset uniform over every
    position that keeps the crop inside the image, else the central-crop fallback. The draws come
    from Python's ``random`` instead of torch's RNG (same distributions; see module docstring).

    Args:
        size: output ``(height, width)`` or one int for a square.
        scale: range of the crop area as a fraction of the image area.
        ratio: range of the crop aspect ratio (width / height).
        antialias: antialiased bilinear resampling (torchvision's default for tensors).
    """

    def __init__(
        self,
        size: int | Sequence[int],
        scale: Sequence[float] = (0.08, 1.0),
        ratio: Sequence[float] = (3.0 / 4.0, 4.0 / 3.0),
        antialias: bool = True,
    ) -> None:
        self.size = _check_size(size)
        self.scale = _check_range("scale", scale)
        self.ratio = _check_range("ratio", ratio)
        if self.scale[1] > 1.0:
            raise ValueError(f"scale must lie in (0, 1], got {scale!r}")
        self.log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        self.antialias = bool(antialias)

    def _sample_size(self, height: int, width: int, rng: Any) -> tuple[int, int] | None:
        """One attempt of torchvision's size draw: ``(h, w)`` or None when it does not fit."""
        target_area = height * width * rng.uniform(self.scale[0], self.scale[1])
        aspect = math.exp(rng.uniform(self.log_ratio[0], self.log_ratio[1]))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            return h, w
        return None

    def _central_fallback(self, height: int, width: int) -> tuple[int, int, int, int]:
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            w, h = width, round(width / self.ratio[0])
        elif in_ratio > self.ratio[1]:
            h, w = height, round(height * self.ratio[1])
        else:
            h, w = height, width
        return (height - h) // 2, (width - w) // 2, h, w

    def get_params(
        self, height: int, width: int, generator: random.Random | None = None
    ) -> tuple[int, int, int, int]:
        """Samples ``(top, left, crop_height, crop_width)`` for an ``height × width`` image."""
        rng: Any = random if generator is None else generator
        for _ in range(10):
            sides = self._sample_size(height, width, rng)
            if sides is not None:
                h, w = sides
                return rng.randint(0, height - h), rng.randint(0, width - w), h, w
        return self._central_fallback(height, width)

    def __call__(self, img: Any, box: Any = None) -> Any:
        """Crops and resizes ``img``; ``box`` is accepted and ignored (pipeline compatibility)."""
        height, width = image_size(img)
        top, left, h, w = self.get_params(height, width)
        return resized_crop(img, top, left, h, w, self.size, self.antialias)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, scale={self.scale}, ratio={self.ratio})"


class ContrastiveCrop(RandomResizedCrop):
    """ContrastiveCrop: RRC sizes, crop centre drawn from Beta(α, α) inside a box.

    The crop size is drawn exactly as :class:`RandomResizedCrop` (scale is relative to the whole
    image, not the box). The top-left corner is then
    ``lo + int((hi − lo)·Beta(α, α))`` per axis, where ``[lo, hi]`` is the range that puts the
    crop centre between the box edges, clamped so that the crop stays inside the image (design
    reference §2.5). α < 1 pushes the centres of two views toward opposite box edges
    ("center-suppressed"); α = 1 is uniform.

    Args:
        size: output ``(height, width)`` or one int.
        scale: crop area range as a fraction of the image area (the paper's pipelines: (0.2, 1)).
        ratio: aspect ratio range.
        alpha: Beta concentration; the paper's 0.6 by default (the official small-dataset configs
            use 0.1).
        antialias: antialiased bilinear resampling.
        default_box: the box used when called without one (the full image).
    """

    def __init__(
        self,
        size: int | Sequence[int],
        scale: Sequence[float] = (0.2, 1.0),
        ratio: Sequence[float] = (3.0 / 4.0, 4.0 / 3.0),
        alpha: float = 0.6,
        antialias: bool = True,
        default_box: Sequence[float] = FULL_BOX,
    ) -> None:
        super().__init__(size, scale, ratio, antialias)
        self.beta = BetaSampler(alpha)
        self.alpha = self.beta.alpha
        self.default_box = check_box(default_box)

    def get_params_in_box(
        self,
        height: int,
        width: int,
        box: Box,
        generator: random.Random | None = None,
    ) -> tuple[int, int, int, int]:
        """Samples ``(top, left, crop_height, crop_width)`` with the centre inside ``box``.

        Args:
            height: image height H.
            width: image width W.
            box: a validated box (see :func:`check_box`).
            generator: a ``random.Random`` for every draw (Beta included, via
                ``betavariate``); None uses ``random`` and the block sampler.
        """
        rng: Any = random if generator is None else generator
        for _ in range(10):
            sides = self._sample_size(height, width, rng)
            if sides is None:
                continue
            h, w = sides
            h0, w0, h1, w1 = box
            # Centre between the box edges, clamped so that the crop stays inside the image.
            top_lo = int(height * h0) - h // 2
            top_hi = int(height * h1) - h // 2
            left_lo = int(width * w0) - w // 2
            left_hi = int(width * w1) - w // 2
            top_max, left_max = height - h, width - w
            top_lo = 0 if top_lo < 0 else (top_max if top_lo > top_max else top_lo)
            top_hi = 0 if top_hi < 0 else (top_max if top_hi > top_max else top_hi)
            left_lo = 0 if left_lo < 0 else (left_max if left_lo > left_max else left_lo)
            left_hi = 0 if left_hi < 0 else (left_max if left_hi > left_max else left_hi)
            if generator is None:
                u, v = self.beta.draw_pair()
            else:
                u = generator.betavariate(self.alpha, self.alpha)
                v = generator.betavariate(self.alpha, self.alpha)
            return top_lo + int((top_hi - top_lo) * u), left_lo + int((left_hi - left_lo) * v), h, w
        return self._central_fallback(height, width)

    def __call__(self, img: Any, box: Any = None) -> Any:
        """Crops ``img`` with the centre inside ``box`` (the default box when None) and resizes.

        Raises:
            ValueError: bad image (rank, dtype, type) or bad box (outside [0, 1], inverted).
        """
        height, width = image_size(img)
        checked = self.default_box if box is None else check_box(box)
        top, left, h, w = self.get_params_in_box(height, width, checked)
        return resized_crop(img, top, left, h, w, self.size, self.antialias)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(size={self.size}, scale={self.scale}, ratio={self.ratio}, "
            f"alpha={self.alpha})"
        )


class SimCCrop(ContrastiveCrop):
    """ContrastiveCrop with a fixed centre box and no localisation (official SimCCrop).

    The box is always :data:`SIMCCROP_BOX` ``(0.25, 0.25, 0.75, 0.75)`` unless another is given
    at construction; a box passed at call time is ignored. The official configs use α = 0.1.
    """

    def __init__(
        self,
        size: int | Sequence[int],
        scale: Sequence[float] = (0.2, 1.0),
        ratio: Sequence[float] = (3.0 / 4.0, 4.0 / 3.0),
        alpha: float = 0.1,
        antialias: bool = True,
        box: Sequence[float] = SIMCCROP_BOX,
    ) -> None:
        super().__init__(size, scale, ratio, alpha, antialias, default_box=box)

    def __call__(self, img: Any, box: Any = None) -> Any:
        return super().__call__(img, None)


# --------------------------------------------------------------------------- the rest of a pipeline
class Compose:
    """Chains transforms; the box goes to the first one only (official ``CCompose``).

    ``Compose([crop, ToFloat(), RandomHorizontalFlip(), ...])(img, box)`` calls
    ``crop(img, box)`` then each other transform on the image alone. Any callable works.
    """

    def __init__(self, transforms: Sequence[Callable[..., Any]]) -> None:
        self.transforms = list(transforms)
        for index, transform in enumerate(self.transforms):
            if not callable(transform):
                raise ValueError(f"transforms[{index}] is not callable: {transform!r}")

    def __call__(self, img: Any, box: Any = None) -> Any:
        if not self.transforms:
            return img
        first, *rest = self.transforms
        img = first(img, box) if box is not None else first(img)
        for transform in rest:
            img = transform(img)
        return img

    def __repr__(self) -> str:
        inner = ", ".join(repr(t) for t in self.transforms)
        return f"Compose([{inner}])"


class ToFloat:
    """uint8 ``(C, H, W)`` tensor or PIL image → float32 tensor in [0, 1]; floats pass through."""

    def __call__(self, img: Any) -> Tensor:
        if _is_pil(img):
            import numpy as np

            array = np.asarray(img.convert("RGB"), dtype=np.uint8)
            img = torch.from_numpy(array.copy()).permute(2, 0, 1)
        image_size(img)
        if img.dtype == torch.uint8:
            return img.float().div_(255.0)
        return img.float()


class RandomHorizontalFlip:
    """Flips a ``(C, H, W)`` tensor left-right with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = float(p)

    def __call__(self, img: Tensor) -> Tensor:
        return img.flip(-1) if random.random() < self.p else img


class RandomApply:
    """Applies ``transform`` with probability ``p``."""

    def __init__(self, transform: Callable[[Tensor], Tensor], p: float) -> None:
        self.transform = transform
        self.p = float(p)

    def __call__(self, img: Tensor) -> Tensor:
        return self.transform(img) if random.random() < self.p else img


def _grey(img_CHW: Tensor) -> Tensor:
    if img_CHW.shape[0] == 1:
        return img_CHW
    r, g, b = img_CHW[0], img_CHW[1], img_CHW[2]
    return (0.299 * r + 0.587 * g + 0.114 * b).unsqueeze(0)


class RandomGrayscale:
    """Replaces an RGB float tensor by its luma (kept 3-channel) with probability ``p``."""

    def __init__(self, p: float = 0.2) -> None:
        self.p = float(p)

    def __call__(self, img: Tensor) -> Tensor:
        if random.random() >= self.p:
            return img
        return _grey(img).expand_as(img).clone()


class ColorJitter:
    """Brightness, contrast, saturation and hue jitter on float RGB tensors in [0, 1].

    Factors are drawn as torchvision does (``U(1 − x, 1 + x)`` for the first three, a hue shift in
    ``U(−hue, hue)`` turns), applied in a random order. Hue is shifted by rotating the chroma
    plane in YIQ space, a cheap approximation of torchvision's HSV round trip.
    """

    def __init__(
        self,
        brightness: float = 0.4,
        contrast: float = 0.4,
        saturation: float = 0.4,
        hue: float = 0.1,
    ) -> None:
        for name, value in (
            ("brightness", brightness),
            ("contrast", contrast),
            ("saturation", saturation),
        ):
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        if not 0 <= hue <= 0.5:
            raise ValueError(f"hue must lie in [0, 0.5], got {hue!r}")
        self.brightness, self.contrast = float(brightness), float(contrast)
        self.saturation, self.hue = float(saturation), float(hue)

    def __call__(self, img: Tensor) -> Tensor:
        order = [0, 1, 2, 3]
        random.shuffle(order)
        for op in order:
            if op == 0 and self.brightness > 0:
                img = img * random.uniform(1 - self.brightness, 1 + self.brightness)
            elif op == 1 and self.contrast > 0:
                factor = random.uniform(1 - self.contrast, 1 + self.contrast)
                mean = _grey(img).mean()
                img = (img - mean) * factor + mean
            elif op == 2 and self.saturation > 0 and img.shape[0] == 3:
                factor = random.uniform(1 - self.saturation, 1 + self.saturation)
                grey = _grey(img)
                img = (img - grey) * factor + grey
            elif op == 3 and self.hue > 0 and img.shape[0] == 3:
                angle = random.uniform(-self.hue, self.hue) * 2 * math.pi
                img = _rotate_hue(img, angle)
            img = img.clamp(0.0, 1.0)
        return img


_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_TO_RGB = torch.linalg.inv(_RGB_TO_YIQ)


def _rotate_hue(img_CHW: Tensor, angle: float) -> Tensor:
    cos, sin = math.cos(angle), math.sin(angle)
    rotation = torch.tensor([[1.0, 0.0, 0.0], [0.0, cos, -sin], [0.0, sin, cos]])
    matrix = _YIQ_TO_RGB @ rotation @ _RGB_TO_YIQ
    return torch.einsum("ij,jhw->ihw", matrix.to(img_CHW.dtype), img_CHW)


class Normalize:
    """``(img − mean) / std`` per channel on a float ``(C, H, W)`` tensor."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = torch.tensor(list(mean), dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(list(std), dtype=torch.float32).view(-1, 1, 1)
        if (self.std <= 0).any():
            raise ValueError(f"std must be positive, got {list(std)}")

    def __call__(self, img: Tensor) -> Tensor:
        return (img - self.mean) / self.std
