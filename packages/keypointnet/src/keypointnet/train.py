"""Training and evaluation of keypoint networks on KeypointNet's two benchmark tasks.

Tasks (design reference §2.1, §2.3):

- ``"saliency"``: 2-class cross-entropy per point; label 1 at every keypoint's ``point_index``.
- ``"correspondence"``: C = max semantic id + 1 outputs per point. For each semantic id the
  logits of that column are a softmax over the **points**, trained with cross-entropy against the
  point index of that id (−1 = absent in this model, ignored), as upstream's
  ``F.cross_entropy(outputs[b][None], target[None])``. The prediction for an id is its argmax
  point.

Training defaults follow upstream's ``config.yaml``: Adam, lr 1e-3, weight decay 1e-4, lr halved
every 10 epochs, batch 8, 50 epochs, 2,048 points, and train-split augmentation only (Gaussian
noise σ = 0.004 clipped to ±0.01, plus a translation of at most 0.02 in a random direction).

Determinism: the shuffle order of epoch ``e`` and the augmentation of shape ``i`` in epoch ``e``
are drawn from generators seeded with ``(seed, e)`` and ``(seed, e, i)``, not from a shared
stream. So a run resumed from its per-epoch checkpoint (which restores the model, optimizer,
scheduler and global RNG) ends with the same weights as an uninterrupted run, and every rank of a
data-parallel job sees the same global batches.

Data parallelism (``world_size > 1``, under ``torchrun`` or ``ptrain.core.testing``): each global
batch is split into ``world_size`` contiguous shards, each rank computes its shard's share of the
batch-mean loss, and the flattened gradients are averaged with ``ptrain.core.comm.all_reduce``.
With a batch-independent model (``norm="group"`` or ``"none"``, no dropout) this equals
single-process training on the same global batches up to float rounding (Adam magnifies the
rounding noise of a parameter whose exact gradient is zero, such as the last bias under the
correspondence loss, which is invariant to it: such parameters drift apart by ~1e-4). With
``norm="batch"`` each rank normalises with its own shard's statistics, so the two differ (as in
any data-parallel BatchNorm without SyncBN).
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from torch import nn

from keypointnet import metrics
from keypointnet.data import Keypoint, KeypointNetDirectory, ModelAnnotation, Symmetries
from keypointnet.geodesic import geodesic_distances
from keypointnet.models import MODEL_NAMES, NORMS, ModelName, Norm, build_model
from ptrain.core.checkpoint import Checkpointer, load_checkpoint, save_checkpoint
from ptrain.core.cli import UserError, write_json
from ptrain.core.cli import progress as progress_bar
from ptrain.core.comm import all_reduce

__all__ = [
    "MAX_TRANSLATION",
    "NOISE_CLIP",
    "NOISE_SIGMA",
    "SPLITS",
    "TASKS",
    "KeypointSamples",
    "Task",
    "TrainConfig",
    "TrainingError",
    "augment_points",
    "correspondence_loss",
    "epoch_batches",
    "evaluate",
    "load_trained",
    "predict_annotations",
    "prior_baseline_pck",
    "saliency_loss",
    "train",
]

Task = Literal["saliency", "correspondence"]
TASKS: tuple[str, ...] = ("saliency", "correspondence")
SPLITS: tuple[str, ...] = ("train", "val", "test")

#: Upstream augmentation: per-coordinate Gaussian noise, clipped, then a random translation.
NOISE_SIGMA = 0.004
NOISE_CLIP = 0.01
MAX_TRANSLATION = 0.02
#: Weight of PointNet's feature-transform orthogonality penalty (upstream PointNet).
REGULARIZER_WEIGHT = 0.001
#: Saliency predictions written by ``predict_annotations`` keep points above this probability.
SALIENCY_THRESHOLD = 0.5
#: ``predict_annotations`` writes saliency keypoints with this semantic id (the schema needs one).
SALIENCY_SEMANTIC_ID = 0


class TrainingError(UserError, ValueError):
    """A user-fixable problem with a training run (no data, an occupied run directory, ...)."""


class PointCloudLike(Protocol):
    """Anything with ``points`` (N, 3) and ``rgb`` ((N, 3) or None), e.g. ``data.PointCloud``."""

    points: np.ndarray
    rgb: np.ndarray | None


# --------------------------------------------------------------------------------------- losses
def saliency_loss(
    logits_BN2: torch.Tensor,
    labels_BN: torch.Tensor,
    reduction: Literal["mean", "none"] = "mean",
) -> torch.Tensor:
    """Per-point 2-class cross-entropy (upstream ``SaliencyCriterion``).

    Args:
        logits_BN2: logits ``(B, N, 2)``.
        labels_BN: ``(B, N)`` int64, 1 at keypoints and 0 elsewhere.
        reduction: ``"mean"`` over the batch, or ``"none"`` for one value per shape ``(B,)``.

    Returns:
        A scalar, or ``(B,)`` per-shape mean losses over the points.
    """
    per_point_BN = F.cross_entropy(logits_BN2.transpose(1, 2), labels_BN, reduction="none")
    per_shape_B = per_point_BN.mean(dim=1)  # (B,)
    return per_shape_B.mean() if reduction == "mean" else per_shape_B


def correspondence_loss(
    logits_BNC: torch.Tensor,
    targets_BC: torch.Tensor,
    reduction: Literal["mean", "none"] = "mean",
) -> torch.Tensor:
    """Cross-entropy over the points for every semantic id, ignoring absent ids.

    For shape b and id c the loss is ``−log softmax_n(logits[b, :, c])[targets[b, c]]``; a shape
    averages it over its present ids (upstream ``F.cross_entropy(outputs[b][None],
    target[None])``) and contributes 0 when it has none.

    Args:
        logits_BNC: logits ``(B, N, C)``.
        targets_BC: ``(B, C)`` int64 point index of each id, −1 when absent.
        reduction: ``"mean"`` over the batch, or ``"none"`` for one value per shape ``(B,)``.

    Returns:
        A scalar, or ``(B,)`` per-shape losses.
    """
    per_id_BC = F.cross_entropy(logits_BNC, targets_BC, ignore_index=-1, reduction="none")
    present_BC = (targets_BC >= 0).to(per_id_BC.dtype)  # (B, C)
    per_shape_B = (per_id_BC * present_BC).sum(dim=1) / present_BC.sum(dim=1).clamp(min=1)
    return per_shape_B.mean() if reduction == "mean" else per_shape_B


def _per_shape_loss(
    task: Task, logits_BNC: torch.Tensor, batch: dict[str, torch.Tensor]
) -> torch.Tensor:
    if task == "saliency":
        return saliency_loss(logits_BNC, batch["saliency"], reduction="none")
    return correspondence_loss(logits_BNC, batch["correspondence"], reduction="none")


# ----------------------------------------------------------------------------------------- data
def augment_points(points_N3: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Upstream's train-split augmentation: clipped Gaussian noise, then a random translation.

    Args:
        points_N3: ``(N, 3)`` coordinates.
        rng: the generator to draw from.

    Returns:
        New float32 ``(N, 3)`` coordinates.
    """
    noise_N3 = np.clip(NOISE_SIGMA * rng.standard_normal(points_N3.shape), -NOISE_CLIP, NOISE_CLIP)
    direction_3 = rng.standard_normal(3)
    direction_3 /= max(float(np.linalg.norm(direction_3)), 1e-12)
    translation_3 = direction_3 * rng.uniform(0.0, MAX_TRANSLATION)
    return (points_N3 + noise_N3 + translation_3).astype(np.float32)


