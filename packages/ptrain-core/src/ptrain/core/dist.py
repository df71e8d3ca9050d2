"""Process-group start-up and the parallel layout of a job.

``init_distributed()`` joins the job torchrun (or ``srun torchrun``) started, or falls back to a
single-process group so the same code runs under ``python train.py``. ``ParallelDims`` describes
how the world is split — following torchtitan's model — and builds a ``DeviceMesh`` with one named
dimension per parallelism:

====================  =========================================================================
mesh dim              meaning
====================  =========================================================================
``pp``                pipeline stages (outermost: stages talk least)
``dp_replicate``      replicated data parallel (DDP / HSDP replicas)
``dp_shard``          sharded data parallel (ZeRO / FSDP)
``cp``                context (sequence) parallel
``tp``                tensor parallel (innermost: talks most, keep it inside a node)
====================  =========================================================================

Flattened dims are built too: ``dp`` = dp_replicate×dp_shard, ``dp_shard_cp`` = dp_shard×cp (the
group that shards parameters when cp is on), ``dp_cp`` = dp_replicate×dp_shard×cp (the group that
averages gradients). Expert parallelism ``ep`` does not multiply the world size: it is carved out
of ``dp_shard × cp`` (experts are sharded over ranks that would otherwise only hold data shards),
and lives on a second mesh with dims ``pp, dp_replicate, dp_shard_mod_ep, ep, tp``.

The 2D/2.5D/3D tensor-parallel layouts subdivide ``tp`` and are validated where they are built.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import timedelta
from math import prod
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

__all__ = [
    "MESH_DIM_NAMES",
    "DistInfo",
    "ParallelDims",
    "default_backend",
    "default_device_type",
    "destroy_distributed",
    "init_distributed",
]

#: The world mesh's dims, outermost first.
MESH_DIM_NAMES: tuple[str, ...] = ("pp", "dp_replicate", "dp_shard", "cp", "tp")
#: Flattened dims: name -> the world-mesh dims it spans.
FLATTENED_DIMS: dict[str, tuple[str, ...]] = {
    "dp": ("dp_replicate", "dp_shard"),
    "dp_shard_cp": ("dp_shard", "cp"),
    "dp_cp": ("dp_replicate", "dp_shard", "cp"),
}
#: The expert-parallel mesh's dims, outermost first.
EP_MESH_DIM_NAMES: tuple[str, ...] = ("pp", "dp_replicate", "dp_shard_mod_ep", "ep", "tp")


def default_device_type() -> str:
    """``"cuda"`` when a GPU is visible, else ``"cpu"``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_backend() -> str:
    """nccl with CUDA, gloo otherwise; ``PTRAIN_BACKEND`` overrides."""
    override = os.environ.get("PTRAIN_BACKEND")
    if override:
        return override
    if torch.cuda.is_available() and dist.is_nccl_available():
        return "nccl"
    return "gloo"


@dataclass(frozen=True, slots=True)
class DistInfo:
    """Where this process sits in the job.

    Attributes:
        rank: global rank.
        world_size: number of processes.
        local_rank: rank on this node (the GPU index with CUDA).
        local_world_size: processes on this node.
        backend: the process-group backend.
        device: the device this rank computes on.
    """

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    backend: str
    device: torch.device


def _env_int(name: str, default: int | None = None) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def _current_info(backend: str) -> DistInfo:
    rank = dist.get_rank()
    world_size = dist.get_world_size()
    local_rank = _env_int("LOCAL_RANK", rank) or 0
    local_world_size = _env_int("LOCAL_WORLD_SIZE", world_size) or world_size
    if backend == "nccl" and torch.cuda.is_available():
        device = torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
    else:
        device = torch.device("cpu")
    return DistInfo(rank, world_size, local_rank, local_world_size, backend, device)


