"""Classifiers whose FFNs are MoE layers (teachers) or dense FFNs (students, dense baselines).

Shape legend: ``B`` batch, ``F`` input features, ``S`` patches, ``C``/``D`` channels (model dim),
``H`` FFN hidden, ``N`` classes.

Every classifier's forward returns ``(logits_BN, aux_loss)`` (``aux_loss`` is the sum of the MoE
layers' ``aux["loss"]``, a zero tensor for a dense model). An FFN slot holds a
``ptrain.moe.MoE`` when ``num_experts >= 1`` and a ``DenseFFN`` when ``num_experts == 0``; the
dense model of the student's size is therefore the same class with ``num_experts=0``.

- ``VectorClassifier``: ``embed(F→D) → [x += FFN(LN(x))] × depth → LN → head`` (the design doc's
  cluster task model).
- ``MixerClassifier``: an MLP-Mixer whose channel MLPs are the FFN slots (token MLPs stay dense);
  the ``bench speed`` contract model.
- ``SparseMLPClassifier``: ``ptrain.moe.SparseMLP`` features + a linear head.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ones_distill.gather import DenseFFN
from ptrain.moe import MoE, MoEConfig, SparseMLP, SparseMLPConfig

__all__ = [
    "MixerClassifier",
    "MixerClassifierConfig",
    "SparseMLPClassifier",
    "SparseMLPClassifierConfig",
    "VectorClassifier",
    "VectorClassifierConfig",
    "logits_and_aux",
]


def _check_positive(owner: object, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(owner, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{type(owner).__name__}.{name} must be a positive int, got {value!r}")


class _DictConfig:
    """``to_dict`` / ``from_dict`` for the dataclass configs below."""

    __slots__ = ()

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form for model files."""
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Any:
        """Rebuild from ``to_dict()``; unknown keys raise ValueError naming them."""
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown keys {unknown}")
        return cls(**data)


def _ffn_slot(
    dim: int, hidden: int, num_experts: int, top_k: int, capacity_factor: float, aux_weight: float
) -> nn.Module:
    if num_experts == 0:
        return DenseFFN(dim, hidden)
    return MoE(
        MoEConfig(
            dim=dim,
            expert_hidden=hidden,
            num_experts=num_experts,
            top_k=min(top_k, num_experts),
            capacity_factor=capacity_factor,
            aux_losses=("switch",),
            switch_weight=aux_weight,
        )
    )


@dataclass(kw_only=True, slots=True)
class VectorClassifierConfig(_DictConfig):
    """``VectorClassifier`` settings.

    Attributes:
        in_features: ``F``.
        dim: ``D``.
        hidden: ``H`` of each FFN (each expert when MoE).
        depth: residual FFN blocks.
        num_classes: ``N``.
        num_experts: experts per FFN slot (0: dense).
        top_k: experts per token (1 or 2).
        capacity_factor: MoE capacity factor (0: dropless).
        aux_weight: Switch balance-loss weight.
    """

    in_features: int = 32
    dim: int = 64
    hidden: int = 16
    depth: int = 1
    num_classes: int = 10
    num_experts: int = 8
    top_k: int = 1
    capacity_factor: float = 0.0
    aux_weight: float = 0.01

    def __post_init__(self) -> None:
        _check_positive(self, ("in_features", "dim", "hidden", "depth", "num_classes", "top_k"))
        if self.num_experts < 0:
            raise ValueError(
                f"VectorClassifierConfig.num_experts must be >= 0, got {self.num_experts}"
            )


