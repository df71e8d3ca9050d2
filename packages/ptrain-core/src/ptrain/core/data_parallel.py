"""Data parallelism over the dp mesh dims: DDP, ZeRO-1, ZeRO-3 and gradient accumulation.

Three modes (design reference §2.4), applied from outside the model:

=========  ==================================================================================
mode       what each data-parallel rank holds / what travels per step
=========  ==================================================================================
``ddp``    full parameters, grads and optimizer state; grads all-reduced (averaged), 2Ψ
``zero1``  full parameters and grads, optimizer state of ~1/N of the tensors
           (:class:`ZeroRedundancyOptimizer`); grads all-reduced, then each updated tensor is
           broadcast from the rank that owns it
``zero3``  1/N of every parameter, grad and optimizer state: torch's ``fully_shard`` (FSDP2);
           parameters all-gathered for forward and backward, grads reduce-scattered, 3Ψ
=========  ==================================================================================

Which ranks average gradients: the flattened ``dp_cp`` mesh dim of ``ParallelDims``
(``dp_replicate × dp_shard × cp``): with sequence parallelism each ``cp`` rank saw a slice of
the same sequences, so its weight gradients are partial sums too. ZeRO-3 shards parameters over
``dp_shard_cp`` and, when ``dp_replicate > 1``, replicates them over ``dp_replicate`` (HSDP).

``ddp`` uses ``torch.nn.parallel.DistributedDataParallel`` (gloo or nccl). torch DDP cannot hold
DTensor parameters (its start-up broadcast raises ``c10d.broadcast_.default does not have a
sharding strategy registered``), so a model whose parameters are DTensors (torch's own
``parallelize_module`` tensor parallelism) gets :class:`GradientAllReduce` instead: the same
averaging, done with one flat all-reduce per dtype at the end of backward, in place (no wrapper).

Gradient accumulation: :func:`no_sync` skips the gradient reduction on accumulation steps for all
three modes (DDP ``no_sync``, FSDP2 ``set_requires_gradient_sync(False)``, our hook's flag), and
:func:`accumulate_gradients` runs micro-batches with it, so only the last one communicates.

Example::

    dims = ParallelDims(dp_shard=-1, world_size=world)
    dims.build_mesh("cpu")
    model = apply_data_parallel(model, dims, "zero1")
    optimizer = build_optimizer(model, dims, "zero1", torch.optim.AdamW, lr=1e-3)
    loss = accumulate_gradients(model, micro_batches, loss_fn)
    optimizer.step()
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Literal, cast

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

from ptrain.core.dist import ParallelDims

__all__ = [
    "DP_MODES",
    "DPMode",
    "GradientAllReduce",
    "LocalShardOptimizer",
    "ZeroRedundancyOptimizer",
    "accumulate_gradients",
    "apply_data_parallel",
    "apply_ddp",
    "apply_zero3",
    "build_optimizer",
    "gradient_group",
    "has_dtensor_params",
    "no_sync",
    "unwrap",
]

DPMode = Literal["ddp", "zero1", "zero3"]
#: The data-parallel modes, as ``parallelize``'s plan and ``train_gpt --zero`` name them.
DP_MODES: tuple[str, ...] = ("ddp", "zero1", "zero3")

GroupLike = dist.ProcessGroup | DeviceMesh | None


def _process_group(group: GroupLike) -> dist.ProcessGroup | None:
    if isinstance(group, DeviceMesh):
        return group.get_group()
    return group


def _local(tensor: Tensor) -> Tensor:
    """The tensor this rank stores (a DTensor's local shard, else the tensor itself)."""
    return tensor._local_tensor if isinstance(tensor, DTensor) else tensor


def has_dtensor_params(model: nn.Module) -> bool:
    """Whether any parameter of ``model`` is a DTensor (e.g. after torch's parallelize_module)."""
    return any(isinstance(param, DTensor) for param in model.parameters())


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside a ``DistributedDataParallel`` wrapper (else ``model`` itself)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def gradient_group(dims: ParallelDims) -> dist.ProcessGroup:
    """The process group that averages gradients: ``dp_cp`` (dp_replicate × dp_shard × cp)."""
    return dims.get_group("dp_cp")


# ---------------------------------------------------------------------------------------------
# DDP
# ---------------------------------------------------------------------------------------------


class GradientAllReduce:
    """DDP's gradient averaging for models torch DDP cannot wrap (DTensor parameters).

    Installs a post-accumulate-grad hook on every trainable parameter; the first hook of a
    backward pass queues a callback that runs when autograd finishes and averages every gradient
    over ``group`` with one flat all-reduce per dtype. DTensor gradients are reduced through their
    local shards, so the tensor-parallel layout is untouched. The model is not wrapped: module
    names and attributes stay as they were. The instance is stored as
    ``model._ptrain_grad_sync`` (see :func:`no_sync`).

    Args:
        model: the module; its parameters must already be identical on every rank of ``group``.
        group: the data-parallel process group (or a 1-D mesh).
    """

    def __init__(self, model: nn.Module, group: GroupLike) -> None:
        self.group = _process_group(group)
        self.world_size = dist.get_world_size(self.group)
        self.params = [param for param in model.parameters() if param.requires_grad]
        self.require_sync = True
        self._queued = False
        self.reductions = 0  # number of all-reduce launches, for tests and curiosity
        for param in self.params:
            param.register_post_accumulate_grad_hook(self._on_grad)
        model._ptrain_grad_sync = self  # type: ignore[assignment]

    def _on_grad(self, param: Tensor) -> None:
        if not self.require_sync or self._queued:
            return
        self._queued = True
        torch.autograd.Variable._execution_engine.queue_callback(self._reduce)

    @torch.no_grad()
    def _reduce(self) -> None:
        self._queued = False
        grads = [_local(param.grad) for param in self.params if param.grad is not None]
        buckets: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
        for grad in grads:
            buckets.setdefault((grad.device, grad.dtype), []).append(grad)
        for bucket in buckets.values():
            flat = torch.cat([grad.reshape(-1) for grad in bucket])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=self.group)
            flat.div_(self.world_size)
            self.reductions += 1
            offset = 0
            for grad in bucket:
                grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
                offset += grad.numel()


