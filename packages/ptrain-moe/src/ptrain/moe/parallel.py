"""Expert parallelism over an ``ep`` group, applied from outside the model.

``apply_expert_parallel(model, ep_group)`` keeps on each rank of the group only its share of every
``MoE`` layer's experts (rank ``r`` of ``ep`` holds global experts ``r·L … r·L + L − 1``,
``L = E / ep``). In the forward pass each rank routes its own tokens, sends every assignment to
the rank that holds its expert with one uneven ``all_to_all`` (``ptrain.core.comm``), runs its
local experts, and sends the results back with the reverse ``all_to_all``; autograd carries the
gradients back the same way. Every rank must call the layer the same number of times.

Data parallelism composes: with ``world = dp × ep`` ranks, routers and every non-expert weight are
replicated on all ranks, experts on the ``dp`` ranks that share an ``ep`` position. After
``backward`` call ``sync_gradients(model, expert_dp_group=...)`` to average gradients as one
large-batch step would (``ParallelDims(ep=...)`` provides the ``ep`` and ``dp_shard_mod_ep``
meshes).

Checkpoints: ``MoE`` state-dict keys carry the global expert id, so ``full_state_dict(model)``
(a collective that gathers every expert) is the same file for any ``ep``, and ``load_state_dict``
of a full state dict on any ``ep`` layout picks each rank's experts by id.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from ptrain.core import comm
from ptrain.moe.layer import MoE

__all__ = [
    "apply_expert_parallel",
    "expert_parallel_compute",
    "full_state_dict",
    "is_expert_parameter",
    "sync_gradients",
]


def _moe_layers(model: nn.Module) -> list[MoE]:
    return [module for module in model.modules() if isinstance(module, MoE)]


def apply_expert_parallel(model: nn.Module, ep_group: comm.GroupLike) -> nn.Module:
    """Shards the experts of every ``MoE`` in ``model`` over ``ep_group`` (in place).

    Every rank must hold the same full model when this is called (same seed or a broadcast);
    each keeps its contiguous block of ``E / ep`` experts and drops the rest.

    Args:
        model: a module containing ``MoE`` layers (or an ``MoE`` itself).
        ep_group: the expert-parallel group (ProcessGroup, 1-D mesh, ``(mesh, "ep")``).

    Returns:
        ``model``.

    Raises:
        ValueError: some layer's ``num_experts`` is not divisible by the group size, or a
            layer is already sharded.
    """
    size = comm.group_size(ep_group)
    rank = comm.group_rank(ep_group)
    for layer in _moe_layers(model):
        experts = layer.config.num_experts
        if experts % size != 0:
            raise ValueError(
                f"expert parallelism: num_experts={experts} is not divisible by ep={size}"
            )
        if layer.num_local_experts != experts:
            raise ValueError("expert parallelism: this MoE layer is already sharded")
        local = experts // size
        keep = slice(rank * local, (rank + 1) * local)
        for name in MoE._EXPERT_TENSORS:
            stacked = getattr(layer, name)
            if stacked is not None:
                setattr(layer, name, nn.Parameter(stacked.detach()[keep].clone()))
        layer.local_expert_ids = list(range(rank * local, (rank + 1) * local))
        layer.ep_group = ep_group
        layer.expert_parallel = True
    return model


def expert_parallel_compute(
    layer: MoE, x_AD: torch.Tensor, tokens_per_expert_E: torch.Tensor
) -> torch.Tensor:
    """Runs sorted assignments on the ranks holding their experts and brings the results back.

    Args:
        layer: the sharded layer.
        x_AD: ``(A, D)`` this rank's assignments, sorted by global expert.
        tokens_per_expert_E: ``(E,)`` assignments per global expert (sums to ``A``).

    Returns:
        ``(A, D)`` expert outputs in the order of ``x_AD``.
    """
    group = layer.ep_group
    size = comm.group_size(group)
    local = layer.num_local_experts
    counts_PL = tokens_per_expert_E.view(size, local)  # rows: destination rank
    send_splits = counts_PL.sum(dim=1).tolist()
    # received_PL[src, l]: assignments rank src sends to our local expert l.
    received_PL = comm.all_to_all(counts_PL.contiguous(), group=group)
    receive_splits = received_PL.sum(dim=1).tolist()
    x_RD = comm.all_to_all(
        x_AD, output_split_sizes=receive_splits, input_split_sizes=send_splits, group=group
    )
    # Rows arrive grouped by source rank, then by local expert; regroup by local expert.
    local_expert_R = torch.arange(local, device=x_AD.device).repeat(size)
    local_expert_R = local_expert_R.repeat_interleave(received_PL.reshape(-1))
    order_R = torch.argsort(local_expert_R, stable=True)
    y_RD = layer.run_experts(x_RD.index_select(0, order_R), received_PL.sum(dim=0).tolist())
    inverse_R = torch.empty_like(order_R)
    inverse_R[order_R] = torch.arange(order_R.numel(), device=order_R.device)
    y_RD = y_RD.index_select(0, inverse_R)
    return comm.all_to_all(
        y_RD, output_split_sizes=send_splits, input_split_sizes=receive_splits, group=group
    )


def is_expert_parameter(model: nn.Module, name: str) -> bool:
    """Whether the parameter ``name`` of ``model`` is an expert weight (sharded over ``ep``)."""
    owner_name, _, attribute = name.rpartition(".")
    owner = model.get_submodule(owner_name) if owner_name else model
    return isinstance(owner, MoE) and attribute in MoE._EXPERT_TENSORS


def sync_gradients(
    model: nn.Module,
    *,
    world_group: comm.GroupLike = None,
    expert_dp_group: comm.GroupLike = None,
) -> None:
    """Averages gradients over data parallelism × expert parallelism (call after backward).

    With every rank's loss being the mean over its own batch, the result equals the gradient of
    the mean of all ranks' losses: non-expert gradients are averaged over ``world_group``;
    expert gradients (which already sum the contributions of the ``ep`` group's tokens) are
    summed over ``expert_dp_group`` and divided by the world size.

    Args:
        model: the model after ``apply_expert_parallel``.
        world_group: every rank of the job (None: the default group).
        expert_dp_group: the ranks holding the same experts (``dp_shard_mod_ep``); None when
            there is no data parallelism beside ``ep`` (expert gradients are then only divided by
            the world size).
    """
    world = comm.group_size(world_group)
    dense: list[torch.Tensor] = []
    expert: list[torch.Tensor] = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.grad is None:  # unused this step here, maybe used on another rank
            param.grad = torch.zeros_like(param)
        (expert if is_expert_parameter(model, name) else dense).append(param.grad)
    with torch.no_grad():
        _all_reduce_into(dense, "avg", world_group)
        if expert_dp_group is not None:
            _all_reduce_into(expert, "sum", expert_dp_group)
        for grad in expert:
            grad.div_(world)


def _all_reduce_into(
    grads: list[torch.Tensor], op: Literal["sum", "avg"], group: comm.GroupLike
) -> None:
    if not grads:
        return
    flat = comm.all_reduce(torch.cat([g.reshape(-1) for g in grads]), op=op, group=group)
    for grad, value in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
        grad.copy_(value.view_as(grad))


def full_state_dict(model: nn.Module) -> dict[str, Any]:
    """The model's state dict with every expert of every ``MoE`` (collective over each ``ep``).

    Without expert parallelism this is ``model.state_dict()``. With it, each layer's expert
    weights are all-gathered over its ``ep`` group; every rank gets the same full dict (keys
    ``...experts.<global id>.w1``), loadable under any ``ep`` size.

    Args:
        model: the (possibly sharded) model.

    Returns:
        A state dict of detached CPU-or-device tensors.
    """
    state = model.state_dict()
    for module_name, layer in model.named_modules():
        if not isinstance(layer, MoE) or not layer.expert_parallel:
            continue
        prefix = f"{module_name}." if module_name else ""
        for name in MoE._EXPERT_TENSORS:
            stacked = getattr(layer, name)
            if stacked is None:
                continue
            gathered = comm.all_gather(stacked.detach().contiguous(), dim=0, group=layer.ep_group)
            for expert in range(layer.config.num_experts):
                state[f"{prefix}experts.{expert}.{name}"] = gathered[expert].clone()
    return state
