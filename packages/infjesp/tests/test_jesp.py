"""Inits, the JESP loop and the multi-restart solver (design §2.5, §2.6, §7)."""

from __future__ import annotations

import importlib.util
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from infjesp.errors import InfJespError
from infjesp.fsc import FSC, check_fscs, evaluate_joint
from infjesp.inits import (
    INITS,
    blind_init,
    build_init,
    ma_init,
    mpomdp_alpha_vectors,
    periodic_horizon,
    periodic_init,
    perturb_fsc,
    random_init,
    reactive_init,
)
from infjesp.io import read_dpomdp
from infjesp.jesp import exhaustive_best_response, jesp, solve
from infjesp.model import DecPOMDP, best_constant_joint_action, mdp_q_values, qmdp_value

_OVERRIDE = os.environ.get("INFJESP_SHARED_DATA")
DATA = (
    Path(_OVERRIDE)
    if _OVERRIDE
    else Path(__file__).resolve().parents[3].parent / "shared" / "data" / "dpomdp"
)
needs_data = pytest.mark.skipif(
    not (DATA / "dectiger.dpomdp").is_file(), reason=f"shared Dec-POMDP problems not at {DATA}"
)
HAS_EXTRACT = importlib.util.find_spec("infjesp.extract") is not None
needs_extract = pytest.mark.skipif(not HAS_EXTRACT, reason="infjesp.extract not available")


def _load(name: str) -> DecPOMDP:
    return read_dpomdp(DATA / f"{name}.dpomdp").with_discount(0.9)


def _same(a: list[FSC], b: list[FSC]) -> bool:
    return all(
        np.array_equal(x.actions, y.actions)
        and np.array_equal(x.transitions, y.transitions)
        and x.start == y.start
        for x, y in zip(a, b, strict=True)
    )


@dataclass(frozen=True)
class _Result:
    fsc: FSC
    value: float


def _improve_then_hang(model: DecPOMDP, fscs: list[FSC], agent: int, **_: Any) -> _Result:
    """A best response (top level, for worker processes): agent 0 gains 1, agent 1 hangs."""
    if agent == 0:
        return _Result(fscs[0], -19.0)
    time.sleep(120)
    return _Result(fscs[agent], 1e9)


# ------------------------------------------------------------------------------------ inits
@needs_data
@pytest.mark.parametrize("problem", ["dectiger", "broadcastChannel", "recycling"])
@pytest.mark.parametrize("name", sorted(INITS))
def test_inits_are_valid_capped_and_deterministic(problem: str, name: str) -> None:
    model = _load(problem)
    first = build_init(name, model, 4, np.random.default_rng(3))
    again = build_init(name, model, 4, np.random.default_rng(3))
    check_fscs(model, first)
    assert all(1 <= f.num_nodes <= 4 for f in first)
    assert all(f.reachable().num_nodes == f.num_nodes for f in first if name != "random")
    assert _same(first, again)


@needs_data
def test_random_init_depends_on_the_seed() -> None:
    model = _load("dectiger")
    draws = [random_init(model, 5, np.random.default_rng(s)) for s in range(4)]
    assert not all(_same(draws[0], d) for d in draws[1:])


@needs_data
def test_blind_init_is_the_best_constant_joint_action() -> None:
    model = _load("broadcastChannel")
    value = evaluate_joint(model, blind_init(model)).value
    assert value == pytest.approx(best_constant_joint_action(model)[0], abs=1e-9)


@needs_data
def test_ma_init_on_broadcast_is_worth_at_least_the_one_sender_equilibrium() -> None:
    model = _load("broadcastChannel")
    fscs = ma_init(model, max_nodes=50)
    assert all(f.num_nodes <= 50 for f in fscs)
    assert evaluate_joint(model, fscs).value >= 9.1 - 1e-9


@needs_data
@pytest.mark.parametrize("problem", ["dectiger", "broadcastChannel"])
def test_mpomdp_point_based_value_lies_between_the_bounds(problem: str) -> None:
    model = _load(problem)
    alphas, _ = mpomdp_alpha_vectors(model)
    value = float((alphas @ model.b0).max())
    assert best_constant_joint_action(model)[0] - 1e-9 <= value <= qmdp_value(model) + 1e-9
    qmdp_fscs = ma_init(model, max_nodes=10, value="qmdp")
    check_fscs(model, qmdp_fscs)
    assert all(f.num_nodes <= 10 for f in qmdp_fscs)


