"""Tensor-parallel layers: weights created as shards, with DTensor placements on the mode's mesh.

Activation layouts (``x`` is ``[batch, seq, hidden]``; token rows are split by whole samples so
attention stays local to a rank, heads split with the hidden dim):

=======  =======================================  ==============================================
mode     block layout ``"a"``                     note
=======  =======================================  ==============================================
1d       replicated ``[b, s, h]``                 column → row parallel pairs inside a block
2d       batch chunk i of q, hidden chunk j       SUMMA keeps the layout
2.5d     batch chunk k·q+i of d·q, hidden j       SUMMA inside each depth layer k
3d       batch chunk j·q+k of q², hidden i        a Linear of kind ``"ab"`` maps it to layout
                                                  ``"b"``: batch i·q+k, hidden j; ``"ba"`` back
=======  =======================================  ==============================================

3D (device (i, j, k); Colossal-AI's ``_Linear3D`` with the roles input=i, weight=k, output=j for
``"ab"``): all-gather x over j, all-gather the weight over k, local matmul, reduce-scatter y over
i; backward all-gathers dy and reduce-scatters dx and dW. Every weight is 1/P of the full one.

Every parameter is an ``nn.Parameter`` holding the local shard, carrying ``full_shape`` and
``shard_from_full(full) -> local`` (how ``GPT.init_weights`` gives a shard the values the serial
model would get), and its module's ``tp_specs`` names the DTensor placements on
``groups.mesh``. The layer classes subclass ``nn.Linear`` / ``nn.LayerNorm`` / ``nn.Embedding``,
so code that dispatches on those types (initialisation, weight-decay groups) keeps working.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.tensor import Placement, Replicate, Shard
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

from ptrain.core import comm
from ptrain.core.tp._ops import copy_to, gather, reduce_from, summa
from ptrain.core.tp.groups import Group, TPGroups

__all__ = [
    "ColumnParallelLinear",
    "LayerNormTP",
    "Linear2D",
    "Linear3D",
    "PositionEmbedding",
    "RowParallelLinear",
    "ShardSpec",
    "TPModule",
    "VocabEmbedding",
    "batch_groups",
    "hidden_group",
]


@dataclass(frozen=True)
class ShardSpec:
    """Where a local shard sits in its full tensor.

    Attributes:
        global_shape: the full (serial) shape.
        placements: DTensor placements on ``TPGroups.mesh``.
        local_shape: the shard's shape.
        offset: the shard's offset in the full tensor, per dim.
    """

    global_shape: tuple[int, ...]
    placements: tuple[Placement, ...]
    local_shape: tuple[int, ...]
    offset: tuple[int, ...]

    def slice(self, full: torch.Tensor) -> torch.Tensor:
        """This rank's shard of ``full``."""
        if tuple(full.shape) != self.global_shape:
            raise ValueError(
                f"expected a full tensor of shape {self.global_shape}, got {tuple(full.shape)}"
            )
        index = tuple(slice(o, o + n) for o, n in zip(self.offset, self.local_shape, strict=True))
        return full[index]


# --------------------------------------------------------------------------- layouts
def hidden_group(groups: TPGroups, layout: str = "a") -> Group | None:
    """The group the hidden (last) dim is split over in ``layout`` (``None``: not split)."""
    if groups.mode == "1d":
        return None
    if groups.mode in ("2d", "2.5d"):
        return groups["tp_col"]
    return groups["tp_i"] if layout == "a" else groups["tp_j"]


def batch_groups(groups: TPGroups, layout: str = "a") -> list[Group]:
    """The groups the batch dim is split over, outer first (chunk index in mixed radix)."""
    if groups.mode == "1d":
        return []
    if groups.mode == "2d":
        return [groups["tp_row"]]
    if groups.mode == "2.5d":
        return [groups["tp_dep"], groups["tp_row"]]
    if layout == "a":
        return [groups["tp_j"], groups["tp_k"]]
    return [groups["tp_i"], groups["tp_k"]]