def _broadcast_parameters(model: nn.Module, group: dist.ProcessGroup | None) -> None:
    """Copy the first rank of ``group``'s parameters and buffers to every rank of it."""
    source = dist.get_global_rank(group, 0) if group is not None else 0
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            dist.broadcast(_local(tensor), src=source, group=group)


def apply_ddp(model: nn.Module, group: GroupLike, *, broadcast: bool = True) -> nn.Module:
    """Replicate ``model`` over ``group`` and average its gradients after every backward.

    Args:
        model: a module with materialised parameters (not on the meta device).
        group: the data-parallel process group (or a 1-D mesh).
        broadcast: start every rank from the first rank's parameters (torch DDP always does).

    Returns:
        ``DistributedDataParallel(model)`` for plain parameters; for DTensor parameters the same
        ``model`` with a :class:`GradientAllReduce` attached.
    """
    pg = _process_group(group)
    _check_materialised(model, "apply_ddp")
    if has_dtensor_params(model):
        if broadcast:
            _broadcast_parameters(model, pg)
        GradientAllReduce(model, pg)
        return model
    return DistributedDataParallel(model, process_group=pg)


def _check_materialised(model: nn.Module, where: str) -> None:
    for name, param in model.named_parameters():
        if param.is_meta:
            raise ValueError(
                f"{where}: parameter {name!r} is on the meta device; call "
                "model.to_empty(device=...) and initialise it first"
            )


# ---------------------------------------------------------------------------------------------
# ZeRO-3
# ---------------------------------------------------------------------------------------------


