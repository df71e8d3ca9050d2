"""MoCo v3 (Chen, Xie, He 2021) around a backbone that returns ``(features, aux_loss)``.

Shape legend: ``B`` images per rank, ``G`` images over the data-parallel group, ``F`` backbone
feature width, ``O`` output (projection) width.

- base encoder = backbone → projector (3-layer MLP with BatchNorm, last BN without affine) →
  predictor (2-layer MLP); momentum encoder = a copy of backbone + projector, updated as
  ``θ_m ← m·θ_m + (1 − m)·θ`` (``update_momentum``), never by gradients;
- loss: ``ctr(q1, k2) + ctr(q2, k1)`` with ``ctr(q, k) = CE(q̂·k̂ᵀ / τ, diagonal) · 2τ``; keys are
  gathered over ``group`` (other ranks' keys are extra negatives, as MoCo v3 does);
- the backbone's aux loss (MoE balance losses) of both views is added.

Defaults (τ = 0.2, momentum 0.99 → 1 on a cosine, 2τ scaling) follow the MoCo v3 ViT recipe as
the design doc remembers it [unverified]; all are flags.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ptrain.core import comm

__all__ = ["MoCoV3", "momentum_at"]


def _mlp(layers: int, in_dim: int, hidden: int, out_dim: int, last_bn: bool) -> nn.Sequential:
    modules: list[nn.Module] = []
    for index in range(layers):
        first = in_dim if index == 0 else hidden
        last = index == layers - 1
        second = out_dim if last else hidden
        modules.append(nn.Linear(first, second, bias=False))
        if not last:
            modules += [nn.BatchNorm1d(second), nn.ReLU(inplace=True)]
        elif last_bn:
            modules.append(nn.BatchNorm1d(second, affine=False))
    return nn.Sequential(*modules)


def momentum_at(step: int, total_steps: int, base: float) -> float:
    """Cosine momentum schedule from ``base`` (step 0) to 1 (last step)."""
    if total_steps <= 1:
        return base
    return 1.0 - (1.0 - base) * (math.cos(math.pi * step / (total_steps - 1)) + 1.0) / 2.0


class MoCoV3(nn.Module):
    """Base and momentum encoders with projector and predictor heads.

    Attributes:
        backbone: the base backbone (``images -> (features_BF, aux_loss)``).
        projector, predictor: the heads.
        momentum_backbone, momentum_projector: the momentum copies (no gradients).
    """

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        *,
        hidden_dim: int = 256,
        out_dim: int = 64,
        temperature: float = 0.2,
    ) -> None:
        """Builds the heads and the momentum copy of ``backbone`` + projector.

        Args:
            backbone: returns ``(features, aux_loss)``; copied for the momentum encoder, so
                shard it (expert parallelism) before building MoCo.
            feature_dim: ``F``.
            hidden_dim: hidden width of both heads.
            out_dim: ``O``.
            temperature: ``τ``.
        """
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"MoCoV3: temperature must be > 0, got {temperature}")
        self.temperature = temperature
        self.backbone = backbone
        self.projector = _mlp(3, feature_dim, hidden_dim, out_dim, last_bn=True)
        self.predictor = _mlp(2, out_dim, hidden_dim, out_dim, last_bn=False)
        self.momentum_backbone = copy.deepcopy(backbone)
        self.momentum_projector = copy.deepcopy(self.projector)
        for param in self._momentum_parameters():
            param.requires_grad_(False)

    def _momentum_parameters(self) -> list[torch.Tensor]:
        return [*self.momentum_backbone.parameters(), *self.momentum_projector.parameters()]

    @torch.no_grad()
    def update_momentum(self, momentum: float) -> None:
        """``θ_m ← m·θ_m + (1 − m)·θ`` for backbone and projector."""
        base: list[torch.Tensor] = [*self.backbone.parameters(), *self.projector.parameters()]
        torch._foreach_mul_(self._momentum_parameters(), momentum)
        torch._foreach_add_(self._momentum_parameters(), base, alpha=1.0 - momentum)

    def _contrastive(
        self, q_BO: torch.Tensor, k_BO: torch.Tensor, group: comm.GroupLike
    ) -> torch.Tensor:
        q_BO, k_BO = F.normalize(q_BO, dim=1), F.normalize(k_BO, dim=1)
        offset = 0
        if group is not None:
            k_BO = comm.all_gather(k_BO.contiguous(), dim=0, group=group)  # (G, O)
            offset = comm.group_rank(group) * q_BO.shape[0]
        logits = q_BO @ k_BO.t() / self.temperature
        labels = torch.arange(q_BO.shape[0], device=q_BO.device) + offset
        return F.cross_entropy(logits, labels) * (2 * self.temperature)

    def forward(
        self, view1: torch.Tensor, view2: torch.Tensor, group: comm.GroupLike = None
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """The symmetric MoCo v3 loss of two views of the same images.

        Args:
            view1: ``(B, K, H, W)``.
            view2: ``(B, K, H, W)``.
            group: data-parallel group whose keys are gathered as negatives (None: local only).

        Returns:
            ``(loss, parts)`` with ``parts = {"contrastive": float, "aux": float}``.
        """
        f1, aux1 = self.backbone(view1)
        f2, aux2 = self.backbone(view2)
        q1, q2 = self.predictor(self.projector(f1)), self.predictor(self.projector(f2))
        with torch.no_grad():
            k1 = self.momentum_projector(self.momentum_backbone(view1)[0])
            k2 = self.momentum_projector(self.momentum_backbone(view2)[0])
        contrastive = self._contrastive(q1, k2, group) + self._contrastive(q2, k1, group)
        aux = aux1 + aux2
        return contrastive + aux, {
            "contrastive": float(contrastive.detach()),
            "aux": float(aux.detach()),
        }