def _vector_placements(groups: TPGroups, layout: str) -> tuple[Placement, ...]:
    mode = groups.mode
    if mode == "1d":
        return (Replicate(),)
    if mode == "2d":
        return (Replicate(), Shard(0))
    if mode == "2.5d":
        return (Replicate(), Replicate(), Shard(0))
    if layout == "a":
        return (Shard(0), Replicate(), Shard(0))
    return (Replicate(), Shard(0), Shard(0))


def _use_vector(groups: TPGroups, p: torch.Tensor, layout: str, dim: int = 0) -> torch.Tensor:
    """The hidden-chunk view of a parameter laid out by ``_vector_placements``, with grad sync."""
    mode = groups.mode
    if mode == "1d":
        return p
    if mode == "2d":
        return copy_to(p, groups["tp_row"])
    if mode == "2.5d":
        return copy_to(copy_to(p, groups["tp_row"]), groups["tp_dep"])
    sync, gather = (
        (groups["tp_j"], groups["tp_k"]) if layout == "a" else (groups["tp_i"], groups["tp_k"])
    )
    p = copy_to(p, sync)
    return comm.all_gather(p, dim=dim, group=gather.ref) if gather.size > 1 else p


def _divisible(owner: str, what: str, value: int, divisor: int, why: str) -> None:
    if value % divisor != 0:
        raise ValueError(
            f"{owner}: {what} ({value}) is not divisible by {divisor} ({why}); choose sizes "
            f"that are multiples of {divisor}"
        )


# --------------------------------------------------------------------------- base
class TPModule(nn.Module):
    """Mixin of the tensor-parallel layers: sharded parameters with their ``ShardSpec``."""

    groups: TPGroups
    tp_specs: dict[str, ShardSpec]

    def _init_tp(self, groups: TPGroups) -> None:
        self.groups = groups
        self.tp_specs = {}

    def _shard_param(
        self,
        name: str,
        global_shape: tuple[int, ...],
        placements: tuple[Placement, ...],
        device: Any,
        dtype: torch.dtype | None,
    ) -> nn.Parameter:
        local_shape, offset = compute_local_shape_and_global_offset(
            global_shape, self.groups.mesh, list(placements)
        )
        spec = ShardSpec(tuple(global_shape), placements, tuple(local_shape), tuple(offset))
        param = nn.Parameter(torch.empty(spec.local_shape, device=device, dtype=dtype))
        _tag(param, spec)
        self.tp_specs[name] = spec
        setattr(self, name, param)
        return param

    @torch.no_grad()
    def load_full_(self, name: str, full: torch.Tensor) -> None:
        """Copy this rank's shard of the full tensor ``full`` into parameter ``name``."""
        param = getattr(self, name)
        param.copy_(self.tp_specs[name].slice(full.to(param.device)))


def _tag(param: nn.Parameter, spec: ShardSpec) -> None:
    param.full_shape = torch.Size(spec.global_shape)  # type: ignore[attr-defined]
    param.shard_from_full = spec.slice  # type: ignore[attr-defined]


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1])


# --------------------------------------------------------------------------- 1D
class ColumnParallelLinear(nn.Linear, TPModule):
    """Megatron column-parallel Linear: output features split over the tp group.

    Input replicated; output ``[..., out/P]``; backward all-reduces dX (f operator).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        groups: TPGroups,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        nn.Module.__init__(self)
        self._init_tp(groups)
        _divisible("ColumnParallelLinear", "out_features", out_features, groups.size, "1D tp size")
        self.in_features, self.out_features = in_features, out_features
        self._shard_param("weight", (out_features, in_features), (Shard(0),), device, dtype)
        if bias:
            self._shard_param("bias", (out_features,), (Shard(0),), device, dtype)
        else:
            self.register_parameter("bias", None)

    def reset_parameters(self) -> None:  # values come from init_weights / a state dict
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(copy_to(x, self.groups.tp), self.weight, self.bias)


class RowParallelLinear(nn.Linear, TPModule):
    """Megatron row-parallel Linear: input features split; output all-reduced (g operator)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        groups: TPGroups,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        nn.Module.__init__(self)
        self._init_tp(groups)
        _divisible("RowParallelLinear", "in_features", in_features, groups.size, "1D tp size")
        self.in_features, self.out_features = in_features, out_features
        self._shard_param("weight", (out_features, in_features), (Shard(1),), device, dtype)
        if bias:
            self._shard_param("bias", (out_features,), (Replicate(),), device, dtype)
        else:
            self.register_parameter("bias", None)

    def reset_parameters(self) -> None:
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = reduce_from(F.linear(x, self.weight), self.groups.tp)
        return y + self.bias if self.bias is not None else y


