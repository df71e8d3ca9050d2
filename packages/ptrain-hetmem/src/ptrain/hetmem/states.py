"""Tensor and chunk states, and the explicit table of legal tensor transitions.

A tensor's state says what may happen to the chunk that holds it (PatrickStar's finite state
machine): ``COMPUTE`` pins the chunk to the compute tier, ``HOLD*`` let it move, ``FREE`` lets its
payload be released. A chunk's state is derived from its tensors' states, first match wins:
no payload → ``RELEASED``; any ``COMPUTE`` → ``COMPUTE``; any ``HOLD`` → ``HOLD``; any
``HOLD_AFTER_FWD`` → ``HOLD_AFTER_FWD``; any ``HOLD_AFTER_BWD`` → ``HOLD_AFTER_BWD``; else ``FREE``.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

__all__ = [
    "LEGAL_TRANSITIONS",
    "ChunkState",
    "IllegalTransitionError",
    "TensorState",
    "check_transition",
    "derive_chunk_state",
]


class TensorState(enum.IntEnum):
    """The state of one tensor in a chunk."""

    FREE = 0
    COMPUTE = 1
    HOLD = 2
    HOLD_AFTER_FWD = 3
    HOLD_AFTER_BWD = 4


class ChunkState(enum.IntEnum):
    """The state of a chunk: its tensors' states plus ``RELEASED`` (no payload)."""

    FREE = 0
    COMPUTE = 1
    HOLD = 2
    HOLD_AFTER_FWD = 3
    HOLD_AFTER_BWD = 4
    RELEASED = 5


_S = TensorState
LEGAL_TRANSITIONS: frozenset[tuple[TensorState, TensorState]] = frozenset(
    {
        # initial copy / Adam on a chunk that was never used (m, v zero-initialised for free)
        (_S.FREE, _S.HOLD),
        (_S.FREE, _S.COMPUTE),
        # released after use (gradients after Adam, remote ZeRO chunks)
        (_S.HOLD, _S.FREE),
        (_S.HOLD_AFTER_FWD, _S.FREE),
        (_S.HOLD_AFTER_BWD, _S.FREE),
        # forward
        (_S.HOLD, _S.COMPUTE),
        (_S.HOLD_AFTER_BWD, _S.COMPUTE),
        (_S.HOLD_AFTER_FWD, _S.COMPUTE),
        (_S.COMPUTE, _S.HOLD_AFTER_FWD),
        # end of forward: every tensor back to HOLD (activation checkpointing must not release)
        (_S.HOLD_AFTER_FWD, _S.HOLD),
        # backward
        (_S.COMPUTE, _S.HOLD_AFTER_BWD),
        # Adam and other short uses
        (_S.COMPUTE, _S.HOLD),
        (_S.HOLD_AFTER_BWD, _S.HOLD),
    }
)
"""Every legal ``(old, new)`` tensor transition: PatrickStar's call sites plus Gemini's
``STATE_TRANS`` (without READY_FOR_REDUCE, which the end-of-backward reduce-scatter replaces)."""


class IllegalTransitionError(RuntimeError):
    """A tensor was asked to move between two states that the table does not allow."""


def check_transition(chunk: str, tensor: str, old: TensorState, new: TensorState) -> None:
    """Raises ``IllegalTransitionError`` naming the chunk, tensor and states when illegal.

    A transition to the same state is a no-op and always allowed.
    """
    if old == new or (old, new) in LEGAL_TRANSITIONS:
        return
    raise IllegalTransitionError(
        f"illegal transition of tensor {tensor!r} in chunk {chunk!r}: "
        f"{old.name} -> {new.name} (allowed from {old.name}: "
        f"{', '.join(sorted(n.name for o, n in LEGAL_TRANSITIONS if o == old)) or 'none'})"
    )


def derive_chunk_state(has_payload: bool, states: Iterable[TensorState]) -> ChunkState:
    """The chunk state from its payload and its tensors' states (first match wins)."""
    if not has_payload:
        return ChunkState.RELEASED
    present = set(states)
    for state in (_S.COMPUTE, _S.HOLD, _S.HOLD_AFTER_FWD, _S.HOLD_AFTER_BWD):
        if state in present:
            return ChunkState(int(state))
    return ChunkState.FREE