def init_distributed(
    backend: str | None = None,
    *,
    timeout: timedelta = timedelta(minutes=10),
) -> DistInfo:
    """Initialise the default process group and return where this process sits.

    - Already initialised (e.g. inside ``ptrain.core.testing.run_distributed``): nothing is
      changed; the current group is described.
    - Launched by torchrun (``RANK`` and ``WORLD_SIZE`` set, with ``MASTER_ADDR``/``MASTER_PORT``):
      joins with ``init_method="env://"``; with CUDA, selects GPU ``LOCAL_RANK``.
    - Otherwise: a single-process group (rank 0 of 1) over an in-memory store, so code written
      for many ranks runs unchanged under plain ``python``.

    Args:
        backend: ``"nccl"``, ``"gloo"``, ...; default nccl with CUDA, else gloo
            (``PTRAIN_BACKEND`` overrides the default).
        timeout: collective timeout for the process group.

    Returns:
        A ``DistInfo`` for this process.
    """
    backend = backend or default_backend()
    if dist.is_initialized():
        return _current_info(dist.get_backend())
    rank = _env_int("RANK")
    world_size = _env_int("WORLD_SIZE")
    if rank is not None and world_size is not None:
        if not 0 <= rank < world_size:
            raise ValueError(f"RANK={rank} is outside [0, WORLD_SIZE={world_size})")
        local_rank = _env_int("LOCAL_RANK", 0) or 0
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(
            backend, init_method="env://", rank=rank, world_size=world_size, timeout=timeout
        )
    else:
        dist.init_process_group(
            backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout
        )
    return _current_info(backend)


def destroy_distributed() -> None:
    """Destroy the default process group if one exists."""
    if dist.is_initialized():
        dist.destroy_process_group()


def _check_positive(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"ParallelDims.{name} must be a positive integer, got {value!r}")


