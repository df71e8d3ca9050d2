"""Siamese SSL frameworks: SimCLR, MoCo v2, BYOL, SimSiam, and their losses.

Shapes: ``B`` batch, ``D`` backbone feature dim, ``P`` projection dim, ``K`` MoCo queue length.

Every framework is an ``nn.Module`` with ``loss(x1, x2)`` (a scalar for two augmented views of
the same ``B`` images), ``after_step()`` (momentum updates; a no-op for SimCLR/SimSiam) and
``localization_encoder`` — the backbone the official code localises with (SimCLR: the model;
MoCo: the query encoder; BYOL: the online encoder; SimSiam: the encoder).
"""

from __future__ import annotations

import copy
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contrastive_crop.models import ResNet

__all__ = [
    "BYOL",
    "METHODS",
    "MoCo",
    "SimCLR",
    "SimSiam",
    "build_method",
    "byol_loss",
    "moco_loss",
    "nt_xent_loss",
    "simsiam_loss",
]


# --------------------------------------------------------------------------- losses
def nt_xent_loss(z1_BP: Tensor, z2_BP: Tensor, temperature: float = 0.2) -> Tensor:
    """SimCLR's NT-Xent: each of the 2B embeddings against its pair and the 2B − 2 others.

    ``loss = mean_i −log(exp(s_i,pos/τ) / Σ_{j≠i} exp(s_ij/τ))`` with cosine similarities ``s``.
    """
    z_NP = F.normalize(torch.cat([z1_BP, z2_BP]), dim=1)  # N = 2B
    batch = z1_BP.shape[0]
    logits_NN = z_NP @ z_NP.T / temperature
    logits_NN.fill_diagonal_(float("-inf"))
    targets_N = torch.cat([torch.arange(batch, 2 * batch), torch.arange(batch)]).to(z_NP.device)
    return F.cross_entropy(logits_NN, targets_N)


def moco_loss(q_BP: Tensor, k_BP: Tensor, queue_KP: Tensor, temperature: float = 0.2) -> Tensor:
    """MoCo's InfoNCE: the key of the same image against the queue of negatives.

    ``logits = [q·k, q·queue] / τ`` (q, k normalised; queue rows assumed normalised), class 0.
    """
    q_BP = F.normalize(q_BP, dim=1)
    k_BP = F.normalize(k_BP, dim=1)
    positive_B1 = (q_BP * k_BP).sum(dim=1, keepdim=True)
    negative_BK = q_BP @ queue_KP.T
    logits = torch.cat([positive_B1, negative_BK], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(q_BP), dtype=torch.long, device=q_BP.device))


def byol_loss(p_BP: Tensor, z_BP: Tensor) -> Tensor:
    """BYOL's regression loss ``mean(2 − 2·cos(p, z))`` (``z`` is detached)."""
    return (2 - 2 * F.cosine_similarity(p_BP, z_BP.detach(), dim=1)).mean()


def simsiam_loss(p_BP: Tensor, z_BP: Tensor) -> Tensor:
    """SimSiam's ``D(p, stopgrad(z)) = −mean(cos(p, z))``."""
    return -F.cosine_similarity(p_BP, z_BP.detach(), dim=1).mean()


# --------------------------------------------------------------------------- heads
def _mlp(
    in_dim: int, hidden: int, out_dim: int, layers: int = 2, last_bn: bool = False
) -> nn.Sequential:
    modules: list[nn.Module] = []
    dim = in_dim
    for _ in range(layers - 1):
        modules += [
            nn.Linear(dim, hidden, bias=False),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
        ]
        dim = hidden
    modules.append(nn.Linear(dim, out_dim, bias=not last_bn))
    if last_bn:
        modules.append(nn.BatchNorm1d(out_dim, affine=False))
    return nn.Sequential(*modules)


