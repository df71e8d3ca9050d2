"""Chunk layout: module parameter lists packed into fixed-size chunks, and the size search.

Parameters are grouped by the module that owns them (``recurse=False``, registration order, a
shared parameter once); one module's list goes atomically into the current chunk, or opens a new
one. The same layout (same offsets) is used by every chunk list (PARAM, GRAD or MASTER, EXP_AVG,
EXP_AVG_SQ), so chunk ``i`` of each list holds the same parameters: together they form chunk
*group* ``i``.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from ptrain.hetmem.states import (
    ChunkState,
    TensorState,
    check_transition,
    derive_chunk_state,
)
from ptrain.hetmem.tiers import Block, Tier

__all__ = [
    "Chunk",
    "ChunkLayout",
    "ChunkSearchReport",
    "ChunkType",
    "ModuleParams",
    "Slot",
    "build_layout",
    "module_param_lists",
    "search_chunk_size",
]


class ChunkType(enum.Enum):
    """What a chunk list holds."""

    PARAM = "param"
    GRAD = "grad"
    MASTER = "master"
    EXP_AVG = "exp_avg"
    EXP_AVG_SQ = "exp_avg_sq"


@dataclass(frozen=True)
class ModuleParams:
    """The parameters a module owns directly (``recurse=False``), with their full names."""

    module_name: str
    names: tuple[str, ...]
    numels: tuple[int, ...]

    @property
    def numel(self) -> int:
        return sum(self.numels)


def module_param_lists(model: nn.Module) -> list[ModuleParams]:
    """Each module's own trainable parameters, in registration order; shared ones once."""
    seen: set[int] = set()
    lists: list[ModuleParams] = []
    for module_name, module in model.named_modules():
        names, numels = [], []
        for name, param in module.named_parameters(recurse=False):
            if id(param) in seen or not param.requires_grad:
                continue
            seen.add(id(param))
            names.append(f"{module_name}.{name}" if module_name else name)
            numels.append(param.numel())
        if names:
            lists.append(ModuleParams(module_name, tuple(names), tuple(numels)))
    return lists


@dataclass(frozen=True)
class SlotSpec:
    """Where one parameter lives in the layout."""

    name: str
    group: int
    offset: int
    numel: int


@dataclass(frozen=True)
class ChunkLayout:
    """The packing of every parameter into chunk groups of ``chunk_size`` elements."""

    chunk_size: int
    slots: tuple[SlotSpec, ...]
    group_used: tuple[int, ...]

    @property
    def num_groups(self) -> int:
        return len(self.group_used)

    @property
    def wasted_elements(self) -> int:
        return self.num_groups * self.chunk_size - sum(self.group_used)


def build_layout(lists: list[ModuleParams], chunk_size: int) -> ChunkLayout:
    """Packs module parameter lists atomically, in order, into chunks of ``chunk_size``.

    Raises:
        ValueError: one module's parameters exceed ``chunk_size`` (names the module and sizes).
    """
    slots: list[SlotSpec] = []
    used: list[int] = []
    for entry in lists:
        if entry.numel > chunk_size:
            raise ValueError(
                f"module {entry.module_name or '<root>'!r} owns {entry.numel} parameter "
                f"elements, more than the chunk size {chunk_size}; use chunk_size >= {entry.numel}"
            )
        if not used or used[-1] + entry.numel > chunk_size:
            used.append(0)
        group = len(used) - 1
        for name, numel in zip(entry.names, entry.numels, strict=True):
            slots.append(SlotSpec(name, group, used[group], numel))
            used[group] += numel
    return ChunkLayout(chunk_size, tuple(slots), tuple(used))


@dataclass
class ChunkSearchReport:
    """The automatic chunk-size search: every size tried and the one chosen.

    Attributes:
        chosen: the chunk size (elements) with the fewest wasted elements (ties: the smaller).
        tried: ``(chunk_size, num_groups, wasted_elements)`` for every size tried.
        min_size: the smallest legal size (the largest module's parameter count).
        total_elements: parameter elements of the model.
    """

    chosen: int
    tried: list[tuple[int, int, int]]
    min_size: int
    total_elements: int

    def utilisation(self, chunk_size: int) -> float:
        for size, groups, _waste in self.tried:
            if size == chunk_size:
                return self.total_elements / (groups * size)
        raise KeyError(chunk_size)

    def to_dict(self) -> dict[str, object]:
        best = sorted(self.tried, key=lambda row: (row[2], row[0]))[:10]
        return {
            "chosen_chunk_size": self.chosen,
            "min_chunk_size": self.min_size,
            "total_elements": self.total_elements,
            "sizes_tried": len(self.tried),
            "chosen_groups": next(g for s, g, _ in self.tried if s == self.chosen),
            "chosen_wasted_elements": next(w for s, _, w in self.tried if s == self.chosen),
            "chosen_utilisation": self.utilisation(self.chosen),
            "best": [
                {
                    "chunk_size": s,
                    "groups": g,
                    "wasted_elements": w,
                    "utilisation": self.utilisation(s),
                }
                for s, g, w in best
            ],
        }


