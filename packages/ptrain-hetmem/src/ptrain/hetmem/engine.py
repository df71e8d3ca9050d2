"""The engine: chunked model data placed across tiers by the traced memory tide.

One iteration is ``loss = engine(*inputs)``, ``engine.backward(loss)``, ``engine.step()``.
Every parameter's ``.data`` points into its PARAM chunk's payload only while its module runs
(state COMPUTE); otherwise it is an empty tensor, so a chunk can move between tiers between uses.
The first iteration is the warm-up: chunks are released from the compute tier right after use
and the tracer records non-model bytes and chunk accesses per moment. From the second iteration
on, the chunk budget at moment ``t`` is ``capacity - max(nonmodel[t], nonmodel[t+1]) - headroom``
and victims are picked by the policy (OPT: furthest next use in the warm-up trace).
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ptrain.core import comm
from ptrain.core.cli import UserError
from ptrain.hetmem.chunks import (
    Chunk,
    ChunkLayout,
    ChunkSearchReport,
    ChunkType,
    ModuleParams,
    Slot,
    build_layout,
    module_param_lists,
    search_chunk_size,
)
from ptrain.hetmem.config import AdamConfig, HetMemConfig, format_bytes
from ptrain.hetmem.eviction import AccessEvent, belady_traffic, order_victims
from ptrain.hetmem.states import TensorState
from ptrain.hetmem.tiers import (
    ArenaTier,
    BudgetExceeded,
    CudaTier,
    DiskTier,
    HostTier,
    Tier,
)
from ptrain.hetmem.tracer import MemoryTrace, SavedTensorTracer

__all__ = ["HetMemEngine", "NotSupportedError", "initialize", "minimum_device_budget"]

_S = TensorState


class NotSupportedError(UserError, RuntimeError):
    """The requested combination is not supported (the message says what to use instead)."""


class _UnboundedDeviceTier(Tier):
    name = "device"

    def _allocate(self, numel: int, dtype: torch.dtype, nbytes: int) -> Any:
        from ptrain.hetmem.tiers import Block

        return Block(torch.empty(numel, dtype=dtype), nbytes, self)


@dataclass
class _Group:
    param: Chunk
    grad: Chunk | None
    master: Chunk | None
    exp_avg: Chunk
    exp_avg_sq: Chunk
    owned: bool

    def chunks(self) -> list[Chunk]:
        return [c for c in (self.param, self.grad, self.master, self.exp_avg, self.exp_avg_sq) if c]


def minimum_device_budget(chunk_size: int, mode: str, policy: str, num_groups: int) -> int:
    """The smallest fast-tier capacity (bytes, before activations) the engine can run with.

    Dynamic policies and ``static-z3`` need one module's PARAM chunk and (fp32) GRAD chunk at
    once; ``static`` keeps every PARAM and GRAD chunk resident.
    """
    per_group = chunk_size * 4 * 2 if mode == "fp32" else chunk_size * 2
    return per_group * (num_groups if policy == "static" else 1)


class HetMemEngine:
    """Trains ``model`` with its parameters, gradients and Adam states in chunks (see module doc).

    Build it with ``initialize``. Attributes of interest: ``tiers`` (fast first), ``trace`` (the
    warm-up ``MemoryTrace``), ``layout``, ``search_report``, ``iteration_traffic`` (fast-tier
    bytes in + out per completed iteration), ``moves`` (bytes per ``"src->dst"``).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: AdamConfig,
        config: HetMemConfig,
        loss_fn: Callable[..., torch.Tensor] | None = None,
    ) -> None:
        self.model = model
        self.adam = optimizer
        self.config = config
        self.loss_fn = loss_fn
        self.world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        self.rank = dist.get_rank() if self.world > 1 else 0
        if self.world > 1 and config.mode != "fp32":
            raise NotSupportedError("ZeRO data parallel is implemented for mode='fp32' only")
        if self.world > 1 and config.policy in ("static", "static-z3"):
            raise NotSupportedError("ZeRO data parallel needs policy 'opt' or 'lru'")
        self.param_dtype = torch.float32 if config.mode == "fp32" else torch.bfloat16
        self.module_lists: list[ModuleParams] = module_param_lists(model)
        self.search_report: ChunkSearchReport | None = None
        if config.chunk_size == "auto":
            self.search_report = search_chunk_size(self.module_lists, None, config.search_interval)
            chunk_size = self.search_report.chosen
        else:
            chunk_size = int(config.chunk_size)
        self.layout: ChunkLayout = build_layout(self.module_lists, chunk_size)
        self.trace = MemoryTrace()
        self.warmup = True
        self.iteration = 0
        self.step_count = 0
        self.moment = -1
        self.stage = "idle"
        self._clock = 0
        self._tracer: SavedTensorTracer | None = None
        self._grads_pending = False
        self.moves: collections.Counter[str] = collections.Counter()
        self.iteration_traffic: list[int] = []
        self._traffic_mark = 0
        self.tide: list[tuple[int, str, int, int]] = []
        self.record_events = False
        self.events: list[AccessEvent] = []
        self.event_budgets: list[int] = []
        self.event_initial_fast: set[str] = set()
        self.event_initial_clean: set[str] = set()
        self._gathered: dict[int, bool] = {}
        self._bound: dict[int, str] = {}
        self._unwritten: dict[str, set[str]] = {}
        self.margin_groups = 0
        self.resident_groups = 0
        self._in_backward = False
        self._headroom = config.headroom_bytes
        self.params: dict[str, nn.Parameter] = dict(model.named_parameters())
        self.shapes = {name: p.shape for name, p in self.params.items()}
        self._build_tiers()
        self._build_chunks()
        self._check_budget()
        self._place_initial()
        self._empty = torch.empty(0, dtype=self.param_dtype)
        for param in self.params.values():
            param.data = self._empty
            param.grad = None
        self._install_hooks()

    # ------------------------------------------------------------------ construction
    def _build_tiers(self) -> None:
        budget = self.config.device_budget_bytes
        want_cuda = self.config.device == "cuda" or (
            self.config.device == "auto" and torch.cuda.is_available()
        )
        if self.config.device == "cuda" and not torch.cuda.is_available():
            raise NotSupportedError("device='cuda' was asked for but CUDA is not available")
        fast: Tier
        if want_cuda:
            fast = CudaTier(budget)
        elif budget is None:
            fast = _UnboundedDeviceTier(None)
        else:
            fast = ArenaTier(budget)
        slow: list[Tier] = []
        for spec in self.config.tiers:
            if spec.kind == "cpu":
                slow.append(HostTier(spec.capacity_bytes))
            else:
                slow.append(DiskTier(spec.capacity_bytes, spec.path))
        self.fast = fast
        self.tiers: list[Tier] = [fast, *slow]
        self.host = slow[0]

    def _build_chunks(self) -> None:
        size = self.layout.chunk_size
        by_group: dict[int, list[Any]] = collections.defaultdict(list)
        for spec in self.layout.slots:
            by_group[spec.group].append(spec)

        def chunk(kind: ChunkType, group: int, dtype: torch.dtype) -> Chunk:
            slots = [Slot(s.name, s.offset, s.numel, self.shapes[s.name]) for s in by_group[group]]
            return Chunk(kind, group, dtype, size, self.layout.group_used[group], slots)

        self.groups: list[_Group] = []
        fp32 = self.config.mode == "fp32"
        for g in range(self.layout.num_groups):
            owned = g % self.world == self.rank
            param = chunk(ChunkType.PARAM, g, self.param_dtype)
            param.remote = not owned
            grad = chunk(ChunkType.GRAD, g, torch.float32) if fp32 else None
            if grad is not None:
                grad.remote = not owned
            master = None if fp32 else chunk(ChunkType.MASTER, g, torch.float32)
            self.groups.append(
                _Group(
                    param,
                    grad,
                    master,
                    chunk(ChunkType.EXP_AVG, g, torch.float32),
                    chunk(ChunkType.EXP_AVG_SQ, g, torch.float32),
                    owned,
                )
            )
        self.chunks: dict[str, Chunk] = {c.label: c for grp in self.groups for c in grp.chunks()}
        self.param_chunk: dict[str, Chunk] = {}
        for grp in self.groups:
            for slot in grp.param.slots:
                self.param_chunk[slot.name] = grp.param
        self.group_of: dict[str, _Group] = {s.name: self.groups[s.group] for s in self.layout.slots}

    def _check_budget(self) -> None:
        capacity = self.fast.capacity
        if capacity is None:
            return
        need = (
            minimum_device_budget(
                self.layout.chunk_size, self.config.mode, self.config.policy, self.layout.num_groups
            )
            + self.config.headroom_bytes
        )
        if self.world > 1:
            need = self.layout.chunk_size * 4 * (self.world + 1)
        if capacity < need:
            raise BudgetExceeded(
                f"device budget {capacity} bytes ({format_bytes(capacity)}) is below the minimum "
                f"{need} bytes ({format_bytes(need)}) for chunk size {self.layout.chunk_size} "
                f"elements, mode {self.config.mode}, policy {self.config.policy}; raise "
                f"device_budget to at least {need} (plus activations) or lower chunk_size"
            )
        total = sum(c.nbytes for grp in self.groups if grp.owned for c in grp.chunks())
        caps = [t.capacity for t in self.tiers]
        if all(c is not None for c in caps) and total > sum(c for c in caps if c is not None):
            raise BudgetExceeded(
                f"model data needs {total} bytes in chunks but the tiers hold only "
                f"{sum(c for c in caps if c is not None)} bytes; add a disk tier or capacity"
            )

    def _place_initial(self) -> None:
        static = self.config.policy == "static"
        for grp in self.groups:
            if static:
                grp.param.pinned_tier = self.fast.name
                if grp.grad is not None:
                    grp.grad.pinned_tier = self.fast.name
                for c in (grp.exp_avg, grp.exp_avg_sq, grp.master):
                    if c is not None:
                        c.pinned_tier = self.host.name
            if not grp.owned:
                continue
            tier = self.fast if static else None
            self._allocate(grp.param, tier)
            with torch.no_grad():
                for slot in grp.param.slots:
                    grp.param.view(slot.name).copy_(self.params[slot.name].detach())
            grp.param.set_state(_S.HOLD)
            if grp.master is not None:
                self._allocate(grp.master, self.host if static else None)
                with torch.no_grad():
                    for slot in grp.master.slots:
                        grp.master.view(slot.name).copy_(self.params[slot.name].detach())
                grp.master.set_state(_S.HOLD)

    def _allocate(self, chunk: Chunk, tier: Tier | None, zero: bool = True) -> None:
        """Allocates a zero payload on ``tier`` (or the first slow tier with room)."""
        if tier is None:
            for candidate in self.tiers[1:]:
                self._drop_shadows(candidate, chunk.nbytes)
                if candidate.can_hold(chunk.nbytes):
                    tier = candidate
                    break
            else:
                raise BudgetExceeded(
                    f"no tier can hold chunk {chunk.label} ({chunk.nbytes} bytes); "
                    + ", ".join(f"{t.name}: {t.used}/{t.capacity}" for t in self.tiers)
                )
        else:
            self._make_room(tier, chunk.nbytes, {chunk.label})
        chunk.block = tier.allocate(chunk.capacity, chunk.dtype, zero)

    def _install_hooks(self) -> None:
        self._handles: list[Any] = []
        for entry in self.module_lists:
            module = self.model.get_submodule(entry.module_name)
            names = list(entry.names)
            self._handles.append(
                module.register_forward_pre_hook(lambda _m, _i, n=names: self._pre_forward(n))
            )
            self._handles.append(
                module.register_forward_hook(
                    lambda _m, _i, output, n=names: self._post_forward(n, output)
                )
            )
        for name, param in self.params.items():
            self._handles.append(
                param.register_post_accumulate_grad_hook(lambda p, n=name: self._post_grad(n, p))
            )

    def _backward_hook(self, names: list[str]) -> Callable[[torch.Tensor], None]:
        def hook(_grad: torch.Tensor) -> None:
            self._pre_backward(names)

        return hook

    # ------------------------------------------------------------------ tier moves
    def _model_ref(self, tensor: torch.Tensor) -> Any:
        """A marker for a saved tensor that is (a view of) a bound parameter."""
        if tensor.numel() == 0:
            return None
        name = self._bound.get(int(tensor.data_ptr()))
        if name is None:
            if isinstance(self.fast, ArenaTier) and (
                int(tensor.untyped_storage().data_ptr()) == self.fast.storage_ptr()
            ):
                raise RuntimeError(
                    "autograd saved a partial view of a chunk payload; ptrain-hetmem cannot "
                    "follow it across chunk moves"
                )
            return None
        param = self.params[name]
        if tuple(tensor.shape) == tuple(param.shape) and tensor.stride() == param.stride():
            return ("param", name)
        return ("view", name, tuple(tensor.shape), tuple(tensor.stride()))

    def _model_unpack(self, marker: Any) -> torch.Tensor:
        param = self.params[marker[1]]
        if param.numel() == 0:
            raise RuntimeError(f"parameter {marker[1]!r} is not resident in backward")
        if marker[0] == "param":
            return param
        return param.as_strided(marker[2], marker[3])

    def _chunk_budget(self) -> int | None:
        capacity = self.fast.capacity
        if capacity is None:
            return None
        live = self.fast.nonmodel
        budget = capacity - live - self._headroom
        if not self.warmup and self.trace.total and self.stage in ("fwd", "bwd", "adam"):
            budget = min(budget, self.trace.chunk_budget(capacity, self.moment, self._headroom))
        return budget

    def _fits(self, tier: Tier, nbytes: int) -> bool:
        if tier is self.fast:
            budget = self._chunk_budget()
            if budget is not None and tier.used + nbytes > budget:
                return False
        return tier.can_hold(nbytes)

    def _victims(self, tier: Tier, protect: set[str]) -> list[Chunk]:
        candidates = [
            c
            for c in self.chunks.values()
            if c.tier is tier
            and c.label not in protect
            and not c.has_state(_S.COMPUTE)
            and c.pinned_tier is None
            and not (c.remote and c.kind == ChunkType.PARAM)
        ]
        if not candidates:
            return []
        policy = "lru" if (self.warmup or self.config.policy != "opt") else "opt"
        labels = order_victims(
            [c.label for c in candidates],
            policy,
            lambda label: self.trace.next_use(label, self.moment),
            lambda label: self.chunks[label].last_access,
            lambda label: self._eviction_cost(self.chunks[label]),
        )
        return [self.chunks[label] for label in labels]

    def _eviction_cost(self, chunk: Chunk) -> int:
        """Bytes an eviction of ``chunk`` moves: 0 while a clean copy waits below."""
        return 0 if chunk.shadow is not None else chunk.nbytes

    def _drop_shadows(self, tier: Tier, nbytes: int) -> None:
        """Frees clean copies on ``tier`` (furthest next use first) until ``nbytes`` fit; their
        chunks become dirty (written back on eviction)."""
        if tier is self.fast or tier.can_hold(nbytes):
            return
        holders = [
            c for c in self.chunks.values() if c.shadow is not None and c.shadow.tier is tier
        ]
        if not holders:
            return
        holders.sort(key=lambda c: (-self.trace.next_use(c.label, self.moment), c.label))
        for chunk in holders:
            if tier.can_hold(nbytes):
                break
            self._drop_shadow(chunk)

    def _drop_shadow(self, chunk: Chunk) -> None:
        if chunk.shadow is not None:
            chunk.shadow.tier.release(chunk.shadow)
            chunk.shadow = None

    def _written(self, chunk: Chunk) -> None:
        """``chunk``'s payload is about to be written: its clean copy below goes stale."""
        self._drop_shadow(chunk)
        if self.record_events and chunk.tier is self.fast:
            self._event("write", chunk)

    def _make_room(self, tier: Tier, nbytes: int, protect: set[str]) -> None:
        self._drop_shadows(tier, nbytes)
        while not self._fits(tier, nbytes):
            victims = self._victims(tier, protect)
            if not victims:
                raise BudgetExceeded(
                    f"{tier.name} tier cannot make room for {nbytes} bytes: chunks "
                    f"{tier.used}, non-model {tier.nonmodel}, capacity {tier.capacity}, and "
                    f"nothing left to evict (budget too small for this model)"
                )
            self._evict(victims[0], protect)

    def _evict(self, chunk: Chunk, protect: set[str]) -> None:
        tier = chunk.tier
        assert tier is not None
        index = self.tiers.index(tier)
        if index + 1 >= len(self.tiers):
            raise BudgetExceeded(
                f"{tier.name} tier is full and there is no lower tier to evict chunk "
                f"{chunk.label} to; add capacity or a disk tier"
            )
        self._move(chunk, self.tiers[index + 1], protect)

    def _move(self, chunk: Chunk, dst: Tier, protect: set[str]) -> None:
        src_block = chunk.block
        assert src_block is not None
        src = src_block.tier
        shadow = chunk.shadow
        if shadow is not None and shadow.tier is dst:
            # clean: the copy below is up to date, nothing moves
            chunk.shadow = None
            chunk.block = shadow
            src.release(src_block)
            return
        self._drop_shadow(chunk)
        self._make_room(dst, chunk.nbytes, protect | {chunk.label})
        block = dst.allocate(chunk.capacity, chunk.dtype, zero=False)
        block.tensor.copy_(src_block.tensor)
        chunk.block = block
        if dst is self.fast and src is self.host:
            chunk.shadow = src_block  # keep the host copy while the device copy is clean
        else:
            src.release(src_block)
        src.bytes_out += chunk.nbytes
        dst.bytes_in += chunk.nbytes
        self.moves[f"{src.name}->{dst.name}"] += chunk.nbytes

    def _ensure(self, chunk: Chunk, tier: Tier, zero: bool = True) -> None:
        if chunk.block is None:
            if self.record_events and tier is self.fast:
                self._event("alloc", chunk)
            self._allocate(chunk, tier, zero)
            return
        if self.record_events:
            self._event("fast" if tier is self.fast else "slow", chunk)
        if chunk.tier is not tier:
            self._move(chunk, tier, {chunk.label})

    def _event(self, kind: str, chunk: Chunk) -> None:
        self.events.append(AccessEvent(self.moment, kind, chunk.label, chunk.nbytes))

    def _release(self, chunk: Chunk) -> None:
        self._drop_shadow(chunk)
        if chunk.block is not None:
            chunk.block.tier.release(chunk.block)
            chunk.block = None
            if self.record_events:
                self._event("release", chunk)

    # ------------------------------------------------------------------ moments
    def _tick(self, stage: str) -> None:
        self.moment += 1
        self.stage = stage
        if self.warmup:
            self.trace.nonmodel.append(self.fast.nonmodel)
            self.trace.accesses.append([])
            self.trace.stages.append(stage)
        if self.record_events:
            budget = self._chunk_budget()
            self.event_budgets.append(budget if budget is not None else 1 << 62)
        if not self.warmup and self.config.policy in ("opt", "lru"):
            budget = self._chunk_budget()
            if budget is not None and self.fast.used > budget:
                for victim in self._victims(self.fast, set()):
                    if self.fast.used <= budget:
                        break
                    self._evict(victim, set())

    def _note_access(self, chunk: Chunk) -> None:
        self._clock += 1
        chunk.last_access = self._clock
        if self.warmup and self.trace.accesses and chunk.label not in self.trace.accesses[-1]:
            self.trace.accesses[-1].append(chunk.label)

    def _end_moment(self) -> None:
        if self.warmup:
            self.trace.fast_chunk_bytes.append(self.fast.used)
        if self.record_events and self.resident_groups and self.event_budgets:
            # resident chunks are fixed: the replay places the others in what they leave
            self.event_budgets[-1] -= sum(
                c.nbytes for c in self.chunks.values() if self._resident(c) and c.tier is self.fast
            )
        self.tide.append((self.iteration, self.stage, self.fast.nonmodel, self.fast.used))

    def _on_nonmodel(self, live: int) -> None:
        if self.warmup and self.trace.nonmodel and self.moment >= 0:
            self.trace.nonmodel[self.moment] = max(self.trace.nonmodel[self.moment], live)
        capacity = self.fast.capacity
        growing = live > self.fast.nonmodel
        self.fast.set_nonmodel(live)
        if growing and capacity is not None and self.fast.used + live > capacity:
            for victim in self._victims(self.fast, set()):
                if self.fast.used + live <= capacity:
                    break
                self._evict(victim, set())
            if self.fast.used + live > capacity:
                raise BudgetExceeded(
                    f"device tier over budget: activations {live} bytes + chunks in use "
                    f"{self.fast.used} bytes > capacity {capacity} bytes"
                )

    # ------------------------------------------------------------------ ZeRO
    def _gather(self, group_index: int) -> None:
        k = group_index // self.world
        if self.world == 1 or self._gathered.get(k):
            return
        size = self.layout.chunk_size
        own = k * self.world + self.rank
        if own < len(self.groups):
            payload = self.groups[own].param.payload
            assert payload is not None
            contribution = payload.detach().clone()
        else:
            contribution = torch.zeros(size, dtype=self.param_dtype)
        gathered = comm.all_gather(contribution)
        for r in range(self.world):
            member = k * self.world + r
            if r == self.rank or member >= len(self.groups):
                continue
            chunk = self.groups[member].param
            self._allocate(chunk, self.fast)
            chunk.block.tensor.copy_(gathered[r * size : (r + 1) * size])  # type: ignore[union-attr]
            free = [slot.name for slot in chunk.slots if slot.state == _S.FREE]
            chunk.set_state(_S.HOLD, free)  # a gathered remote chunk holds live values
        self._gathered[k] = True

    def _release_remote(self) -> None:
        if self.world == 1:
            return
        for k, on in list(self._gathered.items()):
            if not on:
                continue
            members = [
                self.groups[m].param
                for m in range(k * self.world, (k + 1) * self.world)
                if m < len(self.groups)
            ]
            if any(c.has_state(_S.COMPUTE) for c in members):
                continue
            for c in members:
                if c.remote:
                    c.set_state(_S.FREE)
                    self._release(c)
            self._gathered[k] = False

    def _fill_unwritten(self, chunk: Chunk) -> None:
        """Zero-fills the slots (and padding) of a fresh GRAD payload that got no gradient."""
        names = self._unwritten.pop(chunk.label, None)
        if chunk.block is None or names is None:
            return
        self._written(chunk)
        with torch.no_grad():
            for name in names:
                chunk.view(name).zero_()
            chunk.block.tensor.narrow(0, chunk.used, chunk.capacity - chunk.used).zero_()

    def _reduce_scatter_grads(self) -> None:
        size = self.layout.chunk_size
        n_comm = -(-len(self.groups) // self.world)
        for k in range(n_comm):
            parts = []
            for r in range(self.world):
                m = k * self.world + r
                grad = self.groups[m].grad if m < len(self.groups) else None
                if grad is not None:
                    self._fill_unwritten(grad)
                if grad is not None and grad.payload is not None:
                    parts.append(grad.payload.detach())
                else:
                    parts.append(torch.zeros(size, dtype=torch.float32))
            mine = comm.reduce_scatter(torch.cat(parts)).div_(self.world)
            own = k * self.world + self.rank
            if own < len(self.groups):
                grad = self.groups[own].grad
                assert grad is not None
                if grad.block is None:
                    self._allocate(grad, self.fast)
                    grad.set_state(_S.HOLD_AFTER_BWD)
                self._written(grad)
                grad.block.tensor.copy_(mine)  # type: ignore[union-attr]
            for r in range(self.world):
                m = k * self.world + r
                if m < len(self.groups) and r != self.rank:
                    remote = self.groups[m].grad
                    if remote is not None and remote.block is not None:
                        remote.set_state(_S.FREE)
                        self._release(remote)

    # ------------------------------------------------------------------ hooks
    def _bind(self, names: list[str]) -> None:
        for name in names:
            view = self.param_chunk[name].view(name)
            self.params[name].data = view
            self._bound[int(view.data_ptr())] = name

    def _unbind(self, names: list[str]) -> None:
        for name in names:
            param = self.params[name]
            if param.numel():
                self._bound.pop(int(param.data_ptr()), None)
            param.data = self._empty

    def _pre_forward(self, names: list[str]) -> None:
        # inside backward this is activation checkpointing's re-forward: a backward moment
        self._tick("bwd" if self._in_backward else "fwd")
        chunk = self.param_chunk[names[0]]
        if self.world > 1:
            self._gather(chunk.group)
        self._ensure(chunk, self.fast)
        chunk.set_state(_S.COMPUTE, names)
        self._note_access(chunk)
        self._bind(names)
        self._end_moment()

    def _post_forward(self, names: list[str], output: Any) -> None:
        if self._in_backward:
            # activation checkpointing's re-forward: autograd now holds views of these
            # parameters, so the chunk stays in COMPUTE (bound, immovable) until the module's
            # own backward is done with it (``_post_grad``)
            return
        # pre-backward: a hook on the module's output gradient (cheaper than a full backward
        # hook); it fires once the gradient of the output is complete, before the module's own
        # backward runs
        first = _first_grad_tensor(output)
        if first is not None:
            first.register_hook(self._backward_hook(names))
        chunk = self.param_chunk[names[0]]
        chunk.set_state(_S.HOLD_AFTER_FWD, names)
        self._unbind(names)
        if self._frees_after_use and not chunk.remote:
            self._evict_after_use(chunk)
        self._release_remote()

    @property
    def _frees_after_use(self) -> bool:
        """Warm-up (the budget for activations is not known yet) and ``static-z3`` keep the fast
        tier minimal: a chunk leaves as soon as its module is done with it."""
        policy = self.config.policy
        return policy == "static-z3" or (self.warmup and policy != "static")

    def _evict_after_use(self, chunk: Chunk) -> None:
        """Moves ``chunk`` off the fast tier unless it is in use or pinned there. After warm-up
        (``static-z3``) a chunk the very next module uses stays: a chunk spans several modules,
        and ZeRO-3-Offload fetches each parameter once per pass, not once per module."""
        if (
            chunk.tier is self.fast
            and not chunk.has_state(_S.COMPUTE)
            and chunk.pinned_tier is None
            and (self.warmup or self.trace.next_use(chunk.label, self.moment) > self.moment + 1)
        ):
            self._evict(chunk, set())

    def _pre_backward(self, names: list[str]) -> None:
        self._tick("bwd")
        chunk = self.param_chunk[names[0]]
        grp = self.group_of[names[0]]
        if self.world > 1:
            self._gather(chunk.group)
        self._ensure(chunk, self.fast)
        chunk.set_state(_S.COMPUTE, names)
        self._note_access(chunk)
        if grp.grad is not None:
            if grp.grad.block is None:
                self._ensure(grp.grad, self.fast, zero=False)
                self._unwritten[grp.grad.label] = {slot.name for slot in grp.grad.slots}
            else:
                self._ensure(grp.grad, self.fast)
            self._written(grp.grad)
            grp.grad.set_state(_S.COMPUTE, names)
            self._note_access(grp.grad)
        self._bind(names)
        self._end_moment()

    def _post_grad(self, name: str, param: torch.Tensor) -> None:
        grad = param.grad
        assert grad is not None
        grp = self.group_of[name]
        with torch.no_grad():
            if grp.grad is not None:
                fresh = self._unwritten.get(grp.grad.label)
                if fresh is not None and name in fresh:
                    grp.grad.view(name).copy_(grad)  # fresh payload: no zero-fill needed
                    fresh.discard(name)
                else:
                    grp.grad.view(name).add_(grad)
                grp.grad.set_state(_S.HOLD_AFTER_BWD, [name])
            else:
                self._written(grp.param)  # mixed mode: the gradient overwrites the bf16 slot
                grp.param.view(name).copy_(grad)
        param.grad = None
        grp.param.set_state(_S.HOLD_AFTER_BWD, [name])
        self._unbind([name])
        if self._frees_after_use:
            for c in (grp.param, grp.grad):
                if c is not None and not c.remote:
                    self._evict_after_use(c)
        self._release_remote()

    # ------------------------------------------------------------------ the training API
    def __call__(self, *inputs: Any, **kwargs: Any) -> Any:
        """Runs the model's forward (and ``loss_fn(output, inputs[-1])`` when given)."""
        if self.stage in ("idle", "adam"):
            self._begin_iteration()
        self.stage = "fwd"
        if self._tracer is None:
            self._tracer = SavedTensorTracer(self._model_ref, self._model_unpack, self._on_nonmodel)
            self._tracer.__enter__()
        try:
            if self.loss_fn is not None:
                output = self.loss_fn(self.model(*inputs[:-1], **kwargs), inputs[-1])
            else:
                output = self.model(*inputs, **kwargs)
        except BaseException:
            self._close_tracer()
            raise
        for grp in self.groups:
            for slot in grp.param.slots:
                if slot.state == _S.HOLD_AFTER_FWD:
                    grp.param.set_state(_S.HOLD, [slot.name])
        return output

    def _close_tracer(self) -> None:
        if self._tracer is not None:
            self._tracer.__exit__(None, None, None)
            self._tracer = None

    def _begin_iteration(self) -> None:
        self.moment = -1
        self._traffic_mark = self.fast.bytes_in + self.fast.bytes_out
        if self.record_events:
            self.events = []
            self.event_budgets = []
            self.event_initial_fast = {c.label for c in self.chunks.values() if c.tier is self.fast}
            self.event_initial_clean = {
                label for label in self.event_initial_fast if self.chunks[label].shadow is not None
            }

    def backward(self, loss: torch.Tensor) -> None:
        """Back-propagates ``loss``; gradients land in the GRAD chunks (or over the params)."""
        if self.config.mode != "fp32" and self._grads_pending:
            raise NotSupportedError(
                "gradient accumulation needs mode='fp32' (the gradient chunk list); in "
                "mixed mode gradients overwrite the bf16 parameters, call step() after each "
                "backward"
            )
        self.stage = "bwd"
        self._in_backward = True
        try:
            loss.backward()
        finally:
            self._in_backward = False
            self._close_tracer()
        for grp in self.groups:
            for slot in grp.param.slots:
                if slot.state == _S.COMPUTE:
                    grp.param.set_state(_S.HOLD_AFTER_BWD, [slot.name])
                    self._unbind([slot.name])
            if grp.grad is not None:
                for slot in grp.grad.slots:
                    if slot.state == _S.COMPUTE:
                        grp.grad.set_state(_S.HOLD_AFTER_BWD, [slot.name])
        self._release_remote()
        if self.world > 1:
            self._reduce_scatter_grads()
        self.fast.set_nonmodel(0)
        self._grads_pending = True

    def zero_grad(self) -> None:
        """Drops accumulated gradients (``step`` already does this)."""
        for grp in self.groups:
            if grp.grad is not None and grp.grad.block is not None:
                grp.grad.set_state(_S.FREE)
                self._release(grp.grad)
                self._unwritten.pop(grp.grad.label, None)
        self._grads_pending = False

    def step(self) -> None:
        """Chunk-wise Adam on the tier where each chunk group's states live (hybrid)."""
        self.step_count += 1
        for grp in self.groups:
            if not grp.owned:
                continue
            self._tick("adam")
            self._adam_group(grp)
            self._end_moment()
        self.stage = "adam"
        self._grads_pending = False
        self._end_iteration()

    def _adam_tier(self, grp: _Group) -> Tier:
        """Hybrid Adam (PatrickStar's margin rule): a group's Adam runs on the fast tier when
        its states are already there or the group is among the first ``margin_groups``; else
        on the host."""
        if self.config.policy in ("static", "static-z3"):
            return self.host
        if grp.exp_avg.tier is self.fast or self._resident(grp.exp_avg):
            return self.fast
        if self.config.hybrid_adam and not self.warmup and grp.param.group < self.margin_groups:
            return self.fast
        return self.host

    def _update_margin(self) -> None:
        """After warm-up: how many chunk groups' Adam states fit next to every PARAM/GRAD chunk
        and the traced non-model peak (``margin = capacity - peak - PARAM/GRAD bytes``)."""
        capacity = self.fast.capacity
        if capacity is None:
            self.margin_groups = len(self.groups)
            return
        compute = sum(c.nbytes for g in self.groups for c in (g.param, g.grad) if c is not None)
        states = sum(
            c.nbytes
            for c in (self.groups[0].exp_avg, self.groups[0].exp_avg_sq, self.groups[0].master)
            if c is not None
        )
        margin = capacity - max(self.trace.nonmodel, default=0) - self._headroom - compute
        self.margin_groups = max(0, margin // states)

    def _resident(self, chunk: Chunk) -> bool:
        """Pinned on the fast tier (a resident group's chunk, or static's PARAM/GRAD)."""
        return chunk.pinned_tier == self.fast.name

    def _plan_residency(self) -> None:
        """After warm-up: pin the first ``k`` chunk groups (PARAM, GRAD and Adam states) on the
        fast tier for good — they move nothing and their Adam runs there — with ``k`` the
        largest for which, at every traced moment, their bytes (gradients from their first
        backward access to their Adam step), the chunks that moment computes with, the tide's
        non-model bytes and the headroom fit the capacity. The bound in
        ``traffic_lower_bound`` shows why this is the missing half of OPT: once every PARAM
        chunk can stay through the activation peak, only whole resident groups save more."""
        self.resident_groups = 0
        capacity = self.fast.capacity
        if (
            not self.config.resident_groups
            or self.config.policy not in ("opt", "lru")
            or self.world > 1
            or not self.trace.total
        ):
            return
        if capacity is None:
            return
        total = self.trace.total
        nonmodel = [
            max(self.trace.nonmodel[t], self.trace.nonmodel[(t + 1) % total]) for t in range(total)
        ]
        first_use: dict[str, int] = {}
        last_use: dict[str, int] = {}
        for moment, labels in enumerate(self.trace.accesses):
            for label in labels:
                first_use.setdefault(label, moment)
                last_use[label] = moment

        def working(t: int, resident: set[str]) -> int:
            if self.trace.stages[t] == "adam":
                return 0
            return sum(
                self.chunks[label].nbytes
                for label in self.trace.accesses[t]
                if label not in resident
            )

        best = 0
        for k in range(1, len(self.groups) + 1):
            chosen = self.groups[:k]
            resident = {c.label for g in chosen for c in g.chunks()}
            fixed = sum(c.nbytes for g in chosen for c in g.chunks() if c is not g.grad)
            grads = [
                (first_use.get(g.grad.label, 0), last_use.get(g.grad.label, total), g.grad.nbytes)
                for g in chosen
                if g.grad is not None
            ]
            # a group is worth making resident only with every other PARAM chunk kept through
            # the activation peak (see traffic_lower_bound): that is the cheaper use of room
            others = sum(g.param.nbytes for g in self.groups[k:])
            ok = fixed + others + max(nonmodel) + self._headroom <= capacity
            for t in range(total if ok else 0):
                live = sum(n for first, last, n in grads if first <= t <= last)
                if fixed + live + nonmodel[t] + working(t, resident) + self._headroom > capacity:
                    ok = False
                    break
            if not ok:
                break
            best = k
        self.resident_groups = best
        for grp in self.groups[:best]:
            for chunk in grp.chunks():
                chunk.pinned_tier = self.fast.name

    def _adam_group(self, grp: _Group) -> None:
        tier = self._adam_tier(grp)
        grad_source = grp.grad if grp.grad is not None else grp.param
        streamed: list[tuple[Chunk, Any]] = []
        work: dict[str, torch.Tensor] = {}
        if grp.grad is not None:
            self._fill_unwritten(grp.grad)
        for chunk in grp.chunks():
            if chunk is grp.grad and chunk.block is None:
                self._allocate(chunk, self.fast if tier is self.fast else tier)
                chunk.set_state(_S.HOLD_AFTER_BWD)
            if (
                chunk.pinned_tier is not None
                and chunk.pinned_tier != tier.name
                and chunk.tier is not None
                and chunk.tier is not tier
            ):
                # static partition: stream a copy to the Adam tier, keep the chunk in place
                if chunk.shadow is not None and chunk.shadow.tier is tier:
                    block = chunk.shadow  # the clean copy of last step's parameters
                    chunk.shadow = None
                else:
                    self._drop_shadow(chunk)
                    self._drop_shadows(tier, chunk.nbytes)
                    block = tier.allocate(chunk.capacity, chunk.dtype, zero=False)
                    block.tensor.copy_(chunk.block.tensor)  # type: ignore[union-attr]
                    chunk.tier.bytes_out += chunk.nbytes
                    tier.bytes_in += chunk.nbytes
                    self.moves[f"{chunk.tier.name}->{tier.name}"] += chunk.nbytes
                streamed.append((chunk, block))
                work[chunk.label] = block.tensor.narrow(0, 0, chunk.used)
            else:
                self._ensure(chunk, tier)
                if chunk is not grad_source:
                    self._written(chunk)
                work[chunk.label] = chunk.flat()
            chunk.set_state(_S.COMPUTE)
            self._note_access(chunk)
        self._adam_math(
            param=work[grp.param.label],
            grad=work[grad_source.label],
            master=None if grp.master is None else work[grp.master.label],
            exp_avg=work[grp.exp_avg.label],
            exp_avg_sq=work[grp.exp_avg_sq.label],
        )
        for chunk, block in streamed:
            if chunk is grp.param:
                chunk.block.tensor.copy_(block.tensor)  # type: ignore[union-attr]
                tier.bytes_out += chunk.nbytes
                self.fast.bytes_in += chunk.nbytes
                self.moves[f"{tier.name}->{chunk.tier.name}"] += chunk.nbytes  # type: ignore[union-attr]
                chunk.shadow = block  # equal to the device copy: clean until written
                continue
            tier.release(block)
        for chunk in grp.chunks():
            chunk.set_state(_S.HOLD)
        if grp.grad is not None:
            grp.grad.set_state(_S.FREE)
            self._release(grp.grad)

    @torch.no_grad()
    def _adam_math(
        self,
        *,
        param: torch.Tensor,
        grad: torch.Tensor,
        master: torch.Tensor | None,
        exp_avg: torch.Tensor,
        exp_avg_sq: torch.Tensor,
    ) -> None:
        """torch.optim.Adam(foreach=False)'s single-tensor update on flat chunk views."""
        cfg = self.adam
        beta1, beta2 = cfg.betas
        target = param if master is None else master
        g = grad if master is None else grad.float()
        if cfg.weight_decay != 0:
            if cfg.decoupled:
                target.mul_(1 - cfg.lr * cfg.weight_decay)
            else:
                g = g.add(target, alpha=cfg.weight_decay)
        exp_avg.lerp_(g, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        step = float(self.step_count)
        bias_correction1 = 1 - beta1**step
        bias_correction2 = 1 - beta2**step
        step_size = cfg.lr / bias_correction1
        denom = (exp_avg_sq.sqrt() / bias_correction2**0.5).add_(cfg.eps)
        target.addcdiv_(exp_avg, denom, value=-step_size)
        if master is not None:
            param.copy_(master)

    def _end_iteration(self) -> None:
        self.iteration_traffic.append(self.fast.bytes_in + self.fast.bytes_out - self._traffic_mark)
        if self.warmup:
            self.trace.finalize()
            self.warmup = False
            self._update_margin()
            self._plan_residency()
        self.iteration += 1

    # ------------------------------------------------------------------ reports
    def belady_bytes(self) -> int:
        """Offline Belady traffic for the last recorded iteration (``record_events=True``); the
        resident groups' chunks stay where they are (their room is taken off each budget)."""
        pinned = {c.label for c in self.chunks.values() if self._resident(c)}
        return belady_traffic(
            [e for e in self.events if e.label not in pinned],
            self.event_budgets,
            self.event_initial_fast - pinned,
            self.event_initial_clean - pinned,
        )

    def traffic_lower_bound(self) -> int | None:
        """A lower bound on the fast-tier bytes (in + out) per steady iteration of ANY placement
        policy for this chunk layout, budget and warm-up trace (``None`` before the trace, with
        an unbounded fast tier, or under ZeRO).

        Take the moment ``t*`` of the traced non-model peak (end of forward), where chunks may
        use ``c = capacity - peak - headroom`` bytes. Let ``p`` be the PARAM chunks' bytes and
        ``s`` the bytes of their optimizer-state chunks (m, v and the fp32 master in mixed
        mode). For a parameter chunk, every placement falls in one of three classes:

        - *resident* (PARAM and its states on the fast tier all step): moves nothing; needs
          its PARAM and state bytes at ``t*``;
        - *kept through the peak* (PARAM on the fast tier at ``t*``, some state not): its
          gradient must go down and the updated parameter come up (or the missing states go
          up and down, at least as much): ``2p``; needs its PARAM bytes at ``t*``;
        - otherwise it must also come up again for backward: ``3p``; needs nothing at ``t*``.

        (Keeping the states at ``t*`` but not the PARAM costs ``2p`` like the second class with
        more room, so it never helps.) Minimising the bytes moved under the room at ``t*`` is a
        fractional knapsack: keep PARAM chunks through the peak first (saves one byte per byte
        of room), then make them resident (saves ``2p`` for ``s`` more bytes). Whole chunks
        only make it worse, so ``3p - min(c, p) - 2p * min(1, max(0, c - p) / s)`` is a bound.
        For fp32 (``s = 2p``) it is simply ``3p - c``.
        """
        capacity = self.fast.capacity
        if capacity is None or self.warmup or self.world > 1 or not self.trace.nonmodel:
            return None
        room = max(0, capacity - max(self.trace.nonmodel) - self._headroom)
        p = sum(g.param.nbytes for g in self.groups)
        s = sum(c.nbytes for g in self.groups for c in (g.master, g.exp_avg, g.exp_avg_sq) if c)
        saved = min(room, p) + 2 * p * min(1.0, max(0, room - p) / s)
        return max(0, int(3 * p - saved))

    def memory_report(self) -> dict[str, Any]:
        """Per tier: capacity, peak, bytes in/out; plus moves and chunk facts."""
        return {
            "tiers": {t.name: t.summary() for t in self.tiers},
            "moves": dict(self.moves),
            "chunk_size": self.layout.chunk_size,
            "chunk_groups": self.layout.num_groups,
            "model_data_bytes": sum(c.nbytes for g in self.groups if g.owned for c in g.chunks()),
        }

    def close(self) -> None:
        """Removes the hooks and frees the tiers (disk files included)."""
        self._close_tracer()
        for handle in self._handles:
            handle.remove()
        for tier in self.tiers:
            tier.close()

    # ------------------------------------------------------------------ checkpoints
    def _read(self, chunk: Chunk, name: str) -> torch.Tensor:
        if chunk.block is None:
            return torch.zeros(self.shapes[name], dtype=torch.float32)
        return chunk.view(name).detach().float().clone()

    def state_dict(self) -> dict[str, Any]:
        """``{"model": ..., "optimizer": ...}`` in plain torch format.

        ``model`` loads into the original ``nn.Module`` (fp32 values), ``optimizer`` into
        ``torch.optim.Adam(model.parameters())``.
        """
        if self.world > 1:
            raise NotSupportedError("state_dict() under ZeRO is not implemented; save per rank")
        model_state: dict[str, torch.Tensor] = {}
        optim_state: dict[int, dict[str, torch.Tensor]] = {}
        names = list(self.params)
        for index, name in enumerate(names):
            grp = self.group_of[name]
            source = grp.master if grp.master is not None else grp.param
            model_state[name] = self._read(source, name)
            if self.step_count > 0:
                optim_state[index] = {
                    "step": torch.tensor(float(self.step_count)),
                    "exp_avg": self._read(grp.exp_avg, name),
                    "exp_avg_sq": self._read(grp.exp_avg_sq, name),
                }
        full = self.model.state_dict()
        for key, value in full.items():
            if key not in model_state:
                model_state[key] = value.detach().clone()
        template = torch.optim.Adam(
            [nn.Parameter(torch.empty(0)) for _ in names],
            lr=self.adam.lr,
            betas=self.adam.betas,
            eps=self.adam.eps,
            weight_decay=self.adam.weight_decay,
            foreach=False,
        )
        groups = template.state_dict()["param_groups"]
        if self.adam.decoupled:
            groups[0]["decoupled_weight_decay"] = True
        return {"model": model_state, "optimizer": {"state": optim_state, "param_groups": groups}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Loads what ``state_dict`` returned (or a plain model + torch Adam state)."""
        model_state, optim = state["model"], state["optimizer"]
        names = list(self.params)
        missing = [n for n in names if n not in model_state]
        if missing:
            raise UserError(f"state dict lacks parameters: {', '.join(missing[:5])}")
        steps = {int(v["step"]) for v in optim["state"].values()} if optim["state"] else {0}
        if len(steps) != 1:
            raise UserError(f"parameters have different Adam step counts: {sorted(steps)}")
        self.step_count = steps.pop()
        with torch.no_grad():
            for index, name in enumerate(names):
                grp = self.group_of[name]
                value = model_state[name]
                targets = [(grp.param, value)]
                if grp.master is not None:
                    targets.append((grp.master, value))
                entry = optim["state"].get(index)
                if entry is not None:
                    targets += [
                        (grp.exp_avg, entry["exp_avg"]),
                        (grp.exp_avg_sq, entry["exp_avg_sq"]),
                    ]
                for chunk, tensor in targets:
                    if chunk.remote:
                        continue
                    if chunk.block is None:
                        self._allocate(chunk, self.fast if self._resident(chunk) else self.host)
                        chunk.set_state(_S.HOLD)
                    self._written(chunk)
                    chunk.view(name).copy_(tensor)

    def save(self, path: str | os.PathLike[str], step: int | None = None) -> None:
        """Writes ``state_dict()`` atomically with ``ptrain.core.checkpoint.save_checkpoint``:
        the file's ``model`` and ``optimizer`` load into plain torch objects."""
        from ptrain.core.checkpoint import save_checkpoint

        state = self.state_dict()
        save_checkpoint(
            path,
            model=_StateHolder(state["model"]),  # type: ignore[arg-type]
            optimizer=_StateHolder(state["optimizer"]),  # type: ignore[arg-type]
            step=self.step_count if step is None else step,
        )

    def load(self, path: str | os.PathLike[str]) -> int:
        """Loads a file written by ``save``; returns its step."""
        from ptrain.core.checkpoint import load_checkpoint

        model, optim = _StateHolder({}), _StateHolder({})
        checkpoint = load_checkpoint(path, model=model, optimizer=optim)  # type: ignore[arg-type]
        self.load_state_dict({"model": model.state, "optimizer": optim.state})
        return checkpoint.step


def _first_grad_tensor(output: Any) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output if output.requires_grad else None
    if isinstance(output, (tuple, list)):
        for item in output:
            found = _first_grad_tensor(item)
            if found is not None:
                return found
    if isinstance(output, dict):
        return _first_grad_tensor(list(output.values()))
    return None


class _StateHolder:
    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state

    def state_dict(self) -> dict[str, Any]:
        return self.state

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> None:
        self.state = state


def initialize(
    model: nn.Module,
    optimizer: AdamConfig | None = None,
    config: HetMemConfig | None = None,
    loss_fn: Callable[..., torch.Tensor] | None = None,
) -> HetMemEngine:
    """Moves ``model``'s parameters into chunks and returns the training engine.

    Args:
        model: a built module (its parameters are repacked; the module keeps working through
            the engine only).
        optimizer: Adam hyper-parameters.
        config: layout, tiers and policy.
        loss_fn: when given, ``engine(*inputs, target)`` returns ``loss_fn(model(*inputs),
            target)``.

    Returns:
        The engine: ``loss = engine(...)``, ``engine.backward(loss)``, ``engine.step()``.
    """
    return HetMemEngine(model, optimizer or AdamConfig(), config or HetMemConfig(), loss_fn)
