"""MoCo v3 pre-training of Sparse-MLP (or its dense Mixer) and the linear-probe evaluation.

``pretrain`` runs seeded steps with LAMB and a warm-up + cosine schedule, writes atomic
checkpoints (``ptrain.core.checkpoint.Checkpointer``: model, optimizer, schedule, RNG and the
data generator) every ``checkpoint_every`` steps and resumes from the newest, so an interrupted
run ends bitwise equal to an uninterrupted one. At the end the backbone is written with
``save_model`` (config + weights, loadable alone). With ``group`` (expert parallelism over the
ranks of a ``run_distributed``/torchrun job) every rank takes its share of each global batch and
holds its share of the experts; checkpoints are then per rank.

``linear_probe`` freezes a backbone, extracts pooled features, standardises them and trains a
softmax classifier (full batch, Adam), reporting train and test accuracy.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ptrain.core import comm
from ptrain.core.checkpoint import Checkpointer
from ptrain.core.cli import UserError, progress
from ptrain.core.optim import LAMB, warmup_cosine_schedule
from ptrain.moe.checkpoint import load_model, read_model_file, save_model
from ptrain.moe.data import TensorImageDataset, augment, load_dataset
from ptrain.moe.mixer import SparseMLP, SparseMLPConfig, active_macs, sparse_mlp_config
from ptrain.moe.moco import MoCoV3, momentum_at
from ptrain.moe.parallel import apply_expert_parallel, sync_gradients

__all__ = [
    "PretrainConfig",
    "ProbeConfig",
    "build_backbone_config",
    "linear_probe",
    "pretrain",
]


@dataclass(kw_only=True, slots=True)
class PretrainConfig:
    """MoCo v3 pre-training settings (validated).

    Attributes:
        model: a preset name (``debug``, ``S``, ``B``, ``L``).
        dense: train the equal-active-FLOP dense Mixer instead of Sparse-MLP.
        overrides: ``SparseMLPConfig`` fields to change (image size and channels come from the
            data unless given).
        steps: optimizer steps.
        batch_size: images per step (global; split over expert-parallel ranks).
        lr: peak learning rate (LAMB).
        weight_decay: LAMB weight decay.
        warmup_steps: linear warm-up steps.
        temperature: contrastive ``τ``.
        momentum: base momentum of the momentum encoder (cosine to 1).
        head_hidden: hidden width of projector and predictor.
        head_out: output width of projector and predictor.
        seed: seeds the model, the data order and the augmentations.
        checkpoint_every: steps between checkpoints (0: only at the end).
    """

    model: str = "debug"
    dense: bool = False
    overrides: dict[str, Any] = field(default_factory=dict)
    steps: int = 100
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int = 10
    temperature: float = 0.2
    momentum: float = 0.99
    head_hidden: int = 256
    head_out: int = 64
    seed: int = 0
    checkpoint_every: int = 50

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "head_hidden", "head_out"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"PretrainConfig.{name} must be a positive int, got {value!r}")
        for name in ("warmup_steps", "checkpoint_every", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"PretrainConfig.{name} must be an int >= 0, got {value!r}")
        for name in ("lr", "temperature"):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"PretrainConfig.{name} must be > 0, got {value!r}")
        if not 0 <= self.momentum <= 1:
            raise ValueError(f"PretrainConfig.momentum must be in [0, 1], got {self.momentum}")
        if self.weight_decay < 0:
            raise ValueError(f"PretrainConfig.weight_decay must be >= 0, got {self.weight_decay}")

    def to_dict(self) -> dict[str, Any]:
        """Plain data."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PretrainConfig:
        """Rebuild from ``to_dict()``."""
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})


def build_backbone_config(config: PretrainConfig, data: TensorImageDataset) -> SparseMLPConfig:
    """The Sparse-MLP (or dense Mixer) config for ``data``'s image size and channels."""
    overrides = {"image_size": data.image_size, "in_channels": data.channels}
    overrides.update(config.overrides)
    model_config = sparse_mlp_config(config.model, **overrides)
    if config.dense:
        model_config = SparseMLPConfig.from_dict({**model_config.to_dict(), "sparse": False})
    return model_config


