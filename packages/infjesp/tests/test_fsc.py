"""Tests of infjesp.fsc: exact joint evaluation, simulation, JSON, DOT and the FSC type."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import numpy as np
import pytest

from infjesp.errors import InfJespError
from infjesp.fsc import (
    FSC,
    FSC_FORMAT,
    FSCError,
    FSCFormatError,
    evaluate_joint,
    evaluate_joint_finite,
    fscs_from_json,
    fscs_to_json,
    read_fscs_json,
    simulate_joint,
    simulate_joint_pomdp_py,
    simulation_horizon,
    to_dot,
    write_fscs_json,
)
from infjesp.model import DecPOMDP

SHARED_DATA = Path(
    os.environ.get(
        "INFJESP_SHARED_DATA",
        Path(__file__).resolve().parents[3].parent / "shared" / "data" / "dpomdp",
    )
)

LISTEN, OPEN_LEFT, OPEN_RIGHT = 0, 1, 2
HEAR_LEFT, HEAR_RIGHT = 0, 1


def make_dectiger(discount: float = 0.9) -> DecPOMDP:
    """Dec-Tiger (Nair et al. 2003) built by hand from the standard model, as in dectiger.dpomdp."""
    actions = ("listen", "open-left", "open-right")
    observations = ("hear-left", "hear-right")
    T = np.full((9, 2, 2), 0.5)  # any door opening resets the tiger uniformly
    T[0] = np.eye(2)  # (listen, listen) keeps it
    O = np.full((9, 2, 4), 0.25)  # noqa: E741
    hear = np.array([[0.85, 0.15], [0.15, 0.85]])  # (s', z_i), independent per agent
    O[0] = (hear[:, :, None] * hear[:, None, :]).reshape(2, 4)
    rewards = {  # (a0, a1): (R(tiger-left), R(tiger-right))
        ("listen", "listen"): (-2, -2),
        ("open-left", "open-left"): (-50, 20),
        ("open-right", "open-right"): (20, -50),
        ("open-left", "open-right"): (-100, -100),
        ("open-right", "open-left"): (-100, -100),
        ("open-left", "listen"): (-101, 9),
        ("listen", "open-left"): (-101, 9),
        ("open-right", "listen"): (9, -101),
        ("listen", "open-right"): (9, -101),
    }
    R = np.zeros((2, 9))
    for (a0, a1), values in rewards.items():
        R[:, actions.index(a0) * 3 + actions.index(a1)] = values
    return DecPOMDP(
        agent_names=("0", "1"),
        state_names=("tiger-left", "tiger-right"),
        action_names=(actions, actions),
        observation_names=(observations, observations),
        T=T,
        O=O,
        R=R,
        b0=np.array([0.5, 0.5]),
        discount=discount,
        name="dectiger",
    )


def read_shared(name: str) -> DecPOMDP:
    io = pytest.importorskip("infjesp.io", reason="infjesp.io (read_dpomdp) is not available")
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(f"shared data file {path} is absent (set INFJESP_SHARED_DATA)")
    return io.read_dpomdp(path)


def reference_value(model: DecPOMDP, fscs: list[FSC], tol: float = 1e-12) -> float:
    """The simple loop version: iterate the Bellman equation of a joint FSC to convergence."""
    sizes = [f.num_nodes for f in fscs]
    joint_nodes = list(itertools.product(*[range(n) for n in sizes]))
    V = {(k, s): 0.0 for k in joint_nodes for s in range(model.num_states)}
    while True:
        new = {}
        for k in joint_nodes:
            ja = model.joint_action_index([int(f.actions[n]) for f, n in zip(fscs, k, strict=True)])
            for s in range(model.num_states):
                total = model.R[s, ja]
                for s2 in range(model.num_states):
                    for jo in range(model.num_joint_observations):
                        z = model.joint_observation(jo)
                        k2 = tuple(
                            int(f.transitions[n, zi]) for f, n, zi in zip(fscs, k, z, strict=True)
                        )
                        p = model.T[ja, s, s2] * model.O[ja, s2, jo]
                        total += model.discount * p * V[(k2, s2)]
                new[(k, s)] = total
        delta = max(abs(new[key] - V[key]) for key in V)
        V = new
        if delta < tol:
            break
    start = tuple(f.start for f in fscs)
    return sum(model.b0[s] * V[(start, s)] for s in range(model.num_states))


@pytest.fixture(scope="module")
def dectiger() -> DecPOMDP:
    return make_dectiger()


def counting_fsc() -> FSC:
    """Listen until one observation leads the other by two, then open the other door.

    Nodes: 0 = tie (start), 1 = left +1, 2 = right +1, 3 = left +2 (open-right), 4 = right +2
    (open-left). After opening, the tiger is reset, so both observations go back to node 0.
    """
    actions = np.array([LISTEN, LISTEN, LISTEN, OPEN_RIGHT, OPEN_LEFT])
    transitions = np.array([[1, 2], [3, 0], [0, 4], [0, 0], [0, 0]])
    return FSC(actions, transitions)


# ------------------------------------------------------------------------ exact evaluation


def test_always_listen_is_minus_twenty(dectiger: DecPOMDP) -> None:
    listen = FSC.constant(LISTEN, 2)
    result = evaluate_joint(dectiger, [listen, listen])
    assert result.value == pytest.approx(-2 / (1 - 0.9), abs=1e-10)
    assert result.V.shape == (1, 1, 2)
    np.testing.assert_allclose(result.V, -20.0, atol=1e-10)


def test_constant_joint_actions_match_hand_computation(dectiger: DecPOMDP) -> None:
    gamma = dectiger.discount
    values = {}
    for a0, a1 in itertools.product(range(3), repeat=2):
        result = evaluate_joint(dectiger, [FSC.constant(a0, 2), FSC.constant(a1, 2)])
        r = dectiger.R[:, a0 * 3 + a1]
        if (a0, a1) == (LISTEN, LISTEN):
            expected_V = r / (1 - gamma)  # the tiger never moves
        else:
            expected_V = r + gamma * r.mean() / (1 - gamma)  # uniform reset after every step
        np.testing.assert_allclose(result.V[0, 0], expected_V, atol=1e-9, err_msg=str((a0, a1)))
        assert result.value == pytest.approx(expected_V.mean(), abs=1e-9)
        values[(a0, a1)] = result.value
    best = max(values, key=values.get)
    assert best == (LISTEN, LISTEN)
    assert values[best] == pytest.approx(-20.0)  # the data README's best constant for dectiger


def test_counting_fsc_reaches_the_best_response_value(dectiger: DecPOMDP) -> None:
    # Design doc §4.3: the best response to "always listen" on Dec-Tiger is worth -1.49274, from
    # a 5-node FSC. The 5-node counting controller reproduces it, for either agent.
    listen = FSC.constant(LISTEN, 2)
    assert evaluate_joint(dectiger, [counting_fsc(), listen]).value == pytest.approx(
        -1.49274, abs=1e-5
    )
    assert evaluate_joint(dectiger, [listen, counting_fsc()]).value == pytest.approx(
        -1.49274, abs=1e-5
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_linear_solve_equals_loop_reference(dectiger: DecPOMDP, seed: int) -> None:
    rng = np.random.default_rng(seed)
    fscs = [FSC.random(3, 2, 3, rng) for _ in range(2)]
    assert evaluate_joint(dectiger, fscs).value == pytest.approx(
        reference_value(dectiger, fscs), abs=1e-8
    )


def test_sparse_path_equals_dense_path(dectiger: DecPOMDP, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(5)
    fscs = [FSC.random(3, 2, 8, rng) for _ in range(2)]
    dense = evaluate_joint(dectiger, fscs)
    monkeypatch.setattr("infjesp.fsc._DENSE_LIMIT", 0)
    sparse = evaluate_joint(dectiger, fscs)
    assert sparse.value == pytest.approx(dense.value, abs=1e-9)
    np.testing.assert_allclose(sparse.V, dense.V, atol=1e-9)
    # when the iterative solver fails, the direct sparse solve takes over
    monkeypatch.setattr(
        "scipy.sparse.linalg.bicgstab", lambda A, r, **kwargs: (np.zeros_like(r), 1)
    )
    direct = evaluate_joint(dectiger, fscs)
    np.testing.assert_allclose(direct.V, dense.V, atol=1e-9)


@pytest.mark.parametrize("seed", [3, 4])
def test_finite_horizon_converges_to_linear_solve(dectiger: DecPOMDP, seed: int) -> None:
    rng = np.random.default_rng(seed)
    fscs = [FSC.random(3, 2, 4, rng) for _ in range(2)]
    exact = evaluate_joint(dectiger, fscs)
    gamma, r_max = dectiger.discount, np.abs(dectiger.R).max()
    for horizon in (10, 50, 200):
        truncated = evaluate_joint_finite(dectiger, fscs, horizon)
        bound = gamma**horizon * r_max / (1 - gamma)
        assert abs(truncated.value - exact.value) <= bound + 1e-9
        assert np.abs(truncated.V - exact.V).max() <= bound + 1e-9
    assert evaluate_joint_finite(dectiger, fscs, 0).value == 0.0


def test_finite_horizon_allows_gamma_one(dectiger: DecPOMDP) -> None:
    model = dectiger.with_discount(1.0)
    listen = FSC.constant(LISTEN, 2)
    assert evaluate_joint_finite(model, [listen, listen], 7).value == pytest.approx(-14.0)


def test_infinite_horizon_refuses_gamma_one(dectiger: DecPOMDP) -> None:
    listen = FSC.constant(LISTEN, 2)
    with pytest.raises(FSCError, match="--discount") as info:
        evaluate_joint(dectiger.with_discount(1.0), [listen, listen])
    assert isinstance(info.value, InfJespError)
    assert isinstance(info.value, ValueError)
    # an explicit discount overrides the model's
    assert evaluate_joint(dectiger.with_discount(1.0), [listen, listen], discount=0.5).value == (
        pytest.approx(-4.0)
    )


def test_fscs_must_fit_the_model(dectiger: DecPOMDP) -> None:
    listen = FSC.constant(LISTEN, 2)
    with pytest.raises(FSCError, match="expected 2 controllers"):
        evaluate_joint(dectiger, [listen])
    with pytest.raises(FSCError, match=r"fscs\[1\].*3 observation columns"):
        evaluate_joint(dectiger, [listen, FSC.constant(LISTEN, 3)])
    with pytest.raises(FSCError, match=r"fscs\[0\].*action index 5"):
        evaluate_joint(dectiger, [FSC.constant(5, 2), listen])


@pytest.mark.parametrize(
    ("name", "best_constant"),
    [
        ("dectiger.dpomdp", -20.0),
        ("recycling.dpomdp", 12.95),
        ("GridSmall.dpomdp", 3.4052),
        ("broadcastChannel.dpomdp", 9.1),
    ],
)
def test_best_constant_matches_data_readme(name: str, best_constant: float) -> None:
    model = read_shared(name).with_discount(0.9)
    best = max(
        evaluate_joint(
            model, [FSC.constant(a, model.num_observations[i]) for i, a in enumerate(actions)]
        ).value
        for actions in itertools.product(*[range(n) for n in model.num_actions])
    )
    assert best == pytest.approx(best_constant, abs=1e-4)


def test_shared_dectiger_equals_hand_built(dectiger: DecPOMDP) -> None:
    model = read_shared("dectiger.dpomdp").with_discount(0.9)
    rng = np.random.default_rng(11)
    fscs = [FSC.random(3, 2, 4, rng) for _ in range(2)]
    assert evaluate_joint(model, fscs).value == pytest.approx(
        evaluate_joint(dectiger, fscs).value, abs=1e-10
    )


# ------------------------------------------------------------------------ simulation


def test_monte_carlo_agrees_with_exact_value(dectiger: DecPOMDP) -> None:
    fscs = [counting_fsc(), FSC.random(3, 2, 3, np.random.default_rng(7))]
    exact = evaluate_joint(dectiger, fscs).value
    tolerance = 1e-3
    mean, halfwidth = simulate_joint(
        dectiger, fscs, 4000, None, np.random.default_rng(0), tolerance=tolerance
    )
    assert halfwidth > 0
    assert abs(mean - exact) <= 1.5 * halfwidth + tolerance  # seeded, so this is deterministic
    again = simulate_joint(dectiger, fscs, 4000, None, np.random.default_rng(0), tolerance)
    assert again == (mean, halfwidth)


def test_pomdp_py_simulator_agrees_with_exact_value(dectiger: DecPOMDP) -> None:
    fscs = [counting_fsc(), FSC.constant(LISTEN, 2)]
    exact = evaluate_joint(dectiger, fscs).value
    mean, halfwidth = simulate_joint_pomdp_py(
        dectiger, fscs, 100, None, np.random.default_rng(0), tolerance=1e-2
    )
    assert halfwidth > 0
    assert abs(mean - exact) <= 1.5 * halfwidth + 1e-2


def test_simulation_horizon_bounds_truncation(dectiger: DecPOMDP) -> None:
    h = simulation_horizon(dectiger, 1e-3)
    bound = 101 / (1 - 0.9)
    assert 0.9**h * bound <= 1e-3 < 0.9 ** (h - 1) * bound
    with pytest.raises(FSCError, match="--discount"):
        simulation_horizon(dectiger.with_discount(1.0))


def test_simulate_rejects_bad_episodes(dectiger: DecPOMDP) -> None:
    listen = FSC.constant(LISTEN, 2)
    with pytest.raises(ValueError, match="episodes"):
        simulate_joint(dectiger, [listen, listen], 1, 10, np.random.default_rng(0))


# ------------------------------------------------------------------------ the FSC type


def test_random_fsc_is_deterministic_by_seed() -> None:
    a = FSC.random(3, 2, 6, np.random.default_rng(42))
    b = FSC.random(3, 2, 6, np.random.default_rng(42))
    np.testing.assert_array_equal(a.actions, b.actions)
    np.testing.assert_array_equal(a.transitions, b.transitions)
    sizes = {FSC.random(3, 2, 4, np.random.default_rng(s)).num_nodes for s in range(60)}
    assert sizes == {1, 2, 3, 4}  # uniform in 1..max_nodes


def test_reachable_prunes_and_preserves_value(dectiger: DecPOMDP) -> None:
    # node 1 and node 3 are unreachable from the start node 2
    fsc = FSC(np.array([1, 0, 0, 2]), np.array([[2, 2], [3, 0], [0, 2], [1, 1]]), start=2)
    pruned = fsc.reachable()
    assert pruned.num_nodes == 2
    np.testing.assert_array_equal(pruned.actions, [1, 0])
    np.testing.assert_array_equal(pruned.transitions, [[1, 1], [0, 1]])
    assert pruned.start == 1
    other = counting_fsc()
    assert evaluate_joint(dectiger, [pruned, other]).value == pytest.approx(
        evaluate_joint(dectiger, [fsc, other]).value, abs=1e-10
    )
    assert counting_fsc().reachable().num_nodes == 5


def test_minimized_merges_equivalent_nodes_and_keeps_the_value(dectiger: DecPOMDP) -> None:
    # a 2-cycle of "listen" nodes is the same behaviour as one listen node; the open node differs
    fsc = FSC(np.array([0, 0, 1]), np.array([[1, 2], [0, 2], [0, 0]]), start=0)
    small = fsc.minimized()
    assert small.num_nodes == 2
    np.testing.assert_array_equal(small.actions, [0, 1])
    np.testing.assert_array_equal(small.transitions, [[0, 1], [0, 0]])
    assert small.start == 0
    other = counting_fsc()
    assert evaluate_joint(dectiger, [small, other]).value == pytest.approx(
        evaluate_joint(dectiger, [fsc, other]).value, abs=1e-10
    )
    assert counting_fsc().minimized().num_nodes == 5  # already minimal
    assert small.minimized().num_nodes == 2  # idempotent


@pytest.mark.parametrize("seed", range(5))
def test_minimized_random_fscs_keep_their_value(dectiger: DecPOMDP, seed: int) -> None:
    rng = np.random.default_rng(seed)
    fscs = [FSC.random(3, 2, 8, rng), FSC.random(3, 2, 8, rng)]
    small = [f.minimized() for f in fscs]
    assert all(s.num_nodes <= f.num_nodes for s, f in zip(small, fscs, strict=True))
    assert evaluate_joint(dectiger, small).value == pytest.approx(
        evaluate_joint(dectiger, fscs).value, abs=1e-9
    )


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"actions": np.array([], dtype=int), "transitions": np.zeros((0, 2), int)}, "actions"),
        ({"actions": np.array([0.5]), "transitions": np.zeros((1, 2), int)}, "actions"),
        ({"actions": np.array([-1]), "transitions": np.zeros((1, 2), int)}, "actions"),
        ({"actions": np.array([0, 1]), "transitions": np.zeros((1, 2), int)}, "transitions"),
        ({"actions": np.array([0]), "transitions": np.ones((1, 2), int)}, "transitions"),
        ({"actions": np.array([0]), "transitions": np.zeros((1, 2), int), "start": 1}, "start"),
    ],
)
def test_fsc_validation_names_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        FSC(**kwargs)


def test_fsc_arrays_are_read_only() -> None:
    fsc = FSC.constant(1, 2)
    with pytest.raises(ValueError):
        fsc.actions[0] = 0


# ------------------------------------------------------------------------ JSON


def test_json_has_the_documented_format(dectiger: DecPOMDP) -> None:
    data = fscs_to_json(dectiger, [counting_fsc(), FSC.constant(LISTEN, 2)], "dectiger", 0.9)
    assert set(data) == {"format", "problem", "discount", "agents"}
    assert data["format"] == FSC_FORMAT == "infjesp-fsc/1"
    assert data["problem"] == "dectiger"
    assert data["discount"] == 0.9
    assert [set(a) for a in data["agents"]] == [{"start", "nodes"}] * 2
    assert data["agents"][1] == {
        "start": 0,
        "nodes": [{"action": "listen", "next": {"hear-left": 0, "hear-right": 0}}],
    }
    assert data["agents"][0]["nodes"][3] == {
        "action": "open-right",
        "next": {"hear-left": 0, "hear-right": 0},
    }
    json.dumps(data)  # plain JSON types only


def test_json_round_trip(dectiger: DecPOMDP, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    fscs = [FSC.random(3, 2, 5, rng), counting_fsc()]
    fscs[0] = FSC(fscs[0].actions, fscs[0].transitions, start=fscs[0].num_nodes - 1)
    path = tmp_path / "policy.json"
    write_fscs_json(path, dectiger, fscs, "dectiger", 0.9)
    assert [p.name for p in tmp_path.iterdir()] == ["policy.json"]  # no temporary left behind
    loaded = read_fscs_json(path, dectiger)
    for original, back in zip(fscs, loaded, strict=True):
        np.testing.assert_array_equal(original.actions, back.actions)
        np.testing.assert_array_equal(original.transitions, back.transitions)
        assert original.start == back.start
    assert evaluate_joint(dectiger, loaded).value == evaluate_joint(dectiger, fscs).value


def _document(dectiger: DecPOMDP) -> dict:
    return fscs_to_json(dectiger, [counting_fsc(), FSC.constant(LISTEN, 2)], "dectiger", 0.9)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(format="infjesp-fsc/0"), r"format: expected 'infjesp-fsc/1'"),
        (lambda d: d["agents"].pop(), r"agents: the model has 2 agents, the file has 1"),
        (
            lambda d: d["agents"][0]["nodes"][2].update(action="jump"),
            r"agents\[0\]\.nodes\[2\]\.action: unknown action 'jump'",
        ),
        (
            lambda d: d["agents"][1]["nodes"][0]["next"].update({"hear-middle": 0}),
            r"agents\[1\]\.nodes\[0\]\.next: unknown observation 'hear-middle'",
        ),
        (
            lambda d: d["agents"][1]["nodes"][0]["next"].pop("hear-left"),
            r"agents\[1\]\.nodes\[0\]\.next: missing observation 'hear-left'",
        ),
        (
            lambda d: d["agents"][0]["nodes"][1]["next"].update({"hear-right": 5}),
            r"agents\[0\]\.nodes\[1\]\.next\.hear-right: node index 5 out of range \[0, 5\)",
        ),
        (
            lambda d: d["agents"][0].update(start=7),
            r"agents\[0\]\.start: node index 7 out of range",
        ),
        (lambda d: d["agents"][0].update(nodes=[]), r"agents\[0\]\.nodes: expected a non-empty"),
    ],
)
def test_malformed_json_names_source_and_field(dectiger: DecPOMDP, mutate, message: str) -> None:
    data = _document(dectiger)
    mutate(data)
    with pytest.raises(FSCFormatError, match=r"^policy\.json: " + message) as info:
        fscs_from_json(dectiger, data, source="policy.json")
    assert isinstance(info.value, InfJespError)


def test_read_reports_invalid_json_with_file_and_line(dectiger: DecPOMDP, tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{\n  "format": "infjesp-fsc/1",\n  oops\n}\n')
    with pytest.raises(FSCFormatError, match=r"broken\.json:3: invalid JSON"):
        read_fscs_json(path, dectiger)
    with pytest.raises(FSCFormatError, match="cannot read"):
        read_fscs_json(tmp_path / "missing.json", dectiger)


# ------------------------------------------------------------------------ DOT


def test_dot_lists_every_node_and_merges_parallel_edges(dectiger: DecPOMDP) -> None:
    dot = to_dot(dectiger, counting_fsc(), agent=0)
    assert dot.startswith('digraph "agent 0" {')
    assert dot.rstrip().endswith("}")
    assert 'n0 [label="0: listen", shape=doublecircle];' in dot
    assert 'n3 [label="3: open-right", shape=circle];' in dot
    assert 'n4 [label="4: open-left", shape=circle];' in dot
    for src, dst, label in [(0, 1, "hear-left"), (0, 2, "hear-right"), (1, 3, "hear-left")]:
        assert f'n{src} -> n{dst} [label="{label}"];' in dot
    # nodes 3 and 4 go to node 0 on both observations: one merged edge each
    assert 'n3 -> n0 [label="hear-left, hear-right"];' in dot
    assert dot.count("->") == 8
    with pytest.raises(ValueError, match="agent"):
        to_dot(dectiger, counting_fsc(), agent=2)


# ------------------------------------------------------------- reachable-only evaluation
@pytest.mark.parametrize("problem", ["dectiger", "GridSmall", "Mars"])
def test_reachable_only_evaluation_equals_the_full_linear_solve(problem: str) -> None:
    from infjesp.fsc import evaluate_joint_at, evaluate_value
    from infjesp.io import read_dpomdp

    path = SHARED_DATA / f"{problem}.dpomdp"
    if not path.is_file():
        pytest.skip(f"shared data file {path} is absent")
    model = read_dpomdp(path).with_discount(0.9)
    rng = np.random.default_rng(7)
    for _ in range(3):
        fscs = [
            FSC.random(model.num_actions[i], model.num_observations[i], 6, rng)
            for i in range(model.num_agents)
        ]
        full = evaluate_joint(model, fscs)
        rows = rng.choice(full.V.size, size=min(40, full.V.size), replace=False)
        value, at_rows = evaluate_joint_at(model, fscs, rows)
        assert value == pytest.approx(full.value, abs=1e-8)
        assert evaluate_value(model, fscs) == pytest.approx(full.value, abs=1e-8)
        np.testing.assert_allclose(at_rows, full.V.ravel()[rows], atol=1e-8)
    assert evaluate_value(make_dectiger(), [FSC.constant(LISTEN, 2)] * 2) == pytest.approx(-20.0)