def test_unknown_init_is_a_user_error() -> None:
    model = DecPOMDP(
        ("a",), ("s",), (("x",),), (("o",),), [[[1.0]]], [[[1.0]]], [[0.0]], [1.0], 0.9
    )
    with pytest.raises(InfJespError, match="unknown init"):
        build_init("nope", model, 3, np.random.default_rng(0))
    with pytest.raises(InfJespError, match="max_nodes"):
        random_init(model, 0, np.random.default_rng(0))
    with pytest.raises(InfJespError, match="unknown MPOMDP value"):
        ma_init(model, value="exact")


# ------------------------------------------------------------------------------------ loop
@needs_data
def test_history_is_non_decreasing_and_stops_after_n_minus_1_non_improving() -> None:
    model = _load("dectiger")
    init = random_init(model, 2, np.random.default_rng(1))
    events: list[dict[str, Any]] = []
    run = jesp(
        model,
        init,
        best_response=exhaustive_best_response,
        br_options={"max_nodes": 2},
        on_progress=events.append,
    )
    assert run.converged
    assert len(run.history) == run.iterations + 1 == len(events) + 1
    assert np.all(np.diff(run.history) >= 0)
    assert run.history[-1] == run.value == pytest.approx(evaluate_joint(model, run.fscs).value)
    assert run.value > run.history[0]
    assert not events[-1]["accepted"]  # N − 1 = 1 final non-improving best response
    assert [e["agent"] for e in events] == [k % 2 for k in range(len(events))]


@needs_data
def test_a_best_response_that_never_improves_stops_the_loop_at_once() -> None:
    model = _load("dectiger")
    init = blind_init(model)

    def same(model: DecPOMDP, fscs: list[FSC], agent: int, **_: Any) -> _Result:
        return _Result(fscs[agent], evaluate_joint(model, fscs).value + 1e-9)  # below ε

    run = jesp(model, init, best_response=same)
    assert (run.iterations, run.converged) == (1, True)
    assert run.history == pytest.approx([-20.0, -20.0])


@needs_data
def test_max_iterations_and_deadline_are_respected() -> None:
    model = _load("dectiger")
    init = blind_init(model)
    calls: list[float | None] = []

    def always_better(
        model: DecPOMDP, fscs: list[FSC], agent: int, *, time_limit: float | None = None, **_: Any
    ) -> _Result:
        calls.append(time_limit)
        return _Result(fscs[agent], -20.0 + len(calls))  # a (fake) strict improvement

    run = jesp(model, init, best_response=always_better, max_iterations=5)
    assert (run.iterations, run.converged, run.value) == (5, False, -15.0)
    assert run.history == [pytest.approx(-20.0), -19.0, -18.0, -17.0, -16.0, -15.0]
    assert calls == [None] * 5

    calls.clear()
    run = jesp(model, init, best_response=always_better, deadline=time.monotonic() - 1.0)
    assert (run.iterations, calls) == (0, [])  # anytime: the init is returned
    assert run.value == pytest.approx(-20.0)

    def slow(model: DecPOMDP, fscs: list[FSC], agent: int, **kwargs: Any) -> _Result:
        time.sleep(0.05)
        return always_better(model, fscs, agent, **kwargs)

    calls.clear()
    run = jesp(model, init, best_response=slow, deadline=time.monotonic() + 0.12)
    assert 1 <= run.iterations <= 3 and not run.converged
    assert all(limit is not None and limit <= 0.12 for limit in calls)


# ------------------------------------------------------------------------------------ solve
@needs_data
def test_solve_is_deterministic_and_independent_of_workers() -> None:
    model = _load("dectiger")
    options: dict[str, Any] = {
        "restarts": 4,
        "seed": 7,
        "max_nodes": 2,
        "best_response": exhaustive_best_response,
    }
    one = solve(model, workers=1, **options)
    again = solve(model, workers=1, **options)
    two = solve(model, workers=2, **options)

    def strip(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: v for k, v in r.items() if k != "time_s"} for r in runs]

    for other in (again, two):
        assert other.value == one.value
        assert _same(other.fscs, one.fscs)
        assert strip(other.runs) == strip(one.runs)
    assert [r["init"] for r in one.runs] == ["periodic", "resync", "reactive", "ma"]
    assert one.iterations == sum(r["iterations"] for r in one.runs)
    assert one.fsc_sizes == [f.num_nodes for f in one.fscs]
    assert one.value == pytest.approx(evaluate_joint(model, one.fscs).value, abs=1e-9)
    assert best_constant_joint_action(model)[0] - 1e-9 <= one.value <= one.upper_bound
    assert one.upper_bound == pytest.approx(qmdp_value(model))


