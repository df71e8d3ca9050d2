"""Knowledge distillation from the MoE teacher into the gathered student, and plain training.

Shape legend: ``B`` batch, ``N`` classes, ``T`` tokens, ``D`` model dim.

KD loss (Hinton; the OneS paper's exact form, ``T`` and ``α`` were not verified)::

    L = α · CE(y, z_s) + (1 − α) · T² · KL(softmax(z_t / T) ‖ softmax(z_s / T))
        + β · Σ_layers MSE(student FFN output, teacher MoE output)    # β = feature_weight

``fit`` is one loop for both uses: with a teacher it distils, without one it trains on the labels
(plus the MoE aux loss) — the MoE teacher and the dense baseline are trained with it. Epochs are
checkpointed atomically (``ptrain.core.checkpoint.Checkpointer``); a resumed run ends bitwise
equal to an uninterrupted one because each epoch's shuffling comes from ``seed + epoch``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ones_distill.gather import DenseFFN
from ones_distill.metrics import accuracy
from ones_distill.models import logits_and_aux
from ptrain.core.checkpoint import Checkpointer
from ptrain.core.cli import UserError, progress
from ptrain.moe import MoE

__all__ = ["FitConfig", "FitResult", "fit", "kd_loss", "soft_targets"]


def soft_targets(logits_BN: torch.Tensor, temperature: float) -> torch.Tensor:
    """``softmax(z / T)``: the teacher's temperature-softened targets ``(B, N)``."""
    if not temperature > 0:
        raise ValueError(f"soft_targets: temperature must be > 0, got {temperature}")
    return torch.softmax(logits_BN / temperature, dim=-1)


def kd_loss(
    student_logits_BN: torch.Tensor,
    teacher_logits_BN: torch.Tensor,
    labels_B: torch.Tensor | None,
    *,
    temperature: float = 2.0,
    alpha: float = 0.5,
) -> dict[str, torch.Tensor]:
    """The KD loss and its parts.

    Args:
        student_logits_BN: ``(B, N)``.
        teacher_logits_BN: ``(B, N)`` (detached here: no gradient reaches the teacher).
        labels_B: ``(B,)`` hard labels, or None (then the CE term is 0 and ``α`` is ignored,
            i.e. pure soft-label KD).
        temperature: ``T > 0``.
        alpha: weight of the hard-label CE, in ``[0, 1]``.

    Returns:
        ``{"loss", "kl", "ce"}``: ``kl`` is the batch-mean KL at temperature ``T`` (before the
        ``T²`` factor), ``loss = α·ce + (1 − α)·T²·kl``.
    """
    if not temperature > 0:
        raise ValueError(f"kd_loss: temperature must be > 0, got {temperature}")
    if not 0 <= alpha <= 1:
        raise ValueError(f"kd_loss: alpha must be in [0, 1], got {alpha}")
    log_s = F.log_softmax(student_logits_BN / temperature, dim=-1)
    log_t = F.log_softmax(teacher_logits_BN.detach() / temperature, dim=-1)
    kl = F.kl_div(log_s, log_t, log_target=True, reduction="batchmean")
    if labels_B is None:
        ce = student_logits_BN.new_zeros(())
        loss = temperature**2 * kl
    else:
        ce = F.cross_entropy(student_logits_BN, labels_B)
        loss = alpha * ce + (1 - alpha) * temperature**2 * kl
    return {"loss": loss, "kl": kl, "ce": ce}