class VectorClassifier(nn.Module):
    """``(B, F) -> ((B, N) logits, aux loss)``."""

    def __init__(self, config: VectorClassifierConfig) -> None:
        super().__init__()
        self.config = c = config
        self.embed = nn.Linear(c.in_features, c.dim)
        self.norms = nn.ModuleList(nn.LayerNorm(c.dim) for _ in range(c.depth))
        self.ffns = nn.ModuleList(
            _ffn_slot(c.dim, c.hidden, c.num_experts, c.top_k, c.capacity_factor, c.aux_weight)
            for _ in range(c.depth)
        )
        self.norm = nn.LayerNorm(c.dim)
        self.head = nn.Linear(c.dim, c.num_classes)

    def forward(self, x_BF: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, F) -> ((B, N), scalar aux loss)``."""
        x_BD = self.embed(x_BF)
        aux_loss = x_BD.new_zeros(())
        for norm, ffn in zip(self.norms, self.ffns, strict=True):
            y_BD, aux = ffn(norm(x_BD))
            x_BD = x_BD + y_BD
            aux_loss = aux_loss + aux["loss"]
        return self.head(self.norm(x_BD)), aux_loss


@dataclass(kw_only=True, slots=True)
class MixerClassifierConfig(_DictConfig):
    """``MixerClassifier`` settings (defaults: the ``bench speed`` contract teacher).

    Attributes:
        image_size: input side (pixels).
        patch_size: ``P``.
        in_channels: image channels.
        dim: ``C``.
        depth: blocks.
        token_hidden: hidden width of the (dense) token-mixing MLPs (MLP-Mixer's ``C/2``
            ratio by default; the issue does not fix it).
        channel_hidden: hidden width of each channel FFN (each expert when MoE).
        num_classes: ``N``.
        num_experts: experts per channel FFN (0: dense).
        top_k: experts per patch.
        moe_blocks: indices of the blocks whose channel FFN is an MoE (None: every block).
        capacity_factor: MoE capacity factor (0: dropless).
        aux_weight: Switch balance-loss weight.
    """

    image_size: int = 32
    patch_size: int = 4
    in_channels: int = 3
    dim: int = 256
    depth: int = 6
    token_hidden: int = 128
    channel_hidden: int = 1024
    num_classes: int = 10
    num_experts: int = 8
    top_k: int = 2
    moe_blocks: list[int] | None = field(default=None)
    capacity_factor: float = 0.0
    aux_weight: float = 0.01

    def __post_init__(self) -> None:
        _check_positive(
            self,
            (
                "image_size",
                "patch_size",
                "in_channels",
                "dim",
                "depth",
                "token_hidden",
                "channel_hidden",
                "num_classes",
                "top_k",
            ),
        )
        if self.image_size % self.patch_size:
            raise ValueError(
                f"MixerClassifierConfig: image_size={self.image_size} is not divisible by "
                f"patch_size={self.patch_size}"
            )
        if self.num_experts < 0:
            raise ValueError(
                f"MixerClassifierConfig.num_experts must be >= 0, got {self.num_experts}"
            )
        if self.moe_blocks is not None:
            self.moe_blocks = [int(i) for i in self.moe_blocks]
            bad = [i for i in self.moe_blocks if not 0 <= i < self.depth]
            if bad:
                raise ValueError(f"MixerClassifierConfig.moe_blocks {bad} not in [0, {self.depth})")

    @property
    def patches(self) -> int:
        """``S``."""
        return (self.image_size // self.patch_size) ** 2


class _MixerBlock(nn.Module):
    def __init__(self, config: MixerClassifierConfig, moe: bool) -> None:
        super().__init__()
        c = config
        self.norm1 = nn.LayerNorm(c.dim)
        self.token_fc1 = nn.Linear(c.patches, c.token_hidden)
        self.token_fc2 = nn.Linear(c.token_hidden, c.patches)
        self.norm2 = nn.LayerNorm(c.dim)
        experts = c.num_experts if moe else 0
        self.channel = _ffn_slot(
            c.dim, c.channel_hidden, experts, c.top_k, c.capacity_factor, c.aux_weight
        )

    def forward(self, x_BSC: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z_BCS = self.norm1(x_BSC).transpose(1, 2)
        x_BSC = x_BSC + self.token_fc2(F.gelu(self.token_fc1(z_BCS))).transpose(1, 2)
        y_BSC, aux = self.channel(self.norm2(x_BSC))
        return x_BSC + y_BSC, aux["loss"]


class MixerClassifier(nn.Module):
    """``(B, K, H, W) -> ((B, N) logits, aux loss)``: MLP-Mixer with MoE channel FFNs."""

    def __init__(self, config: MixerClassifierConfig) -> None:
        super().__init__()
        self.config = c = config
        self.patch_embed = nn.Conv2d(c.in_channels, c.dim, c.patch_size, stride=c.patch_size)
        moe_blocks = set(range(c.depth) if c.moe_blocks is None else c.moe_blocks)
        self.blocks = nn.ModuleList(_MixerBlock(c, i in moe_blocks) for i in range(c.depth))
        self.norm = nn.LayerNorm(c.dim)
        self.head = nn.Linear(c.dim, c.num_classes)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, K, H, W) -> ((B, N), scalar aux loss)``."""
        x_BSC = self.patch_embed(images).flatten(2).transpose(1, 2)
        aux_loss = x_BSC.new_zeros(())
        for block in self.blocks:
            x_BSC, loss = block(x_BSC)
            aux_loss = aux_loss + loss
        return self.head(self.norm(x_BSC).mean(dim=1)), aux_loss


@dataclass(kw_only=True, slots=True)
class SparseMLPClassifierConfig(_DictConfig):
    """``SparseMLPClassifier`` settings: a ``SparseMLPConfig`` (as a dict) and the classes."""

    backbone: dict[str, Any]
    num_classes: int = 10

    def __post_init__(self) -> None:
        _check_positive(self, ("num_classes",))
        SparseMLPConfig.from_dict(self.backbone)  # validates


class SparseMLPClassifier(nn.Module):
    """``ptrain.moe.SparseMLP`` features followed by a linear head."""

    def __init__(self, config: SparseMLPClassifierConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = SparseMLP(SparseMLPConfig.from_dict(config.backbone))
        self.head = nn.Linear(self.backbone.feature_dim, config.num_classes)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, K, H, W) -> ((B, N), scalar aux loss)``."""
        features_BC, aux_loss = self.backbone(images)
        return self.head(features_BC), aux_loss


def logits_and_aux(model: nn.Module, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Runs a classifier; accepts models returning ``logits`` or ``(logits, aux_loss)``."""
    out = model(inputs)
    if isinstance(out, tuple):
        return out[0], out[1]
    return out, out.new_zeros(())