@needs_data
def test_solve_never_returns_less_than_the_best_constant_joint_action() -> None:
    model = _load("dectiger")

    def useless(model: DecPOMDP, fscs: list[FSC], agent: int, **_: Any) -> _Result:
        return _Result(fscs[agent], -1e9)

    result = solve(model, restarts=2, init="random", best_response=useless)
    assert result.source == "blind"
    assert result.value == pytest.approx(-20.0)
    assert result.fsc_sizes == [1, 1]


@needs_data
def test_solve_time_limit_skips_runs_that_cannot_start() -> None:
    model = _load("dectiger")

    def slow(model: DecPOMDP, fscs: list[FSC], agent: int, **_: Any) -> _Result:
        time.sleep(0.2)
        return _Result(fscs[agent], -1e9)

    started = time.monotonic()
    result = solve(model, restarts=4, init="blind", time_limit=0.3, best_response=slow)
    assert time.monotonic() - started < 2.0
    assert result.runs[-1]["skipped"]
    assert result.value >= -20.0 - 1e-9


@needs_data
def test_solve_hard_stop_returns_the_incumbent_of_a_run_that_overruns(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import multiprocessing

    from infjesp.jesp import TIME_LIMIT_SLACK_S

    # spawned workers unpickle _improve_then_hang by this module's importlib-mode name
    # (packages.infjesp.tests.test_jesp): they need the repository root on sys.path
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[3]))

    model = _load("dectiger")  # blind init: -20; agent 0's "best response" makes it -19
    started = time.monotonic()
    result = solve(
        model,
        restarts=2,
        init="blind",
        workers=2,
        time_limit=3.0,
        max_nodes=1,
        best_response=_improve_then_hang,
    )
    elapsed = time.monotonic() - started
    assert elapsed < 3.0 + TIME_LIMIT_SLACK_S + 1.0  # not the 120 s of the hung response
    assert result.time_s <= 3.0 + TIME_LIMIT_SLACK_S + 0.5
    assert all(run["stopped"] and not run["skipped"] for run in result.runs)
    assert result.value == -19.0  # the accepted (reported) improvement, not the init
    assert result.runs[0]["iterations"] == 1 and result.fsc_sizes == [1, 1]
    assert result.source in {"restart 0", "restart 1"}
    deadline = time.monotonic() + 5.0
    while multiprocessing.active_children() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not multiprocessing.active_children()  # the hung workers were stopped


@needs_data
@needs_extract
def test_best_response_without_time_keeps_its_first_extraction_exact() -> None:
    from infjesp.extract import best_response

    model = _load("dectiger")
    fscs = blind_init(model)
    started = time.perf_counter()
    result = best_response(model, fscs, 0, time_limit=0.0)
    assert time.perf_counter() - started < 5.0
    joint = [result.fsc, fscs[1]]
    assert result.value == pytest.approx(evaluate_joint(model, joint).value, abs=1e-9)


def test_solve_rejects_bad_arguments() -> None:
    model = DecPOMDP(
        ("a",), ("s",), (("x",),), (("o",),), [[[1.0]]], [[[1.0]]], [[0.0]], [1.0], 0.9
    )
    with pytest.raises(InfJespError, match="unknown init"):
        solve(model, init="nope")
    with pytest.raises(InfJespError, match="restarts"):
        solve(model, restarts=0)
    with pytest.raises(InfJespError, match="discount"):
        solve(model.with_discount(1.0))
    with pytest.raises(InfJespError, match="lower max_nodes"):
        exhaustive_best_response(model, blind_init(model), 0, max_nodes=50)


# ---------------------------------------------------------------- with the real best response
@needs_data
@needs_extract
def test_broadcast_with_the_ma_init() -> None:
    model = _load("broadcastChannel")
    result = solve(model, restarts=1, init="ma", time_limit=60)
    assert result.value >= 9.26
    assert result.value <= result.upper_bound + 1e-9
    assert result.value == pytest.approx(evaluate_joint(model, result.fscs).value, abs=1e-9)


