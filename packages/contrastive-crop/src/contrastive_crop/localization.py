"""Semantic-aware localisation: feature heatmaps → boxes, and the box-update schedule.

Shapes: ``N`` images, ``C`` feature channels, ``h × w`` feature map, ``H × W`` input image.

The official ``update_box`` (design reference §2.3): the encoder's last feature map, summed over
channels, min-max normalised per image, bilinearly upsampled to the input size; the box is the
tight bounding box of every pixel whose heat is above the threshold. Differences, each a choice:

* a constant map (e.g. all zeros after ReLU early in training) gives the full box instead of a
  0/0 = NaN crash;
* the box end is exclusive: ``h_max = (last + 1) / H``, so a full box is exactly
  ``(0, 0, 1, 1)``. ``official_off_by_one=True`` reproduces the official ``last / H``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "LocalizationSchedule",
    "box_area",
    "box_iou",
    "boxes_from_heatmaps",
    "compute_boxes",
    "compute_boxes_distributed",
    "feature_heatmaps",
    "interleave_rank_shards",
]

_CONSTANT_EPS = 1e-12


def feature_heatmaps(feat_NCHW: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Channel-summed, per-image min-max normalised heatmaps, upsampled to ``size``.

    Args:
        feat_NCHW: the last feature map ``(N, C, h, w)``.
        size: the input image size ``(H, W)``.

    Returns:
        ``heat_NHW`` in [0, 1] (float32) and ``constant_N`` (bool): images whose map was
        constant; their heat is all ones, so any threshold below 1 gives the full box.

    Raises:
        ValueError: ``feat_NCHW`` is not 4-D.
    """
    if feat_NCHW.dim() != 4:
        raise ValueError(f"features must be (N, C, h, w), got shape {tuple(feat_NCHW.shape)}")
    heat_Nhw = feat_NCHW.float().sum(dim=1)
    flat_NL = heat_Nhw.flatten(1)
    low_N = flat_NL.amin(dim=1)
    span_N = flat_NL.amax(dim=1) - low_N
    constant_N = span_N <= _CONSTANT_EPS * torch.clamp(flat_NL.abs().amax(dim=1), min=1.0)
    heat_Nhw = (heat_Nhw - low_N[:, None, None]) / torch.where(constant_N, 1.0, span_N)[
        :, None, None
    ]
    heat_Nhw[constant_N] = 1.0
    heat_NHW = F.interpolate(
        heat_Nhw.unsqueeze(1), size=size, mode="bilinear", align_corners=False
    ).squeeze(1)
    return heat_NHW, constant_N


def boxes_from_heatmaps(
    heat_NHW: Tensor, threshold: float = 0.1, official_off_by_one: bool = False
) -> Tensor:
    """Tight box around the pixels with heat above ``threshold``, per image (vectorised).

    Args:
        heat_NHW: heatmaps ``(N, H, W)`` (any range; compared with ``threshold`` as given).
        threshold: strict lower bound on heat.
        official_off_by_one: ``h_max = last / H`` as the official code (full box < 1).

    Returns:
        ``(N, 4)`` float32 boxes ``(h_min, w_min, h_max, w_max)``; an image with no pixel above
        the threshold gets the full box.

    Raises:
        ValueError: ``heat_NHW`` is not 3-D or ``threshold`` is not finite.
    """
    if heat_NHW.dim() != 3:
        raise ValueError(f"heatmaps must be (N, H, W), got shape {tuple(heat_NHW.shape)}")
    if not isinstance(threshold, int | float) or not float("-inf") < threshold < float("inf"):
        raise ValueError(f"threshold must be a finite number, got {threshold!r}")
    num, height, width = heat_NHW.shape
    above_NHW = heat_NHW > threshold
    rows_NH = above_NHW.any(dim=2)
    cols_NW = above_NHW.any(dim=1)
    end = 0 if official_off_by_one else 1

    def first_last(mask_NL: Tensor) -> tuple[Tensor, Tensor]:
        length = mask_NL.shape[1]
        as_int = mask_NL.to(torch.int8)
        first_N = as_int.argmax(dim=1)
        last_N = length - 1 - as_int.flip(1).argmax(dim=1)
        return first_N.float() / length, (last_N + end).float() / length

    h_min, h_max = first_last(rows_NH)
    w_min, w_max = first_last(cols_NW)
    boxes_N4 = torch.stack([h_min, w_min, h_max, w_max], dim=1)
    empty_N = ~rows_NH.any(dim=1)
    if empty_N.any():
        full = torch.tensor([0.0, 0.0, 1.0 - (1 - end) / height, 1.0 - (1 - end) / width])
        boxes_N4[empty_N] = full
    del num
    return boxes_N4