def _fsdp_mesh(dims: ParallelDims) -> DeviceMesh:
    """``dp_shard_cp`` for FSDP, or the 2-D (``dp_replicate``, ``dp_shard_cp``) mesh for HSDP."""
    if dims.dp_replicate == 1:
        return dims.get_mesh("dp_shard_cp")
    world = dims.world_mesh
    if dims.cp == 1:
        return world["dp_replicate", "dp_shard"]
    with warnings.catch_warnings():  # torch warns that slicing a flattened dim will change
        warnings.simplefilter("ignore", UserWarning)
        return world["dp_replicate", "dp_shard_cp"]


def apply_zero3(
    model: nn.Module,
    mesh: DeviceMesh,
    *,
    block_lists: Sequence[str] = ("blocks",),
    reshard_after_forward: bool = True,
) -> nn.Module:
    """Shard parameters, grads and optimizer state over ``mesh`` with torch's ``fully_shard``.

    Each block of every ``nn.ModuleList`` attribute named in ``block_lists`` becomes its own FSDP
    unit (parameters gathered one block at a time), then the root. Works on a meta-device model:
    call ``model.to_empty(device=...)`` and initialise afterwards (every parameter is then a
    DTensor; ``GPT.init_weights`` writes the right shard). On CPU this runs over gloo: checked
    with torch 2.13 (forward, backward and AdamW steps equal the single-process run).

    Args:
        model: the module (already tensor-parallel if wanted: ``fully_shard`` composes with
            DTensor parameters on another mesh dim).
        mesh: 1-D mesh (FSDP) or 2-D (replicate, shard) mesh (HSDP).
        block_lists: names of ``ModuleList`` attributes whose children are wrapped one by one.
        reshard_after_forward: free gathered parameters after forward (ZeRO-3); ``False`` keeps
            them until backward (ZeRO-2-like memory, fewer all-gathers).

    Returns:
        ``model`` itself (its class becomes ``FSDP<Class>``; names are unchanged).
    """
    from torch.distributed.fsdp import fully_shard

    for attribute in block_lists:
        blocks = getattr(model, attribute, None)
        if isinstance(blocks, nn.ModuleList):
            for block in blocks:
                fully_shard(block, mesh=mesh, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=mesh, reshard_after_forward=reshard_after_forward)
    return model


# ---------------------------------------------------------------------------------------------
# ZeRO-1
# ---------------------------------------------------------------------------------------------


