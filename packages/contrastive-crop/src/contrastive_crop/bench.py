"""The package's benchmarks, importable so the ``contrastive-crop bench`` CLI runs them.

``bench_crop``: per-image crop of ``(3, S, S)`` uint8 tensors to ``S × S`` with a random box per
image, ContrastiveCrop against our RandomResizedCrop (same scale, ratio and resize kernel), one
thread, interleaved, medians (ptrain.core.bench.compare).

``bench_boxes``: pre-trains the width-16 ResNet-18 with SimCLR on clutter-digits, computes boxes
from the final encoder and compares them with the true digit boxes, beside the full-image box.
"""

from __future__ import annotations

import random
import time
from typing import Any

import torch

from contrastive_crop.localization import box_area, box_iou
from contrastive_crop.transforms import ContrastiveCrop, RandomResizedCrop
from ptrain.core.bench import compare, environment_info

__all__ = ["CROP_GOAL", "bench_boxes", "bench_crop", "random_boxes"]

#: The largest acceptable contrastive_us / rrc_us.
CROP_GOAL = 1.1


def random_boxes(count: int, generator: torch.Generator) -> torch.Tensor:
    """``(count, 4)`` random valid boxes: sorted uniform pairs per axis."""
    h_N2 = torch.rand(count, 2, generator=generator).sort(dim=1).values
    w_N2 = torch.rand(count, 2, generator=generator).sort(dim=1).values
    return torch.stack([h_N2[:, 0], w_N2[:, 0], h_N2[:, 1], w_N2[:, 1]], dim=1)


def bench_crop(
    size: int = 32, n: int = 2000, repeats: int = 7, alpha: float = 0.6, seed: int = 0
) -> dict[str, Any]:
    """Times ContrastiveCrop against RandomResizedCrop, per image, in µs.

    Both crop ``n`` random ``(3, size, size)`` uint8 tensors to ``size × size`` with
    ``scale=(0.2, 1)``; ContrastiveCrop gets a random box per image (passed as a 4-tuple, as
    :class:`~contrastive_crop.data.BoxedDataset` does), RRC the same argument (ignored).

    Returns:
        ``{"rrc_us", "contrastive_us", "ratio", "goal", "met_goal", "results", "meta",
        "environment"}`` (``results`` in ptrain.core.bench's layout, for the README table).
    """
    generator = torch.Generator().manual_seed(seed)
    images = [
        torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=generator)
        for _ in range(n)
    ]
    boxes = [tuple(box) for box in random_boxes(n, generator).tolist()]
    pairs = list(zip(images, boxes, strict=True))
    contrastive = ContrastiveCrop(size, scale=(0.2, 1.0), alpha=alpha)
    rrc = RandomResizedCrop(size, scale=(0.2, 1.0))
    random.seed(seed)
    torch.manual_seed(seed)

    def run_contrastive() -> None:
        for image, box in pairs:
            contrastive(image, box)

    def run_rrc() -> None:
        for image, box in pairs:
            rrc(image, box)

    result = compare(
        run_contrastive,
        run_rrc,
        name="contrastive_crop_vs_rrc",
        repeats=repeats,
        threads=1,
        goal=CROP_GOAL,
    )
    rrc_us = result.baseline_s / n * 1e6
    contrastive_us = result.candidate_s / n * 1e6
    return {
        "rrc_us": rrc_us,
        "contrastive_us": contrastive_us,
        "ratio": contrastive_us / rrc_us,
        "goal": CROP_GOAL,
        "met_goal": contrastive_us <= CROP_GOAL * rrc_us,
        "results": [result.to_dict()],
        "meta": {
            "command": f"contrastive-crop bench crop --size {size} --n {n} --json PATH",
            "size": size,
            "n": n,
            "alpha": alpha,
            "scale": [0.2, 1.0],
            "dtype": "uint8",
            "threads": 1,
            "repeats": repeats,
        },
        "environment": environment_info(),
    }