def _positive_int_or_none(name: str, value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} must be a positive int or None, got {value!r}")


class KeypointSamples(torch.utils.data.Dataset):
    """Point clouds with their saliency and correspondence targets.

    ``samples[i]`` is a dict with ``points`` float32 ``(N, 3)`` (augmented when ``augment`` is on),
    ``saliency`` int64 ``(N,)`` (1 at keypoints) and ``correspondence`` int64 ``(C,)`` (the point
    of each semantic id, −1 when absent). Semantic ids ``>= num_classes`` are dropped from the
    correspondence targets (a model trained with C outputs cannot predict them), and keypoints
    without a ``point_index`` are skipped.

    Attributes:
        annotations: the models' annotations, in order.
        points: the un-augmented ``(N, 3)`` float32 clouds (after subsampling).
        point_rows: for each cloud, the rows of the original PCD its points came from.
        rgb: the ``(N, 3)`` uint8 colours, or None where the source had none.
        saliency_targets: ``(N,)`` int64 per cloud.
        correspondence_targets: ``(M, C)`` int64.
        num_classes: C.
        augment: whether ``__getitem__`` augments.
        seed: seeds the augmentation together with the epoch and the index.
    """

    def __init__(
        self,
        items: Sequence[tuple[np.ndarray | PointCloudLike, ModelAnnotation]],
        *,
        num_classes: int | None = None,
        num_points: int | None = None,
        augment: bool = False,
        seed: int = 0,
    ) -> None:
        """Builds the targets.

        Args:
            items: ``(points, annotation)`` pairs; points are an ``(N, 3)`` array or an object
                with ``.points`` (and optionally ``.rgb``), e.g. ``keypointnet.data.PointCloud``.
            num_classes: C; default max semantic id + 1 over ``items`` (pass the training set's
                C for validation/test sets).
            num_points: keep at most this many points per cloud (None: all). A subset always
                keeps the keypoints' points; the other rows are drawn with a generator seeded by
                ``seed`` and the model key, so the subset is the same in every run.
            augment: augment in ``__getitem__`` (upstream does so for the train split only).
            seed: seeds the subsampling and the augmentation.

        Raises:
            ValueError: a cloud is not ``(N, 3)``, a keypoint's ``point_index`` is out of range,
                or ``num_points`` is smaller than a cloud's keypoint count.
        """
        _positive_int_or_none("num_classes", num_classes)
        _positive_int_or_none("num_points", num_points)
        self.annotations: list[ModelAnnotation] = []
        self.points: list[np.ndarray] = []
        self.point_rows: list[np.ndarray] = []
        self.rgb: list[np.ndarray | None] = []
        self.saliency_targets: list[np.ndarray] = []
        self.augment = augment
        self.seed = seed
        self._epoch = 0
        self._geodesic_cache: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        if num_classes is None:
            ids = [kp.semantic_id for _, ann in items for kp in ann.keypoints]
            num_classes = max(ids) + 1 if ids else 1
        self.num_classes = num_classes
        targets = []
        for cloud, annotation in items:
            if isinstance(cloud, np.ndarray):
                points_N3, rgb = np.asarray(cloud, dtype=np.float32), None
            else:
                points_N3, rgb = np.asarray(cloud.points, dtype=np.float32), cloud.rgb
            if points_N3.ndim != 2 or points_N3.shape[1] != 3 or len(points_N3) == 0:
                raise ValueError(f"{annotation.key}: points must have shape (N, 3), got "
                                 f"{points_N3.shape}")  # fmt: skip
            rows = self._keypoint_rows(annotation, len(points_N3))
            kept_rows = self._subsample(annotation.key, len(points_N3), rows, num_points)
            row_to_kept = np.full(len(points_N3), -1, dtype=np.int64)
            row_to_kept[kept_rows] = np.arange(len(kept_rows))
            saliency_N = np.zeros(len(kept_rows), dtype=np.int64)
            saliency_N[row_to_kept[rows]] = 1
            correspondence_C = np.full(num_classes, -1, dtype=np.int64)
            # First keypoint of an id wins (ids are unique within a model in the release).
            for keypoint in reversed(annotation.keypoints):
                if keypoint.point_index is not None and keypoint.semantic_id < num_classes:
                    correspondence_C[keypoint.semantic_id] = row_to_kept[keypoint.point_index]
            self.annotations.append(annotation)
            self.points.append(points_N3[kept_rows])
            self.point_rows.append(kept_rows)
            self.rgb.append(None if rgb is None else np.asarray(rgb)[kept_rows])
            self.saliency_targets.append(saliency_N)
            targets.append(correspondence_C)
        self.correspondence_targets = (
            np.stack(targets) if targets else np.zeros((0, num_classes), dtype=np.int64)
        )

    @staticmethod
    def _keypoint_rows(annotation: ModelAnnotation, count: int) -> np.ndarray:
        rows = [kp.point_index for kp in annotation.keypoints if kp.point_index is not None]
        for row in rows:
            if not 0 <= row < count:
                raise ValueError(
                    f"{annotation.key}: keypoint point_index {row} is out of range for a cloud "
                    f"of {count} points"
                )
        return np.unique(np.asarray(rows, dtype=np.int64))

    def _subsample(
        self, key: str, count: int, keypoint_rows: np.ndarray, num_points: int | None
    ) -> np.ndarray:
        if num_points is None or num_points >= count:
            return np.arange(count)
        if num_points < len(keypoint_rows):
            raise ValueError(
                f"{key}: num_points={num_points} is fewer than its {len(keypoint_rows)} "
                "keypoint points"
            )
        rng = np.random.default_rng((self.seed, zlib.crc32(key.encode())))
        others = np.setdiff1d(np.arange(count), keypoint_rows)
        chosen = rng.choice(others, num_points - len(keypoint_rows), replace=False)
        return np.sort(np.concatenate([keypoint_rows, chosen]))

    @classmethod
    def from_directory(
        cls,
        root: str | os.PathLike[str],
        category: str,
        split: str,
        *,
        num_points: int | None = 2048,
        num_classes: int | None = None,
        augment: bool | None = None,
        max_models: int | None = None,
        seed: int = 0,
    ) -> KeypointSamples:
        """Loads one split of one category from a KeypointNet-layout directory.

        Args:
            root: the directory (``annotations/``, ``pcds/``, ``splits/``).
            category: e.g. ``"chair"``.
            split: ``"train"``, ``"val"`` or ``"test"``.
            num_points: at most this many points per cloud (None: all of the PCD's points).
            num_classes: C (default: from this split's annotations).
            augment: default on for ``"train"`` only, as upstream.
            max_models: keep the first N models of the split (quick runs).
            seed: seeds subsampling and augmentation.

        Returns:
            The samples (possibly empty when the split lists none of the category's models).
        """
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        _positive_int_or_none("max_models", max_models)
        directory = KeypointNetDirectory(root)
        models = directory.models(category=category, split=split)
        if max_models is not None:
            models = models[:max_models]
        items = [(directory.load_points(model), model) for model in models]
        return cls(
            items,
            num_classes=num_classes,
            num_points=num_points,
            augment=split == "train" if augment is None else augment,
            seed=seed,
        )

    def __len__(self) -> int:
        return len(self.points)

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch whose augmentation ``__getitem__`` draws."""
        self._epoch = epoch

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        points_N3 = self.points[index]
        if self.augment:
            rng = np.random.default_rng((self.seed, self._epoch, index))
            points_N3 = augment_points(points_N3, rng)
        return {
            "points": torch.from_numpy(np.ascontiguousarray(points_N3, dtype=np.float32)),
            "saliency": torch.from_numpy(self.saliency_targets[index]),
            "correspondence": torch.from_numpy(self.correspondence_targets[index]),
        }

    def collate(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """Stacks ``self[i]`` for ``indices`` into a batch.

        Raises:
            ValueError: the clouds have different numbers of points.
        """
        items = [self[int(i)] for i in indices]
        sizes = sorted({len(item["points"]) for item in items})
        if len(sizes) > 1:
            raise ValueError(
                f"cannot batch clouds of {sizes} points; set num_points to at most {sizes[0]}"
            )
        return {key: torch.stack([item[key] for item in items]) for key in items[0]}

    def geodesics(self, index: int, k: int = 20) -> tuple[np.ndarray, np.ndarray]:
        """Geodesic distances from the keypoints of cloud ``index`` (cached).

        Args:
            index: the cloud.
            k: neighbours of the k-NN graph.

        Returns:
            ``(sources (K,), distances (K, N))``: the distinct keypoint rows and their rows of
            graph-geodesic distances (on the un-augmented cloud).
        """
        cached = self._geodesic_cache.get((index, k))
        if cached is None:
            points_N3 = self.points[index]
            sources_K = np.flatnonzero(self.saliency_targets[index])
            distances_KN = (
                geodesic_distances(points_N3, sources_K, k=k)
                if len(sources_K)
                else np.zeros((0, len(points_N3)))
            )
            cached = (sources_K, distances_KN)
            self._geodesic_cache[(index, k)] = cached
        return cached

    def correspondence_geodesics(self, index: int, k: int = 20) -> np.ndarray:
        """``(C, N)`` geodesics from each id's ground-truth point (``inf`` rows: absent ids)."""
        sources_K, distances_KN = self.geodesics(index, k)
        targets_C = self.correspondence_targets[index]
        rows_C = np.full((len(targets_C), len(self.points[index])), np.inf)
        present = targets_C >= 0
        rows_C[present] = distances_KN[np.searchsorted(sources_K, targets_C[present])]
        return rows_C


