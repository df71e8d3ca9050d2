"""Knowledge gathering: turn every ``ptrain.moe.MoE`` layer of a model into one dense FFN.

Shape legend: ``E`` experts, ``D`` model dim, ``H`` expert hidden, ``R`` SVD rank,
``K`` hidden neurons kept per expert (Top-K gathering), ``T`` tokens.

An expert ``e`` of a ``ptrain.moe.MoE`` layer is ``x ↦ act(x @ w1[e] + b1[e]) @ w2[e] + b2[e]``
with ``w1`` ``(E, D, H)`` and ``w2`` ``(E, H, D)``. Gathering builds one FFN of the same form:

- ``sum``: ``W = Σ_e W^e`` for both matrices (plain merging).
- ``avg``: ``W = (1/E) Σ_e W^e``.
- ``topk`` (Top-KG, documented reading): per expert keep the ``K`` hidden neurons with the
  largest importance ``‖w1[:, j]‖ · ‖w2[j, :]‖`` (``K = H / E`` by default, the remainder going to
  the first experts, so the dense hidden width stays ``H``) and concatenate them (their ``b1``
  entries follow their neurons).
- ``svd`` (SVD-KG, documented reading): per expert and per matrix ``W^e = U Σ Vᵀ``, keep the top
  ``R`` singular triplets, and combine the low-rank pieces across experts by ``sum`` (default)
  or ``mean``. Default ``R = min(D, H) // E`` (so the ``E`` summed pieces can reach full rank).

The output biases ``b2`` (and ``b1`` for every method but ``topk``) are averaged over experts —
an unverified design choice (design doc §2.2). The router is dropped. With one expert every
method returns that expert exactly; ``svd`` at full rank with ``combine="sum"`` equals ``sum``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ptrain.core.cli import UserError
from ptrain.moe import MoE

__all__ = [
    "COMBINES",
    "METHODS",
    "DenseFFN",
    "GatherConfig",
    "GatherError",
    "GatheredWeights",
    "default_rank",
    "find_moe_layers",
    "gather_layer",
    "gather_model",
    "gather_weights",
    "low_rank_approximation",
    "parameter_count",
]

METHODS = ("sum", "avg", "topk", "svd")
"""Gathering methods."""

COMBINES = ("sum", "mean")
"""How ``svd`` combines the experts' low-rank pieces."""

_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "relu": F.relu,
    "silu": F.silu,
}


class GatherError(UserError, ValueError):
    """The teacher cannot be gathered (no MoE layer, a bad rank, missing experts)."""