@dataclass(kw_only=True, slots=True)
class ParallelDims:
    """The degrees of parallelism of a job (torchtitan's model).

    ``dp_replicate × dp_shard × cp × tp × pp`` must equal ``world_size``; ``dp_shard=-1`` takes
    whatever the other dims leave. ``ep`` is carved out of ``dp_shard × cp`` and must divide it.

    Example:
        >>> dims = ParallelDims(dp_shard=-1, tp=2, world_size=8)
        >>> dims.dp_shard
        4
    """

    dp_replicate: int = 1
    dp_shard: int = -1
    cp: int = 1
    tp: int = 1
    pp: int = 1
    ep: int = 1
    world_size: int
    _world_mesh: DeviceMesh | None = field(default=None, init=False, repr=False, compare=False)
    _ep_mesh: DeviceMesh | None = field(default=None, init=False, repr=False, compare=False)
    _flat_meshes: dict[str, DeviceMesh] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        _check_positive("world_size", self.world_size)
        for name in ("dp_replicate", "cp", "tp", "pp", "ep"):
            _check_positive(name, getattr(self, name))
        others = self.dp_replicate * self.cp * self.tp * self.pp
        if self.dp_shard == -1:
            if self.world_size % others != 0:
                raise ValueError(
                    f"cannot infer dp_shard: world_size {self.world_size} is not divisible by "
                    f"dp_replicate({self.dp_replicate}) * cp({self.cp}) * tp({self.tp}) * "
                    f"pp({self.pp}) = {others}"
                )
            self.dp_shard = self.world_size // others
        else:
            _check_positive("dp_shard", self.dp_shard)
        product = others * self.dp_shard
        if product != self.world_size:
            raise ValueError(
                f"dp_replicate({self.dp_replicate}) * dp_shard({self.dp_shard}) * cp({self.cp}) "
                f"* tp({self.tp}) * pp({self.pp}) = {product}, but world_size is "
                f"{self.world_size}"
            )
        if (self.dp_shard * self.cp) % self.ep != 0:
            raise ValueError(
                f"ep({self.ep}) must divide dp_shard({self.dp_shard}) * cp({self.cp}) = "
                f"{self.dp_shard * self.cp}: experts are sharded over the data-shard and "
                f"context-parallel ranks"
            )

    # ----------------------------------------------------------------- sizes
    @property
    def shape(self) -> tuple[int, ...]:
        """World-mesh shape in ``MESH_DIM_NAMES`` order."""
        return (self.pp, self.dp_replicate, self.dp_shard, self.cp, self.tp)

    @property
    def dp_size(self) -> int:
        """Data-parallel degree (replicas × shards)."""
        return self.dp_replicate * self.dp_shard

    def size(self, name: str) -> int:
        """Size of a mesh dim, flattened dim, or ``ep``/``dp_shard_mod_ep``."""
        if name in MESH_DIM_NAMES or name == "ep":
            return int(getattr(self, name))
        if name in FLATTENED_DIMS:
            return prod(int(getattr(self, part)) for part in FLATTENED_DIMS[name])
        if name == "dp_shard_mod_ep":
            return self.dp_shard * self.cp // self.ep
        raise ValueError(f"unknown mesh dim {name!r}; expected one of {self.dim_names()}")

    @staticmethod
    def dim_names() -> tuple[str, ...]:
        """Every name ``get_mesh`` accepts."""
        return (*MESH_DIM_NAMES, *FLATTENED_DIMS, "ep", "dp_shard_mod_ep")

    def enabled(self, name: str) -> bool:
        """Whether a dim has more than one rank."""
        return self.size(name) > 1

    # ----------------------------------------------------------------- meshes
    def build_mesh(self, device_type: str | None = None) -> DeviceMesh:
        """Build the world ``DeviceMesh`` (collective: every rank must call it).

        All five dims are present even when their size is 1, so ``mesh["tp"]`` always works.
        The flattened dims and the expert-parallel mesh are built at the same time; fetch them
        with ``get_mesh(name)``.

        Args:
            device_type: ``"cuda"`` or ``"cpu"``; default by availability.

        Returns:
            The world mesh with dims ``MESH_DIM_NAMES``.
        """
        if not dist.is_initialized():
            raise RuntimeError("build_mesh needs a process group: call init_distributed() first")
        actual = dist.get_world_size()
        if actual != self.world_size:
            raise ValueError(
                f"ParallelDims.world_size is {self.world_size} but the process group has "
                f"{actual} ranks"
            )
        device_type = device_type or default_device_type()
        world = init_device_mesh(device_type, self.shape, mesh_dim_names=MESH_DIM_NAMES)
        self._world_mesh = world
        self._flat_meshes = {
            name: world[parts]._flatten(name) for name, parts in FLATTENED_DIMS.items()
        }
        ranks = torch.arange(self.world_size).reshape(
            self.pp, self.dp_replicate, self.size("dp_shard_mod_ep"), self.ep, self.tp
        )
        self._ep_mesh = DeviceMesh(device_type, ranks, mesh_dim_names=EP_MESH_DIM_NAMES)
        return world

    @property
    def world_mesh(self) -> DeviceMesh:
        """The mesh built by ``build_mesh``."""
        if self._world_mesh is None:
            raise RuntimeError("call ParallelDims.build_mesh() first")
        return self._world_mesh

    def get_mesh(self, name: str) -> DeviceMesh:
        """The 1-D mesh of one dim: a world dim, a flattened dim, ``ep`` or ``dp_shard_mod_ep``."""
        world = self.world_mesh
        if name in MESH_DIM_NAMES:
            return world[name]
        if name in self._flat_meshes:
            return self._flat_meshes[name]
        if name in ("ep", "dp_shard_mod_ep"):
            if self._ep_mesh is None:  # pragma: no cover - built together with the world mesh
                raise RuntimeError("call ParallelDims.build_mesh() first")
            return self._ep_mesh[name]
        raise ValueError(f"unknown mesh dim {name!r}; expected one of {self.dim_names()}")

    def get_group(self, name: str) -> dist.ProcessGroup:
        """The process group of one dim (see ``get_mesh``)."""
        return self.get_mesh(name).get_group()
