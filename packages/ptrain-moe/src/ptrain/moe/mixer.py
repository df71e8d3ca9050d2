"""MLP-Mixer and Sparse-MLP (Lou et al., arXiv:2109.02008): Mixer whose last blocks are sparse.

Shape legend: ``B`` images, ``S`` patches, ``C`` channels, ``S1 = s_ratio·S`` and
``C1 = c_ratio·C`` the re-represented sizes (2S and C/2 by default), ``P`` patch size.

A dense Mixer block: ``x += TokenMLP(LN(x)ᵀ)ᵀ`` (mixes along patches, per channel), then
``x += ChannelMLP(LN(x))`` (mixes along channels, per patch).

A Sparse block replaces both MLPs with MoE layers (``ptrain.moe.MoE``):

- **MoE_s** (token mixing, top-1): each channel row, a length-``S1`` vector, is one routed item.
  With ``rerepresent=True`` (default) a Re-represent layer maps ``S×C → S1×C1`` before MoE_s
  (``X' = W_S·X·W_C``, two linear maps) and a second maps ``S1×C1 → S×C`` after it.
- **MoE_c** (channel mixing, top-2): each patch vector is one routed item.
- ``wrap_channel_moe`` (the paper is unclear, design doc §2.2): ``False`` (default, CN-blog
  reading) runs MoE_c in the original ``S×C`` space after the Re-represent pair;
  ``True`` (KR-notes order: Re-represent 1 → MoE_s → MoE_c → Re-represent 2) runs MoE_c on the
  ``S1`` items of width ``C1`` inside the pair.

``SparseMLP(config)(images)`` returns ``(features_BC, aux_loss)``: mean-pooled features after the
final LayerNorm and the sum of every MoE layer's ``aux["loss"]`` (a zero tensor for a dense
model). ``config.sparse=False`` builds the dense Mixer with the same *active* FLOPs: the last
``num_sparse`` blocks become dense blocks whose hidden widths are chosen so each stage costs what
the sparse stage it replaces costs (``active_macs`` counts both).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ptrain.moe.layer import MoE, MoEConfig

__all__ = [
    "PRESETS",
    "MixerBlock",
    "ReRepresent",
    "SparseBlock",
    "SparseMLP",
    "SparseMLPConfig",
    "active_macs",
    "dense_mixer_config",
    "sparse_mlp_config",
]


@dataclass(kw_only=True, slots=True)
class SparseMLPConfig:
    """A Sparse-MLP (or, with ``sparse=False``, its equal-active-FLOP dense Mixer).

    Attributes:
        image_size: input height = width (pixels).
        patch_size: ``P``; ``image_size`` must be divisible by it.
        in_channels: image channels (3 for RGB, 1 for digits).
        dim: ``C``, channels per patch.
        depth: number of blocks.
        token_hidden: hidden width of the dense token-mixing MLPs.
        channel_hidden: hidden width of the dense channel-mixing MLPs.
        num_sparse: how many of the *last* blocks are sparse (0: a plain Mixer).
        sparse: False builds the dense Mixer whose last ``num_sparse`` blocks have the same
            active FLOPs as the sparse ones.
        experts_s: experts of MoE_s.
        experts_c: experts of MoE_c.
        top_k_s: top-k of MoE_s (1).
        top_k_c: top-k of MoE_c (2).
        moe_s_hidden: expert hidden width of MoE_s (None: ``token_hidden``; unverified in the
            paper).
        moe_c_hidden: expert hidden width of MoE_c (None: ``channel_hidden``).
        capacity_factor: MoE capacity factor (0: dropless; the paper's value is unverified).
        gate_noise: MoE router noise (std ``gate_noise / E``; Sparse-MLP's ε at 1.0).
        aux_losses: MoE aux losses (``"importance_load"`` is the paper's).
        aux_weight: the weight of each MoE layer's aux loss (λ = 0.01 in the paper).
        rerepresent: use the Re-represent layers around MoE_s.
        s_ratio: ``S1 / S`` (2.0).
        c_ratio: ``C1 / C`` (0.5).
        wrap_channel_moe: run MoE_c inside the Re-represent pair (see the module docstring).
    """

    image_size: int = 32
    patch_size: int = 4
    in_channels: int = 3
    dim: int = 128
    depth: int = 6
    token_hidden: int = 64
    channel_hidden: int = 512
    num_sparse: int = 2
    sparse: bool = True
    experts_s: int = 4
    experts_c: int = 4
    top_k_s: int = 1
    top_k_c: int = 2
    moe_s_hidden: int | None = None
    moe_c_hidden: int | None = None
    capacity_factor: float = 0.0
    gate_noise: float = 1.0
    aux_losses: tuple[str, ...] = ("importance_load",)
    aux_weight: float = 0.01
    rerepresent: bool = True
    s_ratio: float = 2.0
    c_ratio: float = 0.5
    wrap_channel_moe: bool = False

    def __post_init__(self) -> None:
        positive = (
            "image_size",
            "patch_size",
            "in_channels",
            "dim",
            "depth",
            "token_hidden",
            "channel_hidden",
            "experts_s",
            "experts_c",
            "top_k_s",
            "top_k_c",
        )
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"SparseMLPConfig.{name} must be a positive int, got {value!r}")
        if self.image_size % self.patch_size != 0:
            raise ValueError(
                f"SparseMLPConfig: image_size={self.image_size} is not divisible by "
                f"patch_size={self.patch_size}"
            )
        if not 0 <= self.num_sparse <= self.depth:
            raise ValueError(
                f"SparseMLPConfig.num_sparse must be in [0, depth={self.depth}], "
                f"got {self.num_sparse}"
            )
        for name in ("moe_s_hidden", "moe_c_hidden"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"SparseMLPConfig.{name} must be None or >= 1, got {value!r}")
        self.aux_losses = tuple(self.aux_losses)
        if self.rerepresent:
            s1, c1 = self.patches * self.s_ratio, self.dim * self.c_ratio
            if s1 != int(s1) or c1 != int(c1) or s1 < 1 or c1 < 1:
                raise ValueError(
                    f"SparseMLPConfig: re-represented sizes S1 = {self.patches}·{self.s_ratio} and "
                    f"C1 = {self.dim}·{self.c_ratio} must be positive integers"
                )
        if self.aux_weight < 0:
            raise ValueError(f"SparseMLPConfig.aux_weight must be >= 0, got {self.aux_weight}")
        if self.num_sparse and self.sparse:  # validate the MoE settings early
            self.moe_s_config()
            self.moe_c_config()

    @property
    def patches(self) -> int:
        """``S``, patches per image."""
        return (self.image_size // self.patch_size) ** 2

    @property
    def s1(self) -> int:
        """Routed-item length of MoE_s (``S1`` with Re-represent, else ``S``)."""
        return int(self.patches * self.s_ratio) if self.rerepresent else self.patches

    @property
    def c1(self) -> int:
        """Items per image of MoE_s (``C1`` with Re-represent, else ``C``)."""
        return int(self.dim * self.c_ratio) if self.rerepresent else self.dim

    def moe_s_config(self) -> MoEConfig:
        """The MoE_s layer configuration."""
        return MoEConfig(
            dim=self.s1,
            expert_hidden=self.moe_s_hidden or self.token_hidden,
            num_experts=self.experts_s,
            top_k=self.top_k_s,
            capacity_factor=self.capacity_factor,
            gate_noise=self.gate_noise,
            aux_losses=self.aux_losses,
            importance_load_weight=self.aux_weight,
            switch_weight=self.aux_weight,
        )

    def moe_c_config(self) -> MoEConfig:
        """The MoE_c layer configuration."""
        dim = self.c1 if self.wrap_channel_moe and self.rerepresent else self.dim
        return MoEConfig(
            dim=dim,
            expert_hidden=self.moe_c_hidden or self.channel_hidden,
            num_experts=self.experts_c,
            top_k=self.top_k_c,
            capacity_factor=self.capacity_factor,
            gate_noise=self.gate_noise,
            aux_losses=self.aux_losses,
            importance_load_weight=self.aux_weight,
            switch_weight=self.aux_weight,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form for checkpoints."""
        data = asdict(self)
        data["aux_losses"] = list(self.aux_losses)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SparseMLPConfig:
        """Rebuild from ``to_dict()``; unknown keys raise ValueError naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"SparseMLPConfig: unknown keys {unknown}")
        values = dict(data)
        if "aux_losses" in values:
            values["aux_losses"] = tuple(values["aux_losses"])
        return cls(**values)


# Unverified against the paper's tables (design doc §4.1): widths follow MLP-Mixer S/B/L,
# experts follow "4/8/16 depending on size", last 2 (S, B) or 4 (L) blocks sparse.
PRESETS: dict[str, dict[str, Any]] = {
    "debug": dict(
        image_size=32, patch_size=4, dim=32, depth=2, token_hidden=32, channel_hidden=64,
        num_sparse=1, experts_s=4, experts_c=4,
    ),
    "S": dict(
        image_size=224, patch_size=16, dim=512, depth=8, token_hidden=256, channel_hidden=2048,
        num_sparse=2, experts_s=8, experts_c=4,
    ),
    "B": dict(
        image_size=224, patch_size=16, dim=768, depth=12, token_hidden=384, channel_hidden=3072,
        num_sparse=2, experts_s=16, experts_c=4,
    ),
    "L": dict(
        image_size=224, patch_size=16, dim=1024, depth=24, token_hidden=512, channel_hidden=4096,
        num_sparse=4, experts_s=16, experts_c=8,
    ),
}  # fmt: skip


def sparse_mlp_config(name: str, **overrides: Any) -> SparseMLPConfig:
    """A preset (``debug``, ``S``, ``B``, ``L``) with overrides.

    Args:
        name: the preset.
        **overrides: any ``SparseMLPConfig`` field (e.g. ``image_size=8, in_channels=1``).

    Returns:
        The configuration.

    Raises:
        ValueError: unknown preset or field, or an invalid value.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown Sparse-MLP preset {name!r}; expected one of {sorted(PRESETS)}")
    known = {f.name for f in fields(SparseMLPConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"sparse_mlp_config: unknown fields {unknown}")
    return SparseMLPConfig(**{**PRESETS[name], **overrides})


def dense_mixer_config(config: SparseMLPConfig) -> SparseMLPConfig:
    """The dense Mixer with the same active FLOPs as ``config`` (``sparse=False``)."""
    return replace(config, sparse=False)


# --------------------------------------------------------------------------- FLOPs
def _moe_macs(config: MoEConfig, items: int) -> int:
    return items * config.dim * config.num_experts + items * config.top_k * 2 * (
        config.dim * config.expert_hidden
    )


def _sparse_stage_macs(config: SparseMLPConfig) -> tuple[int, int]:
    """Active MACs per image of a sparse block's token stage and channel stage."""
    s, c, s1, c1 = config.patches, config.dim, config.s1, config.c1
    rerepresent = 0
    if config.rerepresent:  # in: S→S1 on C columns, C→C1 on S1 rows; out mirrors it
        rerepresent = 2 * (s * s1 * c + s1 * c * c1)
    token = rerepresent + _moe_macs(config.moe_s_config(), c1)
    channel_items = s1 if config.wrap_channel_moe and config.rerepresent else s
    return token, _moe_macs(config.moe_c_config(), channel_items)


def _tail_dense_hiddens(config: SparseMLPConfig) -> tuple[int, int]:
    """Hidden widths of the dense blocks replacing the sparse ones, at equal active MACs."""
    token, channel = _sparse_stage_macs(config)
    s, c = config.patches, config.dim
    return max(1, round(token / (2 * s * c))), max(1, round(channel / (2 * s * c)))


def active_macs(config: SparseMLPConfig) -> int:
    """Multiply-accumulates per image on the active path (patch embedding and blocks).

    Counts matrix products only (router, experts, Re-represent, MLPs), not norms/activations.
    """
    s, c = config.patches, config.dim
    total = s * c * config.in_channels * config.patch_size**2
    dense_block = 2 * s * c * (config.token_hidden + config.channel_hidden)
    total += (config.depth - config.num_sparse) * dense_block
    if config.num_sparse:
        if config.sparse:
            token, channel = _sparse_stage_macs(config)
            total += config.num_sparse * (token + channel)
        else:
            token_hidden, channel_hidden = _tail_dense_hiddens(config)
            total += config.num_sparse * 2 * s * c * (token_hidden + channel_hidden)
    return total


# --------------------------------------------------------------------------- modules
class _MLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class MixerBlock(nn.Module):
    """A dense Mixer block on ``(B, S, C)``."""

    def __init__(self, patches: int, dim: int, token_hidden: int, channel_hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.token_mlp = _MLP(patches, token_hidden)
        self.norm2 = nn.LayerNorm(dim)
        self.channel_mlp = _MLP(dim, channel_hidden)

    def forward(self, x_BSC: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, S, C) -> ((B, S, C), zero aux loss)``."""
        x_BSC = x_BSC + self.token_mlp(self.norm1(x_BSC).transpose(1, 2)).transpose(1, 2)
        x_BSC = x_BSC + self.channel_mlp(self.norm2(x_BSC))
        return x_BSC, x_BSC.new_zeros(())


class ReRepresent(nn.Module):
    """``(B, S, C) -> (B, S_out, C_out)``: ``X' = W_S · X · W_C`` (two linear maps, no bias)."""

    def __init__(self, s_in: int, c_in: int, s_out: int, c_out: int) -> None:
        super().__init__()
        self.patch_map = nn.Linear(s_in, s_out, bias=False)  # W_S, along patches
        self.channel_map = nn.Linear(c_in, c_out, bias=False)  # W_C, along channels

    def forward(self, x_BSC: torch.Tensor) -> torch.Tensor:
        """``(B, S_in, C_in) -> (B, S_out, C_out)``."""
        x_BCS = self.patch_map(x_BSC.transpose(1, 2))  # (B, C_in, S_out)
        return self.channel_map(x_BCS.transpose(1, 2))  # (B, S_out, C_out)


class SparseBlock(nn.Module):
    """A Sparse-MLP block on ``(B, S, C)``: MoE_s (token mixing), MoE_c (channel mixing)."""

    def __init__(self, config: SparseMLPConfig) -> None:
        super().__init__()
        self.config = config
        s, c, s1, c1 = config.patches, config.dim, config.s1, config.c1
        self.norm1 = nn.LayerNorm(c)
        self.rerepresent_in: ReRepresent | None = None
        self.rerepresent_out: ReRepresent | None = None
        if config.rerepresent:
            self.rerepresent_in = ReRepresent(s, c, s1, c1)
            self.rerepresent_out = ReRepresent(s1, c1, s, c)
        self.moe_s = MoE(config.moe_s_config())
        self.wrapped = config.wrap_channel_moe and config.rerepresent
        self.norm2 = nn.LayerNorm(c1 if self.wrapped else c)
        self.moe_c = MoE(config.moe_c_config())

    def _token_moe(self, z_BSC: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y_BCS, aux = self.moe_s(z_BSC.transpose(1, 2))  # items: the C1 rows of length S1
        return y_BCS.transpose(1, 2), aux["loss"]

    def forward(self, x_BSC: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, S, C) -> ((B, S, C), aux loss of both MoE layers)``."""
        z_BSC = self.norm1(x_BSC)
        if self.rerepresent_in is not None:
            z_BSC = self.rerepresent_in(z_BSC)  # (B, S1, C1)
        if self.wrapped:
            assert self.rerepresent_out is not None
            y_BSC, loss_s = self._token_moe(z_BSC)
            z_BSC = z_BSC + y_BSC
            y_BSC, aux_c = self.moe_c(self.norm2(z_BSC))  # items: S1 patches of width C1
            z_BSC = z_BSC + y_BSC
            return x_BSC + self.rerepresent_out(z_BSC), loss_s + aux_c["loss"]
        y_BSC, loss_s = self._token_moe(z_BSC)
        if self.rerepresent_out is not None:
            y_BSC = self.rerepresent_out(y_BSC)  # (B, S, C)
        x_BSC = x_BSC + y_BSC
        y_BSC, aux_c = self.moe_c(self.norm2(x_BSC))  # items: S patches of width C
        return x_BSC + y_BSC, loss_s + aux_c["loss"]


class SparseMLP(nn.Module):
    """Sparse-MLP / MLP-Mixer backbone: ``(B, in_channels, H, W) -> ((B, C), aux_loss)``."""

    def __init__(self, config: SparseMLPConfig) -> None:
        """Builds the model (``config.sparse=False``: the equal-active-FLOP dense Mixer)."""
        super().__init__()
        self.config = config
        s, c = config.patches, config.dim
        self.patch_embed = nn.Conv2d(
            config.in_channels, c, kernel_size=config.patch_size, stride=config.patch_size
        )
        blocks: list[nn.Module] = []
        for index in range(config.depth):
            is_tail = index >= config.depth - config.num_sparse
            if is_tail and config.sparse:
                blocks.append(SparseBlock(config))
            elif is_tail:
                token_hidden, channel_hidden = _tail_dense_hiddens(config)
                blocks.append(MixerBlock(s, c, token_hidden, channel_hidden))
            else:
                blocks.append(MixerBlock(s, c, config.token_hidden, config.channel_hidden))
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.LayerNorm(c)

    @property
    def feature_dim(self) -> int:
        """Width of the returned features (``C``)."""
        return self.config.dim

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeds patches, runs the blocks, pools.

        Args:
            images: ``(B, in_channels, image_size, image_size)``.

        Returns:
            ``(features_BC, aux_loss)``; ``aux_loss`` is the sum over MoE layers (0 if dense).

        Raises:
            ValueError: the images have the wrong shape.
        """
        config = self.config
        expected = (config.in_channels, config.image_size, config.image_size)
        if images.dim() != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(
                f"SparseMLP: expected images (B, {', '.join(map(str, expected))}), "
                f"got {tuple(images.shape)}"
            )
        x_BSC = self.patch_embed(images).flatten(2).transpose(1, 2)  # (B, S, C)
        aux_loss = x_BSC.new_zeros(())
        for block in self.blocks:
            x_BSC, loss = block(x_BSC)
            aux_loss = aux_loss + loss
        return self.norm(x_BSC).mean(dim=1), aux_loss


def parameter_count(model: nn.Module) -> int:
    """Parameters held by this process (all experts when unsharded)."""
    return sum(p.numel() for p in model.parameters())
