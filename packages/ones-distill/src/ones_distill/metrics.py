"""The MoE-benefit metric (assumed definition, design doc §2.5) and evaluation helpers."""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from ones_distill.models import logits_and_aux

__all__ = ["BenefitWarning", "accuracy", "mean_kl", "moe_benefit"]


class BenefitWarning(UserWarning):
    """The MoE-benefit ratio is undefined (the MoE is no better than the dense baseline)."""


def moe_benefit(
    acc_student: float, acc_dense: float, acc_moe: float, *, min_gap: float = 1e-3
) -> float:
    """Fraction of the MoE's benefit the student keeps: ``(s − d) / (m − d)``.

    ``acc_dense`` is a dense model of the student's size trained from scratch on the same budget.
    This definition is the documented reading of the OneS paper (its formula was not verified).

    Args:
        acc_student: the student's accuracy.
        acc_dense: the dense baseline's accuracy.
        acc_moe: the MoE teacher's accuracy.
        min_gap: below this ``|m − d|`` the ratio is meaningless.

    Returns:
        The ratio (1.0: all of the benefit kept; 0: none; negative: worse than the baseline), or
        NaN with a ``BenefitWarning`` when ``|acc_moe − acc_dense| < min_gap``.
    """
    gap = acc_moe - acc_dense
    if not math.isfinite(gap) or abs(gap) < min_gap:
        warnings.warn(
            f"MoE benefit is undefined: acc_moe={acc_moe:.4f} and acc_dense={acc_dense:.4f} "
            f"differ by less than {min_gap}; returning NaN",
            BenefitWarning,
            stacklevel=2,
        )
        return math.nan
    return (acc_student - acc_dense) / gap


@torch.no_grad()
def _logits(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    was_training = model.training
    model.eval()
    try:
        return torch.cat([logits_and_aux(model, chunk)[0] for chunk in x.split(batch_size)])
    finally:
        model.train(was_training)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    """Top-1 accuracy of a classifier (eval mode, no grad)."""
    return float((_logits(model, x, batch_size).argmax(dim=1) == y).float().mean())


def mean_kl(
    teacher: nn.Module,
    student: nn.Module,
    x: torch.Tensor,
    *,
    temperature: float = 1.0,
    batch_size: int = 512,
) -> float:
    """Mean ``KL(softmax(z_t / T) ‖ softmax(z_s / T))`` over ``x`` (eval mode)."""
    log_t = F.log_softmax(_logits(teacher, x, batch_size) / temperature, dim=1)
    log_s = F.log_softmax(_logits(student, x, batch_size) / temperature, dim=1)
    return float(F.kl_div(log_s, log_t, log_target=True, reduction="batchmean"))