@needs_data
@needs_extract
@pytest.mark.slow
def test_recycling_random_restarts_reach_the_best_known_value() -> None:
    # design §2.6: random inits stall at 31.4961 or below unless one reaches 31.9291; with
    # seed 1, restart 23 of 30 gets there (about 150 s on 2 busy cores)
    result = solve(_load("recycling"), restarts=30, init="random", seed=1, time_limit=900)
    assert result.value >= 31.9
    assert result.value <= result.upper_bound + 1e-9


@needs_data
@needs_extract
@pytest.mark.slow
def test_dectiger_with_the_ma_init() -> None:
    result = solve(_load("dectiger"), restarts=1, init="ma", time_limit=600)
    assert result.value >= 6.47


@needs_data
def test_periodic_init_on_dectiger_is_the_best_known_value() -> None:
    # the horizon-3 optimum (5.1908 undiscounted, masplan) repeated forever: 13.4486 at gamma 0.9,
    # the best-known value (FB-HSVI / PBVI-BB), from 7 + 7 tree nodes
    model = _load("dectiger")
    assert periodic_horizon(model) == 3
    fscs = periodic_init(model)
    assert evaluate_joint(model, fscs).value == pytest.approx(13.4486, abs=1e-4)
    assert all(f.num_nodes <= 7 for f in fscs)


@needs_data
def test_periodic_horizon_respects_the_node_cap_and_tree_budget() -> None:
    model = _load("dectiger")
    assert periodic_horizon(model, max_nodes=3) == 2  # 1 + 2 nodes
    assert periodic_horizon(model, max_nodes=2) == 1
    assert periodic_horizon(_load("GridSmall")) == 2  # 5^7 trees at h = 3: over the budget
    assert all(f.num_nodes == 1 for f in periodic_init(model, max_nodes=2))


@needs_data
def test_reactive_init_on_recycling_is_the_best_known_value() -> None:
    # recharge first, then "search little" after o0 and "search big" after o1: 31.9291
    model = _load("recycling")
    fscs = reactive_init(model)
    assert evaluate_joint(model, fscs).value == pytest.approx(31.9291, abs=1e-4)
    for fsc in fscs:
        assert fsc.num_nodes == 3
        np.testing.assert_array_equal(fsc.transitions, [[1, 2]] * 3)


@needs_data
def test_reactive_init_enumeration_beats_every_memory_one_pair_it_skips() -> None:
    # Broadcast has 2^3 choices per agent: the enumeration's pick is the maximum over all 64
    import itertools

    model = _load("broadcastChannel")
    best = evaluate_joint(model, reactive_init(model)).value
    values = []
    for a, b in itertools.product(itertools.product(range(2), repeat=3), repeat=2):
        fscs = [FSC(np.array(x), np.tile([1, 2], (3, 1))) for x in (a, b)]
        values.append(evaluate_joint(model, fscs).value)
    assert best == pytest.approx(max(values), abs=1e-12)


@needs_data
def test_reactive_init_coordinate_ascent_improves_on_the_constant_policy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import infjesp.inits as inits

    model = _load("recycling")
    monkeypatch.setattr(inits, "REACTIVE_MAX_JOINT", 1)  # force the coordinate-ascent path
    value = evaluate_joint(model, reactive_init(model)).value
    assert value > best_constant_joint_action(model)[0] + 1.0
    assert all(f.num_nodes <= 2 for f in reactive_init(model, max_nodes=2))  # ma fallback


@needs_data
def test_solve_default_portfolio_reaches_the_recycling_best_known_value() -> None:
    result = solve(_load("recycling"), restarts=3, time_limit=60)
    assert [r["init"] for r in result.runs] == ["periodic", "resync", "reactive"]
    assert result.value >= 31.929 * 0.99


@needs_data
def test_solve_default_portfolio_reaches_the_dectiger_best_known_value() -> None:
    result = solve(_load("dectiger"), restarts=1, time_limit=60)
    assert result.runs[0]["init"] == "periodic"
    assert result.value >= 13.448 * 0.99


