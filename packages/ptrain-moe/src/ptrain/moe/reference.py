"""Reference and baseline MoE computations (tests and the ``bench layer`` contract).

Shape legend: ``T`` tokens, ``D`` model dim, ``E`` experts, ``H`` expert hidden, ``K`` top-k,
``C`` capacity.

- ``all_experts_reference``: every expert on every token, then masked by the routing — the
  oracle for the dropless path (cost ≈ E/K times the MoE).
- ``NaiveLoopMoE``: for each expert, boolean-mask its tokens, run it, ``index_add`` back; experts
  are separate ``nn.Linear`` modules (no stacked-weight slicing).
- ``EinsumDispatchMoE``: GShard-style one-hot ``(T, E, C)`` dispatch/combine tensors and
  ``einsum``, with capacity.
- ``DenseFFN``: ``D → K·H → D``, the same active FLOPs as a top-K MoE.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from ptrain.moe.layer import _ACTIVATIONS, MoE, expert_capacity, route

__all__ = ["DenseFFN", "EinsumDispatchMoE", "NaiveLoopMoE", "all_experts_reference"]


def all_experts_reference(layer: MoE, x: torch.Tensor) -> torch.Tensor:
    """Runs every (local, unsharded) expert on every token and keeps the routed ones.

    Uses the layer's own routing (no noise: call in eval mode or with ``gate_noise=0``).

    Args:
        layer: an unsharded ``MoE``.
        x: ``(..., D)``.

    Returns:
        ``(..., D)``, equal to ``layer(x)[0]``.
    """
    config = layer.config
    x_TD = x.reshape(-1, config.dim)
    routing = route(
        layer.router(x_TD),
        config.top_k,
        capacity_factor=config.capacity_factor,
        priority=config.priority,
        normalize_gates=config.normalize_gates,
    )
    activation = _ACTIVATIONS[config.activation]
    h_ETH = torch.einsum("td,edh->eth", x_TD, layer.w1)
    if layer.b1 is not None:
        h_ETH = h_ETH + layer.b1[:, None, :]
    y_ETD = torch.einsum("eth,ehd->etd", activation(h_ETH), layer.w2)
    if layer.b2 is not None:
        y_ETD = y_ETD + layer.b2[:, None, :]
    weight_TE = torch.zeros(
        x_TD.shape[0], config.num_experts, dtype=routing.gates.dtype, device=x.device
    ).scatter_add(1, routing.expert_index, routing.gates)
    return torch.einsum("te,etd->td", weight_TE.to(y_ETD.dtype), y_ETD).view(x.shape)


class DenseFFN(nn.Module):
    """A dense FFN ``D → hidden → D`` (``hidden = K·H`` matches a top-K MoE's active FLOPs)."""

    def __init__(self, dim: int, hidden: int, activation: str = "gelu") -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self._activation = _ACTIVATIONS[activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., D) -> (..., D)``."""
        return self.fc2(self._activation(self.fc1(x)))


class NaiveLoopMoE(nn.Module):
    """The textbook MoE: per expert, ``nonzero`` on a boolean mask, run, ``index_add`` back."""

    def __init__(self, layer: MoE) -> None:
        """Copies the router and experts of an unsharded ``layer`` into separate modules."""
        super().__init__()
        config = layer.config
        self.config = config
        self.router = nn.Linear(config.dim, config.num_experts, bias=config.router_bias)
        self.router.load_state_dict(layer.router.state_dict())
        self.experts = nn.ModuleList(
            DenseFFN(config.dim, config.expert_hidden, config.activation)
            for _ in range(config.num_experts)
        )
        with torch.no_grad():
            for e, module in enumerate(self.experts):
                expert = cast(DenseFFN, module)
                weights = layer.expert_weights(e)
                w1, w2 = weights["w1"], weights["w2"]
                if w1 is None or w2 is None:  # an expert always has both weight matrices
                    raise ValueError(f"expert {e} of the layer has no w1/w2")
                expert.fc1.weight.copy_(w1.t())
                expert.fc2.weight.copy_(w2.t())
                for linear, bias in ((expert.fc1, weights["b1"]), (expert.fc2, weights["b2"])):
                    if bias is None:
                        linear.bias.zero_()
                    else:
                        linear.bias.copy_(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., D) -> (..., D)``, dropless."""
        config = self.config
        x_TD = x.reshape(-1, config.dim)
        routing = route(self.router(x_TD), config.top_k, normalize_gates=config.normalize_gates)
        y_TD = torch.zeros_like(x_TD)
        for e, expert in enumerate(self.experts):
            token_N, choice_N = (routing.expert_index == e).nonzero(as_tuple=True)
            if token_N.numel() == 0:
                continue
            out_ND = expert(x_TD[token_N]) * routing.gates[token_N, choice_N].unsqueeze(1)
            y_TD = y_TD.index_add(0, token_N, out_ND)
        return y_TD.view(x.shape)


class EinsumDispatchMoE(nn.Module):
    """GShard/Tutel-style dispatch: one-hot ``(T, E, C)`` tensors, ``einsum`` and ``bmm``."""

    def __init__(self, layer: MoE, capacity_factor: float = 1.25) -> None:
        """Shares ``layer``'s router and stacked expert weights (unsharded, with biases)."""
        super().__init__()
        self.layer = layer
        self.capacity_factor = capacity_factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., D) -> (..., D)`` with capacity (arrival-order priority)."""
        layer, config = self.layer, self.layer.config
        x_TD = x.reshape(-1, config.dim)
        num_tokens, num_experts, top_k = x_TD.shape[0], config.num_experts, config.top_k
        capacity = expert_capacity(num_tokens, num_experts, top_k, self.capacity_factor)
        routing = route(layer.router(x_TD), top_k, normalize_gates=config.normalize_gates)
        mask_KTE = F.one_hot(routing.expert_index.t(), num_experts)  # (K, T, E)
        position_KTE = mask_KTE.reshape(-1, num_experts).cumsum(0).view_as(mask_KTE) - 1
        keep_KTE = (position_KTE < capacity) & mask_KTE.bool()
        slot_KTEC = F.one_hot(position_KTE.clamp(0, capacity - 1), capacity) * keep_KTE[..., None]
        gates_KT = routing.gates.t()
        combine_TEC = (slot_KTEC.to(x_TD.dtype) * gates_KT[:, :, None, None]).sum(0)
        dispatch_TEC = slot_KTEC.sum(0).to(x_TD.dtype)
        in_ECD = torch.einsum("tec,td->ecd", dispatch_TEC, x_TD)
        h_ECH = _ACTIVATIONS[config.activation](
            torch.baddbmm(layer.b1[:, None, :], in_ECD, layer.w1)  # type: ignore[index]
        )
        out_ECD = torch.baddbmm(layer.b2[:, None, :], h_ECH, layer.w2)  # type: ignore[index]
        return torch.einsum("tec,ecd->td", combine_TEC, out_ECD).view(x.shape)