# --------------------------------------------------------------------------- 2D / 2.5D
class Linear2D(nn.Linear, TPModule):
    """SUMMA Linear (2D, P = q²) and Tesseract Linear (2.5D, P = q²·d).

    Device (i, j) [in depth layer k] holds the weight block A_ij = W[out chunk j, in chunk i]ᵀ
    (1/q² of W; replicated over the d depth layers, whose grads are all-reduced over
    ``tp_dep``). Input and output: rows split over i (and k), features over j.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        groups: TPGroups,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        nn.Module.__init__(self)
        self._init_tp(groups)
        if groups.mode not in ("2d", "2.5d"):
            raise ValueError(f"Linear2D needs 2d or 2.5d groups, got {groups.mode}")
        name = "Linear2D" if groups.mode == "2d" else "Linear2p5D"
        _divisible(name, "in_features", in_features, groups.q, f"{groups.mode} side q")
        _divisible(name, "out_features", out_features, groups.q, f"{groups.mode} side q")
        self.in_features, self.out_features = in_features, out_features
        weight: tuple[Placement, ...] = (Shard(1), Shard(0))
        if groups.mode == "2.5d":
            weight = (Replicate(), *weight)
        self._shard_param("weight", (out_features, in_features), weight, device, dtype)
        if bias:
            placements = _vector_placements(groups, "a")
            self._shard_param("bias", (out_features,), placements, device, dtype)
        else:
            self.register_parameter("bias", None)

    def reset_parameters(self) -> None:
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.groups
        weight = self.weight
        if g.mode == "2.5d":
            weight = copy_to(weight, g["tp_dep"])
        y = summa(_flat(x), weight.t(), g["tp_col"], g["tp_row"])
        y = y.reshape(*x.shape[:-1], y.shape[-1])
        if self.bias is not None:
            y = y + _use_vector(g, self.bias, "a")
        return y


# --------------------------------------------------------------------------- 3D
class Linear3D(nn.Linear, TPModule):
    """3D Linear (P = q³). ``kind="ab"`` maps layout a → b, ``kind="ba"`` maps b → a.

    ``ab`` on device (i, j, k): x [rows j·q+k, in chunk i] is all-gathered over j, the weight
    shard W[out chunk j, in chunk i, sub-chunk k] over k, the partial product reduce-scattered
    over i → y [rows i·q+k, out chunk j]. ``ba`` swaps the roles of i and j.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        groups: TPGroups,
        kind: str = "ab",
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        nn.Module.__init__(self)
        self._init_tp(groups)
        if groups.mode != "3d":
            raise ValueError(f"Linear3D needs 3d groups, got {groups.mode}")
        if kind not in ("ab", "ba"):
            raise ValueError(f"Linear3D kind must be 'ab' or 'ba', got {kind!r}")
        q = groups.q
        _divisible("Linear3D", "in_features", in_features, q * q, "3D: q² = (∛P)²")
        _divisible("Linear3D", "out_features", out_features, q, "3D: q = ∛P")
        self.in_features, self.out_features, self.kind = in_features, out_features, kind
        weight = (Shard(1), Shard(0), Shard(1)) if kind == "ab" else (Shard(0), Shard(1), Shard(1))
        self._shard_param("weight", (out_features, in_features), weight, device, dtype)
        if bias:
            placements = _vector_placements(groups, "b" if kind == "ab" else "a")
            self._shard_param("bias", (out_features,), placements, device, dtype)
        else:
            self.register_parameter("bias", None)

    def reset_parameters(self) -> None:
        return None

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, kind={self.kind}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.groups
        gather_x, scatter_y = (
            (g["tp_j"], g["tp_i"]) if self.kind == "ab" else (g["tp_i"], g["tp_j"])
        )
        rows = x.shape[:-1]
        x2 = comm.all_gather(_flat(x), dim=0, group=gather_x.ref)
        weight = comm.all_gather(self.weight, dim=1, group=g["tp_k"].ref)
        y = comm.reduce_scatter(x2 @ weight.t(), dim=0, group=scatter_y.ref)
        y = y.reshape(*rows, y.shape[-1])
        if self.bias is not None:
            y = y + _use_vector(g, self.bias, "b" if self.kind == "ab" else "a")
        return y


