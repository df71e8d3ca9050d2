"""Differentiable collectives with logical byte accounting.

Every function here is an ``autograd.Function`` with the backward the math asks for:

=================  ==================================  =======================================
function           forward                             backward
=================  ==================================  =======================================
``all_gather``     concatenate every rank's tensor     reduce-scatter: each rank gets the sum
                   along ``dim``                       over ranks of the grad of its own slice
``reduce_scatter`` sum over ranks, keep this rank's    all-gather
                   chunk along ``dim``
``all_reduce``     sum (or average) over ranks         all-reduce of the grad (same op)
``all_to_all``     rank i's j-th split goes to rank j  all-to-all with the splits swapped
                   (uneven splits allowed)
``broadcast``      ``src``'s tensor on every rank      grads summed onto ``src`` (others: 0)
``send``/``recv``  point to point                      the grad travels back the other way
``send_recv``      send to ``dst``, receive from       send the grad to ``src``, receive from
                   ``src`` (``ring_shift``: a ring)    ``dst``
=================  ==================================  =======================================

``group`` may be ``None`` (the world), a ``ProcessGroup``, a 1-D ``DeviceMesh`` (e.g.
``mesh["tp"]``) or ``(mesh, "tp")``. Ranks named in arguments (``src``, ``dst``) are ranks
*within the group*, so code written against a mesh dim does not depend on where the dim sits.

``CommTracker`` counts the logical bytes each op moves for this rank (see its docstring for the
cost model). It counts what the algorithm must move, not backend traffic: gloo emulates
reduce-scatter with an all-reduce and would report twice the bytes.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh

__all__ = [
    "CommRecord",
    "CommTracker",
    "GroupLike",
    "all_gather",
    "all_reduce",
    "all_to_all",
    "broadcast",
    "group_rank",
    "group_size",
    "recv",
    "reduce_scatter",
    "resolve_group",
    "ring_shift",
    "send",
    "send_recv",
]

GroupLike = dist.ProcessGroup | DeviceMesh | tuple[DeviceMesh, str] | None

# --------------------------------------------------------------------------- torch compat shim
# torch 2.13 renamed all_gather_into_tensor / reduce_scatter_tensor to *_single and deprecates
# the old names; older torch only has the old names.
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter_single = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


# --------------------------------------------------------------------------- groups
def resolve_group(group: GroupLike) -> dist.ProcessGroup | None:
    """Turn any accepted ``group`` form into a ``ProcessGroup`` (``None`` means the world)."""
    if group is None or isinstance(group, dist.ProcessGroup):
        return group
    if isinstance(group, DeviceMesh):
        if group.ndim != 1:
            raise ValueError(
                f"a DeviceMesh passed as group must be 1-D, got dims {group.mesh_dim_names}; "
                f"pass mesh['<dim>'] or (mesh, '<dim>')"
            )
        return group.get_group()
    if isinstance(group, tuple) and len(group) == 2 and isinstance(group[0], DeviceMesh):
        mesh, name = group
        return mesh.get_group(name)
    raise TypeError(
        f"group must be None, a ProcessGroup, a 1-D DeviceMesh or (mesh, dim_name), got "
        f"{type(group).__name__}"
    )


def _group_label(group: GroupLike, pg: dist.ProcessGroup | None) -> str:
    if isinstance(group, DeviceMesh) and group.mesh_dim_names:
        return group.mesh_dim_names[0]
    if isinstance(group, tuple):
        return str(group[1])
    if pg is None or pg is dist.group.WORLD:
        return "world"
    description = getattr(pg, "group_desc", "") or ""
    if description.startswith("mesh_"):
        return description[len("mesh_") :]
    return description or f"group{dist.get_world_size(pg)}"


def group_size(group: GroupLike = None) -> int:
    """Number of ranks in ``group``."""
    return dist.get_world_size(resolve_group(group))


def group_rank(group: GroupLike = None) -> int:
    """This process's rank within ``group``."""
    return dist.get_rank(resolve_group(group))


def _global_rank(pg: dist.ProcessGroup | None, rank_in_group: int, size: int) -> int:
    if not 0 <= rank_in_group < size:
        raise ValueError(f"rank {rank_in_group} is outside the group of size {size}")
    if pg is None or pg is dist.group.WORLD:
        return rank_in_group
    return dist.get_global_rank(pg, rank_in_group)