def bench_boxes(
    n: int = 2000,
    epochs: int = 3,
    threshold: float = 0.5,
    batch_size: int = 128,
    lr: float = 0.5,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Pre-trains width-16 SimCLR on ``n`` clutter-digits, then scores its boxes against truth.

    The run uses ContrastiveCrop with one RRC warm-up epoch and a box update after every epoch
    but the last (so the box pass is exercised and timed); the scored boxes are computed from the
    final encoder with ``threshold`` (0.5 by default: on a 4×4 feature map the official 0.1 marks
    nearly the whole upsampled map hot; the result also lists 0.1, 0.3, 0.5 and 0.7). Timings
    give the measured box-pass share of this run and the share projected to the official
    schedule (4 passes in 500 epochs).

    Returns:
        ``{"mean_iou_full_image", "mean_iou_contrastive", "mean_box_area", "threshold",
        "box_fraction", "box_fraction_official_schedule", "iou_by_threshold", "metrics", "meta",
        "environment"}``.
    """
    from contrastive_crop.train import PretrainConfig, boxes_for, load_data, pretrain

    data = load_data("clutter-digits", num_images=n)
    assert data.train.boxes is not None
    config = PretrainConfig(
        method="simclr",
        crop="contrastive",
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        box_warmup_epochs=1,
        loc_interval=1,
        threshold=threshold,
        seed=seed,
        knn=True,
        progress=progress,
    )
    started = time.perf_counter()
    result = pretrain(config, data)
    wall = time.perf_counter() - started
    backbone = _trained_backbone(result)
    true_boxes = data.train.boxes
    full = torch.tensor([[0.0, 0.0, 1.0, 1.0]]).expand_as(true_boxes)
    iou_full = float(box_iou(full, true_boxes).mean())
    by_threshold = {}
    for value in sorted({0.1, 0.3, 0.5, 0.7, threshold}):
        boxes = boxes_for(backbone, data, value)
        by_threshold[f"{value:g}"] = {
            "mean_iou": float(box_iou(boxes, true_boxes).mean()),
            "mean_area": float(box_area(boxes).mean()),
        }
    chosen = by_threshold[f"{threshold:g}"]
    epoch_seconds = result["train_seconds"] / epochs
    passes = max(len(result["box_updates"]), 1)
    pass_seconds = result["box_seconds"] / passes
    official = 4 * pass_seconds / (500 * epoch_seconds + 4 * pass_seconds)
    values = {
        "mean_iou_full_image": iou_full,
        "mean_iou_contrastive": chosen["mean_iou"],
        "mean_box_area": chosen["mean_area"],
        "box_fraction_this_run": result["box_fraction"],
        "box_fraction_official_schedule": official,
        **{f"knn_{key}": value for key, value in result.get("knn", {}).items()},
    }
    return {
        "mean_iou_full_image": iou_full,
        "mean_iou_contrastive": chosen["mean_iou"],
        "mean_box_area": chosen["mean_area"],
        "threshold": threshold,
        "box_fraction": result["box_fraction"],
        "box_fraction_official_schedule": official,
        "iou_by_threshold": by_threshold,
        "losses": result["losses"],
        "box_updates": result["box_updates"],
        "knn": result.get("knn"),
        "wall_seconds": wall,
        "metrics": [{"name": "clutter_digits_boxes_simclr_w16", "values": values}],
        "meta": {
            "command": "contrastive-crop bench boxes --json PATH",
            "n": n,
            "epochs": epochs,
            "batch_size": batch_size,
            "lr": lr,
            "seed": seed,
            "threshold": threshold,
            "backbone": "resnet18-w16",
        },
        "environment": environment_info(),
    }


def _trained_backbone(result: dict[str, Any]) -> Any:
    backbone = result.get("backbone")
    if backbone is None:  # pragma: no cover - pretrain always returns it
        raise RuntimeError("pretrain did not return its backbone")
    return backbone