def box_iou(a_N4: Tensor, b_N4: Tensor) -> Tensor:
    """Intersection over union of paired boxes ``(h_min, w_min, h_max, w_max)``; ``(N,)``."""
    a_N4, b_N4 = a_N4.float(), b_N4.float()
    top = torch.maximum(a_N4[:, 0], b_N4[:, 0])
    left = torch.maximum(a_N4[:, 1], b_N4[:, 1])
    bottom = torch.minimum(a_N4[:, 2], b_N4[:, 2])
    right = torch.minimum(a_N4[:, 3], b_N4[:, 3])
    inter = (bottom - top).clamp(min=0) * (right - left).clamp(min=0)
    union = box_area(a_N4) + box_area(b_N4) - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(union))


def box_area(boxes_N4: Tensor) -> Tensor:
    """Area of each box as a fraction of the image; ``(N,)``."""
    return (boxes_N4[:, 2] - boxes_N4[:, 0]).clamp(min=0) * (boxes_N4[:, 3] - boxes_N4[:, 1]).clamp(
        min=0
    )


def _default_feature_fn(model: torch.nn.Module) -> Callable[[Tensor], Tensor]:
    forward_features = getattr(model, "forward_features", None)
    if callable(forward_features):
        return forward_features
    return model


@torch.no_grad()
def compute_boxes(
    model: torch.nn.Module | Callable[[Tensor], Tensor],
    dataset: Any,
    threshold: float = 0.1,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    official_off_by_one: bool = False,
    num_workers: int = 0,
) -> Tensor:
    """Boxes for every image of ``dataset``, in dataset order (design reference §2.3).

    Args:
        model: an encoder whose ``forward_features(x)`` (or ``model(x)``) returns the last
            feature map ``(N, C, h, w)``. A module is put in eval mode for the pass and restored.
        dataset: un-augmented images, in training-set order: a tensor ``(N, C, H, W)`` or a
            dataset whose items are images or tuples starting with the image (float tensors,
            normalised as the model expects).
        threshold: heat threshold in [0, 1) (official: 0.1; try 0.3–0.5 when boxes come out
            full, xyupeng/ContrastiveCrop#15).
        batch_size: images per forward pass.
        device: where to run; default: the model's device.
        official_off_by_one: see :func:`boxes_from_heatmaps`.
        num_workers: DataLoader workers for ``dataset``.

    Returns:
        ``(N, 4)`` float32 boxes on the CPU.

    Raises:
        ValueError: a bad threshold or batch size, or the model does not return a 4-D map.
    """
    if not isinstance(threshold, int | float) or not 0.0 <= threshold < 1.0:
        raise ValueError(f"threshold must lie in [0, 1), got {threshold!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    module = model if isinstance(model, torch.nn.Module) else None
    if device is None:
        parameter = next(module.parameters(), None) if module is not None else None
        device = parameter.device if parameter is not None else torch.device("cpu")
    feature_fn = _default_feature_fn(module) if module is not None else model
    was_training = module.training if module is not None else False
    if module is not None:
        module.eval()
    batches: Iterable[Any]
    if isinstance(dataset, Tensor):
        batches = dataset.split(batch_size)
    else:
        batches = torch.utils.data.DataLoader(
            dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers
        )
    pieces = []
    try:
        for batch in batches:
            images = batch[0] if isinstance(batch, list | tuple) else batch
            images = images.to(device, non_blocking=True)
            if images.dtype == torch.uint8:
                images = images.float().div_(255.0)
            feat = feature_fn(images)
            if not isinstance(feat, Tensor) or feat.dim() != 4:
                shape = tuple(feat.shape) if isinstance(feat, Tensor) else type(feat).__name__
                raise ValueError(f"the model must return a (N, C, h, w) feature map, got {shape}")
            heat_NHW, _ = feature_heatmaps(feat, (images.shape[-2], images.shape[-1]))
            pieces.append(boxes_from_heatmaps(heat_NHW, threshold, official_off_by_one).cpu())
    finally:
        if module is not None:
            module.train(was_training)
    if not pieces:
        return torch.zeros(0, 4)
    return torch.cat(pieces)


def interleave_rank_shards(shards_WS4: Tensor, length: int) -> Tensor:
    """Dataset-order boxes from per-rank shards of ``DistributedSampler(shuffle=False)``.

    Rank ``r`` holds indices ``r, r + W, r + 2W, …`` of the padded index list (padding repeats
    the first indices), so stacking the shards along dim 1 and flattening restores dataset order;
    the padding is cut off (design reference §2.3, step 7).

    Args:
        shards_WS4: ``(W, S, 4)``: rank ``r``'s ``S`` boxes at ``[r]``.
        length: the dataset length ``N <= W·S``.

    Returns:
        ``(N, 4)`` boxes in dataset order.
    """
    return shards_WS4.transpose(0, 1).reshape(-1, shards_WS4.shape[-1])[:length]


def compute_boxes_distributed(
    model: torch.nn.Module | Callable[[Tensor], Tensor],
    dataset: Any,
    threshold: float = 0.1,
    batch_size: int = 256,
    group: Any = None,
    **kwargs: Any,
) -> Tensor:
    """:func:`compute_boxes` split over the ranks of a process group; every rank gets all boxes.

    Rank ``r`` localises the indices ``DistributedSampler(shuffle=False)`` would give it; the
    shards are all-gathered (``ptrain.core.comm.all_gather``) and re-interleaved into dataset
    order. The result equals single-process :func:`compute_boxes`.

    Args:
        model: see :func:`compute_boxes` (the same weights on every rank).
        dataset: see :func:`compute_boxes`.
        threshold: see :func:`compute_boxes`.
        batch_size: per-rank batch size.
        group: the process group (default: the world).
        **kwargs: passed on to :func:`compute_boxes`.

    Returns:
        ``(N, 4)`` boxes in dataset order, on every rank.
    """
    import torch.distributed as dist

    from ptrain.core import comm

    world = dist.get_world_size(group)
    rank = dist.get_rank(group)
    length = len(dataset)
    per_rank = -(-length // world)
    indices = [(rank + world * position) % length for position in range(per_rank)]
    if isinstance(dataset, Tensor):
        shard: Any = dataset[indices]
    else:
        shard = torch.utils.data.Subset(dataset, indices)
    local_S4 = compute_boxes(model, shard, threshold, batch_size, **kwargs)
    gathered = comm.all_gather(local_S4.contiguous(), dim=0, group=group)
    return interleave_rank_shards(gathered.view(world, per_rank, 4), length)


@dataclass(frozen=True, slots=True)
class LocalizationSchedule:
    """When boxes are used and refreshed (1-based epochs, design reference §2.4).

    Epochs ``1..warmup_epochs`` use RandomResizedCrop; from ``warmup_epochs + 1`` on the boxes
    are used. Boxes are recomputed after epoch ``e`` when ``e >= warmup_epochs``,
    ``e % interval == 0`` and ``e != total_epochs``. The official small-dataset schedule
    (500/100/100) refreshes after 100, 200, 300 and 400. SimCCrop: ``warmup_epochs=0`` and
    ``interval > total_epochs`` (never refreshes). An RRC run: ``warmup_epochs = total_epochs``.

    Attributes:
        warmup_epochs: epochs of RRC before boxes are first used (>= 0).
        interval: epochs between box updates (>= 1).
        total_epochs: the length of the run (>= 1).
    """

    warmup_epochs: int
    interval: int
    total_epochs: int

    def __post_init__(self) -> None:
        for name, minimum in (("warmup_epochs", 0), ("interval", 1), ("total_epochs", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
        if self.warmup_epochs > self.total_epochs:
            raise ValueError(
                f"warmup_epochs ({self.warmup_epochs}) must be <= total_epochs "
                f"({self.total_epochs})"
            )

    def use_box(self, epoch: int) -> bool:
        """Whether epoch ``epoch`` (1-based) crops with the boxes."""
        return epoch >= self.warmup_epochs + 1

    def should_update(self, epoch: int) -> bool:
        """Whether boxes are recomputed after epoch ``epoch`` (1-based)."""
        return (
            epoch >= self.warmup_epochs
            and epoch != self.total_epochs
            and epoch % self.interval == 0
        )

    def update_epochs(self) -> list[int]:
        """Every epoch after which boxes are recomputed."""
        return [e for e in range(1, self.total_epochs + 1) if self.should_update(e)]


class Stopwatch:
    """Accumulates wall-clock seconds of named phases (``with watch("boxes"): ...``)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._name = ""
        self._start = 0.0

    def __call__(self, name: str) -> Stopwatch:
        self._name = name
        return self

    def __enter__(self) -> Stopwatch:
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        elapsed = time.perf_counter() - self._start
        self.seconds[self._name] = self.seconds.get(self._name, 0.0) + elapsed