# --------------------------------------------------------------------------- byte accounting
@dataclass(frozen=True, slots=True)
class CommRecord:
    """One collective call as seen by this rank.

    Attributes:
        op: ``all_gather``, ``reduce_scatter``, ``all_reduce``, ``all_to_all``, ``broadcast``,
            ``reduce``, ``send``, ``recv``, ``send_recv`` or ``all_to_all_splits``.
        group: the group's label (mesh dim name, ``world``, or the group description).
        group_size: ranks in the group.
        numel: elements of this rank's input tensor.
        dtype: the element type, e.g. ``torch.float32``.
        bytes_sent: logical bytes this rank sends.
        bytes_received: logical bytes this rank receives.
        phase: ``forward`` or ``backward`` (the collective run by an autograd backward).
    """

    op: str
    group: str
    group_size: int
    numel: int
    dtype: str
    bytes_sent: int
    bytes_received: int
    phase: str


_TRACKERS: list[CommTracker] = []
_TRACKERS_LOCK = threading.Lock()


def _record(
    op: str,
    group_label: str,
    size: int,
    tensor: torch.Tensor,
    sent: int,
    received: int,
    phase: str,
) -> None:
    if not _TRACKERS:
        return
    record = CommRecord(
        op, group_label, size, tensor.numel(), str(tensor.dtype), int(sent), int(received), phase
    )
    with _TRACKERS_LOCK:
        for tracker in _TRACKERS:
            tracker.records.append(record)


