"""Tests of the best-response POMDP, the point-based solver and the FSC extraction."""

from __future__ import annotations

import itertools
import math
import os
from pathlib import Path

import numpy as np
import pytest

from infjesp.bestresponse import BestResponsePOMDP, build_best_response
from infjesp.errors import InfJespError
from infjesp.extract import best_response, extract_fsc
from infjesp.fsc import FSC, evaluate_joint
from infjesp.model import DecPOMDP
from infjesp.pbvi import AlphaVectors, fib_upper_bound, solve

SHARED_DATA = Path(
    os.environ.get(
        "INFJESP_SHARED_DATA",
        Path(__file__).resolve().parents[3].parent / "shared" / "data" / "dpomdp",
    )
)
LISTEN = 0
DEC_TIGER_BR_TO_LISTEN = -1.4927  # design doc §4.3


def _load(name: str, discount: float = 0.9) -> DecPOMDP:
    from infjesp.io import read_dpomdp

    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(f"shared data file {path} is absent (set INFJESP_SHARED_DATA)")
    return read_dpomdp(path).with_discount(discount)


def _random_fscs(model: DecPOMDP, seed: int, max_nodes: int = 5) -> list[FSC]:
    rng = np.random.default_rng(seed)
    return [
        FSC.random(model.num_actions[i], model.num_observations[i], max_nodes, rng)
        for i in range(model.num_agents)
    ]


def _always_listen() -> list[FSC]:
    return [FSC.constant(LISTEN, 2), FSC.constant(LISTEN, 2)]


@pytest.fixture(scope="module")
def dectiger() -> DecPOMDP:
    return _load("dectiger.dpomdp")


@pytest.fixture(scope="module")
def tiger_br(dectiger: DecPOMDP) -> BestResponsePOMDP:
    return build_best_response(dectiger, _always_listen(), 0)


# ------------------------------------------------------------------------------ construction
@pytest.mark.parametrize(
    ("name", "agent", "seed"),
    [
        ("dectiger.dpomdp", 0, 1),
        ("recycling.dpomdp", 1, 2),
        ("broadcastChannel.dpomdp", 0, 3),
        ("GridSmall.dpomdp", 1, 4),
    ],
)
def test_extended_pomdp_is_stochastic_and_small(name: str, agent: int, seed: int) -> None:
    model = _load(name)
    fscs = _random_fscs(model, seed, max_nodes=6)
    br = build_best_response(model, fscs, agent)
    num_ext = br.num_states
    others = math.prod(f.num_nodes for j, f in enumerate(fscs) if j != agent)
    bound = model.num_states * others * (model.num_observations[agent] + 1)
    assert num_ext <= bound
    assert len(br.T) == model.num_actions[agent]
    for matrix in br.T:
        assert matrix.shape == (num_ext, num_ext)
        np.testing.assert_allclose(np.asarray(matrix.sum(axis=1)).ravel(), 1.0, atol=1e-12)
        # the "none" observation is only an initial state: never a successor
        assert not np.asarray(matrix[:, br.obs < 0].sum(axis=0)).any()
    assert br.b0.sum() == pytest.approx(1.0)
    assert np.all(br.obs[br.b0 > 0] == -1)
    assert br.R.shape == (num_ext, model.num_actions[agent])
    assert br.state_index.shape == (num_ext, 3)
    np.testing.assert_array_equal(br.state_index[:, 2], br.obs)
    assert len({tuple(row) for row in br.state_index}) == num_ext


def test_dectiger_extended_states(tiger_br: BestResponsePOMDP) -> None:
    # (s, node 0, z) for z in {hear-left, hear-right, none}
    assert tiger_br.num_states == 6
    row = tiger_br.state_index.tolist().index([0, 0, 0])  # tiger-left, heard left
    listen = tiger_br.T[LISTEN].toarray()[row]
    target = tiger_br.state_index.tolist().index([0, 0, 0])
    assert listen[target] == pytest.approx(0.85)


def test_bad_agent_and_discount(dectiger: DecPOMDP) -> None:
    with pytest.raises(ValueError, match="agent"):
        build_best_response(dectiger, _always_listen(), 2)
    undiscounted = build_best_response(dectiger.with_discount(1.0), _always_listen(), 0)
    with pytest.raises(InfJespError, match="discount"):
        solve(undiscounted)