@dataclass(kw_only=True, slots=True)
class FitConfig:
    """Training / distillation settings (validates itself).

    Attributes:
        epochs: passes over the training data.
        batch_size: examples per step.
        lr: AdamW peak learning rate (cosine decay to 0 over the run).
        weight_decay: AdamW weight decay.
        temperature: KD temperature ``T``.
        alpha: weight of the hard-label CE in KD (``1 − α`` on the soft term).
        feature_weight: ``β``, weight of the per-layer FFN-output MSE to the teacher's MoE
            outputs (0: off).
        seed: seeds initial shuffling and dropout-free training (bitwise reproducible on CPU).
        log_every: epochs between evaluations in the history (0: only at the end).
    """

    epochs: int = 10
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 0.0
    temperature: float = 2.0
    alpha: float = 0.5
    feature_weight: float = 0.0
    seed: int = 0
    log_every: int = 1

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"FitConfig.{name} must be a positive int, got {value!r}")
        for name in ("lr", "temperature"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"FitConfig.{name} must be > 0, got {value!r}")
        if not 0 <= self.alpha <= 1:
            raise ValueError(f"FitConfig.alpha must be in [0, 1], got {self.alpha!r}")
        for name in ("weight_decay", "feature_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"FitConfig.{name} must be >= 0, got {getattr(self, name)!r}")
        if self.log_every < 0:
            raise ValueError(f"FitConfig.log_every must be >= 0, got {self.log_every}")

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form."""
        return asdict(self)


@dataclass(slots=True)
class FitResult:
    """What ``fit`` did: ``history`` holds one dict per logged epoch."""

    epochs_run: int
    resumed_from: int
    history: list[dict[str, float]] = field(default_factory=list)


class _FeatureTaps:
    """Forward hooks capturing each FFN slot's output ``y`` (first element of ``(y, aux)``)."""

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        self.outputs: dict[str, torch.Tensor] = {}
        self.handles = []
        for name in names:
            module = model.get_submodule(name)
            self.handles.append(module.register_forward_hook(self._hook(name)))

    def _hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            self.outputs[name] = output[0] if isinstance(output, tuple) else output

        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _feature_layers(teacher: nn.Module, student: nn.Module) -> list[str]:
    names = [n for n, m in student.named_modules() if isinstance(m, DenseFFN)]
    teacher_modules = dict(teacher.named_modules())
    missing = [n for n in names if not isinstance(teacher_modules.get(n), MoE)]
    if not names or missing:
        raise UserError(
            "feature loss needs a student gathered from this teacher (DenseFFN layers at the "
            f"teacher's MoE layer names); unmatched: {missing or 'no DenseFFN layer'}"
        )
    return names


def fit(
    model: nn.Module,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    config: FitConfig,
    *,
    teacher: nn.Module | None = None,
    test_x: torch.Tensor | None = None,
    test_y: torch.Tensor | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    resume: bool = True,
    show_progress: bool | None = None,
    desc: str = "train",
) -> FitResult:
    """Trains ``model`` on labels, or distils it from ``teacher`` when one is given.

    Args:
        model: a classifier returning ``(logits, aux_loss)`` (or logits); trained in place.
        train_x: ``(N, ...)`` inputs.
        train_y: ``(N,)`` labels.
        config: the settings.
        teacher: the MoE teacher (frozen, eval mode) for KD; None trains on labels only.
        test_x: evaluation inputs for the history (optional).
        test_y: evaluation labels.
        checkpoint_dir: where epoch checkpoints go (None: none).
        resume: continue from the newest checkpoint in ``checkpoint_dir``.
        show_progress: force the progress bar on/off (None: on a terminal only).
        desc: progress-bar label.

    Returns:
        The run's history.

    Raises:
        UserError: the feature loss is asked for without a matching teacher.
    """
    torch.manual_seed(config.seed)
    n = train_x.shape[0]
    steps_per_epoch = math.ceil(n / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))
    )
    checkpointer = Checkpointer(checkpoint_dir, keep=2) if checkpoint_dir is not None else None
    start_epoch, history = 0, []
    if checkpointer is not None and resume:
        loaded = checkpointer.load_latest(model, optimizer, scheduler)
        if loaded is not None:
            start_epoch = loaded.step
            history = list(loaded.extra.get("history", []))
    frozen: list[tuple[nn.Parameter, bool]] = []
    if teacher is not None:
        teacher.eval()
        for parameter in teacher.parameters():
            frozen.append((parameter, parameter.requires_grad))
            parameter.requires_grad_(False)
    taps_s = taps_t = None
    if teacher is not None and config.feature_weight > 0:
        names = _feature_layers(teacher, model)
        taps_s, taps_t = _FeatureTaps(model, names), _FeatureTaps(teacher, names)
    bar = progress(
        total=total_steps,
        desc=desc,
        disable=None if show_progress is None else not show_progress,
        unit="step",
    )
    bar.update(start_epoch * steps_per_epoch)
    try:
        for epoch in range(start_epoch, config.epochs):
            model.train()
            order = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed + epoch))
            sums = {"loss": 0.0, "kl": 0.0, "ce": 0.0, "feature": 0.0}
            for index in order.split(config.batch_size):
                x, y = train_x[index], train_y[index]
                logits, aux_loss = logits_and_aux(model, x)
                if teacher is None:
                    parts = {"ce": F.cross_entropy(logits, y)}
                    loss = parts["ce"] + aux_loss
                else:
                    with torch.no_grad():
                        teacher_logits, _ = logits_and_aux(teacher, x)
                    parts = kd_loss(
                        logits,
                        teacher_logits,
                        y,
                        temperature=config.temperature,
                        alpha=config.alpha,
                    )
                    loss = parts["loss"]
                    if taps_s is not None and taps_t is not None:
                        feature = sum(
                            F.mse_loss(taps_s.outputs[k], taps_t.outputs[k].detach())
                            for k in taps_s.outputs
                        )
                        parts["feature"] = torch.as_tensor(feature)
                        loss = loss + config.feature_weight * feature
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                sums["loss"] += float(loss.detach()) * len(index)
                for key, value in parts.items():
                    if key != "loss":
                        sums[key] += float(value.detach()) * len(index)
                bar.update(1)
            done = epoch + 1
            last = done == config.epochs
            if last or (config.log_every and done % config.log_every == 0):
                record = {"epoch": float(done)}
                record.update({f"train_{k}": v / n for k, v in sums.items() if v})
                if test_x is not None and test_y is not None:
                    record["test_acc"] = accuracy(model, test_x, test_y)
                history.append(record)
            if checkpointer is not None:
                checkpointer.save(
                    done,
                    model=model,
                    optimizer=optimizer,
                    scheduler=scheduler,
                    extra={"history": history},
                )
    finally:
        bar.close()
        for parameter, requires_grad in frozen:
            parameter.requires_grad_(requires_grad)
        for taps in (taps_s, taps_t):
            if taps is not None:
                taps.remove()
    model.eval()
    return FitResult(config.epochs - start_epoch, start_epoch, history)