@needs_data
def test_perturb_fsc_changes_one_thing_and_keeps_the_cap() -> None:
    rng = np.random.default_rng(0)
    model = _load("dectiger")
    base = random_init(model, 3, np.random.default_rng(1))[0]
    seen_insert = seen_action = False
    for _ in range(50):
        kicked = perturb_fsc(base, 3, 4, rng)
        assert kicked.num_nodes <= 4
        check_fscs(model, [kicked, base])
        seen_insert |= kicked.num_nodes > base.minimized().num_nodes
        seen_action |= not (
            kicked.num_nodes == base.num_nodes and np.array_equal(kicked.actions, base.actions)
        )
    assert seen_insert and seen_action
    full = FSC(np.zeros(4, dtype=np.int64), np.zeros((4, 2), dtype=np.int64))
    assert perturb_fsc(full, 3, 4, rng).num_nodes <= 4  # at the cap: only action changes


@needs_data
def test_kicks_never_lower_a_run_and_are_deterministic() -> None:
    model = _load("dectiger")
    options: dict[str, Any] = {
        "restarts": 2,
        "init": "random",
        "seed": 3,
        "max_nodes": 2,
        "best_response": exhaustive_best_response,
    }
    plain = solve(model, kicks=0, **options)
    kicked = solve(model, kicks=3, **options)
    again = solve(model, kicks=3, **options)
    assert kicked.value == again.value and _same(kicked.fscs, again.fscs)
    for before, after in zip(plain.runs, kicked.runs, strict=True):
        assert after["jesp_value"] == before["value"]  # the same JESP run first
        assert after["value"] >= before["value"]
        assert after["iterations"] > before["iterations"]
    with pytest.raises(InfJespError, match="kicks"):
        solve(model, kicks=-1)


@needs_data
def test_first_agent_picks_who_responds_first() -> None:
    model = _load("dectiger")
    agents: list[int] = []

    def record(m: DecPOMDP, fscs: list[FSC], agent: int, **_: Any) -> _Result:
        agents.append(agent)
        return _Result(fscs[agent], -1e9)

    jesp(model, blind_init(model), best_response=record, first_agent=1)
    assert agents == [1]
    with pytest.raises(InfJespError, match="first_agent"):
        jesp(model, blind_init(model), best_response=record, first_agent=2)


# ---------------------------------------------------------------- pomdp-py cross-check
@needs_data
def test_pouct_is_not_significantly_above_the_offline_best_response() -> None:
    pytest.importorskip("pomdp_py")
    from infjesp.bestresponse import build_best_response
    from infjesp.pomdp_py_adapter import pouct_value, to_pomdp_py

    model = _load("dectiger")
    listen = [FSC.constant(0, 2), FSC.constant(0, 2)]
    br = build_best_response(model, listen, 0)
    agent, environment = to_pomdp_py(br, np.random.default_rng(0))
    assert len(agent.transition_model.get_all_states()) == br.num_states
    assert agent.belief[environment.state] > 0
    estimate = pouct_value(br, episodes=5, steps=12, num_sims=80, rng=np.random.default_rng(0))
    br_value = -1.4927  # design §4.3: the exact best response to "always listen"
    assert np.isfinite(estimate.mean) and estimate.sem >= 0
    assert estimate.mean - 2 * estimate.sem <= br_value + estimate.truncation + 1e-6


# ------------------------------------------------------------------ trajectory init, budgets
@needs_data
def test_trajectory_init_follows_the_centralised_plan_and_retries_on_surprise() -> None:
    from infjesp.inits import trajectory_init

    model = _load("Mars")
    fscs = trajectory_init(model, 50, on_surprise="stay")
    assert all(f.num_nodes <= 50 for f in fscs)
    check_fscs(model, fscs)
    again = trajectory_init(model, 50, on_surprise="stay")
    assert _same(fscs, again)  # deterministic
    value = evaluate_joint(model, fscs).value
    assert value > best_constant_joint_action(model)[0] + 1.0  # Mars: 5.21 vs -2.0
    assert value <= qmdp_value(model) + 1e-9
    # the first step is the centralised action at b0 and a surprise keeps the node (retry)
    ja = int(np.argmax(np.asarray(model.b0) @ mdp_q_values(model)))
    assert tuple(int(f.actions[f.start]) for f in fscs) == model.joint_action(ja)
    for f in fscs:
        stays = f.transitions[f.start] == f.start
        assert stays.sum() >= f.num_observations - 1
    # the default plays the plan open-loop: the successor ignores the observation, and the
    # agents stay in step (Mars: worth more than retrying alone)
    open_loop = build_init("trajectory", model, 50, np.random.default_rng(0))
    for f in open_loop:
        assert np.all(f.transitions == f.transitions[:, :1])
    assert evaluate_joint(model, open_loop).value > value
    with pytest.raises(InfJespError, match="on_surprise"):
        trajectory_init(model, 50, on_surprise="wait")