# --------------------------------------------------------------------------- LayerNorm
class LayerNormTP(nn.LayerNorm, TPModule):
    """LayerNorm over a hidden dim split over ranks: mean and variance are all-reduced."""

    def __init__(
        self,
        normalized_shape: int,
        eps: float = 1e-5,
        bias: bool = True,
        *,
        groups: TPGroups,
        layout: str = "a",
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        nn.Module.__init__(self)
        self._init_tp(groups)
        self.layout = layout
        self.normalized_shape = (int(normalized_shape),)
        self.eps = eps
        self.elementwise_affine = True
        group = hidden_group(groups, layout)
        if group is not None:
            _divisible(
                "LayerNormTP",
                "normalized_shape",
                normalized_shape,
                group.size,
                f"{groups.mode} hidden split",
            )
        placements = _vector_placements(groups, layout)
        self._shard_param("weight", self.normalized_shape, placements, device, dtype)
        if bias:
            self._shard_param("bias", self.normalized_shape, placements, device, dtype)
        else:
            self.register_parameter("bias", None)

    def reset_parameters(self) -> None:
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.groups
        weight = _use_vector(g, self.weight, self.layout)
        bias = _use_vector(g, self.bias, self.layout) if self.bias is not None else None
        group = hidden_group(g, self.layout)
        if group is None:
            return F.layer_norm(x, self.normalized_shape, weight, bias, self.eps)
        n = self.normalized_shape[0]
        mean = comm.all_reduce(x.sum(-1, keepdim=True), group=group.ref) / n
        centred = x - mean
        var = comm.all_reduce((centred * centred).sum(-1, keepdim=True), group=group.ref) / n
        y = centred * torch.rsqrt(var + self.eps) * weight
        return y + bias if bias is not None else y


# --------------------------------------------------------------------------- embeddings
class _TPEmbedding(nn.Embedding, TPModule):
    """What the TP embeddings share: ``nn.Embedding``'s attributes without its full weight."""

    def _init_embedding(self, num_embeddings: int, embedding_dim: int, groups: TPGroups) -> None:
        nn.Module.__init__(self)
        self._init_tp(groups)
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.padding_idx = None
        self.max_norm = None
        self.norm_type = 2.0
        self.scale_grad_by_freq = False
        self.sparse = False

    def reset_parameters(self) -> None:  # values come from init_weights / a state dict
        return None


class VocabEmbedding(_TPEmbedding):
    """Token embedding taking the full ``[b, s]`` token ids, returning the block layout ``a``.

    1D: vocab rows split over the tp group, partial lookups all-reduced (replicated output).
    2D/2.5D: W[vocab chunk i, hidden chunk j] (replicated over depth); partial lookups are
    reduce-scattered over i along the batch. 3D: W[vocab chunk j·q+k, hidden chunk i];
    reduce-scattered over j, then over k.
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        *,
        groups: TPGroups,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        self._init_embedding(num_embeddings, embedding_dim, groups)
        mode, q = groups.mode, groups.q
        placements: tuple[Placement, ...]
        if mode == "1d":
            _divisible(
                "VocabEmbedding", "num_embeddings", num_embeddings, groups.size, "1D tp size"
            )
            placements = (Shard(0),)
        elif mode in ("2d", "2.5d"):
            _divisible("VocabEmbedding", "num_embeddings", num_embeddings, q, f"{mode} side q")
            _divisible("VocabEmbedding", "embedding_dim", embedding_dim, q, f"{mode} side q")
            placements = (Shard(0), Shard(1)) if mode == "2d" else (Replicate(), Shard(0), Shard(1))
        else:
            _divisible("VocabEmbedding", "num_embeddings", num_embeddings, q * q, "3D: q²")
            _divisible("VocabEmbedding", "embedding_dim", embedding_dim, q, "3D: q")
            placements = (Shard(1), Shard(0), Shard(0))
        self._shard_param("weight", (num_embeddings, embedding_dim), placements, device, dtype)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        g = self.groups
        weight = self.weight
        if g.mode == "2.5d":
            dep = g["tp_dep"]
            _divisible(
                "VocabEmbedding",
                "batch",
                tokens.shape[0],
                g.depth * g.q,
                "2.5D splits the batch over depth·q",
            )
            tokens = tokens.chunk(dep.size, 0)[dep.rank]
            weight = copy_to(weight, dep)
        start = self.tp_specs["weight"].offset[0]
        rows = weight.shape[0]
        inside = (tokens >= start) & (tokens < start + rows)
        local = torch.where(inside, tokens - start, torch.zeros_like(tokens))
        out = F.embedding(local, weight) * inside.unsqueeze(-1).to(weight.dtype)
        if g.mode == "1d":
            return reduce_from(out, g.tp)
        for group in batch_groups(g, "a")[-1:] if g.mode == "2.5d" else batch_groups(g, "a"):
            _divisible(
                "VocabEmbedding",
                "batch",
                out.shape[0],
                group.size,
                f"{g.mode} splits the batch over {group.label}",
            )
            out = comm.reduce_scatter(out, dim=0, group=group.ref) if group.size > 1 else out
        return out


class PositionEmbedding(_TPEmbedding):
    """Learned position embedding returning ``[..., hidden chunk]`` of the block layout ``a``.

    Positions are shared by every batch chunk, so the rows are sharded over the batch-split
    groups and all-gathered (2D: rows over i; 3D: rows over j·q+k): 1/P of the table in 1D
    (columns) and 3D, 1/q² in 2D/2.5D.
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        *,
        groups: TPGroups,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        self._init_embedding(num_embeddings, embedding_dim, groups)
        mode, q = groups.mode, groups.q
        placements: tuple[Placement, ...]
        if mode == "1d":
            _divisible("PositionEmbedding", "embedding_dim", embedding_dim, groups.size, "1D tp")
            placements = (Shard(1),)
        else:
            _divisible("PositionEmbedding", "num_embeddings", num_embeddings, q, f"{mode} side q")
            _divisible("PositionEmbedding", "embedding_dim", embedding_dim, q, f"{mode} side q")
            if mode == "2d":
                placements = (Shard(0), Shard(1))
            elif mode == "2.5d":
                placements = (Replicate(), Shard(0), Shard(1))
            else:
                _divisible("PositionEmbedding", "num_embeddings", num_embeddings, q * q, "3D: q²")
                placements = (Shard(1), Shard(0), Shard(0))
        self._shard_param("weight", (num_embeddings, embedding_dim), placements, device, dtype)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        g = self.groups
        weight = self.weight
        if g.mode in ("2d", "2.5d"):
            if g.mode == "2.5d":
                weight = copy_to(weight, g["tp_dep"])
            weight = comm.all_gather(weight, dim=0, group=g["tp_row"].ref)
        elif g.mode == "3d":
            weight = comm.all_gather(weight, dim=0, group=g["tp_k"].ref)
            weight = comm.all_gather(weight, dim=0, group=g["tp_j"].ref)
        else:  # 1D: activations are replicated, so the backward keeps this rank's columns
            weight = gather(weight, -1, g.tp)
        return F.embedding(positions, weight)
