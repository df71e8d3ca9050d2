"""Pre-training with RandomResizedCrop, ContrastiveCrop or SimCCrop, and its data sources.

The loop (design reference §2.4): epochs ``1..warmup`` crop with RRC; later epochs crop with
ContrastiveCrop inside each image's box; after epochs ``warmup, warmup + interval, …`` (never the
last) the boxes are recomputed from the localisation encoder on un-augmented training images
and written in place into the shared-memory boxes. A checkpoint (model, optimizer, schedule,
RNG, boxes) is written atomically after every epoch; ``resume=True`` continues from the newest
and gives the same result as an uninterrupted run (``num_workers=0``; with workers the data
order is the same but per-worker augmentation seeds follow DataLoader's rules).
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from contrastive_crop.data import (
    CIFAR_MEAN,
    CIFAR_STD,
    ArrayDataset,
    BoxedDataset,
    ImageFolder,
    make_clutter_digits,
    read_cifar10_bin,
    read_cifar100_bin,
    read_stl10_bin,
)
from contrastive_crop.evaluate import extract_features, knn_accuracy
from contrastive_crop.localization import (
    LocalizationSchedule,
    box_area,
    box_iou,
    compute_boxes,
    compute_boxes_distributed,
)
from contrastive_crop.models import PRESETS, ResNet, build_backbone
from contrastive_crop.ssl import METHODS, build_method
from contrastive_crop.transforms import (
    SIMCCROP_BOX,
    ColorJitter,
    Compose,
    ContrastiveCrop,
    Normalize,
    RandomApply,
    RandomGrayscale,
    RandomHorizontalFlip,
    RandomResizedCrop,
    SimCCrop,
    ToFloat,
    reset_beta_buffers,
)
from ptrain.core.checkpoint import Checkpointer, load_checkpoint, save_checkpoint
from ptrain.core.cli import progress

__all__ = [
    "CROPS",
    "DATASETS",
    "DataSplits",
    "PretrainConfig",
    "build_pipeline",
    "load_backbone",
    "load_data",
    "pretrain",
]

CROPS = ("rrc", "contrastive", "simc")
DATASETS = ("clutter-digits", "cifar10", "cifar100", "stl10", "folder")


@dataclass(kw_only=True, slots=True)
class PretrainConfig:
    """Settings of a pre-training run; validated on construction.

    Attributes:
        method: ``simclr``, ``moco``, ``byol`` or ``simsiam``.
        crop: ``rrc``, ``contrastive`` or ``simc``.
        data: one of :data:`DATASETS`.
        root: the dataset folder (not needed for clutter-digits).
        num_images: use the first N training images (clutter-digits: how many to make).
        image_size: resize for ``folder`` data (and the crop output size there).
        backbone: a preset of :data:`contrastive_crop.models.PRESETS`.
        epochs: training epochs.
        batch_size: images per step (two views each).
        optimizer: ``sgd`` (momentum 0.9) or ``lars`` (ptrain.core.optim.LARS).
        lr: base learning rate; linear warm-up for ``lr_warmup_epochs``, cosine to 0.1·lr.
        weight_decay: L2 weight decay.
        lr_warmup_epochs: LR warm-up length in epochs (may be fractional).
        temperature: τ of SimCLR/MoCo.
        alpha: ContrastiveCrop's Beta(α, α) (paper 0.6; official small-dataset configs 0.1).
        scale: crop area range.
        threshold: heat threshold of the localisation.
        box_warmup_epochs: RRC epochs before boxes (None: 20% of the epochs, at least 1).
        loc_interval: epochs between box updates (None: 20% of the epochs, at least 1).
        seed: seed of the model, data order and augmentations.
        out_dir: run folder (checkpoints, ``model.pt``); None writes nothing.
        resume: continue from the newest checkpoint in ``out_dir``.
        num_workers: DataLoader workers (persistent when > 0).
        device: ``cpu``, ``cuda``, ...
        knn: evaluate kNN (k = 20, 200) on the test split at the end, when there is one.
        progress: show a progress bar.
    """

    method: str = "simclr"
    crop: str = "contrastive"
    data: str = "clutter-digits"
    root: str | None = None
    num_images: int | None = None
    image_size: int = 64
    backbone: str = "resnet18-w16"
    epochs: int = 10
    batch_size: int = 256
    optimizer: str = "sgd"
    lr: float = 0.5
    weight_decay: float = 1e-4
    lr_warmup_epochs: float = 1.0
    temperature: float = 0.2
    alpha: float = 0.6
    scale: tuple[float, float] = (0.2, 1.0)
    threshold: float = 0.1
    box_warmup_epochs: int | None = None
    loc_interval: int | None = None
    seed: int = 0
    out_dir: str | None = None
    resume: bool = False
    num_workers: int = 0
    device: str = "cpu"
    knn: bool = True
    progress: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        choices = {"method": METHODS, "crop": CROPS, "data": DATASETS, "optimizer": ("sgd", "lars")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}"
                )
        if self.backbone not in PRESETS:
            raise ValueError(f"backbone must be one of {', '.join(PRESETS)}, got {self.backbone!r}")
        for name in ("epochs", "batch_size", "image_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.num_images is not None and self.num_images < 1:
            raise ValueError(f"num_images must be positive, got {self.num_images!r}")
        for name in ("lr", "alpha", "temperature"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if not self.weight_decay >= 0 or not 0 <= self.lr_warmup_epochs <= self.epochs:
            raise ValueError(
                f"weight_decay must be >= 0 and lr_warmup_epochs in [0, epochs], got "
                f"{self.weight_decay!r}, {self.lr_warmup_epochs!r}"
            )
        if not 0 <= self.threshold < 1:
            raise ValueError(f"threshold must lie in [0, 1), got {self.threshold!r}")
        low, high = self.scale
        if not 0 < low <= high <= 1:
            raise ValueError(f"scale must satisfy 0 < low <= high <= 1, got {self.scale!r}")
        if self.data != "clutter-digits" and not self.root:
            raise ValueError(f"data {self.data!r} needs root (the dataset folder)")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers!r}")
        if self.resume and not self.out_dir:
            raise ValueError("resume needs out_dir (the run folder)")
        default = max(1, round(0.2 * self.epochs))
        if self.box_warmup_epochs is None:
            self.box_warmup_epochs = min(default, self.epochs)
        if self.loc_interval is None:
            self.loc_interval = default
        self.schedule()  # validates the schedule fields

    def schedule(self) -> LocalizationSchedule:
        """The localisation schedule implied by ``crop`` (RRC: boxes never used)."""
        if self.crop == "rrc":
            return LocalizationSchedule(self.epochs, self.epochs + 1, self.epochs)
        if self.crop == "simc":
            return LocalizationSchedule(0, self.epochs + 1, self.epochs)
        assert self.box_warmup_epochs is not None and self.loc_interval is not None
        return LocalizationSchedule(self.box_warmup_epochs, self.loc_interval, self.epochs)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (for checkpoints and JSON)."""
        out = dataclasses.asdict(self)
        out["scale"] = list(self.scale)
        return out