# ------------------------------------------------------------------------------ solver
def test_dectiger_br_to_always_listen(dectiger: DecPOMDP, tiger_br: BestResponsePOMDP) -> None:
    result = solve(tiger_br, epsilon=1e-4)
    assert result.converged
    assert result.lower == pytest.approx(DEC_TIGER_BR_TO_LISTEN, abs=1e-3)
    assert result.lower <= result.upper + 1e-9
    assert result.upper - result.lower < 1e-4
    fib = fib_upper_bound(tiger_br).max(axis=1) @ tiger_br.b0
    assert fib >= result.upper - 1e-6
    fsc = extract_fsc(tiger_br, result.alphas)
    assert 1 <= fsc.num_nodes <= 10
    exact = evaluate_joint(dectiger, [fsc, _always_listen()[1]]).value
    assert exact == pytest.approx(result.alphas.value(tiger_br.b0), abs=1e-3)
    assert exact == pytest.approx(DEC_TIGER_BR_TO_LISTEN, abs=1e-3)


def test_best_response_agent_symmetry(dectiger: DecPOMDP) -> None:
    first = best_response(dectiger, _always_listen(), 0)
    second = best_response(dectiger, _always_listen(), 1)
    assert first.value == pytest.approx(second.value, abs=1e-6)
    assert first.value == pytest.approx(DEC_TIGER_BR_TO_LISTEN, abs=1e-3)
    assert first.br_states == 6
    assert first.value <= first.upper + 1e-6


def test_no_small_fsc_beats_the_best_response(dectiger: DecPOMDP) -> None:
    result = best_response(dectiger, _always_listen(), 0)
    other = _always_listen()[1]
    best = -np.inf
    for size in (1, 2):
        for actions in itertools.product(range(3), repeat=size):
            for flat in itertools.product(range(size), repeat=2 * size):
                fsc = FSC(np.array(actions), np.array(flat).reshape(size, 2))
                best = max(best, evaluate_joint(dectiger, [fsc, other]).value)
    assert best <= result.value + 1e-6


@pytest.mark.parametrize("max_nodes", [1, 2, 3])
def test_max_nodes_is_respected(dectiger: DecPOMDP, max_nodes: int) -> None:
    result = best_response(dectiger, _always_listen(), 0, max_nodes=max_nodes)
    assert result.fsc.num_nodes <= max_nodes


def test_extract_rejects_bad_arguments(tiger_br: BestResponsePOMDP) -> None:
    alphas = AlphaVectors(np.zeros((1, tiger_br.num_states)), np.array([0]))
    assert extract_fsc(tiger_br, alphas).num_nodes == 1
    with pytest.raises(ValueError, match="max_nodes"):
        extract_fsc(tiger_br, alphas, max_nodes=0)
    with pytest.raises(ValueError, match="empty"):
        extract_fsc(tiger_br, AlphaVectors(np.zeros((0, 6)), np.zeros(0, dtype=np.int64)))


def test_belief_merge_gap_shrinks_the_controller(tiger_br: BestResponsePOMDP) -> None:
    alphas = solve(tiger_br).alphas
    full = extract_fsc(tiger_br, alphas)
    merged = extract_fsc(tiger_br, alphas, belief_merge_gap=2.0)
    assert merged.num_nodes <= full.num_nodes
    assert merged.num_nodes == 1  # every belief is within L1 distance 2 of b0


@pytest.mark.parametrize(
    ("name", "seed"),
    [("recycling.dpomdp", 0), ("recycling.dpomdp", 1), ("broadcastChannel.dpomdp", 0)],
)
def test_best_response_is_not_worse_than_current(name: str, seed: int) -> None:
    model = _load(name)
    fscs = _random_fscs(model, seed)
    current = evaluate_joint(model, fscs).value
    for agent in range(model.num_agents):
        result = best_response(model, fscs, agent, time_limit=5.0)
        assert result.value >= current - 1e-3
        assert result.value <= result.upper + 1e-3
        assert result.fsc.num_observations == model.num_observations[agent]


def test_deterministic_given_rng() -> None:
    model = _load("recycling.dpomdp")
    fscs = _random_fscs(model, 7)
    first = best_response(model, fscs, 0, rng=np.random.default_rng(3))
    second = best_response(model, fscs, 0, rng=np.random.default_rng(3))
    np.testing.assert_array_equal(first.fsc.actions, second.fsc.actions)
    np.testing.assert_array_equal(first.fsc.transitions, second.fsc.transitions)
    assert first.value == second.value
    assert first.bound == second.bound


def test_gridsmall_bounds_are_consistent() -> None:
    model = _load("GridSmall.dpomdp")
    fscs = _random_fscs(model, 0, max_nodes=4)
    result = best_response(model, fscs, 1, time_limit=3.0, max_nodes=20)
    assert result.fsc.num_nodes <= 20
    assert result.bound <= result.upper + 1e-9
    assert result.value <= result.upper + 1e-6  # no policy beats the upper bound
    assert result.upper <= 8.9049 + 1e-3  # ≤ V_MDP(b0) of the Dec-POMDP (design doc §4.2)