class CommTracker:
    """Count the logical bytes each collective moves for this rank.

    Use as a context manager; trackers nest (each active tracker sees every call). Only the
    collectives in ``ptrain.core.comm`` are counted, forward and backward.

    Cost model (S = bytes of the tensor named, n = group size; bandwidth-optimal algorithms):

    - all_reduce: ring, each rank sends and receives 2(n−1)/n·S (S = input bytes)
    - all_gather: each rank sends and receives (n−1)·S_local
    - reduce_scatter: each rank sends and receives (n−1)·S_out = (n−1)/n·S_in
    - all_to_all: exactly the splits addressed to / arriving from other ranks
    - broadcast: the source sends S to each of the n−1 others; each non-source receives S
    - reduce (broadcast's backward): each non-destination sends S; the destination receives
      (n−1)·S
    - send / recv / send_recv: S each way

    Summed over the ranks of a group, bytes sent equal bytes received for every op.

    Example:
        >>> with CommTracker() as tracker:
        ...     y = all_gather(x)
        >>> tracker.as_dict()["all_gather"]["bytes_sent"]
    """

    def __init__(self) -> None:
        self.records: list[CommRecord] = []

    def __enter__(self) -> CommTracker:
        with _TRACKERS_LOCK:
            _TRACKERS.append(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        with _TRACKERS_LOCK:
            _TRACKERS.remove(self)

    def reset(self) -> None:
        """Forget everything counted so far."""
        self.records.clear()

    @property
    def bytes_sent(self) -> int:
        """Total logical bytes this rank sent."""
        return sum(record.bytes_sent for record in self.records)

    @property
    def bytes_received(self) -> int:
        """Total logical bytes this rank received."""
        return sum(record.bytes_received for record in self.records)

    def as_dict(self, by: Literal["op", "group", "phase"] = "op") -> dict[str, dict[str, int]]:
        """Totals per op type (or per ``op@group`` / ``op:phase``).

        Returns:
            ``{key: {"calls": int, "bytes_sent": int, "bytes_received": int}}``.
        """
        totals: dict[str, dict[str, int]] = {}
        for record in self.records:
            if by == "op":
                key = record.op
            elif by == "group":
                key = f"{record.op}@{record.group}"
            elif by == "phase":
                key = f"{record.op}:{record.phase}"
            else:
                raise ValueError(f"by must be 'op', 'group' or 'phase', got {by!r}")
            entry = totals.setdefault(key, {"calls": 0, "bytes_sent": 0, "bytes_received": 0})
            entry["calls"] += 1
            entry["bytes_sent"] += record.bytes_sent
            entry["bytes_received"] += record.bytes_received
        return totals

    def to_records(self) -> list[dict[str, Any]]:
        """Every call as a plain dict (JSON-serialisable)."""
        return [asdict(record) for record in self.records]

    def gather(self, group: GroupLike = None) -> list[dict[str, dict[str, int]]]:
        """Collect every rank's ``as_dict()`` (collective over ``group``; not itself counted)."""
        pg = resolve_group(group)
        gathered: list[Any] = [None] * dist.get_world_size(pg)
        dist.all_gather_object(gathered, self.as_dict(), group=pg)
        return gathered

    def table(self, by: Literal["op", "group", "phase"] = "op") -> str:
        """A fixed-width text table of ``as_dict(by)`` with a total line."""
        rows = self.as_dict(by)
        width = max([len("op"), *(len(key) for key in rows)])
        lines = [f"{'op':<{width}}  {'calls':>7}  {'sent':>12}  {'received':>12}"]
        for key, entry in sorted(rows.items()):
            lines.append(
                f"{key:<{width}}  {entry['calls']:>7}  {_format_bytes(entry['bytes_sent']):>12}"
                f"  {_format_bytes(entry['bytes_received']):>12}"
            )
        lines.append(
            f"{'total':<{width}}  {len(self.records):>7}  {_format_bytes(self.bytes_sent):>12}"
            f"  {_format_bytes(self.bytes_received):>12}"
        )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def _format_bytes(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    return f"{value:.2f} GiB"  # pragma: no cover


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


# --------------------------------------------------------------------------- raw operations
# Each helper runs one collective on contiguous tensors and records it.


def _raw_all_gather(
    tensor: torch.Tensor, dim: int, pg: dist.ProcessGroup | None, label: str, phase: str
) -> torch.Tensor:
    size = dist.get_world_size(pg)
    moved = tensor.movedim(dim, 0).contiguous() if dim != 0 else tensor.contiguous()
    output = moved.new_empty((size * moved.shape[0], *moved.shape[1:]))
    _all_gather_single(output, moved, group=pg)
    sent = (size - 1) * _nbytes(moved)
    _record("all_gather", label, size, moved, sent, sent, phase)
    return output.movedim(0, dim) if dim != 0 else output


def _raw_reduce_scatter(
    tensor: torch.Tensor, dim: int, pg: dist.ProcessGroup | None, label: str, phase: str
) -> torch.Tensor:
    size = dist.get_world_size(pg)
    if tensor.shape[dim] % size != 0:
        raise ValueError(
            f"reduce_scatter: dim {dim} has size {tensor.shape[dim]}, not divisible by the "
            f"group size {size}"
        )
    moved = tensor.movedim(dim, 0).contiguous() if dim != 0 else tensor.contiguous()
    output = moved.new_empty((moved.shape[0] // size, *moved.shape[1:]))
    _reduce_scatter_single(output, moved, op=dist.ReduceOp.SUM, group=pg)
    sent = (size - 1) * _nbytes(output)
    _record("reduce_scatter", label, size, moved, sent, sent, phase)
    return output.movedim(0, dim) if dim != 0 else output


def _raw_all_reduce(
    tensor: torch.Tensor, op: str, pg: dist.ProcessGroup | None, label: str, phase: str
) -> torch.Tensor:
    size = dist.get_world_size(pg)
    output = tensor.contiguous().clone()
    reduce_op = {
        "sum": dist.ReduceOp.SUM,
        "avg": dist.ReduceOp.SUM,
        "max": dist.ReduceOp.MAX,
        "min": dist.ReduceOp.MIN,
    }[op]
    dist.all_reduce(output, op=reduce_op, group=pg)
    if op == "avg":
        output /= size
    moved = 2 * (size - 1) * _nbytes(output) // size
    _record("all_reduce", label, size, output, moved, moved, phase)
    return output


def _raw_all_to_all(
    tensor: torch.Tensor,
    output_splits: list[int],
    input_splits: list[int],
    pg: dist.ProcessGroup | None,
    label: str,
    phase: str,
) -> torch.Tensor:
    size = dist.get_world_size(pg)
    rank = dist.get_rank(pg)
    tensor = tensor.contiguous()
    even = len(set(input_splits)) == 1 and input_splits == output_splits
    if even:  # the backend's plain all-to-all (gloo's alltoallv path is slower)
        output = torch.empty_like(tensor)
        dist.all_to_all_single(output, tensor, group=pg)
    else:
        output = tensor.new_empty((sum(output_splits), *tensor.shape[1:]))
        dist.all_to_all_single(
            output,
            tensor,
            output_split_sizes=output_splits,
            input_split_sizes=input_splits,
            group=pg,
        )
    row_bytes = tensor.element_size() * math.prod(tensor.shape[1:])
    sent = sum(count for peer, count in enumerate(input_splits) if peer != rank) * row_bytes
    received = sum(count for peer, count in enumerate(output_splits) if peer != rank) * row_bytes
    _record("all_to_all", label, size, tensor, sent, received, phase)
    return output


def _raw_broadcast(
    tensor: torch.Tensor, src: int, pg: dist.ProcessGroup | None, label: str, phase: str
) -> torch.Tensor:
    size = dist.get_world_size(pg)
    rank = dist.get_rank(pg)
    output = tensor.contiguous().clone()
    dist.broadcast(output, src=_global_rank(pg, src, size), group=pg)
    nbytes = _nbytes(output)
    if rank == src:
        _record("broadcast", label, size, output, (size - 1) * nbytes, 0, phase)
    else:
        _record("broadcast", label, size, output, 0, nbytes, phase)
    return output


def _raw_reduce(
    tensor: torch.Tensor, dst: int, pg: dist.ProcessGroup | None, label: str, phase: str
) -> torch.Tensor:
    size = dist.get_world_size(pg)
    rank = dist.get_rank(pg)
    output = tensor.contiguous().clone()
    dist.reduce(output, dst=_global_rank(pg, dst, size), op=dist.ReduceOp.SUM, group=pg)
    nbytes = _nbytes(output)
    if rank == dst:
        _record("reduce", label, size, output, 0, (size - 1) * nbytes, phase)
        return output
    _record("reduce", label, size, output, nbytes, 0, phase)
    return torch.zeros_like(output)


def _raw_send_recv(
    tensor: torch.Tensor,
    dst: int,
    src: int,
    pg: dist.ProcessGroup | None,
    label: str,
    phase: str,
) -> torch.Tensor:
    size = dist.get_world_size(pg)
    rank = dist.get_rank(pg)
    tensor = tensor.contiguous()
    if dst == rank and src == rank:
        return tensor.clone()
    output = torch.empty_like(tensor)
    operations = [
        dist.P2POp(dist.isend, tensor, _global_rank(pg, dst, size), group=pg),
        dist.P2POp(dist.irecv, output, _global_rank(pg, src, size), group=pg),
    ]
    for request in dist.batch_isend_irecv(operations):
        request.wait()
    _record("send_recv", label, size, tensor, _nbytes(tensor), _nbytes(output), phase)
    return output


def _raw_send(
    tensor: torch.Tensor, dst: int, pg: dist.ProcessGroup | None, label: str, phase: str
) -> None:
    size = dist.get_world_size(pg)
    tensor = tensor.contiguous()
    dist.send(tensor, dst=_global_rank(pg, dst, size), group=pg)
    _record("send", label, size, tensor, _nbytes(tensor), 0, phase)


def _raw_recv(
    output: torch.Tensor, src: int, pg: dist.ProcessGroup | None, label: str, phase: str
) -> torch.Tensor:
    size = dist.get_world_size(pg)
    dist.recv(output, src=_global_rank(pg, src, size), group=pg)
    _record("recv", label, size, output, 0, _nbytes(output), phase)
    return output


# --------------------------------------------------------------------------- autograd functions
class _AllGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, dim: int, pg: Any, label: str) -> torch.Tensor:
        ctx.dim, ctx.pg, ctx.label = dim, pg, label
        return _raw_all_gather(tensor, dim, pg, label, "forward")

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        return _raw_reduce_scatter(grad, ctx.dim, ctx.pg, ctx.label, "backward"), None, None, None


class _ReduceScatter(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, dim: int, pg: Any, label: str) -> torch.Tensor:
        ctx.dim, ctx.pg, ctx.label = dim, pg, label
        return _raw_reduce_scatter(tensor, dim, pg, label, "forward")

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        return _raw_all_gather(grad, ctx.dim, ctx.pg, ctx.label, "backward"), None, None, None


class _AllReduce(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, op: str, pg: Any, label: str) -> torch.Tensor:
        ctx.op, ctx.pg, ctx.label = op, pg, label
        return _raw_all_reduce(tensor, op, pg, label, "forward")

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        return _raw_all_reduce(grad, ctx.op, ctx.pg, ctx.label, "backward"), None, None, None


class _AllToAll(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        tensor: torch.Tensor,
        output_splits: list[int],
        input_splits: list[int],
        pg: Any,
        label: str,
    ) -> torch.Tensor:
        ctx.output_splits, ctx.input_splits = output_splits, input_splits
        ctx.pg, ctx.label = pg, label
        return _raw_all_to_all(tensor, output_splits, input_splits, pg, label, "forward")

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        grad_input = _raw_all_to_all(
            grad, ctx.input_splits, ctx.output_splits, ctx.pg, ctx.label, "backward"
        )
        return grad_input, None, None, None, None


class _Broadcast(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, src: int, pg: Any, label: str) -> torch.Tensor:
        ctx.src, ctx.pg, ctx.label = src, pg, label
        return _raw_broadcast(tensor, src, pg, label, "forward")

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        return _raw_reduce(grad, ctx.src, ctx.pg, ctx.label, "backward"), None, None, None


class _SendRecv(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, tensor: torch.Tensor, dst: int, src: int, pg: Any, label: str
    ) -> torch.Tensor:
        ctx.dst, ctx.src, ctx.pg, ctx.label = dst, src, pg, label
        return _raw_send_recv(tensor, dst, src, pg, label, "forward")

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        # The grad of what we received goes back to whoever sent it (src); the grad of what we
        # sent arrives from whoever received it (dst).
        grad_input = _raw_send_recv(grad, ctx.src, ctx.dst, ctx.pg, ctx.label, "backward")
        return grad_input, None, None, None, None


class _Send(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, dst: int, pg: Any, label: str) -> torch.Tensor:
        ctx.dst, ctx.pg, ctx.label = dst, pg, label
        ctx.shape, ctx.dtype, ctx.device = tensor.shape, tensor.dtype, tensor.device
        _raw_send(tensor, dst, pg, label, "forward")
        return tensor.new_zeros(())

    @staticmethod
    def backward(ctx: Any, grad_token: torch.Tensor) -> tuple[Any, ...]:
        output = torch.empty(ctx.shape, dtype=ctx.dtype, device=ctx.device)
        return _raw_recv(output, ctx.dst, ctx.pg, ctx.label, "backward"), None, None, None


class _Recv(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, anchor: torch.Tensor, shape: tuple[int, ...], src: int, pg: Any, label: str
    ) -> torch.Tensor:
        ctx.src, ctx.pg, ctx.label = src, pg, label
        output = torch.empty(shape, dtype=anchor.dtype, device=anchor.device)
        return _raw_recv(output, src, pg, label, "forward")

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        _raw_send(grad, ctx.src, ctx.pg, ctx.label, "backward")
        return None, None, None, None, None


# --------------------------------------------------------------------------- public API
def _prepare(group: GroupLike) -> tuple[dist.ProcessGroup | None, str]:
    pg = resolve_group(group)
    return pg, _group_label(group, pg)


def _needs_grad(tensor: torch.Tensor) -> bool:
    # Without autograd the Function machinery is pure overhead (~20 µs a call): skip it.
    return tensor.requires_grad and torch.is_grad_enabled()


def _normalise_dim(tensor: torch.Tensor, dim: int) -> int:
    if not -tensor.ndim <= dim < max(tensor.ndim, 1):
        raise ValueError(f"dim {dim} is out of range for a tensor of shape {tuple(tensor.shape)}")
    return dim % max(tensor.ndim, 1)


def all_gather(tensor: torch.Tensor, dim: int = 0, group: GroupLike = None) -> torch.Tensor:
    """Concatenate every rank's ``tensor`` along ``dim`` (rank order).

    Every rank must pass the same shape. Backward: each rank receives the sum over ranks of the
    gradient of its own slice (a reduce-scatter).

    Args:
        tensor: this rank's piece, shape ``(..., s, ...)`` with ``s`` at ``dim``.
        dim: the dimension to concatenate along.
        group: the group (see module docstring).

    Returns:
        Shape ``(..., n·s, ...)`` for a group of ``n`` ranks.
    """
    pg, label = _prepare(group)
    dim = _normalise_dim(tensor, dim)
    if not _needs_grad(tensor):
        return _raw_all_gather(tensor, dim, pg, label, "forward")
    return _AllGather.apply(tensor, dim, pg, label)


def reduce_scatter(tensor: torch.Tensor, dim: int = 0, group: GroupLike = None) -> torch.Tensor:
    """Sum ``tensor`` over ranks and keep this rank's chunk along ``dim``.

    Args:
        tensor: shape ``(..., n·s, ...)``; ``dim`` must be divisible by the group size ``n``.
        dim: the dimension to split.
        group: the group.

    Returns:
        Shape ``(..., s, ...)``: chunk ``rank`` of the sum. Backward is an all-gather.
    """
    pg, label = _prepare(group)
    dim = _normalise_dim(tensor, dim)
    if not _needs_grad(tensor):
        return _raw_reduce_scatter(tensor, dim, pg, label, "forward")
    return _ReduceScatter.apply(tensor, dim, pg, label)


def all_reduce(
    tensor: torch.Tensor,
    op: Literal["sum", "avg", "max", "min"] = "sum",
    group: GroupLike = None,
) -> torch.Tensor:
    """Reduce ``tensor`` over ranks; the input is not modified.

    ``sum`` and ``avg`` are differentiable (the backward is the same all-reduce of the grad).
    ``max`` and ``min`` return a tensor with no grad history.

    Args:
        tensor: any shape, the same on every rank.
        op: the reduction.
        group: the group.

    Returns:
        The reduced tensor, same shape.
    """
    if op not in ("sum", "avg", "max", "min"):
        raise ValueError(f"op must be 'sum', 'avg', 'max' or 'min', got {op!r}")
    pg, label = _prepare(group)
    if not _needs_grad(tensor):
        return _raw_all_reduce(tensor, op, pg, label, "forward")
    if op in ("max", "min"):
        return _raw_all_reduce(tensor.detach(), op, pg, label, "forward")
    return _AllReduce.apply(tensor, op, pg, label)


def all_to_all(
    tensor: torch.Tensor,
    output_split_sizes: Sequence[int] | None = None,
    input_split_sizes: Sequence[int] | None = None,
    group: GroupLike = None,
) -> torch.Tensor:
    """Exchange rows: split ``j`` of this rank's ``tensor`` (along dim 0) goes to rank ``j``.

    With ``input_split_sizes=None`` the rows are split evenly. With input splits but no output
    splits, the split sizes are exchanged first (one small extra all-to-all, recorded as
    ``all_to_all_splits``) — the usual case for MoE dispatch.

    Args:
        tensor: ``(N, ...)``.
        output_split_sizes: rows to receive from each rank (sums to the output length).
        input_split_sizes: rows to send to each rank (sums to ``N``).
        group: the group.

    Returns:
        ``(sum(output_split_sizes), ...)``, blocks in source-rank order. Backward sends the
        grads back along the reverse route.
    """
    pg, label = _prepare(group)
    size = dist.get_world_size(pg)
    if input_split_sizes is None:
        if tensor.shape[0] % size != 0:
            raise ValueError(
                f"all_to_all: {tensor.shape[0]} rows cannot be split evenly over {size} ranks; "
                f"pass input_split_sizes"
            )
        input_splits = [tensor.shape[0] // size] * size
    else:
        input_splits = [int(count) for count in input_split_sizes]
        if len(input_splits) != size or sum(input_splits) != tensor.shape[0]:
            raise ValueError(
                f"all_to_all: input_split_sizes {input_splits} must have {size} entries summing "
                f"to {tensor.shape[0]} rows"
            )
    if output_split_sizes is None:
        if input_split_sizes is None:
            output_splits = list(input_splits)
        else:
            output_splits = _exchange_splits(input_splits, pg, label)
    else:
        output_splits = [int(count) for count in output_split_sizes]
        if len(output_splits) != size:
            raise ValueError(
                f"all_to_all: output_split_sizes {output_splits} must have {size} entries"
            )
    if not _needs_grad(tensor):
        return _raw_all_to_all(tensor, output_splits, input_splits, pg, label, "forward")
    return _AllToAll.apply(tensor, output_splits, input_splits, pg, label)


def _exchange_splits(
    input_splits: list[int], pg: dist.ProcessGroup | None, label: str
) -> list[int]:
    size = dist.get_world_size(pg)
    counts = torch.tensor(input_splits, dtype=torch.int64)
    received = torch.empty_like(counts)
    dist.all_to_all_single(received, counts, group=pg)
    row = counts.element_size()
    _record("all_to_all_splits", label, size, counts, (size - 1) * row, (size - 1) * row, "forward")
    return [int(count) for count in received.tolist()]


def broadcast(tensor: torch.Tensor, src: int = 0, group: GroupLike = None) -> torch.Tensor:
    """Every rank gets ``src``'s tensor (``src`` is a rank within ``group``).

    Backward: the grads of all ranks are summed onto ``src``; the other ranks' inputs get zero
    grad (they did not affect the output).

    Args:
        tensor: same shape and dtype on every rank.
        src: the source rank within the group.
        group: the group.

    Returns:
        A new tensor holding ``src``'s values.
    """
    pg, label = _prepare(group)
    if not _needs_grad(tensor):
        return _raw_broadcast(tensor, int(src), pg, label, "forward")
    return _Broadcast.apply(tensor, int(src), pg, label)


def send_recv(tensor: torch.Tensor, dst: int, src: int, group: GroupLike = None) -> torch.Tensor:
    """Send ``tensor`` to ``dst`` and receive a tensor of the same shape from ``src``.

    Both happen in one batched p2p call, so a ring of these cannot deadlock. Backward sends the
    received tensor's grad to ``src`` and receives this tensor's grad from ``dst``.

    Args:
        tensor: what to send; the received tensor has the same shape and dtype.
        dst: rank within the group to send to.
        src: rank within the group to receive from.
        group: the group.

    Returns:
        The tensor received from ``src``.
    """
    pg, label = _prepare(group)
    return _SendRecv.apply(tensor, int(dst), int(src), pg, label)


def ring_shift(tensor: torch.Tensor, offset: int = 1, group: GroupLike = None) -> torch.Tensor:
    """Pass ``tensor`` ``offset`` places round the ring: rank r receives rank r−offset's tensor.

    The building block of ring attention (K/V blocks travel round the sequence-parallel group).
    """
    pg, label = _prepare(group)
    size = dist.get_world_size(pg)
    rank = dist.get_rank(pg)
    return _SendRecv.apply(tensor, (rank + offset) % size, (rank - offset) % size, pg, label)


def send(tensor: torch.Tensor, dst: int, group: GroupLike = None) -> torch.Tensor:
    """Send ``tensor`` to ``dst`` (a rank within ``group``).

    Returns a zero-valued scalar *token* joined to the graph: to receive the gradient of
    ``tensor`` from ``dst`` in backward, include the token in what you call backward on, e.g.
    ``torch.autograd.backward([token])`` or ``(loss + token).backward()``.
    """
    pg, label = _prepare(group)
    return _Send.apply(tensor, int(dst), pg, label)


def recv(
    shape: Sequence[int] | torch.Size,
    src: int,
    group: GroupLike = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    requires_grad: bool = True,
) -> torch.Tensor:
    """Receive a tensor of ``shape`` from ``src`` (a rank within ``group``).

    With ``requires_grad=True`` the result is part of the graph: its gradient is sent back to
    ``src`` during backward (where the sender's ``send`` token receives it).
    """
    pg, label = _prepare(group)
    if not requires_grad:
        output = torch.empty(tuple(shape), dtype=dtype, device=device)
        return _raw_recv(output, int(src), pg, label, "forward")
    anchor = torch.zeros((), dtype=dtype, device=device, requires_grad=True)
    return _Recv.apply(anchor, tuple(shape), int(src), pg, label)