@dataclass(kw_only=True, slots=True)
class GatherConfig:
    """How to gather (validates itself).

    Attributes:
        method: ``"sum"``, ``"avg"``, ``"topk"`` or ``"svd"``.
        rank: ``svd`` rank ``R`` per expert and matrix (None: ``min(D, H) // E``, at least 1).
        combine: ``svd`` only: ``"sum"`` or ``"mean"`` of the experts' low-rank pieces.
        neurons_per_expert: ``topk`` only: ``K`` (None: ``H / E`` with the remainder spread over
            the first experts, so the dense FFN keeps width ``H``; else width ``K · E``).
    """

    method: str = "svd"
    rank: int | None = None
    combine: str = "sum"
    neurons_per_expert: int | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"GatherConfig.method must be one of {METHODS}, got {self.method!r}")
        if self.combine not in COMBINES:
            raise ValueError(
                f"GatherConfig.combine must be one of {COMBINES}, got {self.combine!r}"
            )
        for name in ("rank", "neurons_per_expert"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ValueError(f"GatherConfig.{name} must be None or an int >= 1, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form."""
        return {
            "method": self.method,
            "rank": self.rank,
            "combine": self.combine,
            "neurons_per_expert": self.neurons_per_expert,
        }


class DenseFFN(nn.Module):
    """A dense FFN that stands in for an MoE layer: ``x ↦ fc2(act(fc1(x)))``.

    Like ``ptrain.moe.MoE`` its forward returns ``(y, aux)`` (``aux["loss"]`` is a zero tensor),
    so it drops into any model built around MoE layers. ``fc1.weight`` is ``(H, D)`` (the MoE's
    ``w1[e]`` transposed), ``fc2.weight`` is ``(D, H)``.
    """

    def __init__(self, dim: int, hidden: int, *, activation: str = "gelu", bias: bool = True):
        """Builds the FFN with ``nn.Linear`` initialisation.

        Args:
            dim: ``D``.
            hidden: ``H``.
            activation: ``"gelu"``, ``"relu"`` or ``"silu"``.
            bias: whether both linear maps have biases.
        """
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(
                f"DenseFFN: activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}"
            )
        self.dim, self.hidden, self.activation, self.bias = dim, hidden, activation, bias
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.fc2 = nn.Linear(hidden, dim, bias=bias)
        self._act = _ACTIVATIONS[activation]

    def spec(self) -> dict[str, Any]:
        """The constructor arguments (plain data, for model files)."""
        return {
            "dim": self.dim,
            "hidden": self.hidden,
            "activation": self.activation,
            "bias": self.bias,
        }

    def extra_repr(self) -> str:
        return f"dim={self.dim}, hidden={self.hidden}, activation={self.activation}"

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        """``(..., D) -> ((..., D), {"loss": 0})``."""
        y = self.fc2(self._act(self.fc1(x)))
        return y, {"loss": x.new_zeros(()), "dropped": 0, "dropped_fraction": 0.0, "capacity": -1}


@dataclass(frozen=True, slots=True)
class GatheredWeights:
    """One dense FFN: ``w1`` ``(D, H)``, ``b1`` ``(H,)`` or None, ``w2`` ``(H, D)``, ``b2``."""

    w1: torch.Tensor
    b1: torch.Tensor | None
    w2: torch.Tensor
    b2: torch.Tensor | None


def default_rank(dim: int, hidden: int, num_experts: int) -> int:
    """``max(1, min(D, H) // E)``: the ``E`` summed rank-``R`` pieces can reach full rank."""
    return max(1, min(dim, hidden) // num_experts)


def low_rank_approximation(weight: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Best rank-``R`` approximation (Eckart–Young) of each matrix in a batch.

    Args:
        weight: ``(..., M, N)``.
        rank: ``R``, ``1 ≤ R ≤ min(M, N)``.

    Returns:
        ``(approx, singular_values)``: ``approx`` of ``weight``'s shape and the full
        ``(..., min(M, N))`` singular values (descending), so the Frobenius error is
        ``sqrt(Σ_{i ≥ R} σ_i²)``.

    Raises:
        GatherError: the rank is out of range.
    """
    rows, cols = weight.shape[-2:]
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= min(rows, cols):
        raise GatherError(
            f"svd rank {rank!r} is out of range for a {rows}x{cols} weight "
            f"(expected 1 <= rank <= {min(rows, cols)})"
        )
    u, s, vh = torch.linalg.svd(weight.double(), full_matrices=False)
    approx = (u[..., :, :rank] * s[..., None, :rank]) @ vh[..., :rank, :]
    return approx.to(weight.dtype), s.to(weight.dtype)


def _topk_neurons(w1_EDH: torch.Tensor, w2_EHD: torch.Tensor, per_expert: list[int]) -> list:
    importance_EH = w1_EDH.norm(dim=1) * w2_EHD.norm(dim=2)
    kept = []
    for e, count in enumerate(per_expert):
        index = importance_EH[e].topk(count).indices
        kept.append(index.sort().values)  # original order: E=1, K=H is the identity
    return kept


def gather_weights(
    w1_EDH: torch.Tensor,
    w2_EHD: torch.Tensor,
    b1_EH: torch.Tensor | None = None,
    b2_ED: torch.Tensor | None = None,
    config: GatherConfig | None = None,
    *,
    where: str = "MoE",
) -> GatheredWeights:
    """Gathers stacked expert weights into one dense FFN (see the module docstring).

    Args:
        w1_EDH: ``(E, D, H)``.
        w2_EHD: ``(E, H, D)``.
        b1_EH: ``(E, H)`` or None.
        b2_ED: ``(E, D)`` or None.
        config: the method (default: ``GatherConfig()``, i.e. ``svd`` at the default rank).
        where: a name for error messages (the layer's name).

    Returns:
        The dense weights (new tensors, detached).

    Raises:
        GatherError: the rank or ``neurons_per_expert`` is too large for the weights.
    """
    config = config or GatherConfig()
    w1_EDH, w2_EHD = w1_EDH.detach(), w2_EHD.detach()
    experts, dim, hidden = w1_EDH.shape
    b1 = None if b1_EH is None else b1_EH.detach().mean(dim=0)
    b2 = None if b2_ED is None else b2_ED.detach().mean(dim=0)
    if config.method == "sum":
        return GatheredWeights(w1_EDH.sum(0), b1, w2_EHD.sum(0), b2)
    if config.method == "avg":
        return GatheredWeights(w1_EDH.mean(0), b1, w2_EHD.mean(0), b2)
    if config.method == "topk":
        if config.neurons_per_expert is None:
            per_expert = [hidden // experts + (e < hidden % experts) for e in range(experts)]
        elif config.neurons_per_expert > hidden:
            raise GatherError(
                f"{where}: neurons_per_expert={config.neurons_per_expert} is larger than the "
                f"expert hidden width {hidden}"
            )
        else:
            per_expert = [config.neurons_per_expert] * experts
        kept = _topk_neurons(w1_EDH, w2_EHD, per_expert)
        w1 = torch.cat([w1_EDH[e][:, index] for e, index in enumerate(kept)], dim=1)
        w2 = torch.cat([w2_EHD[e][index, :] for e, index in enumerate(kept)], dim=0)
        if b1_EH is not None:
            b1 = torch.cat([b1_EH.detach()[e][index] for e, index in enumerate(kept)])
        return GatheredWeights(w1, b1, w2, b2)
    # svd
    rank = config.rank if config.rank is not None else default_rank(dim, hidden, experts)
    if rank > min(dim, hidden):
        raise GatherError(
            f"{where}: svd rank {rank} is larger than the expert weights allow: each expert's "
            f"w1 is {dim}x{hidden}, so rank must be <= {min(dim, hidden)}"
        )
    pieces1, _ = low_rank_approximation(w1_EDH, rank)
    pieces2, _ = low_rank_approximation(w2_EHD, rank)
    reduce = torch.sum if config.combine == "sum" else torch.mean
    return GatheredWeights(reduce(pieces1, dim=0), b1, reduce(pieces2, dim=0), b2)


def _expert_tensors(layer: MoE, where: str) -> tuple[torch.Tensor | None, ...]:
    if sorted(layer.local_expert_ids) != list(range(layer.num_experts)):
        raise GatherError(
            f"{where}: holds experts {layer.local_expert_ids} of {layer.num_experts}; gathering "
            f"needs every expert (load the unsharded model, e.g. ptrain.moe.load_model)"
        )
    order = [layer.local_expert_ids.index(e) for e in range(layer.num_experts)]
    pick = torch.tensor(order)
    return tuple(
        None if t is None else t.detach()[pick] for t in (layer.w1, layer.w2, layer.b1, layer.b2)
    )


def gather_layer(layer: MoE, config: GatherConfig | None = None, *, where: str = "MoE") -> DenseFFN:
    """Builds the dense FFN of one MoE layer.

    Args:
        layer: a ``ptrain.moe.MoE`` holding every expert.
        config: the method.
        where: the layer's name for error messages.

    Returns:
        A ``DenseFFN`` with the layer's activation, on the layer's device and dtype.

    Raises:
        GatherError: experts missing (expert-parallel shard), bad rank.
    """
    w1, w2, b1, b2 = _expert_tensors(layer, where)
    if w1 is None or w2 is None:  # a MoE layer always has both stacked weight matrices
        raise GatherError(f"{where}: the layer has no expert weights w1/w2")
    weights = gather_weights(w1, w2, b1, b2, config, where=where)
    dense = DenseFFN(
        layer.config.dim,
        weights.w1.shape[1],
        activation=layer.config.activation,
        bias=layer.b1 is not None,
    ).to(device=w1.device, dtype=w1.dtype)
    with torch.no_grad():
        dense.fc1.weight.copy_(weights.w1.t())
        dense.fc2.weight.copy_(weights.w2.t())
        if dense.fc1.bias is not None and weights.b1 is not None:
            dense.fc1.bias.copy_(weights.b1)
        if dense.fc2.bias is not None and weights.b2 is not None:
            dense.fc2.bias.copy_(weights.b2)
    return dense


def find_moe_layers(model: nn.Module) -> list[tuple[str, MoE]]:
    """The ``(name, layer)`` pairs of every ``ptrain.moe.MoE`` in ``model`` (module order)."""
    return [(name, module) for name, module in model.named_modules() if isinstance(module, MoE)]


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def gather_model(
    teacher: nn.Module,
    config: GatherConfig | None = None,
    *,
    source: str = "teacher",
) -> nn.Module:
    """The dense student: a copy of ``teacher`` with every MoE layer replaced by its gathered FFN.

    Non-MoE weights (embeddings, norms, token MLPs, heads) are copied unchanged; routers are
    dropped. The teacher is not modified.

    Args:
        teacher: any module built from ``ptrain.moe.MoE`` layers.
        config: the gathering method.
        source: a name for error messages (e.g. the checkpoint path).

    Returns:
        The student (same training/eval mode as the teacher).

    Raises:
        GatherError: the teacher has no MoE layer, or a layer cannot be gathered.
    """
    config = config or GatherConfig()
    layers = find_moe_layers(teacher)
    if not layers:
        raise GatherError(
            f"{source}: no ptrain.moe.MoE layer found in this {type(teacher).__name__}; "
            f"nothing to gather"
        )
    if layers[0][0] == "":
        return gather_layer(layers[0][1], config, where=source)
    dense_layers = {
        name: gather_layer(layer, config, where=f"{source}: {name}") for name, layer in layers
    }
    memo = {id(layer): None for _, layer in layers}  # don't copy what is replaced
    student = copy.deepcopy(teacher, memo)
    for name, dense in dense_layers.items():
        _replace(student, name, dense)
    for parameter in student.parameters():  # a frozen teacher must not give a frozen student
        parameter.requires_grad_(True)
    if find_moe_layers(student):  # pragma: no cover - a nested MoE inside an MoE
        raise GatherError(f"{source}: MoE layers nested inside MoE layers are not supported")
    return student


def parameter_count(model: nn.Module) -> int:
    """Number of parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())