class ZeroRedundancyOptimizer(torch.optim.Optimizer):
    """ZeRO-1: each rank keeps the optimizer state of only its share of the parameter tensors.

    Parameter tensors are assigned whole to ranks (greedily, largest first, to the least-loaded
    rank: every rank computes the same assignment). ``step()`` runs the wrapped optimizer on this
    rank's tensors only, then every rank receives the updated tensors from their owners (one
    flat broadcast per owner). Gradients must already be averaged over ``group`` (DDP does it).

    Because whole tensors are assigned, every per-tensor rule keeps its meaning: LAMB/LARS trust
    ratios, Adafactor factors, any ``torch.optim`` optimizer works unchanged. When the tensors are
    tensor-parallel shards, pass LAMB/LARS ``group=<tp group>`` in ``optimizer_kwargs`` (as for an
    unsharded optimizer): the ranks of one tp group own the same tensor indices (equal shard
    sizes), so their norm all-reduces pair up. Works with DTensor parameters (broadcasts the local
    shards) — unlike ``torch.distributed.optim.ZeroRedundancyOptimizer``, whose broadcast fails on
    DTensors.

    Args:
        params: parameters or param-group dicts (group hyperparameters are kept).
        optimizer_class: the optimizer to run on this rank's tensors, e.g. ``torch.optim.AdamW``
            or ``ptrain.core.optim.LAMB``.
        process_group: the data-parallel process group (or a 1-D mesh) the state is sharded over.
        **optimizer_kwargs: passed to ``optimizer_class``.
    """

    def __init__(
        self,
        params: Iterable[Any],
        optimizer_class: Callable[..., torch.optim.Optimizer],
        process_group: GroupLike = None,
        **optimizer_kwargs: Any,
    ) -> None:
        self.process_group = _process_group(process_group)
        self.rank = dist.get_rank(self.process_group)
        self.world_size = dist.get_world_size(self.process_group)
        groups = list(params)
        if not groups:
            raise ValueError("ZeroRedundancyOptimizer got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        param_groups = [{**g, "params": list(g["params"])} for g in groups]
        all_params = [param for g in param_groups for param in g["params"]]
        self.owner = self._assign(all_params)
        local_groups = []
        for g in param_groups:
            mine = [p for p in g["params"] if self.owner[id(p)] == self.rank]
            local_groups.append({**g, "params": mine})
        # An optimizer over no tensors raises in torch; keep empty groups out but remember them.
        non_empty = [g for g in local_groups if g["params"]]
        placeholder = torch.zeros(0)  # no grad: never stepped, never in a state dict
        self.optim = optimizer_class(non_empty or [{"params": [placeholder]}], **optimizer_kwargs)
        self._all_params = all_params
        super().__init__(param_groups, dict(self.optim.defaults))
        self.param_groups = self.optim.param_groups  # lr schedulers edit the local groups
        self.state = self.optim.state

    def _assign(self, params: list[Tensor]) -> dict[int, int]:
        load = [0] * self.world_size
        owner: dict[int, int] = {}
        order = sorted(range(len(params)), key=lambda i: (-_local(params[i]).numel(), i))
        for index in order:
            rank = min(range(self.world_size), key=lambda r: (load[r], r))
            owner[id(params[index])] = rank
            load[rank] += _local(params[index]).numel()
        return owner

    def owned_params(self) -> list[Tensor]:
        """The parameter tensors whose optimizer state lives on this rank."""
        return [p for p in self._all_params if self.owner[id(p)] == self.rank]

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Step this rank's tensors, then broadcast every updated tensor from its owner.

        Args:
            closure: optional loss closure, evaluated once before the step.

        Returns:
            The closure's loss, or None.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.optim.step()
        self._sync_params()
        return loss

    def _sync_params(self) -> None:
        if self.world_size == 1:
            return
        for owner in range(self.world_size):
            tensors = [_local(p) for p in self._all_params if self.owner[id(p)] == owner]
            if not tensors:
                continue
            by_dtype: dict[torch.dtype, list[Tensor]] = {}
            for tensor in tensors:
                by_dtype.setdefault(tensor.dtype, []).append(tensor)
            source = (
                dist.get_global_rank(self.process_group, owner)
                if self.process_group is not None
                else owner
            )
            for bucket in by_dtype.values():
                flat = torch.cat([t.reshape(-1) for t in bucket])
                dist.broadcast(flat, src=source, group=self.process_group)
                if owner != self.rank:
                    offset = 0
                    for tensor in bucket:
                        tensor.copy_(flat[offset : offset + tensor.numel()].view_as(tensor))
                        offset += tensor.numel()

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the gradients of every parameter (not only this rank's)."""
        for param in self._all_params:
            if set_to_none:
                param.grad = None
            elif param.grad is not None:
                param.grad.detach_()
                param.grad.zero_()

    def state_dict(self) -> dict[str, Any]:
        """This rank's shard of the optimizer state (the wrapped optimizer's state dict)."""
        return self.optim.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict saved by the same rank under the same layout."""
        self.optim.load_state_dict(state_dict)
        self.param_groups = self.optim.param_groups


# ---------------------------------------------------------------------------------------------
# Norm-based optimizers (LAMB, LARS) on DTensor parameters
# ---------------------------------------------------------------------------------------------


def _shard_group(param: Tensor) -> tuple[Any, ...]:
    """A key naming the ranks ``param`` is sharded over: () for a whole tensor."""
    if not isinstance(param, DTensor):
        return ()
    mesh = param.device_mesh
    dims = tuple(i for i, placement in enumerate(param.placements) if placement.is_shard())
    if not dims:
        return ()
    names = mesh.mesh_dim_names or tuple(str(i) for i in range(mesh.ndim))
    return (tuple(mesh.mesh.flatten().tolist()), tuple(names[i] for i in dims), id(mesh))


class LocalShardOptimizer(torch.optim.Optimizer):
    """Runs LAMB/LARS (or any optimizer taking ``group=``) on the local shards of DTensors.

    LAMB and LARS compute per-tensor norms; on DTensor parameters (torch tensor parallelism,
    ``fully_shard``) their foreach kernels mix DTensors and plain tensors and fail. This wrapper
    gives the inner optimizer each parameter's local shard (the same storage, so updates land in
    the DTensor) and puts parameters sharded over the same ranks in one param group with
    ``group=<those ranks' process group>``, so the squared norms are summed over the shards:
    the step equals the unsharded one. Whole (replicated or plain) tensors get ``group=None``.

    ``param_groups`` hold the DTensor parameters (LR schedulers and
    ``torch.distributed.checkpoint.state_dict`` see the model's parameters); hyperparameters are
    copied to the inner groups at every step, and ``state_dict()`` wraps the local state
    tensors as DTensors with their parameter's layout, so optimizer checkpoints reshard too.

    Args:
        params: parameters or param-group dicts.
        optimizer_class: ``ptrain.core.optim.LAMB`` or ``LARS`` (anything with ``group=``).
        shard_group: when given, every tensor's norms are summed over this group instead: for
            DTensor shards (``fully_shard``) of tensors that are themselves ``ptrain.core.tp``
            shards, the group spanning both the dp-shard and the tp ranks (a tensor replicated
            over part of it is counted once per copy in both norms of a trust ratio, which
            leaves the ratio unchanged).
        **optimizer_kwargs: passed to ``optimizer_class`` (``group`` is set per param group).
    """

    def __init__(
        self,
        params: Iterable[Any],
        optimizer_class: Callable[..., torch.optim.Optimizer],
        shard_group: dist.ProcessGroup | None = None,
        **optimizer_kwargs: Any,
    ) -> None:
        groups = list(params)
        if groups and not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        outer: list[dict[str, Any]] = []
        for g in groups:
            by_key: dict[tuple[Any, ...], list[Tensor]] = {}
            for param in g["params"]:
                by_key.setdefault(_shard_group(param), []).append(param)
            for key, members in by_key.items():
                outer.append({**g, "params": members, "_shard_key": key})
        self._groups_by_key: dict[tuple[Any, ...], dist.ProcessGroup | None] = {}
        inner_groups = []
        self._local_of: dict[int, Tensor] = {}
        for g in outer:
            pg = shard_group or self._process_group_for(g["params"][0], g["_shard_key"])
            locals_ = []
            for param in g["params"]:
                local = _local(param).detach()
                self._local_of[id(param)] = local
                locals_.append(local)
            hyper = {k: v for k, v in g.items() if k not in ("params", "_shard_key")}
            inner_groups.append({**hyper, "params": locals_, "group": pg})
        self.optim = optimizer_class(inner_groups, **optimizer_kwargs)
        super().__init__(
            [{k: v for k, v in g.items() if k != "_shard_key"} for g in outer],
            {k: v for k, v in self.optim.defaults.items() if k != "group"},
        )
        for g_outer, g_inner in zip(self.param_groups, self.optim.param_groups, strict=True):
            for option, value in g_inner.items():
                if option not in ("params", "group"):
                    g_outer.setdefault(option, value)

    def _process_group_for(self, param: Tensor, key: tuple[Any, ...]) -> dist.ProcessGroup | None:
        if not key:
            return None
        if key in self._groups_by_key:
            return self._groups_by_key[key]
        assert isinstance(param, DTensor)
        mesh = param.device_mesh
        names = key[1]
        sub = mesh[names] if mesh.ndim > 1 else mesh
        if sub.ndim > 1:
            sub = sub._flatten("_".join(names) + "_lamb")
        group = sub.get_group()
        self._groups_by_key[key] = group
        return group

    def _sync_hyperparameters(self) -> None:
        for g_outer, g_inner in zip(self.param_groups, self.optim.param_groups, strict=True):
            for key, value in g_outer.items():
                if key not in ("params", "group"):
                    g_inner[key] = value

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One step of the inner optimizer on the local shards.

        Args:
            closure: optional loss closure, evaluated once before the step.

        Returns:
            The closure's loss, or None.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._sync_hyperparameters()
        pairs = [(p, self._local_of[id(p)]) for g in self.param_groups for p in g["params"]]
        for param, local in pairs:
            local.grad = None if param.grad is None else _local(param.grad)
        try:
            self.optim.step()
        finally:
            for _, local in pairs:
                local.grad = None
        self.state = cast(Any, {p: self.optim.state[t] for p, t in pairs if t in self.optim.state})
        return loss

    def state_dict(self) -> dict[str, Any]:
        """The inner state dict, state tensors wrapped as DTensors with their parameter's layout."""
        state = self.optim.state_dict()
        params = [p for g in self.param_groups for p in g["params"]]
        for index, entry in state["state"].items():
            param = params[index]
            if not isinstance(param, DTensor):
                continue
            local_shape = _local(param).shape
            for key, value in list(entry.items()):
                if isinstance(value, Tensor) and value.shape == local_shape and value.ndim > 0:
                    entry[key] = DTensor.from_local(
                        value, param.device_mesh, param.placements, run_check=False,
                        shape=param.shape, stride=param.stride(),
                    )  # fmt: skip
        for packed, outer in zip(state["param_groups"], self.param_groups, strict=True):
            for key, value in outer.items():
                if key != "params":
                    packed[key] = value
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict from :meth:`state_dict` (DTensor state is turned back into shards)."""
        state = {
            "state": {
                index: {
                    key: (value.to_local() if isinstance(value, DTensor) else value)
                    for key, value in entry.items()
                }
                for index, entry in state_dict["state"].items()
            },
            "param_groups": [dict(g) for g in state_dict["param_groups"]],
        }
        for packed, inner in zip(state["param_groups"], self.optim.param_groups, strict=True):
            packed["group"] = inner.get("group")
        self.optim.load_state_dict(state)
        for g_outer, packed in zip(self.param_groups, state_dict["param_groups"], strict=True):
            for key, value in packed.items():
                if key not in ("params", "group"):
                    g_outer[key] = value
        pairs = [(p, self._local_of[id(p)]) for g in self.param_groups for p in g["params"]]
        self.state = cast(Any, {p: self.optim.state[t] for p, t in pairs if t in self.optim.state})


# ---------------------------------------------------------------------------------------------
# One entry point, optimizers, accumulation
# ---------------------------------------------------------------------------------------------


def _check_mode(mode: str) -> None:
    if mode not in DP_MODES:
        raise ValueError(f"data-parallel mode must be one of {', '.join(DP_MODES)}, got {mode!r}")


def apply_data_parallel(
    model: nn.Module,
    dims: ParallelDims,
    mode: str = "ddp",
    *,
    block_lists: Sequence[str] = ("blocks",),
) -> nn.Module:
    """Apply ``mode`` over the data-parallel mesh dims of ``dims`` (mesh built beforehand).

    - ``ddp`` / ``zero1``: :func:`apply_ddp` over ``dp_cp`` (pair ``zero1`` with
      :func:`build_optimizer`, which shards the optimizer state over the same group).
      The model must be materialised.
    - ``zero3``: :func:`apply_zero3` over ``dp_shard_cp`` (HSDP with ``dp_replicate``); may be
      called on a meta-device model.

    With a single data-parallel rank nothing is applied and ``model`` is returned.

    Args:
        model: the (possibly tensor-parallel) module.
        dims: the layout; ``dims.build_mesh()`` must have run.
        mode: ``"ddp"``, ``"zero1"`` or ``"zero3"``.
        block_lists: for zero3, the ``ModuleList`` attributes wrapped block by block.

    Returns:
        The data-parallel model (a DDP wrapper for ``ddp``/``zero1`` with plain parameters).
    """
    _check_mode(mode)
    if dims.size("dp_cp") == 1:
        return model
    if mode == "zero3":
        return apply_zero3(model, _fsdp_mesh(dims), block_lists=block_lists)
    return apply_ddp(model, gradient_group(dims))


def build_optimizer(
    model: nn.Module,
    dims: ParallelDims | None,
    mode: str,
    optimizer_class: type[torch.optim.Optimizer],
    params: Iterable[Any] | None = None,
    **optimizer_kwargs: Any,
) -> torch.optim.Optimizer:
    """The optimizer for a model prepared by :func:`apply_data_parallel` with ``mode``.

    ``zero1`` gives a :class:`ZeroRedundancyOptimizer` over ``dp_cp``; ``ddp`` and ``zero3`` the
    plain optimizer (under ``zero3`` its state is sharded already, as the parameters are).

    Args:
        model: the prepared model.
        dims: the layout (``None``: a single process).
        mode: ``"ddp"``, ``"zero1"`` or ``"zero3"``.
        optimizer_class: e.g. ``torch.optim.AdamW`` or ``ptrain.core.optim.LAMB``.
        params: parameters or param groups (default ``model.parameters()``).
        **optimizer_kwargs: passed to ``optimizer_class``.

    Returns:
        The optimizer.
    """
    _check_mode(mode)
    chosen = list(params) if params is not None else list(model.parameters())
    factory: Callable[..., torch.optim.Optimizer] = optimizer_class
    if _takes_process_group(optimizer_class) and has_dtensor_params(model):
        factory = functools.partial(LocalShardOptimizer, optimizer_class=optimizer_class)
    if mode == "zero1" and dims is not None and dims.size("dp_cp") > 1:
        return ZeroRedundancyOptimizer(chosen, factory, gradient_group(dims), **optimizer_kwargs)
    return factory(chosen, **optimizer_kwargs)


def _takes_process_group(optimizer_class: type[torch.optim.Optimizer]) -> bool:
    """LAMB/LARS-style optimizers: a ``group=`` argument for sharded norms."""
    import inspect

    try:
        return "group" in inspect.signature(optimizer_class).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without signatures
        return False


@contextlib.contextmanager
def no_sync(model: nn.Module) -> Iterator[None]:
    """Skip the data-parallel gradient reduction inside the block (gradient accumulation).

    Works for torch DDP (``no_sync``), FSDP2 (``set_requires_gradient_sync(False)``), a model
    with a :class:`GradientAllReduce`, and a plain model (nothing to skip). Gradients accumulate
    locally; the first backward outside the block reduces the accumulated sum.
    """
    if isinstance(model, DistributedDataParallel):
        with model.no_sync():
            yield
        return
    hook = cast(GradientAllReduce | None, getattr(model, "_ptrain_grad_sync", None))
    set_sync = getattr(model, "set_requires_gradient_sync", None)
    if hook is not None:
        hook.require_sync = False
    if set_sync is not None:
        set_sync(False)
    try:
        yield
    finally:
        if hook is not None:
            hook.require_sync = True
        if set_sync is not None:
            set_sync(True)


def accumulate_gradients(
    model: nn.Module,
    micro_batches: Sequence[Any],
    loss_fn: Callable[[nn.Module, Any], Tensor],
) -> float:
    """Forward and backward over ``micro_batches``, reducing gradients only after the last.

    Each micro-batch's loss is divided by their number, so with equal-sized micro-batches and a
    mean loss the accumulated gradient equals the one-big-batch gradient.

    Args:
        model: the (data-parallel) model.
        micro_batches: the pieces of this rank's batch.
        loss_fn: ``loss_fn(model, micro_batch) -> scalar loss``.

    Returns:
        The mean of the micro-batch losses (this rank's, not averaged over ranks).
    """
    count = len(micro_batches)
    if count < 1:
        raise ValueError("accumulate_gradients needs at least one micro-batch")
    total = 0.0
    for index, micro_batch in enumerate(micro_batches):
        context = no_sync(model) if index < count - 1 else contextlib.nullcontext()
        with context:
            loss = loss_fn(model, micro_batch) / count
            loss.backward()
        total += float(loss.detach())
    return total