class _Framework(nn.Module):
    backbone: ResNet

    @property
    def localization_encoder(self) -> ResNet:
        return self.backbone

    def loss(self, x1: Tensor, x2: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @torch.no_grad()
    def after_step(self) -> None:
        """Momentum updates after an optimizer step (no-op by default)."""


def _ema(target: nn.Module, online: nn.Module, momentum: float) -> None:
    for t, o in zip(target.parameters(), online.parameters(), strict=True):
        t.mul_(momentum).add_(o.detach(), alpha=1 - momentum)
    for target_buffer, online_buffer in zip(target.buffers(), online.buffers(), strict=True):
        target_buffer.copy_(online_buffer)


class SimCLR(_Framework):
    """SimCLR: backbone + 2-layer MLP projector, NT-Xent loss.

    Args:
        backbone: the encoder.
        proj_dim: projection dimension P.
        temperature: τ (the official small-dataset configs use 0.2).
    """

    def __init__(self, backbone: ResNet, proj_dim: int = 128, temperature: float = 0.2) -> None:
        super().__init__()
        self.backbone = backbone
        self.projector = _mlp(backbone.feature_dim, backbone.feature_dim, proj_dim)
        self.temperature = temperature

    def loss(self, x1: Tensor, x2: Tensor) -> Tensor:
        z_NP = self.projector(self.backbone(torch.cat([x1, x2])))
        z1, z2 = z_NP.chunk(2)
        return nt_xent_loss(z1, z2, self.temperature)


class MoCo(_Framework):
    """MoCo v2: query encoder + MLP head, momentum key encoder, a queue of K negatives.

    The loss is symmetrised over the two views (as the official small-dataset MoCo code).

    Args:
        backbone: the query encoder (the key encoder is a copy).
        proj_dim: P.
        queue_size: K.
        momentum: key-encoder EMA momentum m.
        temperature: τ.
    """

    def __init__(
        self,
        backbone: ResNet,
        proj_dim: int = 128,
        queue_size: int = 4096,
        momentum: float = 0.99,
        temperature: float = 0.2,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = _mlp(backbone.feature_dim, backbone.feature_dim, proj_dim)
        self.key_backbone = copy.deepcopy(backbone)
        self.key_head = copy.deepcopy(self.head)
        for parameter in [*self.key_backbone.parameters(), *self.key_head.parameters()]:
            parameter.requires_grad_(False)
        self.momentum, self.temperature = momentum, temperature
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, proj_dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self._pending: list[Tensor] = []

    def loss(self, x1: Tensor, x2: Tensor) -> Tensor:
        q1, q2 = self.head(self.backbone(torch.cat([x1, x2]))).chunk(2)
        with torch.no_grad():
            k1, k2 = F.normalize(
                self.key_head(self.key_backbone(torch.cat([x1, x2]))), dim=1
            ).chunk(2)
        queue = cast(Tensor, self.queue)
        loss = 0.5 * (
            moco_loss(q1, k2, queue, self.temperature) + moco_loss(q2, k1, queue, self.temperature)
        )
        self._pending = [k1, k2] if self.training else []
        return loss

    @torch.no_grad()
    def after_step(self) -> None:
        _ema(self.key_backbone, self.backbone, self.momentum)
        _ema(self.key_head, self.head, self.momentum)
        queue = cast(Tensor, self.queue)
        queue_ptr = cast(Tensor, self.queue_ptr)
        for keys in self._pending:
            pointer = int(queue_ptr)
            index = (pointer + torch.arange(len(keys), device=keys.device)) % len(queue)
            queue[index] = keys
            queue_ptr.fill_((pointer + len(keys)) % len(queue))
        self._pending = []


class BYOL(_Framework):
    """BYOL: online encoder + projector + predictor, EMA target encoder, symmetric loss.

    Args:
        backbone: the online encoder.
        proj_dim: P.
        hidden: MLP hidden width (default 4 · D).
        momentum: target EMA momentum.
    """

    def __init__(
        self,
        backbone: ResNet,
        proj_dim: int = 128,
        hidden: int | None = None,
        momentum: float = 0.99,
    ) -> None:
        super().__init__()
        hidden = hidden or 4 * backbone.feature_dim
        self.backbone = backbone
        self.projector = _mlp(backbone.feature_dim, hidden, proj_dim)
        self.predictor = _mlp(proj_dim, hidden, proj_dim)
        self.target_backbone = copy.deepcopy(backbone)
        self.target_projector = copy.deepcopy(self.projector)
        for parameter in [*self.target_backbone.parameters(), *self.target_projector.parameters()]:
            parameter.requires_grad_(False)
        self.momentum = momentum

    def loss(self, x1: Tensor, x2: Tensor) -> Tensor:
        p1, p2 = self.predictor(self.projector(self.backbone(torch.cat([x1, x2])))).chunk(2)
        with torch.no_grad():
            z1, z2 = self.target_projector(self.target_backbone(torch.cat([x1, x2]))).chunk(2)
        return byol_loss(p1, z2) + byol_loss(p2, z1)

    @torch.no_grad()
    def after_step(self) -> None:
        _ema(self.target_backbone, self.backbone, self.momentum)
        _ema(self.target_projector, self.projector, self.momentum)


class SimSiam(_Framework):
    """SimSiam: encoder + 3-layer projector (last BN) + bottleneck predictor, stop-gradient.

    Args:
        backbone: the encoder.
        proj_dim: P (default 4 · D).
        pred_dim: predictor bottleneck (default P / 4).
    """

    def __init__(
        self, backbone: ResNet, proj_dim: int | None = None, pred_dim: int | None = None
    ) -> None:
        super().__init__()
        proj_dim = proj_dim or 4 * backbone.feature_dim
        pred_dim = pred_dim or max(proj_dim // 4, 1)
        self.backbone = backbone
        self.projector = _mlp(backbone.feature_dim, proj_dim, proj_dim, layers=3, last_bn=True)
        self.predictor = _mlp(proj_dim, pred_dim, proj_dim)

    def loss(self, x1: Tensor, x2: Tensor) -> Tensor:
        z_NP = self.projector(self.backbone(torch.cat([x1, x2])))
        p1, p2 = self.predictor(z_NP).chunk(2)
        z1, z2 = z_NP.chunk(2)
        return 0.5 * (simsiam_loss(p1, z2) + simsiam_loss(p2, z1))


METHODS = ("simclr", "moco", "byol", "simsiam")


def build_method(
    method: str, backbone: ResNet, temperature: float = 0.2, queue_size: int = 4096
) -> _Framework:
    """A framework by name (``simclr``, ``moco``, ``byol``, ``simsiam``).

    Raises:
        ValueError: unknown name.
    """
    if method == "simclr":
        return SimCLR(backbone, temperature=temperature)
    if method == "moco":
        return MoCo(backbone, temperature=temperature, queue_size=queue_size)
    if method == "byol":
        return BYOL(backbone)
    if method == "simsiam":
        return SimSiam(backbone)
    raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
