"""The Mixture-of-Experts layer: router, top-k routing, capacity or dropless dispatch, aux losses.

Shape legend (used in names and comments below):

- ``T`` routed tokens (all leading dims of the input flattened), ``D`` model dim,
- ``E`` experts (global), ``L`` experts held by this rank (``E / ep``), ``H`` expert hidden,
- ``K`` experts per token (top-k), ``A`` kept (token, expert) assignments (``≤ T·K``).

Routing (per token): ``logits = x @ router.weight.T`` (+ ``gate_noise · N(0, 1) / E`` while
training), ``probs = softmax(logits)``, the top-``K`` experts are chosen, their gates are the
probabilities (renormalised over the ``K`` chosen when ``normalize_gates`` and ``K > 1``). The
output is ``Σ_kept gate · expert(x)``; a dropped assignment contributes 0, so in a residual block
``x + moe(x)`` a token dropped by every expert comes out unchanged.

Capacity (``capacity_factor > 0``): each expert takes at most
``capacity = ceil(capacity_factor · K · T / E)`` assignments of the ``T`` tokens on this rank.
Positions are given choice-major (all first choices before any second choice, GShard/Tutel's
``acc_base``), within a choice in priority order: ``priority="bpr"`` (Batch Prioritized Routing:
the tokens with the highest top-1 probability first, so the least confident are dropped) or
``"order"`` (arrival order). ``capacity_factor = 0`` is the dropless switch: every assignment is
computed (negative values are rejected).

Compute: assignments are sorted by expert once, gathered into one contiguous ``(A, D)`` block,
and each expert runs one ``addmm`` on its contiguous slice. The experts' weights are stored
stacked (``w1`` of shape ``(L, D, H)``) and split with one ``unbind`` per call, whose backward
is one ``stack`` — never ``w1[e]`` inside the loop, which would make every expert's backward
materialise a full ``(L, D, H)`` gradient (O(E²) traffic, the design doc's pitfall).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "AUX_LOSSES",
    "MoE",
    "MoEConfig",
    "Routing",
    "expert_capacity",
    "importance_load_loss",
    "route",
    "switch_loss",
    "z_loss",
]

AUX_LOSSES = ("importance_load", "switch", "z_loss")
"""Names accepted in ``MoEConfig.aux_losses``."""

_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "relu": F.relu,
    "silu": F.silu,
}


@dataclass(kw_only=True, slots=True)
class MoEConfig:
    """Configuration of one MoE layer (validates itself; plain data, so it saves as a dict).

    Attributes:
        dim: model dim ``D`` (input and output width).
        expert_hidden: hidden width ``H`` of each expert FFN (``D → H → D``).
        num_experts: number of experts ``E`` (global, over all expert-parallel ranks).
        top_k: experts per token, 1 or 2.
        capacity_factor: ``> 0``: capacity ``ceil(cf · K · T / E)`` per expert with token
            dropping; ``0``: dropless (every assignment computed). Negative → ValueError.
        priority: who keeps a slot when an expert is over capacity: ``"bpr"`` (highest router
            probability first) or ``"order"`` (arrival order).
        gate_noise: std of the router noise is ``gate_noise / E`` (Sparse-MLP's ε ~ N(0, 1/E²)
            at 1.0); applied only in training. Also the σ scale of the V-MoE load loss.
        normalize_gates: for ``K > 1``, renormalise the chosen gates to sum to 1.
        activation: expert activation, ``"gelu"``, ``"relu"`` or ``"silu"``.
        aux_losses: which auxiliary losses go into ``aux["loss"]``: any of
            ``"importance_load"`` (V-MoE CV² of importance and load), ``"switch"`` (Switch/GShard
            ``E · Σ f_e P_e``), ``"z_loss"`` (router z-loss).
        importance_load_weight: weight of the V-MoE loss in ``aux["loss"]``.
        switch_weight: weight of the Switch loss in ``aux["loss"]``.
        z_loss_weight: weight of the z-loss in ``aux["loss"]``.
        router_bias: give the router a bias.
        expert_bias: give the expert FFN layers biases.
    """

    dim: int
    expert_hidden: int
    num_experts: int
    top_k: int = 2
    capacity_factor: float = 0.0
    priority: str = "bpr"
    gate_noise: float = 0.0
    normalize_gates: bool = True
    activation: str = "gelu"
    aux_losses: tuple[str, ...] = ("switch",)
    importance_load_weight: float = 0.01
    switch_weight: float = 0.01
    z_loss_weight: float = 1e-3
    router_bias: bool = False
    expert_bias: bool = True

    def __post_init__(self) -> None:
        for name in ("dim", "expert_hidden", "num_experts", "top_k"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"MoEConfig.{name} must be a positive int, got {value!r}")
        if self.top_k not in (1, 2):
            raise ValueError(f"MoEConfig.top_k must be 1 or 2, got {self.top_k}")
        if self.top_k > self.num_experts:
            raise ValueError(
                f"MoEConfig.top_k={self.top_k} is larger than num_experts={self.num_experts}"
            )
        cf = self.capacity_factor
        if isinstance(cf, bool) or not isinstance(cf, int | float) or not math.isfinite(cf):
            raise ValueError(f"MoEConfig.capacity_factor must be a finite number, got {cf!r}")
        if cf < 0:
            raise ValueError(
                f"MoEConfig.capacity_factor must be > 0 (capacity with dropping) or 0 (dropless), "
                f"got {cf}"
            )
        if self.priority not in ("bpr", "order"):
            raise ValueError(f"MoEConfig.priority must be 'bpr' or 'order', got {self.priority!r}")
        if not math.isfinite(self.gate_noise) or self.gate_noise < 0:
            raise ValueError(f"MoEConfig.gate_noise must be >= 0, got {self.gate_noise!r}")
        if self.activation not in _ACTIVATIONS:
            raise ValueError(
                f"MoEConfig.activation must be one of {sorted(_ACTIVATIONS)}, "
                f"got {self.activation!r}"
            )
        self.aux_losses = tuple(self.aux_losses)
        for name in self.aux_losses:
            if name not in AUX_LOSSES:
                raise ValueError(
                    f"MoEConfig.aux_losses: unknown loss {name!r}; expected some of {AUX_LOSSES}"
                )
        if "importance_load" in self.aux_losses and self.gate_noise <= 0:
            raise ValueError(
                "MoEConfig: the 'importance_load' loss needs gate_noise > 0 (its load term is a "
                "Normal CDF with sigma = gate_noise / num_experts), "
                f"got gate_noise={self.gate_noise}"
            )
        for name in ("importance_load_weight", "switch_weight", "z_loss_weight"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"MoEConfig.{name} must be >= 0, got {value!r}")

    @property
    def dropless(self) -> bool:
        """Whether every assignment is computed (``capacity_factor == 0``)."""
        return self.capacity_factor == 0

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (lists, numbers, strings) for checkpoints."""
        data = asdict(self)
        data["aux_losses"] = list(self.aux_losses)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MoEConfig:
        """Rebuild from ``to_dict()`` output; unknown keys raise ValueError naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"MoEConfig: unknown keys {unknown}")
        values = dict(data)
        if "aux_losses" in values:
            values["aux_losses"] = tuple(values["aux_losses"])
        return cls(**values)


def expert_capacity(num_tokens: int, num_experts: int, top_k: int, capacity_factor: float) -> int:
    """Slots per expert: ``ceil(capacity_factor · top_k · num_tokens / num_experts)``, at least 1.

    Args:
        num_tokens: tokens routed on this rank (``T``).
        num_experts: experts (``E``).
        top_k: experts per token (``K``).
        capacity_factor: the factor (> 0).

    Returns:
        The capacity of each expert.
    """
    return max(1, math.ceil(capacity_factor * top_k * num_tokens / num_experts))


# --------------------------------------------------------------------------- routing
@dataclass(frozen=True, slots=True)
class Routing:
    """The routing decision for ``T`` tokens.

    Attributes:
        probs: ``(T, E)`` router probabilities (softmax of the possibly noisy logits).
        expert_index: ``(T, K)`` chosen experts, best first.
        gates: ``(T, K)`` gate of each choice (0 where the assignment was dropped).
        kept: ``(T, K)`` bool, whether the assignment fits in its expert's capacity.
        capacity: slots per expert, or None when dropless.
    """

    probs: torch.Tensor
    expert_index: torch.Tensor
    gates: torch.Tensor
    kept: torch.Tensor
    capacity: int | None


def route(
    logits_TE: torch.Tensor,
    top_k: int,
    *,
    capacity_factor: float = 0.0,
    priority: str = "bpr",
    normalize_gates: bool = True,
) -> Routing:
    """Chooses the top-``K`` experts of each token and applies the capacity.

    Args:
        logits_TE: ``(T, E)`` router logits (noise already added if any).
        top_k: ``K``, experts per token.
        capacity_factor: ``> 0`` for capacity with dropping, ``0`` for dropless.
        priority: ``"bpr"`` or ``"order"`` (see the module docstring).
        normalize_gates: renormalise the ``K`` gates to sum to 1 when ``K > 1`` (before any
            dropping, as Tutel does).

    Returns:
        The routing; ``gates`` are differentiable w.r.t. ``logits_TE``.
    """
    num_tokens, num_experts = logits_TE.shape
    probs_TE = torch.softmax(logits_TE, dim=-1)
    top_probs_TK, expert_TK = probs_TE.topk(top_k, dim=-1)
    gates_TK = top_probs_TK
    if normalize_gates and top_k > 1:
        gates_TK = top_probs_TK / top_probs_TK.sum(dim=-1, keepdim=True)
    if capacity_factor == 0:
        kept_TK = torch.ones_like(expert_TK, dtype=torch.bool)
        return Routing(probs_TE, expert_TK, gates_TK, kept_TK, None)
    capacity = expert_capacity(num_tokens, num_experts, top_k, capacity_factor)
    if priority == "bpr":
        order_T = torch.argsort(top_probs_TK[:, 0].detach(), descending=True, stable=True)
    else:
        order_T = torch.arange(num_tokens, device=logits_TE.device)
    # Choice-major queue: every token's first choice (in priority order), then second choices.
    queue_Q = expert_TK[order_T].t().reshape(-1)  # (K·T,)
    one_hot_QE = F.one_hot(queue_Q, num_experts)
    position_Q = (one_hot_QE.cumsum(dim=0) * one_hot_QE).sum(dim=1) - 1  # slot within expert
    kept_queue_KT = (position_Q < capacity).view(top_k, num_tokens)
    kept_TK = torch.empty_like(kept_queue_KT.t())
    kept_TK[order_T] = kept_queue_KT.t()
    gates_TK = gates_TK * kept_TK
    return Routing(probs_TE, expert_TK, gates_TK, kept_TK, capacity)


# --------------------------------------------------------------------------- aux losses
def _cv_squared(values: torch.Tensor) -> torch.Tensor:
    """Squared coefficient of variation ``var / mean²`` (unbiased var, as Tutel)."""
    return values.var() / (values.mean() ** 2 + 1e-10)


def switch_loss(probs_TE: torch.Tensor, expert_TK: torch.Tensor) -> torch.Tensor:
    """Switch/GShard balance loss ``E · Σ_e f_e · P_e`` (1.0 at perfectly uniform routing).

    ``f_e`` is the fraction of tokens whose first choice is ``e``; ``P_e`` the mean router
    probability of ``e``.

    Args:
        probs_TE: ``(T, E)`` router probabilities.
        expert_TK: ``(T, K)`` chosen experts (column 0 is the first choice).

    Returns:
        A scalar (unweighted).
    """
    num_experts = probs_TE.shape[1]
    fraction_E = torch.bincount(expert_TK[:, 0], minlength=num_experts).to(probs_TE.dtype)
    fraction_E = fraction_E / probs_TE.shape[0]
    return num_experts * (fraction_E * probs_TE.mean(dim=0)).sum()


def importance_load_loss(
    clean_logits_TE: torch.Tensor,
    noisy_logits_TE: torch.Tensor,
    top_k: int,
    gate_noise: float,
) -> torch.Tensor:
    """V-MoE importance + load loss ``½ CV²(Imp) + ½ CV²(Load)`` (Sparse-MLP's aux loss).

    ``Imp_e = Σ_t softmax(clean logits)_{t,e}``; ``Load_e = Σ_t Φ((clean_{t,e} − thr_t) / σ)``
    with ``thr_t`` the ``K``-th largest noisy logit of token ``t`` and ``σ = gate_noise / E``.

    Args:
        clean_logits_TE: ``(T, E)`` logits without noise.
        noisy_logits_TE: ``(T, E)`` logits the routing used.
        top_k: ``K``.
        gate_noise: the noise scale (> 0).

    Returns:
        A scalar (unweighted).
    """
    num_experts = clean_logits_TE.shape[1]
    importance_E = torch.softmax(clean_logits_TE, dim=-1).sum(dim=0)
    threshold_T1 = noisy_logits_TE.topk(top_k, dim=-1).values[:, -1:]
    sigma = gate_noise / num_experts
    z_TE = (clean_logits_TE - threshold_T1) / sigma
    load_E = (0.5 * (1.0 + torch.erf(z_TE / math.sqrt(2.0)))).sum(dim=0)
    return 0.5 * _cv_squared(importance_E) + 0.5 * _cv_squared(load_E)


def z_loss(logits_TE: torch.Tensor) -> torch.Tensor:
    """Router z-loss ``mean_t (logsumexp_e logits_{t,e})²`` (ST-MoE)."""
    return torch.logsumexp(logits_TE, dim=-1).pow(2).mean()


# --------------------------------------------------------------------------- the layer
class MoE(nn.Module):
    """A Mixture-of-Experts FFN layer: ``y = Σ_{kept top-k} gate · expert(x)``.

    Input ``(..., D)``; output ``(y, aux)`` with ``y`` of the input's shape and ``aux`` a dict:

    - ``"loss"``: the weighted sum of the selected aux losses (add it to the training loss; for
      several layers, sum their ``aux["loss"]``);
    - ``"switch"``, ``"importance_load"``, ``"z_loss"``: each selected loss, unweighted;
    - ``"tokens_per_expert"``: ``(E,)`` long, assignments each expert computed (after dropping);
    - ``"dropped"``: number of dropped assignments; ``"dropped_fraction"``: dropped / (T·K);
    - ``"capacity"``: slots per expert (``-1`` when dropless).

    Statistics and losses are computed over the tokens on this rank.

    Weights (documented attributes; ``ones-distill`` reads them):

    - ``router``: ``nn.Linear(D, E)``; ``router.weight`` is ``(E, D)``;
    - ``w1`` ``(L, D, H)``, ``b1`` ``(L, H)``, ``w2`` ``(L, H, D)``, ``b2`` ``(L, D)``: the experts
      held here, expert ``local_expert_ids[i]`` is ``x ↦ act(x @ w1[i] + b1[i]) @ w2[i] + b2[i]``
      (``b1``/``b2`` are None when ``expert_bias=False``);
    - ``local_expert_ids``: the global ids of the held experts (``range(E)`` without expert
      parallelism); ``expert_weights(e)`` returns one expert's tensors by global id.

    State-dict keys name experts by their **global** id (``experts.<e>.w1`` ...), so a
    checkpoint written under one expert-parallel size loads under another
    (see ``ptrain.moe.parallel``).
    """

    def __init__(self, config: MoEConfig) -> None:
        """Builds the layer with freshly initialised weights (all ``E`` experts held).

        Args:
            config: the layer configuration.
        """
        super().__init__()
        self.config = config
        dim, hidden, experts = config.dim, config.expert_hidden, config.num_experts
        self.router = nn.Linear(dim, experts, bias=config.router_bias)
        self.w1 = nn.Parameter(torch.empty(experts, dim, hidden))
        self.w2 = nn.Parameter(torch.empty(experts, hidden, dim))
        self.b1: nn.Parameter | None = None
        self.b2: nn.Parameter | None = None
        if config.expert_bias:
            self.b1 = nn.Parameter(torch.zeros(experts, hidden))
            self.b2 = nn.Parameter(torch.zeros(experts, dim))
        self.local_expert_ids: list[int] = list(range(experts))
        # Set by ptrain.moe.parallel.apply_expert_parallel (ep_group None = the world group).
        self.expert_parallel = False
        self.ep_group: Any = None
        self._activation = _ACTIVATIONS[config.activation]
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialises the experts like ``nn.Linear`` (uniform ±1/√fan_in), biases at 0."""
        with torch.no_grad():
            bound1 = 1.0 / math.sqrt(self.config.dim)
            bound2 = 1.0 / math.sqrt(self.config.expert_hidden)
            self.w1.uniform_(-bound1, bound1)
            self.w2.uniform_(-bound2, bound2)
            if self.b1 is not None and self.b2 is not None:
                self.b1.zero_()
                self.b2.zero_()

    @property
    def num_experts(self) -> int:
        """``E``, the global number of experts."""
        return self.config.num_experts

    @property
    def num_local_experts(self) -> int:
        """``L``, experts held by this rank."""
        return len(self.local_expert_ids)

    def expert_weights(self, expert: int) -> dict[str, torch.Tensor | None]:
        """One expert's weights by global id.

        Returns:
            ``{"w1": (D, H), "b1": (H,) or None, "w2": (H, D), "b2": (D,) or None}`` (views).


        Raises:
            ValueError: the expert is not held by this rank.
        """
        if expert not in self.local_expert_ids:
            raise ValueError(
                f"expert {expert} is not held here (local experts {self.local_expert_ids})"
            )
        i = self.local_expert_ids.index(expert)
        return {
            "w1": self.w1[i],
            "b1": None if self.b1 is None else self.b1[i],
            "w2": self.w2[i],
            "b2": None if self.b2 is None else self.b2[i],
        }

    def extra_repr(self) -> str:
        c = self.config
        mode = "dropless" if c.dropless else f"capacity_factor={c.capacity_factor}"
        return (
            f"dim={c.dim}, experts={c.num_experts} (local {self.num_local_experts}), "
            f"expert_hidden={c.expert_hidden}, top_k={c.top_k}, {mode}"
        )

    # ----------------------------------------------------------------- compute
    def run_experts(self, x_AD: torch.Tensor, counts: list[int]) -> torch.Tensor:
        """Runs local expert ``i`` on the ``i``-th contiguous block of ``x_AD``.

        Args:
            x_AD: ``(A, D)`` inputs sorted by local expert.
            counts: ``L`` block lengths summing to ``A``.

        Returns:
            ``(A, D)`` expert outputs in the same order.
        """
        w1s, w2s = self.w1.unbind(0), self.w2.unbind(0)  # one unbind: backward is one stack
        b1s = self.b1.unbind(0) if self.b1 is not None else [None] * len(w1s)
        b2s = self.b2.unbind(0) if self.b2 is not None else [None] * len(w1s)
        outputs = []
        for x_ND, w1, b1, w2, b2, count in zip(
            x_AD.split(counts), w1s, b1s, w2s, b2s, counts, strict=True
        ):
            if count == 0:
                continue
            h_NH = torch.addmm(b1, x_ND, w1) if b1 is not None else x_ND @ w1
            h_NH = self._activation(h_NH)
            outputs.append(torch.addmm(b2, h_NH, w2) if b2 is not None else h_NH @ w2)
        if not outputs:
            return x_AD.new_zeros(x_AD.shape)
        return torch.cat(outputs) if len(outputs) > 1 else outputs[0]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        """Routes every token of ``x`` to its top-k experts.

        Args:
            x: ``(..., D)``.

        Returns:
            ``(y, aux)``: ``y`` of shape ``(..., D)``, ``aux`` as described in the class docstring.
        """
        config = self.config
        if x.shape[-1] != config.dim:
            raise ValueError(f"MoE: expected input (..., {config.dim}), got {tuple(x.shape)}")
        x_TD = x.reshape(-1, config.dim)
        num_tokens = x_TD.shape[0]
        clean_logits_TE = self.router(x_TD)
        logits_TE = clean_logits_TE
        if self.training and config.gate_noise > 0:
            noise = torch.randn_like(clean_logits_TE) * (config.gate_noise / config.num_experts)
            logits_TE = clean_logits_TE + noise
        routing = route(
            logits_TE,
            config.top_k,
            capacity_factor=config.capacity_factor,
            priority=config.priority,
            normalize_gates=config.normalize_gates,
        )
        # Flatten the kept (token, expert) assignments and sort them by expert.
        token_A = torch.arange(num_tokens, device=x.device).repeat_interleave(config.top_k)
        expert_A = routing.expert_index.reshape(-1)
        gate_A = routing.gates.reshape(-1)
        if routing.capacity is not None:
            kept_A = routing.kept.reshape(-1)
            token_A, expert_A, gate_A = token_A[kept_A], expert_A[kept_A], gate_A[kept_A]
        order_A = torch.argsort(expert_A, stable=True)
        token_A, expert_A, gate_A = token_A[order_A], expert_A[order_A], gate_A[order_A]
        tokens_per_expert_E = torch.bincount(expert_A, minlength=config.num_experts)
        x_AD = x_TD.index_select(0, token_A)
        if not self.expert_parallel:
            y_AD = self.run_experts(x_AD, tokens_per_expert_E.tolist())
        else:
            from ptrain.moe.parallel import expert_parallel_compute

            y_AD = expert_parallel_compute(self, x_AD, tokens_per_expert_E)
        y_AD = y_AD * gate_A.unsqueeze(1).to(y_AD.dtype)
        y_TD = x_TD.new_zeros(x_TD.shape).index_add_(0, token_A, y_AD)  # in place: no copy
        aux = self._aux(clean_logits_TE, logits_TE, routing, tokens_per_expert_E, num_tokens)
        return y_TD.view(x.shape), aux

    def _aux(
        self,
        clean_logits_TE: torch.Tensor,
        logits_TE: torch.Tensor,
        routing: Routing,
        tokens_per_expert_E: torch.Tensor,
        num_tokens: int,
    ) -> dict[str, Any]:
        config = self.config
        total = clean_logits_TE.new_zeros(())
        aux: dict[str, Any] = {}
        if "switch" in config.aux_losses:
            aux["switch"] = switch_loss(routing.probs, routing.expert_index)
            total = total + config.switch_weight * aux["switch"]
        if "importance_load" in config.aux_losses:
            aux["importance_load"] = importance_load_loss(
                clean_logits_TE, logits_TE, config.top_k, config.gate_noise
            )
            total = total + config.importance_load_weight * aux["importance_load"]
        if "z_loss" in config.aux_losses:
            aux["z_loss"] = z_loss(clean_logits_TE)
            total = total + config.z_loss_weight * aux["z_loss"]
        assignments = num_tokens * config.top_k
        dropped = assignments - int(tokens_per_expert_E.sum())
        aux.update(
            loss=total,
            tokens_per_expert=tokens_per_expert_E.detach(),
            dropped=dropped,
            dropped_fraction=dropped / assignments if assignments else 0.0,
            capacity=-1 if routing.capacity is None else routing.capacity,
        )
        return aux

    # ----------------------------------------------------------------- state dict (global ids)
    _EXPERT_TENSORS = ("w1", "b1", "w2", "b2")

    def _save_to_state_dict(
        self, destination: dict[str, Any], prefix: str, keep_vars: bool
    ) -> None:
        for name in self._EXPERT_TENSORS:
            stacked = getattr(self, name)
            if stacked is None:
                continue
            for i, expert in enumerate(self.local_expert_ids):
                value = stacked[i] if keep_vars else stacked.detach()[i]
                destination[f"{prefix}experts.{expert}.{name}"] = value

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        for name in self._EXPERT_TENSORS:
            stacked = getattr(self, name)
            if stacked is None:
                continue
            for i, expert in enumerate(self.local_expert_ids):
                key = f"{prefix}experts.{expert}.{name}"
                if key not in state_dict:
                    missing_keys.append(key)
                    continue
                value = state_dict[key]
                if value.shape != stacked.shape[1:]:
                    error_msgs.append(
                        f"size mismatch for {key}: checkpoint {tuple(value.shape)}, "
                        f"model {tuple(stacked.shape[1:])}"
                    )
                    continue
                with torch.no_grad():
                    stacked[i].copy_(value)
        expert_prefix = f"{prefix}experts."
        for key in state_dict:
            if not key.startswith(expert_prefix):
                continue
            parts = key[len(expert_prefix) :].split(".")
            valid = (
                len(parts) == 2
                and parts[0].isdigit()
                and parts[1] in self._EXPERT_TENSORS
                and getattr(self, parts[1]) is not None
            )
            if not valid or int(parts[0]) >= self.config.num_experts:
                unexpected_keys.append(key)
            # keys of experts held by other ranks are expected here and ignored