def epoch_batches(num_samples: int, batch_size: int, *, seed: int, epoch: int) -> list[np.ndarray]:
    """The global batches of one epoch: a seeded shuffle cut into ``batch_size`` chunks.

    A trailing batch of a single shape is merged into the one before it (batch normalisation
    cannot normalise one vector per channel, e.g. in PointNet's T-Net).

    Args:
        num_samples: shapes in the training set.
        batch_size: shapes per global batch.
        seed: the run's seed.
        epoch: the epoch (0-based); each epoch has its own order.

    Returns:
        Index arrays, one per optimizer step.
    """
    order = np.random.default_rng((seed, epoch)).permutation(num_samples)
    batches = [order[start : start + batch_size] for start in range(0, num_samples, batch_size)]
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches[-2:] = [np.concatenate(batches[-2:])]
    return batches


# ---------------------------------------------------------------------------------------- config
@dataclass(kw_only=True, slots=True)
class TrainConfig:
    """Everything a training run needs; validated on construction.

    Attributes:
        data_dir: a KeypointNet-layout directory (real or ``keypointnet.synth`` output).
        category: the category to train on, e.g. ``"chair"``.
        task: ``"saliency"`` or ``"correspondence"``.
        out_dir: the run directory: ``checkpoints/``, ``model.pt`` and ``metrics.json``.
        model: ``"pointnet"`` or ``"dgcnn"``.
        epochs: training epochs (upstream 50).
        batch_size: shapes per global batch, over all ranks together (upstream 8).
        lr: Adam learning rate (upstream 1e-3).
        weight_decay: Adam L2 weight decay (upstream 1e-4).
        lr_step_epochs: the lr is multiplied by ``lr_gamma`` every this many epochs (10).
        lr_gamma: the lr decay factor (0.5).
        seed: seeds the initialisation, the shuffles and the augmentation.
        resume: continue from the newest checkpoint in ``out_dir/checkpoints``.
        num_points: at most this many points per cloud (upstream 2,048; fewer trains faster);
            None keeps every point of the PCD.
        max_models: use at most this many models per split (quick runs).
        num_classes: correspondence outputs C (default: max semantic id + 1 in the train split).
        norm: ``"batch"`` (upstream), ``"group"`` or ``"none"``; ``"group"``/``"none"`` make
            data-parallel training equal to single-process training.
        augment: augment the train split (upstream: on).
        eval_split: the split evaluated at the end (None: no evaluation); when it holds no models
            of the category the train split is evaluated instead (``eval_split`` in the result
            says which).
        geodesic_k: neighbours of the k-NN graph for geodesic distances in the metrics (20).
        model_kwargs: extra keyword arguments for the network (e.g. ``{"k": 10}`` for DGCNN,
            ``{"channels": (32, 64, 256)}`` for a narrow PointNet).
    """

    data_dir: str | os.PathLike[str]
    category: str
    task: Task
    out_dir: str | os.PathLike[str]
    model: ModelName = "pointnet"
    epochs: int = 50
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    lr_step_epochs: int = 10
    lr_gamma: float = 0.5
    seed: int = 0
    resume: bool = False
    num_points: int | None = 2048
    max_models: int | None = None
    num_classes: int | None = None
    norm: Norm = "batch"
    augment: bool = True
    eval_split: str | None = "val"
    geodesic_k: int = 20
    model_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.category, str) or not self.category:
            raise ValueError(f"category must be a non-empty string, got {self.category!r}")
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.model not in MODEL_NAMES:
            raise ValueError(f"model must be one of {MODEL_NAMES}, got {self.model!r}")
        for name in ("epochs", "batch_size", "lr_step_epochs", "geodesic_k"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name in ("num_points", "max_models", "num_classes"):
            _positive_int_or_none(name, getattr(self, name))
        if not (isinstance(self.lr, int | float) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        if not (isinstance(self.weight_decay, int | float) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be a number >= 0, got {self.weight_decay!r}")
        if not (isinstance(self.lr_gamma, int | float) and 0 < self.lr_gamma <= 1):
            raise ValueError(f"lr_gamma must be in (0, 1], got {self.lr_gamma!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {self.seed!r}")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if self.eval_split is not None and self.eval_split not in SPLITS:
            raise ValueError(f"eval_split must be one of {SPLITS} or None, got {self.eval_split!r}")
        if not isinstance(self.model_kwargs, dict):
            raise ValueError(f"model_kwargs must be a dict, got {self.model_kwargs!r}")
        for name in ("resume", "augment"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")


# ------------------------------------------------------------------------------------- training
def _average_gradients(parameters: list[nn.Parameter]) -> None:
    """Averages the gradients over ranks through one flattened buffer (missing grads = 0)."""
    grads = [
        torch.zeros_like(p) if p.grad is None else p.grad for p in parameters
    ]  # a rank with an empty shard contributes zeros
    flat = all_reduce(torch.cat([g.reshape(-1) for g in grads]), op="avg")
    offset = 0
    for parameter in parameters:
        count = parameter.numel()
        parameter.grad = flat[offset : offset + count].view_as(parameter).clone()
        offset += count


def _model_meta(config: TrainConfig, num_outputs: int) -> dict[str, Any]:
    """What ``load_trained`` needs to rebuild the network (plain data only)."""
    return {
        "task": config.task,
        "model": config.model,
        "num_outputs": num_outputs,
        "norm": config.norm,
        "model_kwargs": _plain(config.model_kwargs),
        "category": config.category,
        "num_points": config.num_points,
    }


def _plain(value: Any) -> Any:
    """Tuples and lists to lists, recursively (keeps checkpoint ``extra`` JSON-like)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _rebuild_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Lists back to tuples for the model constructors' sequence arguments."""

    def as_tuple(value: Any) -> Any:
        return tuple(as_tuple(v) for v in value) if isinstance(value, list) else value

    return {key: as_tuple(value) for key, value in kwargs.items()}


def train(
    config: TrainConfig, *, rank: int = 0, world_size: int = 1, progress: bool = True
) -> dict[str, Any]:
    """Trains a keypoint network; checkpoints every epoch, evaluates and writes the results.

    Writes ``out_dir/checkpoints/step-<epoch>.pt`` after every epoch (the newest two are kept),
    then ``out_dir/model.pt`` (weights and what ``load_trained`` needs) and ``out_dir/metrics.json``
    (the returned dict). Only rank 0 writes.

    Args:
        config: the run.
        rank: this process's rank in the default process group.
        world_size: ranks taking part; above 1 the default process group must be initialised
            (``ptrain.core.dist.init_distributed()`` under torchrun, or inside
            ``ptrain.core.testing.run_distributed``).
        progress: show a progress bar per epoch on rank 0 (off when stderr is not a terminal).

    Returns:
        ``task``, ``model``, ``category``, ``epochs``, ``num_classes``, ``num_train_models``,
        ``losses`` (mean training loss per epoch), ``final_loss``; on rank 0 with an eval split
        also ``eval_split``, ``num_eval_models`` and the metrics: ``saliency_miou`` and
        ``saliency_map``, or ``pck`` and ``prior_pck`` (the semantic-id prior baseline), each a
        dict over the thresholds ``"0.00"`` … ``"0.10"``.

    Raises:
        TrainingError: no training models, or ``out_dir`` holds checkpoints and ``resume`` is
            off, or the checkpoints belong to a different task/model.
        ValueError: bad ``rank``/``world_size``.
    """
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive int, got {world_size!r}")
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ValueError(f"rank must be an int in [0, {world_size}), got {rank!r}")
    if world_size > 1 and not (
        torch_dist.is_initialized() and torch_dist.get_world_size() == world_size
    ):
        raise ValueError(
            f"world_size={world_size} needs an initialised default process group of that size "
            "(call ptrain.core.dist.init_distributed() under torchrun)"
        )
    out_dir = Path(config.out_dir)
    samples = KeypointSamples.from_directory(
        config.data_dir,
        config.category,
        "train",
        num_points=config.num_points,
        num_classes=config.num_classes,
        augment=config.augment,
        max_models=config.max_models,
        seed=config.seed,
    )
    if len(samples) == 0:
        raise TrainingError(f"{config.data_dir}: no {config.category!r} models in the train split")
    num_outputs = 2 if config.task == "saliency" else samples.num_classes
    meta = _model_meta(config, num_outputs)

    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    random.seed(config.seed)
    model = build_model(config.model, num_outputs, norm=config.norm, **config.model_kwargs)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(parameters, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(
        optimizer, step_size=config.lr_step_epochs, gamma=config.lr_gamma
    )
    checkpointer = Checkpointer(out_dir / "checkpoints", keep=2)
    losses: list[float] = []
    start_epoch = 0
    if config.resume:
        checkpoint = checkpointer.load_latest(model, optimizer, scheduler, restore_rng=True)
        if checkpoint is not None:
            saved = checkpoint.extra.get("meta", {})
            for key in ("task", "model", "num_outputs", "norm"):
                if saved.get(key) != meta[key]:
                    raise TrainingError(
                        f"{checkpoint.path}: was written with {key}={saved.get(key)!r}, "
                        f"this run has {key}={meta[key]!r}"
                    )
            start_epoch = checkpoint.step
            if start_epoch > config.epochs:
                raise TrainingError(
                    f"{checkpoint.path}: the run is already at epoch {start_epoch}, beyond "
                    f"epochs={config.epochs}"
                )
            losses = [float(v) for v in checkpoint.extra.get("losses", [])]
    elif checkpointer.latest() is not None:
        raise TrainingError(
            f"{checkpointer.directory}: holds checkpoints of an earlier run; pass resume=True "
            "(--resume) to continue it, or choose another out_dir"
        )

    disable_bar = None if progress and rank == 0 else True  # None: automatic (TTY only)
    for epoch in range(start_epoch, config.epochs):
        model.train()
        samples.set_epoch(epoch)
        batches = epoch_batches(len(samples), config.batch_size, seed=config.seed, epoch=epoch)
        loss_sum = 0.0
        description = f"epoch {epoch + 1}/{config.epochs}"
        bar = progress_bar(batches, desc=description, disable=disable_bar, unit="batch")
        for global_batch in bar:
            shard = np.array_split(global_batch, world_size)[rank]
            optimizer.zero_grad(set_to_none=True)
            if len(shard):
                batch = samples.collate(shard.tolist())
                logits_BNC = model(batch["points"])  # (B, N, C)
                per_shape_B = _per_shape_loss(config.task, logits_BNC, batch)  # (B,)
                # This shard's share of the global batch mean; "avg" over ranks restores it.
                scale = world_size / len(global_batch)
                loss = per_shape_B.sum() * scale
                loss = loss + REGULARIZER_WEIGHT * model.regularization_loss() * len(shard) * scale
                loss.backward()
                loss_sum += float(per_shape_B.detach().sum())
                bar.set_postfix(loss=f"{float(per_shape_B.detach().mean()):.4f}", refresh=False)
            if world_size > 1:
                _average_gradients(parameters)
            optimizer.step()
        scheduler.step()
        if world_size > 1:
            loss_sum = float(all_reduce(torch.tensor([loss_sum], dtype=torch.float64), op="sum"))
        losses.append(loss_sum / len(samples))
        if rank == 0:
            checkpointer.save(
                epoch + 1,
                model=model,
                optimizer=optimizer,
                scheduler=scheduler,
                extra={"losses": list(losses), "meta": meta},
            )

    result: dict[str, Any] = {
        "task": config.task,
        "model": config.model,
        "category": config.category,
        "epochs": config.epochs,
        "num_classes": samples.num_classes,
        "num_train_models": len(samples),
        "final_loss": losses[-1],
        "losses": losses,
    }
    if rank != 0:
        return result
    save_checkpoint(out_dir / "model.pt", model=model, extra={"meta": meta}, rng=False)
    if config.eval_split is not None:
        result.update(_evaluate_run(model, config, samples))
    write_json(out_dir / "metrics.json", result)
    return result


def _evaluate_run(
    model: nn.Module, config: TrainConfig, train_samples: KeypointSamples
) -> dict[str, Any]:
    """Evaluates on ``config.eval_split`` (or on the train split when that split is empty)."""
    split = config.eval_split
    eval_samples = train_samples
    if split != "train" and not (Path(config.data_dir) / "splits" / f"{split}.txt").is_file():
        split = "train"  # a directory without that split file (e.g. a custom dataset)
    if split != "train":
        eval_samples = KeypointSamples.from_directory(
            config.data_dir,
            config.category,
            str(split),
            num_points=config.num_points,
            num_classes=train_samples.num_classes,
            augment=False,
            max_models=config.max_models,
            seed=config.seed,
        )
        if len(eval_samples) == 0:
            split, eval_samples = "train", train_samples
    result: dict[str, Any] = {"eval_split": split, "num_eval_models": len(eval_samples)}
    result.update(evaluate(model, eval_samples, config.task, k=config.geodesic_k))
    if config.task == "correspondence":
        result["prior_pck"] = prior_baseline_pck(train_samples, eval_samples, k=config.geodesic_k)
    return result


# ----------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def _predict_logits(
    model: nn.Module, samples: KeypointSamples, batch_size: int = 8
) -> list[np.ndarray]:
    """``(N, C)`` logits per un-augmented cloud, in eval mode (the mode is restored after)."""
    was_training = model.training
    model.eval()
    try:
        outputs: list[np.ndarray] = []
        for start in range(0, len(samples), batch_size):
            clouds = samples.points[start : start + batch_size]
            if len({len(c) for c in clouds}) == 1:
                points_BN3 = torch.from_numpy(np.stack(clouds))  # (B, N, 3)
                outputs.extend(model(points_BN3).numpy())
            else:  # clouds of different sizes go one by one
                outputs.extend(model(torch.from_numpy(c)[None])[0].numpy() for c in clouds)
        return outputs
    finally:
        model.train(was_training)


def _softmax(logits: np.ndarray, axis: int) -> np.ndarray:
    shifted = logits - logits.max(axis=axis, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=axis, keepdims=True)


def evaluate(
    model: nn.Module,
    samples: KeypointSamples,
    task: Task,
    k: int = 20,
    *,
    symmetric: bool = True,
    batch_size: int = 8,
) -> dict[str, dict[str, float]]:
    """Benchmarks a model on un-augmented samples with geodesic thresholds 0.00 … 0.10.

    Args:
        model: a network mapping ``(B, N, 3)`` to ``(B, N, C)`` logits.
        samples: the evaluation shapes (their augmentation is not applied).
        task: ``"saliency"`` → ``{"saliency_miou", "saliency_map"}`` from the keypoint
            probability (softmax column 1); ``"correspondence"`` → ``{"pck"}`` from the argmax
            point of every id.
        k: neighbours of the geodesic k-NN graph.
        symmetric: for PCK, score each shape under the relabeling of semantic ids its symmetry
            annotation allows that fits the prediction best (``metrics.semantic_permutations``),
            as ``keypointnet eval`` does; False scores the annotated ids only (upstream chair).
        batch_size: clouds per forward pass.

    Returns:
        Metric name → ``{"0.00": value, ..., "0.10": value}``.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    logits = _predict_logits(model, samples, batch_size)
    if task == "saliency":
        probabilities = [_softmax(logit_N2, axis=1)[:, 1] for logit_N2 in logits]
        gt_indices, geodesics = zip(
            *(samples.geodesics(i, k) for i in range(len(samples))), strict=True
        )
        return {
            "saliency_miou": metrics.saliency_miou(probabilities, list(gt_indices),
                                                   list(geodesics)),
            "saliency_map": metrics.saliency_map(probabilities, list(gt_indices), list(geodesics)),
        }  # fmt: skip
    predictions = [logit_NC.argmax(axis=0) for logit_NC in logits]
    return {"pck": _pck(predictions, samples, k, symmetric)}


def _symmetry_relabelings(samples: KeypointSamples) -> list[np.ndarray]:
    """Per shape, the ``(R, C)`` semantic-id permutations its symmetry annotation allows."""
    num_classes = samples.num_classes
    relabelings = []
    for annotation in samples.annotations:
        ids = [keypoint.semantic_id for keypoint in annotation.keypoints]
        wide_RC = metrics.semantic_permutations(annotation, max([num_classes - 1, *ids]) + 1)
        # Ids >= C were dropped from the targets: keep the permutations that stay within 0..C-1.
        inside = (wide_RC[:, :num_classes] < num_classes).all(axis=1)
        relabelings.append(wide_RC[inside, :num_classes])
    return relabelings


def _pck(
    predictions: list[np.ndarray], samples: KeypointSamples, k: int, symmetric: bool
) -> dict[str, float]:
    gt = list(samples.correspondence_targets)
    geodesics_C = [samples.correspondence_geodesics(i, k) for i in range(len(samples))]
    relabelings = _symmetry_relabelings(samples) if symmetric else None
    return metrics.pck(predictions, gt, geodesics_C, relabelings=relabelings)


def prior_baseline_pck(
    train_samples: KeypointSamples,
    test_samples: KeypointSamples,
    k: int = 20,
    *,
    symmetric: bool = True,
) -> dict[str, float]:
    """PCK of the semantic-id prior: each id's point is the one nearest its mean training xyz.

    A learning-free baseline a trained correspondence model should beat: it knows where an id
    sits on an average shape of the category and nothing about this shape. Ids never seen in
    training are predicted absent (−1, a miss).

    Args:
        train_samples: where the mean position of every id is taken (un-augmented).
        test_samples: the shapes to predict.
        k: neighbours of the geodesic k-NN graph.
        symmetric: score each shape under its best symmetry relabeling (as ``evaluate``).

    Returns:
        ``{"0.00": pck, ..., "0.10": pck}``.
    """
    num_classes = test_samples.num_classes
    sums_C3 = np.zeros((num_classes, 3))
    counts_C = np.zeros(num_classes)
    for points_N3, targets in zip(
        train_samples.points, train_samples.correspondence_targets, strict=True
    ):
        targets_C = targets[:num_classes]
        present = np.flatnonzero(targets_C >= 0)
        sums_C3[present] += points_N3[targets_C[present]]
        counts_C[present] += 1
    seen = counts_C > 0
    means_C3 = sums_C3 / np.maximum(counts_C, 1)[:, None]
    predictions = []
    for points_N3 in test_samples.points:
        squared_CN = ((means_C3[:, None, :] - points_N3[None, :, :]) ** 2).sum(axis=2)  # (C, N)
        predictions.append(np.where(seen, squared_CN.argmin(axis=1), -1))
    return _pck(predictions, test_samples, k, symmetric)


# ----------------------------------------------------------------------------------- prediction
def load_trained(path: str | os.PathLike[str]) -> tuple[nn.Module, Task, dict[str, Any]]:
    """Loads ``model.pt`` written by ``train`` (with ``weights_only=True``).

    Args:
        path: the file.

    Returns:
        ``(model in eval mode, task, meta)``; ``meta`` holds ``task``, ``model``,
        ``num_outputs``, ``norm``, ``model_kwargs``, ``category`` and ``num_points``.

    Raises:
        ptrain.core.checkpoint.CheckpointError: not a loadable checkpoint.
        TrainingError: the file has no model description (not written by ``train``).
    """
    probe = load_checkpoint(path, restore_rng=False)  # read the description first
    meta = probe.extra.get("meta")
    if not isinstance(meta, dict) or meta.get("task") not in TASKS:
        raise TrainingError(f"{path}: not a keypointnet model (no 'meta' written by train())")
    model = build_model(
        meta["model"], int(meta["num_outputs"]), norm=meta["norm"],
        **_rebuild_kwargs(dict(meta.get("model_kwargs", {}))),
    )  # fmt: skip
    load_checkpoint(path, model=model, restore_rng=False)
    model.eval()
    return model, meta["task"], meta


def predict_annotations(
    model: nn.Module,
    source: KeypointSamples | str | os.PathLike[str],
    task: Task,
    *,
    category: str | None = None,
    split: str = "test",
    num_points: int | None = None,
    threshold: float = SALIENCY_THRESHOLD,
    batch_size: int = 8,
) -> list[ModelAnnotation]:
    """A model's predictions in the annotation schema (for ``keypointnet eval --pred``).

    - correspondence: one keypoint per semantic id ``0 … C−1`` at its argmax point, for every id
      (the evaluation skips ids absent from the ground truth);
    - saliency: every point with keypoint probability ``> threshold``, most confident first, all
      with ``semantic_id`` 0 (the schema needs an id; saliency has none).

    ``point_index`` refers to the rows of the original PCD (subsampling is undone), ``xyz`` is
    that point and ``rgb`` its colour (0, 0, 0 when the cloud has none). Mesh fields and
    symmetries are left empty.

    Args:
        model: the network (e.g. from ``load_trained``).
        source: samples, or a KeypointNet-layout directory to read ``category``/``split`` from.
        task: ``"saliency"`` or ``"correspondence"``.
        category: the category, when ``source`` is a directory.
        split: the split, when ``source`` is a directory.
        num_points: points per cloud when reading a directory (None: all).
        threshold: the saliency probability cut.
        batch_size: clouds per forward pass.

    Returns:
        One ``ModelAnnotation`` per shape, in order.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if isinstance(source, KeypointSamples):
        samples = source
    else:
        if category is None:
            raise ValueError("category is required when predicting from a directory")
        num_classes = getattr(model, "num_outputs", None) if task == "correspondence" else None
        samples = KeypointSamples.from_directory(
            source, category, split, num_points=num_points, num_classes=num_classes,
            augment=False,
        )  # fmt: skip
    logits = _predict_logits(model, samples, batch_size)
    predictions = []
    for index, logit_NC in enumerate(logits):
        if task == "correspondence":
            chosen = [(int(c), int(n)) for c, n in enumerate(logit_NC.argmax(axis=0))]
        else:
            keypoint_probability_N = _softmax(logit_NC, axis=1)[:, 1]
            above = np.flatnonzero(keypoint_probability_N > threshold)
            above = above[np.argsort(-keypoint_probability_N[above], kind="stable")]
            chosen = [(SALIENCY_SEMANTIC_ID, int(n)) for n in above]
        predictions.append(
            dataclasses.replace(
                samples.annotations[index],
                keypoints=[_keypoint_at(samples, index, n, c) for c, n in chosen],
                symmetries=Symmetries(),
            )
        )
    return predictions


def _keypoint_at(samples: KeypointSamples, index: int, row: int, semantic_id: int) -> Keypoint:
    x, y, z = (float(v) for v in samples.points[index][row])
    colours = samples.rgb[index]
    rgb = (0, 0, 0) if colours is None else tuple(int(c) for c in colours[row][:3])
    return Keypoint(
        xyz=(x, y, z),
        rgb=(rgb[0], rgb[1], rgb[2]),
        semantic_id=semantic_id,
        point_index=int(samples.point_rows[index][row]),
    )
