"""DecPOMDP: joint indexing, validation, discount handling and the γ = 0.9 bounds."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infjesp.errors import InfJespError, ModelValidationError
from infjesp.io import parse_dpomdp, read_dpomdp
from infjesp.model import (
    DecPOMDP,
    best_constant_joint_action,
    mdp_q_values,
    mdp_value,
    qmdp_value,
)


def shared_data_dir() -> Path:
    """``../shared/data/dpomdp`` next to the repository root, or ``$INFJESP_SHARED_DATA``."""
    override = os.environ.get("INFJESP_SHARED_DATA")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[3].parent / "shared" / "data" / "dpomdp"


DATA = shared_data_dir()


def shared_file(name: str) -> Path:
    path = DATA / name
    if not path.is_file():
        pytest.skip(f"shared problem file {path} is absent (set INFJESP_SHARED_DATA)")
    return path


TINY = """\
agents: 2
discount: 0.9
values: reward
states: left right
start: uniform
actions:
a b c
x y
observations:
hl hr
p q r
T: * :
identity
O: * :
uniform
R: * : * : * : * : 1
"""


@pytest.fixture
def tiny() -> DecPOMDP:
    return parse_dpomdp(TINY, "tiny.dpomdp")


def test_sizes_and_names(tiny: DecPOMDP) -> None:
    assert tiny.agent_names == ("0", "1")
    assert tiny.num_agents == 2
    assert tiny.num_states == 2
    assert tiny.num_actions == (3, 2)
    assert tiny.num_observations == (2, 3)
    assert tiny.num_joint_actions == 6
    assert tiny.num_joint_observations == 6
    assert tiny.T.shape == (6, 2, 2)
    assert tiny.O.shape == (6, 2, 6)
    assert tiny.R.shape == (2, 6)
    assert tiny.name == "tiny"


def test_joint_index_is_last_agent_fastest(tiny: DecPOMDP) -> None:
    assert tiny.joint_action_index([0, 1]) == 1
    assert tiny.joint_action_index([1, 0]) == 2
    assert tiny.joint_action(5) == (2, 1)
    assert tiny.joint_observation_index([1, 2]) == 5
    assert tiny.joint_action_label(3) == "(b, y)"
    np.testing.assert_array_equal(
        tiny.joint_action_table(), [[0, 0], [0, 1], [1, 0], [1, 1], [2, 0], [2, 1]]
    )
    with pytest.raises(ValueError, match="out of range"):
        tiny.joint_action_index([0, 2])
    with pytest.raises(ValueError, match="one per agent"):
        tiny.joint_action_index([0])
    with pytest.raises(ValueError, match="out of range"):
        tiny.joint_observation(6)


@settings(max_examples=50, deadline=None)
@given(sizes=st.lists(st.integers(1, 4), min_size=1, max_size=4), data=st.data())
def test_joint_index_round_trips(sizes: list[int], data: st.DataObject) -> None:
    names = tuple(tuple(f"u{k}" for k in range(n)) for n in sizes)
    num_ja = int(np.prod(sizes))
    model = DecPOMDP(
        agent_names=tuple(str(i) for i in range(len(sizes))),
        state_names=("s",),
        action_names=names,
        observation_names=names,
        T=np.ones((num_ja, 1, 1)),
        O=np.full((num_ja, 1, num_ja), 1.0 / num_ja),
        R=np.zeros((1, num_ja)),
        b0=np.ones(1),
        discount=0.5,
    )
    index = data.draw(st.integers(0, num_ja - 1))
    parts = model.joint_action(index)
    assert model.joint_action_index(parts) == index
    assert model.joint_observation_index(model.joint_observation(index)) == index
    np.testing.assert_array_equal(model.joint_action_table()[index], parts)


def test_arrays_are_read_only_copies(tiny: DecPOMDP) -> None:
    with pytest.raises(ValueError, match="read-only"):
        tiny.T[0, 0, 0] = 0.5
    with pytest.raises(dataclasses.FrozenInstanceError):
        tiny.discount = 0.5  # type: ignore[misc]


def test_shape_mismatch_is_reported(tiny: DecPOMDP) -> None:
    with pytest.raises(
        ModelValidationError, match=r"T has shape \(6, 2, 3\), expected \(6, 2, 2\)"
    ):
        dataclasses.replace(tiny, T=np.zeros((6, 2, 3)))
    with pytest.raises(ModelValidationError, match=r"discount 1\.5 is outside"):
        dataclasses.replace(tiny, discount=1.5)


def test_with_discount_and_infinite_horizon_guard(tiny: DecPOMDP) -> None:
    finite = tiny.with_discount(1.0)
    assert finite.discount == 1.0 and tiny.discount == 0.9
    np.testing.assert_array_equal(finite.T, tiny.T)
    with pytest.raises(InfJespError, match=r"discount 1.0: .*0 <= gamma < 1; pass --discount 0.9"):
        finite.require_infinite_horizon()
    with pytest.raises(InfJespError, match="--discount"):
        mdp_value(finite)
    tiny.require_infinite_horizon()
    with pytest.raises(ModelValidationError):
        tiny.with_discount(-0.1)


def test_validate_names_the_bad_row(tiny: DecPOMDP) -> None:
    T = tiny.T.copy()
    T[tiny.joint_action_index([1, 1]), 0] = [0.5, 0.4]
    with pytest.raises(
        ModelValidationError,
        match=r"^tiny: T row for joint action \(b, y\), state left sums to 0\.9, expected 1 "
        r"\(tolerance 1e-6\)$",
    ):
        dataclasses.replace(tiny, T=T).validate()
    O = tiny.O.copy()  # noqa: E741
    O[0, 1, 0] = -0.5
    with pytest.raises(ModelValidationError, match=r"O row .* next state right has a negative"):
        dataclasses.replace(tiny, O=O).validate()
    with pytest.raises(ModelValidationError, match=r"b0 sums to 0\.5"):
        dataclasses.replace(tiny, b0=np.array([0.25, 0.25])).validate()
    R = tiny.R.copy()
    R[0, 0] = np.nan
    with pytest.raises(ModelValidationError, match="R has a non-finite entry"):
        dataclasses.replace(tiny, R=R).validate()
    # a looser tolerance accepts a small deviation
    T[tiny.joint_action_index([1, 1]), 0] = [0.5, 0.5 - 1e-4]
    dataclasses.replace(tiny, T=T).validate(tolerance=1e-3)


def test_bounds_on_a_hand_solved_model(tiny: DecPOMDP) -> None:
    # reward 1 everywhere: every policy is worth 1 / (1 - 0.9) = 10
    assert mdp_value(tiny) == pytest.approx(10.0, abs=1e-8)
    assert qmdp_value(tiny) == pytest.approx(10.0, abs=1e-8)
    value, joint_action = best_constant_joint_action(tiny)
    assert value == pytest.approx(10.0, abs=1e-10)
    assert joint_action == (0, 0)
    np.testing.assert_allclose(mdp_q_values(tiny), 10.0, atol=1e-8)


def test_policy_iteration_matches_plain_value_iteration() -> None:
    rng = np.random.default_rng(7)
    num_ja, num_s, num_jo = 6, 5, 4
    model = DecPOMDP(
        agent_names=("0", "1"),
        state_names=tuple(f"s{i}" for i in range(num_s)),
        action_names=(("a", "b", "c"), ("x", "y")),
        observation_names=(("p", "q"), ("r", "t")),
        T=rng.dirichlet(np.ones(num_s) * 0.3, size=(num_ja, num_s)),
        O=rng.dirichlet(np.ones(num_jo), size=(num_ja, num_s)),
        R=rng.normal(size=(num_s, num_ja)),
        b0=rng.dirichlet(np.ones(num_s)),
        discount=0.95,
    )
    V_S = np.zeros(num_s)
    for _ in range(2000):  # the reference: value iteration, contraction 0.95^2000 ~ 1e-45
        Q_SA = model.R + 0.95 * np.einsum("ast,t->sa", model.T, V_S)
        V_S = Q_SA.max(axis=1)
    np.testing.assert_allclose(mdp_q_values(model), Q_SA, atol=1e-9)
    assert mdp_value(model) == pytest.approx(float(model.b0 @ V_S), abs=1e-9)
    assert qmdp_value(model) == pytest.approx(float((model.b0 @ Q_SA).max()), abs=1e-9)
    value, joint_action = best_constant_joint_action(model)
    constant = [
        model.b0 @ np.linalg.solve(np.eye(num_s) - 0.95 * model.T[ja], model.R[:, ja])
        for ja in range(num_ja)
    ]
    assert value == pytest.approx(max(constant), abs=1e-12)
    assert model.joint_action_index(joint_action) == int(np.argmax(constant))


# file, best constant value, its joint action (None: not checked), QMDP(b0), V_MDP(b0) at γ = 0.9
BOUNDS = [
    ("dectiger.dpomdp", -20.0, (0, 0), 178.0, 200.0),
    ("recycling.dpomdp", 12.95, None, 33.8479, 33.8479),
    ("GridSmall.dpomdp", 3.4052, None, 8.9049, 8.9049),
    ("broadcastChannel.dpomdp", 9.1, (0, 1), 9.7310, 9.7310),
    ("Mars.dpomdp", -2.0, None, 29.1646, 29.1646),
    ("relay4.dpomdp", -10.0, None, 156.3875, 156.3875),
    ("oneDoor_2_7_0.20_0.00_0_2.dpomdp", 0.0109, None, 4.7874, 4.7874),
    ("fireFighting_2_3_3.dpomdp", -18.5409, None, -5.1323, -4.0297),
]


@pytest.mark.parametrize(("file", "constant", "joint_action", "qmdp", "vmdp"), BOUNDS)
def test_readme_bounds_at_gamma_09(
    file: str,
    constant: float,
    joint_action: tuple[int, ...] | None,
    qmdp: float,
    vmdp: float,
) -> None:
    model = read_dpomdp(shared_file(file)).with_discount(0.9)
    value, best = best_constant_joint_action(model)
    assert value == pytest.approx(constant, abs=1e-3)
    if joint_action is not None:
        assert best == joint_action
    upper_qmdp, upper_mdp = qmdp_value(model), mdp_value(model)
    assert upper_qmdp == pytest.approx(qmdp, abs=1e-3)
    assert upper_mdp == pytest.approx(vmdp, abs=1e-3)
    assert value <= upper_qmdp + 1e-9 <= upper_mdp + 2e-9
