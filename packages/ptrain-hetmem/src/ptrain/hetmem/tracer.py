"""Runtime memory tracer: non-model (activation) bytes per moment, and the chunk access trace.

On CPU, activation memory is counted deterministically through ``saved_tensors_hooks``: a
tensor saved for backward is charged (once per storage) from the moment it is packed until the
autograd graph drops it. Tensors that view chunk payloads (parameters) are model data and are not
charged. A *moment* is one param-owning module's pre-forward or pre-backward, or one chunk
group's Adam update.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["MemoryTrace", "SavedTensorTracer"]


class _Saved:
    __slots__ = ("__weakref__", "tensor")

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor


class SavedTensorTracer:
    """Counts the bytes of tensors saved for backward that are alive now (``live``).

    Args:
        model_ref: returns a marker for tensors that view chunk payloads (parameters), else
            ``None``; a marker is saved instead of the tensor (not charged) and turned back
            into the parameter's *current* tensor by ``model_unpack`` in backward, because the
            chunk may have moved since forward.
        model_unpack: resolves a marker.
        on_change: called with the new ``live`` value after every change.
    """

    def __init__(
        self,
        model_ref: Callable[[torch.Tensor], Any] | None = None,
        model_unpack: Callable[[Any], torch.Tensor] | None = None,
        on_change: Callable[[int], None] | None = None,
    ) -> None:
        self.live = 0
        self.peak = 0
        self._refs: dict[int, list[int]] = {}
        self._model_ref = model_ref
        self._model_unpack = model_unpack
        self._on_change = on_change
        self._context: Any = None

    def _release(self, key: int) -> None:
        entry = self._refs.get(key)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] == 0:
            self.live -= entry[1]
            del self._refs[key]
            if self._on_change is not None:
                self._on_change(self.live)

    def _pack(self, tensor: torch.Tensor) -> Any:
        if self._model_ref is not None:
            marker = self._model_ref(tensor)
            if marker is not None:
                return marker
        storage = tensor.untyped_storage()
        key = int(storage.data_ptr())
        if key == 0:
            return tensor
        entry = self._refs.get(key)
        if entry is None:
            self._refs[key] = [1, int(storage.nbytes())]
            self.live += int(storage.nbytes())
            self.peak = max(self.peak, self.live)
            if self._on_change is not None:
                self._on_change(self.live)
        else:
            entry[0] += 1
        saved = _Saved(tensor)
        weakref.finalize(saved, self._release, key)
        return saved

    def _unpack(self, saved: Any) -> torch.Tensor:
        if isinstance(saved, _Saved):
            return saved.tensor
        if isinstance(saved, torch.Tensor) or self._model_unpack is None:
            return saved
        return self._model_unpack(saved)

    def __enter__(self) -> SavedTensorTracer:
        self._context = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._context.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._context.__exit__(*exc)
        self._context = None


@dataclass
class MemoryTrace:
    """What one warm-up iteration recorded.

    Attributes:
        nonmodel: peak non-model bytes during each moment.
        accesses: chunk labels accessed at each moment (any tier).
        stages: ``"fwd"``, ``"bwd"`` or ``"adam"`` per moment.
        fast_chunk_bytes: chunk bytes on the compute tier at each moment (after its accesses).
    """

    nonmodel: list[int] = field(default_factory=list)
    accesses: list[list[str]] = field(default_factory=list)
    stages: list[str] = field(default_factory=list)
    fast_chunk_bytes: list[int] = field(default_factory=list)
    _next_use: dict[str, list[int]] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return len(self.nonmodel)

    def finalize(self) -> None:
        """Indexes the accesses by chunk for ``next_use``."""
        self._next_use = {}
        for moment, labels in enumerate(self.accesses):
            for label in labels:
                self._next_use.setdefault(label, []).append(moment)

    def next_use(self, label: str, moment: int) -> int:
        """The next moment after ``moment`` that uses ``label`` (wrapping into the next
        iteration as ``total + first``); ``2 * total`` if never used."""
        moments = self._next_use.get(label)
        if not moments:
            return 2 * self.total
        for m in moments:
            if m > moment:
                return m
        return self.total + moments[0]

    def chunk_budget(self, capacity: int, moment: int, headroom: int) -> int:
        """The tide: bytes for chunks at ``moment`` = capacity - max(now, next) - headroom."""
        if self.total == 0:
            return capacity - headroom
        now = self.nonmodel[moment % self.total]
        nxt = self.nonmodel[(moment + 1) % self.total]
        return capacity - max(now, nxt) - headroom