@dataclass(frozen=True, slots=True)
class DataSplits:
    """A training set (uint8 images), an optional test set, true boxes when known."""

    train: ArrayDataset
    test: ArrayDataset | None
    mean: tuple[float, float, float] = CIFAR_MEAN
    std: tuple[float, float, float] = CIFAR_STD

    @property
    def size(self) -> int:
        return int(self.train.images.shape[-1])


def _first(dataset: ArrayDataset, count: int | None) -> ArrayDataset:
    if count is None or count >= len(dataset):
        return dataset
    boxes = dataset.boxes[:count] if dataset.boxes is not None else None
    return ArrayDataset(dataset.images[:count], dataset.labels[:count], None, boxes)


def load_data(
    name: str,
    root: str | Path | None = None,
    num_images: int | None = None,
    seed: int = 0,
    image_size: int = 64,
    num_test: int = 1000,
) -> DataSplits:
    """Loads a training (and test) split as uint8 tensors.

    ``clutter-digits``: ``num_images`` (default 2000) training and ``num_test`` test canvases
    from :func:`~contrastive_crop.data.make_clutter_digits` (data seed 0, whatever ``seed`` is:
    every run sees the same images). ``folder``: ``root/train`` and ``root/test`` (or ``root``
    alone) image folders, resized to ``image_size``.
    """
    del seed
    if name == "clutter-digits":
        train = make_clutter_digits(num_images or 2000, "train", seed=0).dataset()
        test = make_clutter_digits(num_test, "test", seed=0).dataset()
        return DataSplits(train, test, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    if root is None:
        raise ValueError(f"data {name!r} needs a root folder")
    if name == "cifar10":
        return DataSplits(
            _first(read_cifar10_bin(root, True), num_images), read_cifar10_bin(root, False)
        )
    if name == "cifar100":
        return DataSplits(
            _first(read_cifar100_bin(root, True), num_images), read_cifar100_bin(root, False)
        )
    if name == "stl10":
        return DataSplits(
            _first(read_stl10_bin(root, "train"), num_images), read_stl10_bin(root, "test")
        )
    if name == "folder":
        folder = Path(root)

        def load(path: Path) -> ArrayDataset:
            images = ImageFolder(path, size=image_size)
            count = len(images) if num_images is None else min(num_images, len(images))
            stacked = torch.stack([images.load(i) for i in range(count)])
            labels = torch.tensor([images.samples[i][1] for i in range(count)])
            return ArrayDataset(stacked, labels)

        if (folder / "train").is_dir():
            test_split = load(folder / "test") if (folder / "test").is_dir() else None
            return DataSplits(load(folder / "train"), test_split)
        return DataSplits(load(folder), None)
    raise ValueError(f"unknown data {name!r}; expected one of {', '.join(DATASETS)}")


def build_pipeline(crop: Any, mean: tuple[float, ...], std: tuple[float, ...]) -> Compose:
    """The official small-dataset pipeline around ``crop``: crop → flip → jitter → grey → norm.

    ``RandomApply(ColorJitter(0.4, 0.4, 0.4, 0.1), p=0.8)``, ``RandomGrayscale(0.2)``,
    horizontal flip 0.5 (design reference §2.1).
    """
    return Compose(
        [
            crop,
            ToFloat(),
            RandomHorizontalFlip(0.5),
            RandomApply(ColorJitter(0.4, 0.4, 0.4, 0.1), p=0.8),
            RandomGrayscale(0.2),
            Normalize(mean, std),
        ]
    )


def _make_optimizer(config: PretrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "lars":
        from ptrain.core.optim import LARS

        return LARS(
            params,
            lr=config.lr,
            momentum=0.9,
            weight_decay=config.weight_decay,
            trust_coefficient=1e-3,
            exclude_1d=True,
        )
    return torch.optim.SGD(params, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)


def pretrain(config: PretrainConfig, data: DataSplits | None = None) -> dict[str, Any]:
    """Runs self-supervised pre-training; returns a summary (losses, box updates, timings, kNN).

    Args:
        config: the run settings.
        data: pre-loaded data (default: :func:`load_data` from the config).

    Returns:
        ``{"config", "losses", "box_updates", "train_seconds", "box_seconds", "box_fraction",
        "mean_box_area", "knn"?, "mean_iou"?}``; ``box_updates`` lists per update the epoch, its
        seconds, the mean box area and (when true boxes are known) the mean IoU with them.
    """
    from ptrain.core.optim import warmup_cosine_schedule

    if data is None:
        data = load_data(
            config.data, config.root, config.num_images, config.seed, config.image_size
        )
    device = torch.device(config.device)
    rank, world = _process_group()
    torch.manual_seed(config.seed)  # the same initial weights on every rank
    backbone = build_backbone(config.backbone)
    model = build_method(config.method, backbone, temperature=config.temperature).to(device)
    # crop sizes and the other augmentations draw from `random` and torch's RNG; each rank its own
    torch.manual_seed(config.seed + 1_000_003 * rank)
    random.seed(config.seed + 1_000_003 * rank)
    schedule = config.schedule()
    size = data.size
    rrc = build_pipeline(RandomResizedCrop(size, scale=config.scale), data.mean, data.std)
    if config.crop == "simc":
        box_crop: Any = SimCCrop(size, scale=config.scale, alpha=config.alpha)
    else:
        box_crop = ContrastiveCrop(size, scale=config.scale, alpha=config.alpha)
    train_set = BoxedDataset(
        data.train,
        build_pipeline(box_crop, data.mean, data.std),
        plain_transform=rrc,
        init_box=SIMCCROP_BOX if config.crop == "simc" else (0.0, 0.0, 1.0, 1.0),
    )
    eval_set = data.train.with_transform(Compose([ToFloat(), Normalize(data.mean, data.std)]))
    batch_size = min(config.batch_size, len(train_set))
    if batch_size % world:
        raise ValueError(f"batch_size {batch_size} must be divisible by the {world} ranks")
    local_batch = batch_size // world
    steps_per_epoch = len(train_set) // batch_size
    optimizer = _make_optimizer(config, model)
    scheduler = warmup_cosine_schedule(
        optimizer,
        round(config.lr_warmup_epochs * steps_per_epoch),
        config.epochs * steps_per_epoch,
        end_factor=0.1,
    )
    writes = config.out_dir is not None and rank == 0
    checkpointer = Checkpointer(Path(config.out_dir) / "checkpoints") if config.out_dir else None
    history: dict[str, Any] = {
        "losses": [],
        "box_updates": [],
        "train_seconds": 0.0,
        "box_seconds": 0.0,
    }
    start_epoch = 1
    if config.resume and checkpointer is not None:
        checkpoint = checkpointer.load_latest(model, optimizer)
        if checkpoint is not None:
            # ptrain.core's warmup_cosine_schedule cannot be state_dict()-ed (its multiplier has
            # __slots__), so the schedule position is stored as a step count instead.
            scheduler.last_epoch = int(checkpoint.extra["scheduler_step"])
            scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
            train_set.set_boxes(checkpoint.extra["boxes"])
            history = checkpoint.extra["history"]
            start_epoch = int(checkpoint.extra["epoch"]) + 1
    loader_kwargs: dict[str, Any] = {}
    if config.num_workers > 0:
        loader_kwargs = {"num_workers": config.num_workers, "persistent_workers": True}
    shuffle_generator = torch.Generator()
    sampler: torch.utils.data.DistributedSampler[Any] | None = None
    if world > 1:
        sampler = torch.utils.data.DistributedSampler(
            train_set, world, rank, shuffle=True, seed=config.seed, drop_last=True
        )
    loader = torch.utils.data.DataLoader(
        train_set,
        batch_size=local_batch,
        shuffle=sampler is None,
        sampler=sampler,
        drop_last=True,
        generator=shuffle_generator if sampler is None else None,
        **loader_kwargs,
    )
    bar = progress(
        total=(config.epochs - start_epoch + 1) * steps_per_epoch,
        desc="pretrain",
        disable=None if config.progress else True,
        unit="step",
    )
    model.train()
    for epoch in range(start_epoch, config.epochs + 1):
        train_set.use_box = schedule.use_box(epoch)
        shuffle_generator.manual_seed(config.seed * 100_003 + epoch)
        if sampler is not None:
            sampler.set_epoch(epoch)
        reset_beta_buffers()
        started = time.perf_counter()
        total, count = 0.0, 0
        for step, (views, _, _) in enumerate(loader):
            if step == steps_per_epoch:  # ranks of a DistributedSampler may get one more batch
                break
            x1, x2 = views[0].to(device, non_blocking=True), views[1].to(device, non_blocking=True)
            loss = model.loss(x1, x2)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if world > 1:
                _average_gradients(model)
            optimizer.step()
            scheduler.step()
            model.after_step()
            if world > 1:
                _broadcast_buffers(model)
            total += float(loss.detach())
            count += 1
            bar.update(1)
        history["train_seconds"] += time.perf_counter() - started
        history["losses"].append(total / max(count, 1))
        if schedule.should_update(epoch) and config.crop == "contrastive":
            started = time.perf_counter()
            if world > 1:
                boxes = compute_boxes_distributed(
                    model.localization_encoder, eval_set, config.threshold, 512, device=device
                )
            else:
                boxes = compute_boxes(
                    model.localization_encoder,
                    eval_set,
                    config.threshold,
                    batch_size=512,
                    device=device,
                )
            train_set.set_boxes(boxes)
            seconds = time.perf_counter() - started
            history["box_seconds"] += seconds
            update: dict[str, Any] = {
                "epoch": epoch,
                "seconds": seconds,
                "mean_area": float(box_area(boxes).mean()),
            }
            if data.train.boxes is not None:
                update["mean_iou"] = float(box_iou(boxes, data.train.boxes).mean())
            history["box_updates"].append(update)
        if checkpointer is not None and writes:
            checkpointer.save(
                epoch * steps_per_epoch,
                model=model,
                optimizer=optimizer,
                extra={
                    "epoch": epoch,
                    "boxes": train_set.boxes.clone(),
                    "history": history,
                    "scheduler_step": scheduler.last_epoch,
                    "config": config.to_dict(),
                },
            )
    bar.close()
    total_seconds = history["train_seconds"] + history["box_seconds"]
    result: dict[str, Any] = {
        "config": config.to_dict(),
        **history,
        "box_fraction": history["box_seconds"] / total_seconds if total_seconds > 0 else 0.0,
        "mean_box_area": float(box_area(train_set.boxes).mean()),
    }
    if config.knn and data.test is not None:
        normalize = Normalize(data.mean, data.std)
        train_features = extract_features(backbone, data.train.images, transform=normalize)
        test_features = extract_features(backbone, data.test.images, transform=normalize)
        result["knn"] = knn_accuracy(
            train_features, data.train.labels, test_features, data.test.labels
        )
    if writes and config.out_dir:
        save_checkpoint(
            Path(config.out_dir) / "model.pt",
            model=backbone,
            rng=False,
            extra={
                "config": config.to_dict(),
                "boxes": train_set.boxes.clone(),
                "mean": list(data.mean),
                "std": list(data.std),
            },
        )
    if world > 1:
        torch.distributed.barrier()
    result["boxes"] = train_set.boxes.clone()
    result["backbone"] = backbone
    return result


def _process_group() -> tuple[int, int]:
    """``(rank, world size)`` of the default process group, ``(0, 1)`` when there is none."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _broadcast_buffers(model: torch.nn.Module) -> None:
    """Rank 0's buffers (BN running statistics, MoCo queue) to every rank, as DDP's
    ``broadcast_buffers=True`` does before each forward."""
    for buffer in model.buffers():
        torch.distributed.broadcast(buffer, src=0)


def _average_gradients(model: torch.nn.Module) -> None:
    """Data parallelism: average the gradients over ranks (one flat all-reduce)."""
    from ptrain.core import comm

    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return
    flat = comm.all_reduce(torch.cat([g.reshape(-1) for g in grads]), op="avg")
    for grad, averaged in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
        grad.copy_(averaged.view_as(grad))


def load_backbone(path: str | Path) -> tuple[ResNet, dict[str, Any]]:
    """The backbone saved as ``model.pt`` by :func:`pretrain`, and the checkpoint's extra data.

    Raises:
        CheckpointError: missing/corrupt file or a state that does not fit.
    """
    from ptrain.core.checkpoint import CheckpointError

    path = Path(path)
    try:
        config = torch.load(path, map_location="cpu", weights_only=True)["extra"]["config"]
    except FileNotFoundError:
        raise
    except Exception as error:
        raise CheckpointError(f"{path}: not a contrastive-crop model.pt ({error})") from None
    backbone = build_backbone(config["backbone"])
    checkpoint = load_checkpoint(path, model=backbone, restore_rng=False)
    return backbone, checkpoint.extra


def boxes_for(backbone: ResNet, data: DataSplits, threshold: float) -> Tensor:
    """Boxes of every training image from ``backbone`` (un-augmented, normalised)."""
    eval_set = data.train.with_transform(Compose([ToFloat(), Normalize(data.mean, data.std)]))
    return compute_boxes(backbone, eval_set, threshold, batch_size=512)
