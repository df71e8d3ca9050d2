"""Process groups of the tensor-parallel modes, carved out of the mesh's ``tp`` dim.

``build_tp_groups(mode, mesh["tp"], depth=1)`` reshapes the 1-D tensor-parallel mesh into the
mode's own mesh (``DeviceMesh._unflatten``, so every data-parallel replica gets its own groups):

=======  ========  ====================================  =========================================
mode     ranks     mesh dims (rank order)                 meaning
=======  ========  ====================================  =========================================
``1d``   P         the given dim (e.g. ``tp``)            Megatron column/row parallel
``2d``   q²        ``tp_row`` (i), ``tp_col`` (j)         SUMMA: device (i, j) holds block (i, j)
``2.5d`` q²·d      ``tp_dep`` (k), ``tp_row``, ``tp_col``  d SUMMA layers, weights replicated on k
``3d``   q³        ``tp_i``, ``tp_j``, ``tp_k``            Agarwal/Colossal-AI 3D: device (i, j, k)
=======  ========  ====================================  =========================================

The same mesh carries the DTensor placements of every sharded parameter, so a state dict of
DTensors describes each shard exactly (see ``ptrain.core.tp.layers``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, get_args

import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh

from ptrain.core.comm import GroupLike

__all__ = [
    "TP_MODES",
    "Group",
    "TPGroups",
    "TPMode",
    "build_tp_groups",
    "check_tp_size",
    "valid_tp_sizes",
]

TPMode = Literal["1d", "2d", "2.5d", "3d"]
TP_MODES: tuple[str, ...] = get_args(TPMode)

_DIM_NAMES: dict[str, tuple[str, ...]] = {
    "2d": ("tp_row", "tp_col"),
    "2.5d": ("tp_dep", "tp_row", "tp_col"),
    "3d": ("tp_i", "tp_j", "tp_k"),
}


def valid_tp_sizes(mode: str, depth: int = 1, limit: int = 64) -> list[int]:
    """The tensor-parallel sizes up to ``limit`` that ``mode`` admits."""
    if mode == "1d":
        return list(range(1, limit + 1))
    if mode == "2d":
        return [q * q for q in range(1, limit + 1) if q * q <= limit]
    if mode == "2.5d":
        return [q * q * depth for q in range(1, limit + 1) if q * q * depth <= limit]
    if mode == "3d":
        return [q**3 for q in range(1, limit + 1) if q**3 <= limit]
    raise ValueError(f"unknown tensor-parallel mode {mode!r}; expected one of {TP_MODES}")


def check_tp_size(mode: str, size: int, depth: int = 1) -> tuple[int, int]:
    """Check that ``size`` tensor-parallel ranks fit ``mode``; return ``(q, depth)``.

    Raises:
        ValueError: naming the valid sizes, e.g. ``2D needs a square tp size (1, 4, 9, 16, ...),
            got 8``.
    """
    if mode not in TP_MODES:
        raise ValueError(f"unknown tensor-parallel mode {mode!r}; expected one of {TP_MODES}")
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"tp size must be a positive integer, got {size!r}")
    if mode != "2.5d" and depth != 1:
        raise ValueError(f"depth={depth} applies only to 2.5D tensor parallelism, not {mode}")
    if not isinstance(depth, int) or depth < 1:
        raise ValueError(f"2.5D depth must be a positive integer, got {depth!r}")
    if mode == "1d":
        return size, 1
    if mode == "2d":
        q = math.isqrt(size)
        if q * q == size:
            return q, 1
        need = "a square tp size"
    elif mode == "2.5d":
        q = math.isqrt(size // depth) if size % depth == 0 else 0
        if q >= 1 and q * q * depth == size:
            return q, depth
        need = f"a tp size q*q*depth with depth={depth}"
    else:
        q = round(size ** (1 / 3))
        for candidate in (q - 1, q, q + 1):
            if candidate >= 1 and candidate**3 == size:
                return candidate, 1
        need = "a cube tp size"
    shown = ", ".join(str(v) for v in valid_tp_sizes(mode, depth, limit=max(64, size))[:5])
    raise ValueError(f"{mode.upper()} needs {need} ({shown}, ...), got {size}")


@dataclass(frozen=True)
class Group:
    """One mesh dim of a TP layout: its process group, label (for CommTracker), size and rank."""

    pg: dist.ProcessGroup
    label: str
    size: int
    rank: int
    mesh: DeviceMesh | None = None

    @property
    def ref(self) -> GroupLike:
        """The form ``ptrain.core.comm`` takes, labelled with the mesh dim name."""
        return (self.mesh, self.label) if self.mesh is not None else self.pg


@dataclass(frozen=True)
class TPGroups:
    """The process groups of one tensor-parallel layout.

    Attributes:
        mode: ``"1d"``, ``"2d"``, ``"2.5d"`` or ``"3d"``.
        mesh: the mode's ``DeviceMesh`` (1-D for 1D; dims ``_DIM_NAMES[mode]`` otherwise). The
            DTensor placements of every sharded parameter refer to its dims.
        q: the side of the layout (P for 1D, √P for 2D, √(P/d) for 2.5D, ∛P for 3D).
        depth: the 2.5D depth d (1 for the other modes).
        dims: mesh dim name -> ``Group``.
    """

    mode: str
    mesh: DeviceMesh
    q: int
    depth: int
    dims: dict[str, Group] = field(default_factory=dict)

    @property
    def size(self) -> int:
        """Tensor-parallel ranks in the layout."""
        return self.mesh.size()

    def __getitem__(self, name: str) -> Group:
        return self.dims[name]

    @property
    def tp(self) -> Group:
        """The 1D group (only for mode ``1d``)."""
        return next(iter(self.dims.values()))


_CACHE: dict[tuple[int, tuple[int, ...], str, int], TPGroups] = {}


def build_tp_groups(mode: str, tp: GroupLike, depth: int = 1) -> TPGroups:
    """Build the sub-groups of ``mode`` from the tensor-parallel dim (collective on all ranks).

    Args:
        mode: ``"1d"``, ``"2d"`` (P = q²), ``"2.5d"`` (P = q²·depth) or ``"3d"`` (P = q³).
        tp: the 1-D tensor-parallel ``DeviceMesh`` (``dims.get_mesh("tp")``), ``(mesh, "tp")``,
            or a ``ProcessGroup`` (converted with ``DeviceMesh.from_group``; only use this when
            the group spans the whole world or every rank builds from its own group).
        depth: the 2.5D depth d.

    Returns:
        The ``TPGroups``; built once per (mesh, mode, depth) and cached.

    Raises:
        ValueError: the tp size does not fit the mode (the message lists valid sizes).
    """
    if isinstance(tp, tuple):
        mesh = tp[0][tp[1]]
    elif isinstance(tp, DeviceMesh):
        mesh = tp
    elif isinstance(tp, dist.ProcessGroup):
        from ptrain.core.dist import default_device_type

        mesh = DeviceMesh.from_group(tp, default_device_type(), mesh_dim_names=("tp",))
    elif tp is None:
        from ptrain.core.dist import default_device_type

        world = dist.group.WORLD
        assert world is not None, "no default process group"
        mesh = DeviceMesh.from_group(world, default_device_type(), mesh_dim_names=("tp",))
    else:
        raise TypeError(f"tp must be a 1-D DeviceMesh, (mesh, dim) or ProcessGroup, got {tp!r}")
    if mesh.ndim != 1:
        raise ValueError(f"build_tp_groups needs the 1-D tp mesh, got dims {mesh.mesh_dim_names}")
    q, depth = check_tp_size(mode, mesh.size(), depth)
    key = (id(dist.group.WORLD), tuple(mesh.mesh.flatten().tolist()), mode, depth)
    if key in _CACHE:
        return _CACHE[key]
    if mode == "1d":
        sub = mesh
        names: tuple[str, ...] = (mesh.mesh_dim_names or ("tp",))[0:1]
    else:
        names = _DIM_NAMES[mode]
        sizes = (depth, q, q) if mode == "2.5d" else (q,) * len(names)
        sub = mesh._unflatten(0, sizes, names)
    groups: dict[str, Group] = {}
    for index, name in enumerate(names):
        pg = sub.get_group(index)
        groups[name] = Group(pg, name, sub.size(index), sub.get_local_rank(index), sub)
    result = TPGroups(mode, sub, q, depth, groups)
    _CACHE[key] = result
    return result