def pretrain(
    config: PretrainConfig,
    data: TensorImageDataset,
    out_dir: str | Path,
    *,
    group: comm.GroupLike = None,
    resume: bool = True,
    stop_after: int | None = None,
    show_progress: bool | None = None,
    data_spec: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """MoCo v3 pre-training; returns a summary (losses, paths, model size).

    Args:
        config: the settings.
        data: the images (labels unused).
        out_dir: where ``checkpoints/`` and ``backbone.pt`` go.
        group: expert-parallel group (None: one process, all experts here).
        resume: continue from the newest checkpoint in ``out_dir``.
        stop_after: stop (after checkpointing) once this step is reached — simulates an
            interruption.
        show_progress: progress bar (None: when stderr is a terminal).
        data_spec: how the data was made (stored with the backbone for ``probe``).

    Returns:
        ``{"steps", "losses", "final_loss", "backbone", "model_config", "active_macs",
        "parameters", "seconds"}``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rank = 0 if group is None else comm.group_rank(group)
    world = 1 if group is None else comm.group_size(group)
    if config.batch_size % world != 0:
        raise ValueError(
            f"batch_size={config.batch_size} is not divisible by the {world} expert-parallel ranks"
        )
    model_config = build_backbone_config(config, data)
    torch.manual_seed(config.seed)
    backbone = SparseMLP(model_config)
    moco = MoCoV3(
        backbone,
        backbone.feature_dim,
        hidden_dim=config.head_hidden,
        out_dim=config.head_out,
        temperature=config.temperature,
    )
    parameters = sum(p.numel() for p in backbone.parameters())
    if group is not None:
        apply_expert_parallel(moco, group)
    optimizer = LAMB(
        [p for p in moco.parameters() if p.requires_grad],
        lr=config.lr,
        weight_decay=config.weight_decay,
    )
    warmup = min(config.warmup_steps, config.steps)  # a short run warms up for all its steps
    schedule = warmup_cosine_schedule(optimizer, warmup, config.steps)
    generator = torch.Generator().manual_seed(config.seed + 1)
    checkpointer = Checkpointer(
        out_dir / "checkpoints", keep=2, prefix="step" if group is None else f"rank{rank}-step"
    )
    start, losses = 0, []
    if resume:
        loaded = checkpointer.load_latest(moco, optimizer, restore_rng=True)
        if loaded is not None:
            start = loaded.step
            # The schedule is a pure function of the step and the optimizer state restored the
            # current lr; only the step counter is set (ptrain-core's warm-up schedule cannot
            # be saved with state_dict()).
            schedule.last_epoch = start
            generator.set_state(loaded.extra["generator"])
            losses = list(loaded.extra["losses"])
    local = config.batch_size // world
    began = time.perf_counter()
    moco.train()
    bar = progress(
        range(start, config.steps), desc="pretrain", disable=None if show_progress else True
    )
    for step in bar:
        index = torch.randint(0, len(data), (config.batch_size,), generator=generator)
        images = data.images[index]
        view1, view2 = augment(images, generator), augment(images, generator)
        mine = slice(rank * local, (rank + 1) * local)
        moco.update_momentum(momentum_at(step, config.steps, config.momentum))
        loss, _ = moco(view1[mine], view2[mine], group=group)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if group is not None:
            sync_gradients(moco, world_group=group)
        optimizer.step()
        schedule.step()
        value = loss.detach()
        if group is not None:
            value = comm.all_reduce(value, op="avg", group=group)
        losses.append(float(value))
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        done = step + 1
        if (config.checkpoint_every and done % config.checkpoint_every == 0) or (
            done == config.steps or done == stop_after
        ):
            checkpointer.save(
                done,
                model=moco,
                optimizer=optimizer,
                extra={"generator": generator.get_state(), "losses": losses},
            )
        if stop_after is not None and done >= stop_after:
            break
    backbone_path = out_dir / "backbone.pt"
    finished = len(losses) >= config.steps
    if finished:
        save_model(
            backbone_path,
            moco.backbone,
            pretrain=config.to_dict(),
            data=dict(data_spec or {}),
            losses=losses,
        )
    return {
        "steps": len(losses),
        "losses": losses,
        "final_loss": losses[-1] if losses else None,
        "backbone": str(backbone_path) if finished else None,
        "model_config": model_config.to_dict(),
        "active_macs": active_macs(model_config),
        "parameters": parameters,
        "seconds": time.perf_counter() - began,
    }


# --------------------------------------------------------------------------- linear probe
@dataclass(kw_only=True, slots=True)
class ProbeConfig:
    """Linear-probe settings."""

    epochs: int = 300
    lr: float = 1e-2
    weight_decay: float = 1e-4
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"ProbeConfig.epochs must be >= 1, got {self.epochs}")
        if self.lr <= 0:
            raise ValueError(f"ProbeConfig.lr must be > 0, got {self.lr}")


@torch.no_grad()
def extract_features(backbone: nn.Module, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """Pooled features ``(N, F)`` of a backbone in eval mode."""
    was_training = backbone.training
    backbone.eval()
    features = [backbone(images[i : i + batch])[0] for i in range(0, len(images), batch)]
    backbone.train(was_training)
    return torch.cat(features)


def linear_probe(
    backbone: nn.Module,
    train: TensorImageDataset,
    test: TensorImageDataset,
    config: ProbeConfig | None = None,
) -> dict[str, Any]:
    """Trains a linear softmax classifier on frozen, standardised features.

    Returns:
        ``{"train_accuracy", "test_accuracy", "train_size", "test_size"}``.
    """
    config = config or ProbeConfig()
    train_x, test_x = (
        extract_features(backbone, train.images),
        extract_features(backbone, test.images),
    )
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    classes = int(max(train.labels.max(), test.labels.max())) + 1
    torch.manual_seed(config.seed)
    classifier = nn.Linear(train_x.shape[1], classes)
    optimizer = torch.optim.Adam(
        classifier.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    for _ in range(config.epochs):
        optimizer.zero_grad()
        F.cross_entropy(classifier(train_x), train.labels).backward()
        optimizer.step()
    with torch.no_grad():
        train_accuracy = (classifier(train_x).argmax(1) == train.labels).float().mean()
        test_accuracy = (classifier(test_x).argmax(1) == test.labels).float().mean()
    return {
        "train_accuracy": float(train_accuracy),
        "test_accuracy": float(test_accuracy),
        "train_size": len(train),
        "test_size": len(test),
    }


# --------------------------------------------------------------------------- CLI glue
def _parse_value(text: str) -> Any:
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "none":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _overrides(items: list[str]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set expects KEY=VALUE, got {item!r}")
        result[key] = _parse_value(value)
    return result


_DATA_DEFAULTS = {
    "data": "digits",
    "image_size": None,
    "channels": 3,
    "test_fraction": 0.2,
    "split_seed": 0,
}


def add_data_arguments(parser: argparse.ArgumentParser, *, from_checkpoint: bool = False) -> None:
    """``--data``, ``--image-size``, ``--channels``, ``--test-fraction``, ``--split-seed``.

    With ``from_checkpoint`` the defaults are None and are filled from the data settings stored
    with the backbone (``fill_data_defaults``), so ``probe`` splits exactly as ``pretrain`` did.
    """
    defaults = {key: None for key in _DATA_DEFAULTS} if from_checkpoint else _DATA_DEFAULTS
    note = " (default: as in pre-training)" if from_checkpoint else ""
    parser.add_argument(
        "--data",
        default=defaults["data"],
        help="'digits' (needs ptrain-moe[data]), an image folder root/<class>/<image>, or a .pt "
        f"file with {{'images': (N,K,H,W), 'labels': (N,)}} (default digits){note}",
    )
    parser.add_argument(
        "--image-size", type=int, default=defaults["image_size"], help=f"resize image folders{note}"
    )
    parser.add_argument(
        "--channels", type=int, default=defaults["channels"], help=f"image-folder channels{note}"
    )
    parser.add_argument(
        "--test-fraction",
        type=float,
        default=defaults["test_fraction"],
        help=f"held-out fraction, never pre-trained on; the probe's test set (0.2){note}",
    )
    parser.add_argument(
        "--split-seed", type=int, default=defaults["split_seed"], help=f"split seed (0){note}"
    )


def fill_data_defaults(args: argparse.Namespace, stored: dict[str, Any]) -> None:
    """Fills data flags left at None from ``stored`` (the backbone data settings) or defaults."""
    for key, default in _DATA_DEFAULTS.items():
        if getattr(args, key, None) is None:
            setattr(args, key, stored.get(key, default) if stored.get(key) is not None else default)


def add_pretrain_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``ptrain-moe pretrain``."""
    add_data_arguments(parser)
    parser.add_argument("--model", default="debug", help="preset: debug, S, B, L (default debug)")
    parser.add_argument(
        "--dense", action="store_true", help="train the equal-active-FLOP dense Mixer instead"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a SparseMLPConfig field, e.g. --set patch_size=2 --set dim=64 (repeatable)",
    )
    defaults = PretrainConfig()
    parser.add_argument("--steps", type=int, default=defaults.steps, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="images/step")
    parser.add_argument("--lr", type=float, default=defaults.lr, help="peak LAMB learning rate")
    parser.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    parser.add_argument("--warmup-steps", type=int, default=defaults.warmup_steps)
    parser.add_argument("--temperature", type=float, default=defaults.temperature)
    parser.add_argument("--momentum", type=float, default=defaults.momentum)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument(
        "--checkpoint-every", type=int, default=defaults.checkpoint_every, help="0: only at end"
    )
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument(
        "--no-resume", action="store_true", help="ignore existing checkpoints in --out"
    )


def add_probe_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``ptrain-moe probe``."""
    parser.add_argument("checkpoint", type=Path, help="a backbone.pt written by pretrain")
    add_data_arguments(parser, from_checkpoint=True)
    defaults = ProbeConfig()
    parser.add_argument("--epochs", type=int, default=defaults.epochs, help="full-batch steps")
    parser.add_argument("--lr", type=float, default=defaults.lr, help="Adam learning rate")
    parser.add_argument("--seed", type=int, default=defaults.seed)


def _split_data(args: argparse.Namespace) -> tuple[TensorImageDataset, TensorImageDataset]:
    data = load_dataset(args.data, args.image_size, args.channels)
    try:
        train, test = data.split(args.test_fraction, args.split_seed)
    except ValueError as error:
        raise UserError(str(error)) from error
    return train, test


def pretrain_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Runs ``ptrain-moe pretrain``."""
    train, _ = _split_data(args)
    try:
        config = PretrainConfig(
            model=args.model,
            dense=args.dense,
            overrides=_overrides(args.set),
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            weight_decay=args.weight_decay,
            warmup_steps=args.warmup_steps,
            temperature=args.temperature,
            momentum=args.momentum,
            seed=args.seed,
            checkpoint_every=args.checkpoint_every,
        )
        build_backbone_config(config, train)
    except (TypeError, ValueError) as error:
        raise UserError(str(error)) from error
    spec = {
        "data": args.data,
        "test_fraction": args.test_fraction,
        "split_seed": args.split_seed,
        "image_size": args.image_size,
        "channels": args.channels,
    }
    result = pretrain(config, train, args.out, resume=not args.no_resume, data_spec=spec)
    kind = "dense Mixer" if config.dense else "Sparse-MLP"
    print(
        f"pretrained {kind} ({config.model}, {result['parameters']:,} params, "
        f"{result['active_macs'] / 1e6:.2f} M active MACs/image) for {result['steps']} steps: "
        f"loss {result['losses'][0]:.4f} -> {result['final_loss']:.4f}; "
        f"backbone at {result['backbone']}"
    )
    return result


def probe_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Runs ``ptrain-moe probe``."""
    payload = read_model_file(args.checkpoint)
    backbone = load_model(args.checkpoint)
    stored = payload.get("extra", {}).get("data", {})
    fill_data_defaults(args, stored if isinstance(stored, dict) else {})
    train, test = _split_data(args)
    try:
        result: dict[str, Any] = linear_probe(
            backbone, train, test, ProbeConfig(epochs=args.epochs, lr=args.lr, seed=args.seed)
        )
    except ValueError as error:
        raise UserError(str(error)) from error
    config = SparseMLPConfig.from_dict(payload["config"])
    result.update(
        checkpoint=str(args.checkpoint),
        sparse=bool(config.sparse and config.num_sparse),
        active_macs=active_macs(config),
        parameters=sum(p.numel() for p in backbone.parameters()),
    )
    print(
        f"{args.checkpoint}: linear probe test accuracy {result['test_accuracy']:.4f} "
        f"(train {result['train_accuracy']:.4f}; {result['train_size']} train / "
        f"{result['test_size']} test images)"
    )
    return result