@needs_data
def test_trajectory_init_respects_a_small_node_cap() -> None:
    model = _load("Mars")
    for cap in (1, 2, 3):
        fscs = build_init("trajectory", model, cap, np.random.default_rng(0))
        assert all(f.num_nodes <= cap for f in fscs)


@needs_data
def test_resync_init_retries_a_step_and_restarts_the_plan_on_its_first_observation() -> None:
    model = _load("Mars")
    fscs = build_init("resync", model, 50, np.random.default_rng(0))
    again = build_init("resync", model, 50, np.random.default_rng(1))
    assert _same(fscs, again)  # deterministic, no randomness
    check_fscs(model, fscs)
    # Mars rovers: own observation = own cell (+4 once its site is done); observation 0 is
    # "cell 0, not done", seen only when the plan starts over (after the last joint drill).
    for f in fscs:
        assert f.actions[f.start] == 4  # both drill at the start cell
        assert np.all(f.transitions[:, 0] == f.start)  # the plan starts over from anywhere
        moving = [n for n in range(f.num_nodes) if f.actions[n] < 4]
        assert moving
        for n in moving:  # a failed move leaves the cell unchanged: the node retries it
            assert (f.transitions[n] == n).sum() >= 2
    value = evaluate_joint(model, fscs).value
    open_loop = evaluate_joint(
        model, build_init("trajectory", model, 50, np.random.default_rng(0))
    ).value
    assert value > open_loop + 5.0  # 23.18 vs 14.12
    assert value <= qmdp_value(model) + 1e-9


@needs_data
@needs_extract
def test_jesp_from_the_resync_init_reaches_the_mars_goal() -> None:
    # issue 11's Mars goal: within 1 % of the recalled best-known 26.9 (JESP converges to
    # 26.9288 in 4 best responses, ~8 s; two best responses already give 26.857)
    model = _load("Mars")
    run = jesp(model, build_init("resync", model, 100, np.random.default_rng(0)), max_iterations=2)
    assert run.history[0] == pytest.approx(23.1801, abs=1e-3)
    assert run.value >= 26.9 * 0.99
    assert run.value <= qmdp_value(model)


def test_run_deadline_shares_the_time_left_between_waiting_runs() -> None:
    from infjesp.jesp import _run_deadline

    assert _run_deadline(None, 0.0, 0, 2, 4) is None
    assert _run_deadline(100.0, 0.0, 0, 2, 4) == pytest.approx(50.0)  # 2 slots, 4 runs wait
    assert _run_deadline(100.0, 40.0, 2, 2, 4) == 100.0  # the last two runs get all of it
    assert _run_deadline(100.0, 0.0, 0, 1, 4) == pytest.approx(25.0)
    assert _run_deadline(100.0, 25.0, 1, 1, 4) == pytest.approx(50.0)  # 75 s left, 3 runs
    assert _run_deadline(100.0, 0.0, 0, 1, 1) == 100.0


@needs_data
def test_in_process_solve_also_stops_hard_at_the_time_limit() -> None:
    from infjesp.jesp import TIME_LIMIT_SLACK_S

    model = _load("dectiger")
    started = time.monotonic()
    result = solve(
        model,
        restarts=2,
        init="blind",
        workers=1,
        time_limit=1.0,
        max_nodes=1,
        best_response=_improve_then_hang,
    )
    elapsed = time.monotonic() - started
    assert elapsed < 1.0 + TIME_LIMIT_SLACK_S + 1.0  # not the 120 s of the hung response
    assert result.value == -19.0  # agent 0's accepted improvement, then agent 1 hung
    first, second = result.runs
    assert first["stopped"] and not first["skipped"] and first["iterations"] == 1
    assert second["skipped"]
    # the alarm is gone: a later sleep is not interrupted
    time.sleep(TIME_LIMIT_SLACK_S + 0.2)