def search_chunk_size(
    lists: list[ModuleParams], search_range: int | None = None, interval: int = 1024
) -> ChunkSearchReport:
    """Gemini-style waste minimiser over chunk sizes.

    Sizes from ``ceil(largest module / interval) * interval`` in steps of ``interval`` over
    ``search_range`` elements (default: as many as the smallest size, i.e. up to 2x it, so the
    search cannot collapse the model into one chunk); the packing is the one ``build_layout``
    uses. Returns the size with the fewest wasted elements (ties: the smaller).
    """
    if not lists:
        raise ValueError("the model has no trainable parameters to place in chunks")
    largest = max(entry.numel for entry in lists)
    start = math.ceil(largest / interval) * interval
    span = start if search_range is None else search_range
    tried: list[tuple[int, int, int]] = []
    for size in range(start, start + span + 1, interval):
        layout = build_layout(lists, size)
        tried.append((size, layout.num_groups, layout.wasted_elements))
    chosen = min(tried, key=lambda row: (row[2], row[0]))[0]
    total = sum(entry.numel for entry in lists)
    return ChunkSearchReport(chosen, tried, largest, total)


@dataclass(eq=False)
class Slot:
    """One tensor inside a chunk."""

    name: str
    offset: int
    numel: int
    shape: torch.Size
    state: TensorState = TensorState.FREE


@dataclass(eq=False)
class Chunk:
    """A 1-D payload of ``capacity`` elements of one dtype holding the slots of one group.

    ``payload is None`` means RELEASED. ``tier`` is where the payload lives. ``shadow`` is a
    clean copy on the tier the payload came up from (kept, and charged to that tier, while the
    fast-tier payload is unwritten), so evicting the chunk back there moves no bytes.
    """

    kind: ChunkType
    group: int
    dtype: torch.dtype
    capacity: int
    used: int
    slots: list[Slot]
    block: Block | None = None
    shadow: Block | None = None
    pinned_tier: str | None = None
    remote: bool = False
    last_access: int = -1
    index: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.index = {slot.name: i for i, slot in enumerate(self.slots)}

    @property
    def label(self) -> str:
        return f"{self.kind.value}[{self.group}]"

    @property
    def nbytes(self) -> int:
        return self.capacity * torch.empty((), dtype=self.dtype).element_size()

    @property
    def tier(self) -> Tier | None:
        return None if self.block is None else self.block.tier

    @property
    def payload(self) -> torch.Tensor | None:
        return None if self.block is None else self.block.tensor

    @property
    def state(self) -> ChunkState:
        return derive_chunk_state(self.block is not None, (s.state for s in self.slots))

    def view(self, name: str) -> torch.Tensor:
        """The slot ``name`` as a tensor of its shape (the chunk must have a payload)."""
        if self.block is None:
            raise RuntimeError(f"chunk {self.label} is released; cannot view {name!r}")
        slot = self.slots[self.index[name]]
        return self.block.tensor.narrow(0, slot.offset, slot.numel).view(slot.shape)

    def flat(self) -> torch.Tensor:
        """The used part of the payload, flat."""
        if self.block is None:
            raise RuntimeError(f"chunk {self.label} is released")
        return self.block.tensor.narrow(0, 0, self.used)

    def set_state(self, new: TensorState, names: list[str] | None = None) -> None:
        """Moves the named slots (default: all) to ``new``; illegal transitions raise."""
        targets = self.slots if names is None else [self.slots[self.index[n]] for n in names]
        for slot in targets:
            check_transition(self.label, slot.name, slot.state, new)
        for slot in targets:
            slot.state = new

    def has_state(self, state: TensorState) -> bool:
        return any(slot.state == state for slot in self.slots)
