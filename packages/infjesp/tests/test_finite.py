"""Tests of infjesp.finite: policy trees, exact best responses and the published finite optima."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np
import pytest

from infjesp.finite import (
    PolicyTree,
    best_response_tree,
    brute_force_optimum,
    evaluate_trees,
    finite_jesp,
    tree_size,
)
from infjesp.model import DecPOMDP

SHARED_DATA = Path(
    os.environ.get(
        "INFJESP_SHARED_DATA",
        Path(__file__).resolve().parents[3].parent / "shared" / "data" / "dpomdp",
    )
)


def read_shared(name: str) -> DecPOMDP:
    io = pytest.importorskip("infjesp.io", reason="infjesp.io (read_dpomdp) is not available")
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(f"shared data file {path} is absent (set INFJESP_SHARED_DATA)")
    return io.read_dpomdp(path)


@pytest.fixture(scope="module")
def dectiger() -> DecPOMDP:
    model = read_shared("dectiger.dpomdp")
    assert model.discount == 1.0  # the file's finite-horizon convention
    return model


def reference_tree_value(model: DecPOMDP, trees: list[PolicyTree], horizon: int) -> float:
    """The simple loop version: recurse over states and joint observation histories."""
    Z = model.num_observations

    def value(t: int, belief: np.ndarray, nodes: tuple[int, ...]) -> float:
        if t == horizon:
            return 0.0
        ja = model.joint_action_index(
            [int(tr.actions[n]) for tr, n in zip(trees, nodes, strict=True)]
        )
        total = float(belief @ model.R[:, ja])
        for jo in range(model.num_joint_observations):
            z = model.joint_observation(jo)
            nxt = (belief @ model.T[ja]) * model.O[ja, :, jo]
            if nxt.sum() == 0:
                continue
            children = tuple(n * Z[i] + 1 + z[i] for i, n in enumerate(nodes))
            total += model.discount * value(t + 1, nxt, children)
        return total

    return value(0, np.asarray(model.b0, dtype=float), (0,) * model.num_agents)


def test_tree_layout_and_validation() -> None:
    assert tree_size(2, 3) == 7
    tree = PolicyTree(np.array([0, 1, 2, 0, 0, 1, 1]), num_observations=2)
    assert tree.horizon == 3
    fsc = tree.to_fsc()
    np.testing.assert_array_equal(fsc.transitions[:3], [[1, 2], [3, 4], [5, 6]])
    np.testing.assert_array_equal(fsc.transitions[3:], [[3, 3], [4, 4], [5, 5], [6, 6]])
    with pytest.raises(ValueError, match="complete tree size"):
        PolicyTree(np.array([0, 1]), num_observations=2)
    with pytest.raises(ValueError, match="actions"):
        PolicyTree(np.array([-1]), num_observations=2)


@pytest.mark.parametrize("seed", [0, 1])
def test_evaluate_trees_matches_loop_reference(dectiger: DecPOMDP, seed: int) -> None:
    rng = np.random.default_rng(seed)
    trees = [PolicyTree.random(3, 2, 3, rng) for _ in range(2)]
    assert evaluate_trees(dectiger, trees) == pytest.approx(
        reference_tree_value(dectiger, trees, 3), abs=1e-10
    )
    discounted = dectiger.with_discount(0.9)
    assert evaluate_trees(discounted, trees, 2) == pytest.approx(
        reference_tree_value(discounted, trees, 2), abs=1e-10
    )


@pytest.mark.parametrize("agent", [0, 1])
@pytest.mark.parametrize("gamma", [1.0, 0.9])
def test_best_response_beats_every_tree_and_evaluates_exactly(
    dectiger: DecPOMDP, agent: int, gamma: float
) -> None:
    model = dectiger.with_discount(gamma)
    other = PolicyTree.random(3, 2, 2, np.random.default_rng(agent))
    response, value = best_response_tree(model, [other], agent, 2)
    joint = [response, other] if agent == 0 else [other, response]
    assert value == pytest.approx(evaluate_trees(model, joint), abs=1e-10)
    # exhaustive check over all 3^3 horizon-2 trees of the responding agent
    for actions in itertools.product(range(3), repeat=3):
        mine = PolicyTree(np.array(actions), 2)
        pair = [mine, other] if agent == 0 else [other, mine]
        assert evaluate_trees(model, pair) <= value + 1e-10


@pytest.mark.parametrize(
    ("name", "horizon", "optimum"),
    [
        ("dectiger.dpomdp", 2, -4.0),
        ("dectiger.dpomdp", 3, 5.190812),
        ("broadcastChannel.dpomdp", 2, 2.0),
        ("broadcastChannel.dpomdp", 3, 2.99),
        ("GridSmall.dpomdp", 2, 0.91),
        ("recycling.dpomdp", 2, 7.0),
        ("recycling.dpomdp", 3, 10.660125),
    ],
)
def test_brute_force_reproduces_published_optima(name: str, horizon: int, optimum: float) -> None:
    model = read_shared(name).with_discount(1.0)  # undiscounted (recycling's file says 0.9)
    value, trees = brute_force_optimum(model, horizon)
    assert value == pytest.approx(optimum, abs=1e-5)
    assert evaluate_trees(model, trees) == pytest.approx(value, abs=1e-10)


def test_brute_force_refuses_huge_enumerations(dectiger: DecPOMDP) -> None:
    with pytest.raises(ValueError, match="max_trees"):
        brute_force_optimum(dectiger, 4)


def test_best_response_needs_two_agents_of_trees(dectiger: DecPOMDP) -> None:
    tree = PolicyTree.random(3, 2, 2, np.random.default_rng(0))
    with pytest.raises(ValueError, match="trees_of_others"):
        best_response_tree(dectiger, [tree, tree], 0, 2)
    with pytest.raises(ValueError, match="horizon"):
        best_response_tree(dectiger, [tree], 0, 3)


def test_finite_jesp_finds_dectiger_h2_optimum(dectiger: DecPOMDP) -> None:
    result = finite_jesp(dectiger, 2, restarts=10, rng=np.random.default_rng(0))
    assert result.value == pytest.approx(-4.0, abs=1e-9)
    assert evaluate_trees(dectiger, result.trees) == pytest.approx(result.value, abs=1e-10)
    assert len(result.restart_values) == 10
    assert max(result.restart_values) == result.value


@pytest.mark.parametrize(
    ("name", "horizon", "optimum"),
    [("dectiger.dpomdp", 3, 5.190812), ("broadcastChannel.dpomdp", 3, 2.99)],
)
def test_finite_jesp_is_a_nash_equilibrium_below_the_optimum(
    name: str, horizon: int, optimum: float
) -> None:
    model = read_shared(name).with_discount(1.0)
    result = finite_jesp(model, horizon, restarts=3, rng=np.random.default_rng(1))
    assert all(v <= optimum + 1e-6 for v in result.restart_values)
    for agent in (0, 1):  # no agent can improve alone
        _, value = best_response_tree(model, [result.trees[1 - agent]], agent, horizon)
        assert value <= result.value + 1e-9
    again = finite_jesp(model, horizon, restarts=3, rng=np.random.default_rng(1))
    assert again.restart_values == result.restart_values


def test_finite_jesp_reaches_broadcast_h2_optimum() -> None:
    model = read_shared("broadcastChannel.dpomdp")
    result = finite_jesp(model, 2, restarts=5, rng=np.random.default_rng(0))
    assert result.value == pytest.approx(2.0, abs=1e-9)
