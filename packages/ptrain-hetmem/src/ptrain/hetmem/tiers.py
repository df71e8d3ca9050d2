"""Memory tiers with enforced capacities: a budgeted device arena (or CUDA), host, disk.

Every tier counts the chunk bytes it holds (``used``), the bytes it let in and out, and the peak
of ``used + nonmodel`` (``nonmodel`` is the activation memory charged to the compute tier by the
tracer). An allocation that would exceed the capacity raises ``BudgetExceeded``; callers evict
first. Without CUDA the fast tier is ``ArenaTier``: one preallocated ``uint8`` arena that chunk
payloads are cut from (first fit), so the cap is enforced on real memory; it is host memory all
the same, and the "device" is a budget, not a separate memory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from ptrain.core.cli import UserError

__all__ = ["ArenaTier", "Block", "BudgetExceeded", "CudaTier", "DiskTier", "HostTier", "Tier"]

_ALIGN = 64


class BudgetExceeded(UserError, MemoryError):
    """A tier cannot hold what was asked of it (the message names the tier and the bytes)."""


@dataclass(eq=False)
class Block:
    """A payload allocated on a tier: the typed tensor and where it lives."""

    tensor: torch.Tensor
    nbytes: int
    tier: Tier
    offset: int = 0
    path: str | None = None


class Tier:
    """Common accounting of one tier.

    Attributes:
        name: ``"device"``, ``"cuda"``, ``"cpu"`` or ``"disk"``.
        capacity: bytes, or ``None`` for unbounded.
        used: chunk payload bytes held now.
        nonmodel: non-model bytes charged to this tier now (activations on the compute tier).
        peak: the largest ``used + nonmodel`` seen.
        bytes_in / bytes_out: payload bytes copied into / out of this tier.
    """

    name = "tier"

    def __init__(self, capacity: int | None) -> None:
        self.capacity = capacity
        self.used = 0
        self.nonmodel = 0
        self.peak = 0
        self.bytes_in = 0
        self.bytes_out = 0

    def free_bytes(self) -> int | None:
        """Bytes still available for chunk payloads (``None``: unbounded)."""
        if self.capacity is None:
            return None
        return self.capacity - self.used - self.nonmodel

    def can_hold(self, nbytes: int) -> bool:
        """Whether ``nbytes`` more of payload fit now."""
        free = self.free_bytes()
        return free is None or nbytes <= free

    def _note_peak(self) -> None:
        self.peak = max(self.peak, self.used + self.nonmodel)

    def set_nonmodel(self, nbytes: int) -> None:
        """Charges ``nbytes`` of non-model memory to this tier (updates the peak)."""
        self.nonmodel = nbytes
        self._note_peak()

    def reset_peak(self) -> None:
        """Restarts the peak from the current use."""
        self.peak = self.used + self.nonmodel

    def allocate(self, numel: int, dtype: torch.dtype, zero: bool = True) -> Block:
        """A payload of ``numel`` elements of ``dtype`` (zero-filled when ``zero``).

        Raises:
            BudgetExceeded: the tier cannot hold it.
        """
        nbytes = numel * torch.empty((), dtype=dtype).element_size()
        if not self.can_hold(nbytes):
            raise BudgetExceeded(
                f"{self.name} tier: cannot allocate {nbytes} bytes "
                f"(capacity {self.capacity}, chunks {self.used}, non-model {self.nonmodel})"
            )
        block = self._allocate(numel, dtype, nbytes)
        if zero:
            block.tensor.zero_()
        self.used += nbytes
        self._note_peak()
        return block

    def release(self, block: Block) -> None:
        """Returns ``block``'s memory to the tier."""
        self.used -= block.nbytes
        self._release(block)

    def _allocate(self, numel: int, dtype: torch.dtype, nbytes: int) -> Block:
        raise NotImplementedError

    def _release(self, block: Block) -> None:
        pass

    def close(self) -> None:
        """Frees what the tier holds (files, arena)."""

    def summary(self) -> dict[str, int | None]:
        """Capacity, use, peak and traffic counters."""
        return {
            "capacity": self.capacity,
            "used": self.used,
            "peak": self.peak,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
        }