def test_sawtooth_filtered_path_matches_dense_path(monkeypatch: pytest.MonkeyPatch) -> None:
    from infjesp import pbvi

    rng = np.random.default_rng(0)
    num = 12
    upper = pbvi._Upper(rng.uniform(5.0, 10.0, num))
    for _ in range(30):
        b = rng.uniform(size=num) * (rng.uniform(size=num) < 0.4)
        if b.sum() == 0:
            continue
        b /= b.sum()
        upper.add(b, float(b @ upper.corners) - rng.uniform(0.0, 3.0))
    queries = rng.uniform(size=(20, num)) * (rng.uniform(size=(20, num)) < 0.7)
    queries /= np.maximum(queries.sum(axis=1, keepdims=True), 1e-12)
    dense = upper.values(queries)
    monkeypatch.setattr(pbvi, "_DENSE_SAWTOOTH", 0)
    np.testing.assert_allclose(upper.values(queries), dense, atol=1e-12)
    assert np.all(dense <= queries @ upper.corners + 1e-12)


def test_extract_link_rules(tiger_br: BestResponsePOMDP) -> None:
    alphas = solve(tiger_br).alphas
    for link in ("belief", "value"):
        assert extract_fsc(tiger_br, alphas, max_nodes=2, link=link).num_nodes <= 2
    with pytest.raises(ValueError, match="link"):
        extract_fsc(tiger_br, alphas, link="nearest")


def _value_in_best_response_pomdp(br: BestResponsePOMDP, fsc: FSC) -> float:
    """Exact value of agent i's FSC inside its best-response POMDP (a dense linear solve)."""
    num_e, num_m = br.num_states, fsc.num_nodes
    system = np.eye(num_e * num_m)
    reward = np.empty(num_e * num_m)
    obs = np.where(br.obs < 0, 0, br.obs)
    for m in range(num_m):
        a = int(fsc.actions[m])
        rows = np.arange(num_e) * num_m + m
        reward[rows] = br.R[:, a]
        T = br.T[a].toarray()
        cols = np.arange(num_e) * num_m + fsc.transitions[m, obs]
        np.add.at(system, (rows[:, None], cols[None, :]), -br.discount * T)
    values = np.linalg.solve(system, reward)
    return float(br.b0 @ values[np.arange(num_e) * num_m + fsc.start])


def _random_model(num_agents: int, seed: int) -> DecPOMDP:
    rng = np.random.default_rng(seed)
    num_s, num_a, num_z = 3, 2, 2
    ja, jo = num_a**num_agents, num_z**num_agents
    T = rng.dirichlet(np.ones(num_s), size=(ja, num_s))
    O = rng.dirichlet(np.ones(jo), size=(ja, num_s))  # noqa: E741
    return DecPOMDP(
        agent_names=tuple(str(i) for i in range(num_agents)),
        state_names=tuple(f"s{s}" for s in range(num_s)),
        action_names=tuple(tuple(f"a{a}" for a in range(num_a)) for _ in range(num_agents)),
        observation_names=tuple(tuple(f"o{z}" for z in range(num_z)) for _ in range(num_agents)),
        T=T,
        O=O,
        R=rng.normal(size=(num_s, ja)),
        b0=rng.dirichlet(np.ones(num_s)),
        discount=0.9,
    )


@pytest.mark.parametrize(
    ("name", "seed"), [("dectiger.dpomdp", 0), ("recycling.dpomdp", 1), ("GridSmall.dpomdp", 2)]
)
def test_fsc_value_in_best_response_pomdp_equals_joint_value(name: str, seed: int) -> None:
    model = _load(name)
    fscs = _random_fscs(model, seed, max_nodes=4)
    for agent in range(model.num_agents):
        br = build_best_response(model, fscs, agent)
        expected = evaluate_joint(model, fscs).value
        assert _value_in_best_response_pomdp(br, fscs[agent]) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("agent", [0, 1, 2])
def test_three_agents(agent: int) -> None:
    model = _random_model(3, seed=agent)
    fscs = _random_fscs(model, 10 + agent, max_nodes=3)
    br = build_best_response(model, fscs, agent)
    for matrix in br.T:
        np.testing.assert_allclose(np.asarray(matrix.sum(axis=1)).ravel(), 1.0, atol=1e-12)
    current = evaluate_joint(model, fscs).value
    assert _value_in_best_response_pomdp(br, fscs[agent]) == pytest.approx(current, abs=1e-9)
    result = best_response(model, fscs, agent, time_limit=1.0)
    assert result.bound >= current - 1e-3
    assert result.value <= result.upper + 1e-6


