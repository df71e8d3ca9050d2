"""The tensor state machine: the legal table, the derived chunk state, illegal moves raise."""

from __future__ import annotations

import pytest

from ptrain.hetmem import LEGAL_TRANSITIONS, ChunkState, IllegalTransitionError, TensorState
from ptrain.hetmem.states import check_transition, derive_chunk_state

S = TensorState


def test_illegal_transition_names_chunk_tensor_and_states() -> None:
    with pytest.raises(IllegalTransitionError) as error:
        check_transition("param[3]", "blocks.0.mlp.fc1.weight", S.FREE, S.HOLD_AFTER_BWD)
    message = str(error.value)
    assert "param[3]" in message and "blocks.0.mlp.fc1.weight" in message
    assert "FREE -> HOLD_AFTER_BWD" in message


@pytest.mark.parametrize(("old", "new"), sorted(LEGAL_TRANSITIONS))
def test_every_legal_transition_passes(old: TensorState, new: TensorState) -> None:
    check_transition("c", "t", old, new)


def test_table_is_not_everything() -> None:
    every = {(a, b) for a in S for b in S if a != b}
    illegal = every - LEGAL_TRANSITIONS
    # COMPUTE must never be released directly, and nothing jumps from FREE to a post-use state
    assert (S.COMPUTE, S.FREE) in illegal
    assert (S.FREE, S.HOLD_AFTER_FWD) in illegal
    for old, new in illegal:
        with pytest.raises(IllegalTransitionError):
            check_transition("c", "t", old, new)


def test_derived_chunk_state_precedence() -> None:
    assert derive_chunk_state(False, [S.COMPUTE]) == ChunkState.RELEASED
    assert derive_chunk_state(True, [S.HOLD, S.COMPUTE, S.FREE]) == ChunkState.COMPUTE
    assert derive_chunk_state(True, [S.HOLD_AFTER_BWD, S.HOLD]) == ChunkState.HOLD
    assert (
        derive_chunk_state(True, [S.HOLD_AFTER_BWD, S.HOLD_AFTER_FWD]) == ChunkState.HOLD_AFTER_FWD
    )
    assert derive_chunk_state(True, [S.FREE, S.HOLD_AFTER_BWD]) == ChunkState.HOLD_AFTER_BWD
    assert derive_chunk_state(True, [S.FREE]) == ChunkState.FREE


def test_engine_states_after_each_phase() -> None:
    from ptrain.hetmem.testing import batch, make_engine, make_models

    _, model = make_models()
    engine = make_engine(model, device_budget="8MiB")
    tokens, targets = batch(0)
    loss = engine(tokens, targets)
    assert all(s.state == S.HOLD for g in engine.groups for s in g.param.slots)
    engine.backward(loss)
    assert all(s.state == S.HOLD_AFTER_BWD for g in engine.groups for s in g.param.slots)
    engine.step()
    for group in engine.groups:
        assert group.exp_avg.state == ChunkState.HOLD
        assert group.grad is not None and group.grad.state == ChunkState.RELEASED
    # an illegal request on a live chunk raises with the chunk's label
    chunk = engine.groups[0].exp_avg
    with pytest.raises(IllegalTransitionError, match=r"exp_avg\[0\]"):
        chunk.set_state(S.HOLD_AFTER_FWD)
    engine.close()