class ArenaTier(Tier):
    """The budgeted "device" tier without CUDA: payloads are cut from one ``uint8`` arena.

    First fit over a sorted free list with coalescing; offsets are 64-byte aligned. The arena is
    the whole capacity, so a payload can never be placed beyond it; non-model bytes are charged
    by accounting (they live in ordinary torch memory).
    """

    name = "device"

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity)
        self.arena = torch.empty(capacity, dtype=torch.uint8)
        self._free: list[tuple[int, int]] = [(0, capacity)]

    def storage_ptr(self) -> int:
        """The arena's storage address (tensors viewing it are model data, not activations)."""
        return int(self.arena.untyped_storage().data_ptr())

    def can_hold(self, nbytes: int) -> bool:
        if not super().can_hold(nbytes):
            return False
        size = _round_up(nbytes)
        return any(end - start >= size for start, end in self._free)

    def _allocate(self, numel: int, dtype: torch.dtype, nbytes: int) -> Block:
        size = _round_up(nbytes)
        for index, (start, end) in enumerate(self._free):
            if end - start >= size:
                if end - start == size:
                    del self._free[index]
                else:
                    self._free[index] = (start + size, end)
                view = self.arena[start : start + nbytes].view(dtype)
                return Block(view, nbytes, self, offset=start)
        raise BudgetExceeded(
            f"device tier: no contiguous {size} bytes free in the arena "
            f"(free ranges {self._free[:4]}...)"
        )

    def _release(self, block: Block) -> None:
        start, end = block.offset, block.offset + _round_up(block.nbytes)
        self._free.append((start, end))
        self._free.sort()
        merged: list[tuple[int, int]] = []
        for s, e in self._free:
            if merged and merged[-1][1] == s:
                merged[-1] = (merged[-1][0], e)
            else:
                merged.append((s, e))
        self._free = merged

    def close(self) -> None:
        self.arena = torch.empty(0, dtype=torch.uint8)
        self._free = []


class CudaTier(Tier):
    """Real CUDA tensors, capped by our accounting (cross-check with memory_allocated)."""

    name = "cuda"

    def _allocate(self, numel: int, dtype: torch.dtype, nbytes: int) -> Block:
        return Block(torch.empty(numel, dtype=dtype, device="cuda"), nbytes, self)


class HostTier(Tier):
    """Ordinary CPU tensors (pinned when CUDA is present), capped by accounting.

    Released payloads are kept in a small pool per (size, dtype) and reused (PatrickStar's
    ``MemoryCache``), which avoids page-faulting fresh memory on every move; pooled buffers are
    not counted in ``used``.
    """

    name = "cpu"
    pool_per_key = 2

    def __init__(self, capacity: int | None) -> None:
        super().__init__(capacity)
        self._pool: dict[tuple[int, torch.dtype], list[torch.Tensor]] = {}

    def _allocate(self, numel: int, dtype: torch.dtype, nbytes: int) -> Block:
        pooled = self._pool.get((numel, dtype))
        if pooled:
            return Block(pooled.pop(), nbytes, self)
        pin = torch.cuda.is_available()
        return Block(torch.empty(numel, dtype=dtype, pin_memory=pin), nbytes, self)

    def _release(self, block: Block) -> None:
        key = (block.tensor.numel(), block.tensor.dtype)
        pooled = self._pool.setdefault(key, [])
        if len(pooled) < self.pool_per_key:
            pooled.append(block.tensor)

    def close(self) -> None:
        self._pool.clear()


class DiskTier(Tier):
    """File-backed payloads (ZeRO-Infinity's NVMe tier): one file per payload, memory-mapped.

    The files live in ``path`` (a fresh temporary directory when ``None``); ``close()`` removes
    the files it created (and the directory when it created it).
    """

    name = "disk"

    def __init__(self, capacity: int | None, path: str | None = None) -> None:
        super().__init__(capacity)
        self._own_dir = path is None
        self.path = Path(tempfile.mkdtemp(prefix="ptrain-hetmem-")) if path is None else Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._counter = 0
        self._files: set[str] = set()

    def _allocate(self, numel: int, dtype: torch.dtype, nbytes: int) -> Block:
        self._counter += 1
        file = self.path / f"chunk-{os.getpid()}-{self._counter}.bin"
        with open(file, "wb") as handle:
            handle.truncate(nbytes)
        tensor = torch.from_file(str(file), shared=True, size=numel, dtype=dtype)
        self._files.add(str(file))
        return Block(tensor, nbytes, self, path=str(file))

    def _release(self, block: Block) -> None:
        if block.path is not None:
            self._files.discard(block.path)
            block.tensor = torch.empty(0)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(block.path)

    def close(self) -> None:
        for file in list(self._files):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(file)
        self._files.clear()
        if self._own_dir:
            shutil.rmtree(self.path, ignore_errors=True)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


def _round_up(nbytes: int) -> int:
    return (nbytes + _ALIGN - 1) // _ALIGN * _ALIGN