def test_stall_stop_saves_work_without_losing_the_lower_bound() -> None:
    # A Broadcast BR against random 5-node FSCs: the lower bound settles early while the upper
    # bound keeps the gap open (the reason for the stall stop), so stopping saves beliefs.
    model = _load("broadcastChannel.dpomdp")
    br = build_best_response(model, _random_fscs(model, 1), 0)
    full = solve(br, stall_rounds=None, max_beliefs=1200, time_limit=60.0)
    stalled = solve(br, stall_rounds=5, stall_min_beliefs=200, max_beliefs=1200, time_limit=60.0)
    assert stalled.beliefs < full.beliefs
    assert stalled.lower >= full.lower - 1e-3 * max(1.0, abs(full.lower))
    assert stalled.lower <= stalled.upper + 1e-9
    with pytest.raises(ValueError, match="stall_rounds"):
        solve(br, stall_rounds=0)


# ---------------------------------------------------------------- policy graph (lossless)
@pytest.mark.parametrize(("name", "seed"), [("dectiger.dpomdp", 0), ("recycling.dpomdp", 2)])
def test_policy_graph_fsc_is_worth_at_least_the_lower_bound(name: str, seed: int) -> None:
    from infjesp.extract import policy_graph_fsc

    model = _load(name)
    fscs = _random_fscs(model, seed, max_nodes=3)
    br = build_best_response(model, fscs, 0)
    result = solve(br, max_beliefs=300)
    graph = result.graph
    assert graph is not None and graph.ids.size == len(result.alphas)
    assert graph.links.shape == (graph.actions.size, br.num_observations)
    fsc = policy_graph_fsc(br, result, max_nodes=10_000)
    assert fsc is not None
    joint = list(fscs)
    joint[0] = fsc
    assert evaluate_joint(model, joint).value >= result.lower - 1e-9
    small = policy_graph_fsc(br, result, max_nodes=1)
    assert small is None or small.num_nodes == 1


def test_controller_alphas_are_the_exact_node_values(dectiger: DecPOMDP) -> None:
    from infjesp.extract import controller_alphas

    fscs = _random_fscs(dectiger, 4)
    br = build_best_response(dectiger, fscs, 1)
    current = evaluate_joint(dectiger, fscs)
    alphas, actions, links = controller_alphas(br, fscs[1], current.V)
    assert alphas.shape == (fscs[1].num_nodes, br.num_states)
    np.testing.assert_array_equal(actions, fscs[1].actions)
    np.testing.assert_array_equal(links, fscs[1].transitions)
    assert float(br.b0 @ alphas[fscs[1].start]) == pytest.approx(current.value, abs=1e-9)
    # seeded, the solver's lower bound starts at (and never falls below) the current value
    result = solve(br, max_beliefs=50, initial=(alphas, actions, links))
    assert result.lower >= current.value - 1e-9


# ------------------------------------------------- seeding and the bounded graph extraction
def test_seeded_alphas_equal_the_full_evaluation_node_values() -> None:
    from infjesp.extract import controller_alphas, seeded_alphas

    for name in ("dectiger.dpomdp", "recycling.dpomdp"):
        model = _load(name)
        for seed in range(3):
            fscs = _random_fscs(model, seed)
            for agent in range(2):
                br = build_best_response(model, fscs, agent)
                full = evaluate_joint(model, fscs)
                expected = controller_alphas(br, fscs[agent], full.V)
                value, got = seeded_alphas(model, br, fscs)
                assert value == pytest.approx(full.value, abs=1e-9)
                np.testing.assert_allclose(got[0], expected[0], atol=1e-9)


def test_hybrid_extraction_is_a_capped_controller_and_the_full_graph_is_lossless() -> None:
    from infjesp.extract import hybrid_fsc

    model = _load("dectiger.dpomdp")
    fscs = _random_fscs(model, 3)
    br = build_best_response(model, fscs, 0)
    result = solve(br, max_beliefs=300)
    assert result.graph is not None
    for graph_nodes, cap in ((1, 2), (2, 4), (3, 5), (4, 8)):
        fsc = hybrid_fsc(br, result, graph_nodes, cap)
        assert fsc is not None and fsc.num_nodes <= cap
        joint = list(fscs)
        joint[0] = fsc
        assert evaluate_joint(model, joint).value <= result.upper + 1e-6
    assert hybrid_fsc(br, result, 0, 5) is None and hybrid_fsc(br, result, 5, 5) is None
    # keeping the whole reachable graph is the lossless policy-graph controller
    start = int(result.graph.ids[result.alphas.best(np.asarray(br.b0))])
    reachable = result.graph.reachable_from(start, limit=10_000)
    assert reachable is not None
    whole = hybrid_fsc(br, result, reachable.size, reachable.size + 1)
    assert whole is not None
    joint = list(fscs)
    joint[0] = whole
    assert evaluate_joint(model, joint).value >= result.lower - 1e-6
