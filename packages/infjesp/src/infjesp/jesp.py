"""The infinite-horizon JESP loop and the multi-restart solver (design §2.5, §2.6).

:func:`jesp` alternates best responses round-robin over the agents. A best response is accepted
only when its **exact** joint value beats the incumbent by a relative margin
(``v > V* + ε·max(1, |V*|)``), so the value history never decreases and the loop cannot cycle on
numerical noise. It stops after ``max(1, N−1)`` consecutive non-improving best responses (a
solver-ε Nash equilibrium), after ``max_iterations`` best responses, or when the deadline passes
(anytime: the best joint FSC so far is returned).

:func:`solve` runs ``restarts`` independent JESP runs and keeps the best. Restart 0 starts from
the chosen init; by default (``"auto"``) restarts 0-4 start from the ``periodic``, ``resync``,
``reactive``, ``ma`` and ``trajectory`` inits. The others start from random inits with at most
``min(max_nodes, 5)`` nodes per agent (MC-JESP's ``--initRand`` default; large random
controllers only make the first best responses slower). Restart ``r`` draws its randomness from
``numpy.random.default_rng([seed, r])``, so results do not depend on ``workers``.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import math
import multiprocessing
import queue
import signal
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from infjesp.errors import InfJespError
from infjesp.fsc import FSC, check_fscs, evaluate_value
from infjesp.inits import INITS, build_init, perturb_fsc, random_init
from infjesp.model import DecPOMDP, best_constant_joint_action, qmdp_value

__all__ = [
    "JespRun",
    "SolveResult",
    "exhaustive_best_response",
    "jesp",
    "solve",
]

# Default node cap per FSC. MC-JESP uses 50; on Mars the greedy extraction of a best response
# capped at 50 nodes loses ~1.3 of value that 100 nodes keep (26.04 vs a 26.17 bound).
DEFAULT_MAX_NODES = 100
# Node cap of the random inits of restarts >= 1 (MC-JESP's `--initRand` default).
RANDOM_RESTART_NODES = 5
# init="auto": restart r < len(AUTO_INITS) starts from AUTO_INITS[r], later ones from random FSCs.
AUTO_INITS = ("periodic", "resync", "reactive", "ma", "trajectory")
# Perturbation rounds per run after JESP converges (solve's ``kicks``).
DEFAULT_KICKS = 0
# solve(time_limit=L, workers>=2) returns by L + this many seconds: runs still going are stopped
# and represented by the best joint FSC they reported.
TIME_LIMIT_SLACK_S = 2.0
# Most candidate controllers exhaustive_best_response enumerates.
_EXHAUSTIVE_LIMIT = 100_000


class BestResponseLike(Protocol):
    """What the loop reads from a best-response result."""

    @property
    def fsc(self) -> FSC: ...

    @property
    def value(self) -> float: ...


BestResponseFn = Callable[..., BestResponseLike]
ProgressFn = Callable[[dict[str, Any]], None]
AcceptFn = Callable[[list[FSC], float, int], None]


@dataclass(frozen=True)
class JespRun:
    """The outcome of one JESP run.

    Attributes:
        fscs: The best joint FSC found (one per agent).
        value: Its exact value V(b0).
        history: V* before the first best response, then after each best response (so
            ``len(history) == iterations + 1``); non-decreasing.
        iterations: Best responses computed.
        converged: True when the run stopped after ``max(1, N−1)`` non-improving best responses
            (not at ``max_iterations`` or the deadline).
    """

    fscs: list[FSC]
    value: float
    history: list[float]
    iterations: int
    converged: bool


@dataclass(frozen=True)
class SolveResult:
    """The best joint FSC over all restarts.

    Attributes:
        fscs: One FSC per agent.
        value: Exact V(b0) of ``fscs``.
        upper_bound: The QMDP upper bound at b0.
        fsc_sizes: Node count per agent.
        iterations: Best responses computed over all runs.
        time_s: Wall-clock seconds.
        runs: One summary dict per restart (``restart``, ``init``, ``initial_value``, ``value``,
            ``iterations``, ``converged``, ``fsc_sizes``, ``time_s``, ``skipped``, ``stopped``:
            True for a run cut off by the hard stop, whose last reported incumbent is used).
        source: ``"restart <r>"`` or ``"blind"`` (the best constant joint action, returned when
            every run ended below it or none ran).
    """

    fscs: list[FSC]
    value: float
    upper_bound: float
    fsc_sizes: list[int]
    iterations: int
    time_s: float
    runs: list[dict[str, Any]] = field(default_factory=list)
    source: str = ""


def _default_best_response() -> BestResponseFn:
    from infjesp.extract import best_response

    return best_response


def exhaustive_best_response(
    model: DecPOMDP,
    fscs: Sequence[FSC],
    agent: int,
    *,
    max_nodes: int = 2,
    **_: Any,
) -> _ExhaustiveResult:
    """Exact best response among ALL deterministic FSCs with at most ``max_nodes`` nodes.

    A reference for tests and tiny problems only: it enumerates
    ``|A_i|^n · n^(n·|Z_i|)`` controllers per size ``n`` (start node 0). Extra keyword arguments
    of the real best-response signature are accepted and ignored. Ties keep the first controller
    in enumeration order, so the result is deterministic.
    """
    num_a, num_z = model.num_actions[agent], model.num_observations[agent]
    count = sum(num_a**n * n ** (n * num_z) for n in range(1, max_nodes + 1))
    if count > _EXHAUSTIVE_LIMIT:
        raise InfJespError(
            f"exhaustive_best_response: {count} candidate controllers with up to {max_nodes} "
            f"nodes (limit {_EXHAUSTIVE_LIMIT}); lower max_nodes"
        )
    best: tuple[float, FSC] | None = None
    others = list(fscs)
    for n in range(1, max_nodes + 1):
        for actions in itertools.product(range(num_a), repeat=n):
            for succ in itertools.product(range(n), repeat=n * num_z):
                candidate = FSC(np.array(actions), np.array(succ).reshape(n, num_z))
                others[agent] = candidate
                value = evaluate_value(model, others)
                if best is None or value > best[0] + 1e-12:
                    best = (value, candidate)
    if best is None:  # pragma: no cover - max_nodes >= 1 always yields a candidate
        raise InfJespError("exhaustive_best_response needs max_nodes >= 1")
    return _ExhaustiveResult(fsc=best[1], value=best[0])


@dataclass(frozen=True)
class _ExhaustiveResult:
    fsc: FSC
    value: float


def jesp(
    model: DecPOMDP,
    init_fscs: Sequence[FSC],
    *,
    best_response: BestResponseFn | None = None,
    epsilon: float = 1e-6,
    max_iterations: int = 100,
    deadline: float | None = None,
    rng: np.random.Generator | None = None,
    on_progress: ProgressFn | None = None,
    br_options: dict[str, Any] | None = None,
    first_agent: int = 0,
    on_accept: AcceptFn | None = None,
) -> JespRun:
    """Round-robin best responses from ``init_fscs`` until a fixed point (design §2.5).

    Args:
        model: The Dec-POMDP (discount < 1).
        init_fscs: One FSC per agent.
        best_response: ``best_response(model, fscs, agent, *, rng=..., time_limit=..., **br_options)
            -> result`` with ``result.fsc`` and ``result.value`` (the exact joint value of the new
            FSC with the others); default :func:`infjesp.extract.best_response`.
        epsilon: Relative acceptance margin: accept when ``v > V* + ε·max(1, |V*|)``.
        max_iterations: Maximum number of best responses.
        deadline: A :func:`time.monotonic` value; no best response starts after it, and each one
            gets the remaining time as ``time_limit``.
        rng: Passed to the best-response solver.
        on_progress: Called after each best response with ``{"iteration", "agent", "value",
            "candidate", "accepted"}`` (``value`` is V* after the step).
        br_options: Extra keyword arguments for ``best_response`` (e.g. ``max_nodes``).
        first_agent: The agent whose best response comes first.
        on_accept: Called as ``on_accept(fscs, value, iterations)`` with the initial joint FSC
            and after every accepted best response (the anytime incumbent).

    Returns:
        The best joint FSC found, its exact value and the value history.

    Raises:
        InfJespError: For a discount >= 1 or a bad argument.
    """
    model.require_infinite_horizon()
    if (
        isinstance(max_iterations, bool)
        or not isinstance(max_iterations, int)
        or (max_iterations < 0)
    ):
        raise InfJespError(f"max_iterations must be an integer >= 0, got {max_iterations!r}")
    if not (epsilon >= 0.0 and math.isfinite(epsilon)):
        raise InfJespError(f"epsilon must be a finite number >= 0, got {epsilon!r}")
    fscs = list(init_fscs)
    check_fscs(model, fscs)
    solver = best_response if best_response is not None else _default_best_response()
    options = dict(br_options or {})
    num_agents = model.num_agents
    patience = max(1, num_agents - 1)
    value = evaluate_value(model, fscs)
    history = [value]
    iterations = nonimproving = 0
    if on_accept is not None:
        on_accept(list(fscs), value, 0)
    if not 0 <= first_agent < num_agents:
        raise InfJespError(f"first_agent must lie in [0, {num_agents}), got {first_agent!r}")
    agent = (first_agent - 1) % num_agents
    converged = False
    while True:
        if nonimproving >= patience:
            converged = True
            break
        if iterations >= max_iterations:
            break
        time_limit = None
        if deadline is not None:
            time_limit = deadline - time.monotonic()
            if time_limit <= 0:
                break
        agent = (agent + 1) % num_agents
        result = solver(model, fscs, agent, rng=rng, time_limit=time_limit, **options)
        iterations += 1
        candidate = float(result.value)
        accepted = math.isfinite(candidate) and candidate > value + epsilon * max(1.0, abs(value))
        if accepted:
            fscs[agent] = result.fsc
            value = candidate
            nonimproving = 0
            if on_accept is not None:
                on_accept(list(fscs), value, iterations)
        else:
            nonimproving += 1
        history.append(value)
        if on_progress is not None:
            on_progress(
                {
                    "iteration": iterations,
                    "agent": agent,
                    "value": value,
                    "candidate": candidate,
                    "accepted": accepted,
                }
            )
    return JespRun(fscs, value, history, iterations, converged)


def _restart_init(init: str, restart: int) -> str:
    """The init of restart ``restart``: ``init`` (or the AUTO_INITS portfolio), then random."""
    portfolio = AUTO_INITS if init == "auto" else (init,)
    return portfolio[restart] if restart < len(portfolio) else "random"


def _run_deadline(
    deadline: float | None, start: float, restart: int, slots: int, restarts: int
) -> float | None:
    """Restart ``restart``'s deadline: its share of the time left to the global ``deadline``.

    Runs start in restart order on ``slots`` workers, so when run r starts, ``restarts − r`` runs
    (itself included) still need a slot: it gets ``slots / (restarts − r)`` of the time left
    (all of it once no more runs wait than there are slots). A run that converges early leaves
    its time to the later ones, and a run that would not converge cannot starve them (on Mars a
    single JESP run can use the whole budget).
    """
    if deadline is None:
        return None
    waiting = restarts - restart
    if waiting <= slots:
        return deadline
    return min(deadline, start + (deadline - start) * slots / waiting)


# solve()'s hard stop: worker processes put their anytime incumbents on this queue (set by the
# pool initializer; None in the calling process).
_REPORTS: Any = None


def _init_worker(reports: Any) -> None:
    global _REPORTS
    _REPORTS = reports
    # A worker killed at the hard stop must not wait for its queue's feeder thread.
    reports.cancel_join_thread()


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """Terminate the pool's worker processes (used at the hard stop only)."""
    terminate = getattr(pool, "terminate_workers", None)  # Python >= 3.14
    if terminate is not None:
        terminate()
        return
    for process in list(getattr(pool, "_processes", {}).values()):
        process.terminate()
    pool.shutdown(wait=False, cancel_futures=True)


class _Incumbents:
    """The best reported incumbent per restart (fed from the workers' queue, or directly by
    an in-process run)."""

    def __init__(self) -> None:
        self.latest: dict[int, tuple[Any, ...]] = {}

    def put(self, item: tuple[Any, ...]) -> None:
        if item[0] not in self.latest or item[2] > self.latest[item[0]][2]:
            self.latest[item[0]] = item


def _run_pool(
    arguments: list[tuple[Any, ...]],
    workers: int,
    deadline: float | None,
    while_waiting: Callable[[], None] | None = None,
) -> list[tuple[dict[str, Any], list[FSC] | None]]:
    """Run the restarts in ``workers`` processes, returning by ``deadline + TIME_LIMIT_SLACK_S``.

    ``while_waiting`` runs in this process once the runs are submitted.

    Runs still going then are stopped and represented by the last incumbent they reported
    (``stopped=True`` in their summary); runs that never started are ``skipped``.
    """
    context = multiprocessing.get_context("spawn")
    reports = context.Queue()
    latest = _Incumbents()

    def drain() -> None:
        while True:
            try:
                latest.put(reports.get_nowait())
            except queue.Empty:
                return

    pool = ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=_init_worker, initargs=(reports,)
    )
    stop = None if deadline is None else deadline + TIME_LIMIT_SLACK_S
    pending: set[Any] = set()
    try:
        futures = [pool.submit(_run_restart, *a) for a in arguments]
        pending = set(futures)
        if while_waiting is not None:
            while_waiting()
        while pending:
            timeout = 0.5 if stop is None else min(0.5, stop - time.monotonic())
            if timeout <= 0:
                break
            _, pending = concurrent.futures.wait(pending, timeout=timeout)
            drain()
        if pending:
            for future in pending:
                future.cancel()
            _stop_workers(pool)
        else:
            pool.shutdown(wait=True)
        drain()
    except BaseException:
        _stop_workers(pool)
        raise
    outcomes: list[tuple[dict[str, Any], list[FSC] | None]] = []
    now = time.monotonic()
    for r, future in enumerate(futures):
        if future not in pending:
            outcomes.append(future.result())
        else:
            outcomes.append(_stopped_outcome(arguments[r], latest.latest, now))
    return outcomes


def _stopped_outcome(
    argument: tuple[Any, ...], latest: dict[int, tuple[Any, ...]], now: float
) -> tuple[dict[str, Any], list[FSC] | None]:
    """A run stopped at the hard stop: its last reported incumbent (or ``skipped``)."""
    restart, init = argument[1], argument[2]
    item = latest.get(restart)
    if item is None:  # never started (or stopped before its init was evaluated)
        summary = {"restart": restart, "init": _restart_init(init, restart)}
        summary.update(skipped=True, stopped=True, iterations=0, time_s=0.0)
        return summary, None
    _, init_name, value, fscs, iterations, started = item
    summary = {
        "restart": restart,
        "init": init_name,
        "skipped": False,
        "stopped": True,
        "value": value,
        "iterations": iterations,
        "converged": False,
        "fsc_sizes": [f.num_nodes for f in fscs],
        "time_s": now - started,
    }
    return summary, fscs


class _HardStop(BaseException):
    """Raised by the SIGALRM handler of an in-process solve at the hard stop (a BaseException,
    so that no ``except Exception`` on the way swallows it)."""


def _can_interrupt() -> bool:
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


def _run_in_process(
    arguments: list[tuple[Any, ...]], deadline: float | None
) -> list[tuple[dict[str, Any], list[FSC] | None]]:
    """The restarts one after the other in this process, returning by ``deadline +
    TIME_LIMIT_SLACK_S`` when this is the main thread of a POSIX process (a SIGALRM interrupts
    the run still going, which is then represented by its last accepted incumbent, like a
    stopped worker); elsewhere the stop is only cooperative."""
    global _REPORTS
    if deadline is None or not _can_interrupt():
        return [_run_restart(*a) for a in arguments]
    incumbents = _Incumbents()

    def on_alarm(_signum: int, _frame: Any) -> None:
        raise _HardStop

    previous_reports, _REPORTS = _REPORTS, incumbents
    previous_handler = signal.signal(signal.SIGALRM, on_alarm)
    outcomes: list[tuple[dict[str, Any], list[FSC] | None]] = []
    try:
        signal.setitimer(
            signal.ITIMER_REAL, max(0.001, deadline + TIME_LIMIT_SLACK_S - time.monotonic())
        )
        for argument in arguments:
            try:
                outcomes.append(_run_restart(*argument))
            except _HardStop:
                break
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous_handler)
        _REPORTS = previous_reports
    now = time.monotonic()
    for argument in arguments[len(outcomes) :]:
        outcomes.append(_stopped_outcome(argument, incumbents.latest, now))
    return outcomes


def _run_restart(
    model: DecPOMDP,
    restart: int,
    init: str,
    seed: int,
    max_nodes: int,
    deadline: float | None,
    jesp_options: dict[str, Any],
    best_response: BestResponseFn | None,
    on_progress: ProgressFn | None,
    slots: int = 1,
    restarts: int = 1,
) -> tuple[dict[str, Any], list[FSC] | None]:
    """One restart (top level, so a process pool can pickle it).

    The run's own deadline is its share of the time left (:func:`_run_deadline`).
    """
    start = time.monotonic()
    init_name = _restart_init(init, restart)
    summary: dict[str, Any] = {"restart": restart, "init": init_name}
    if deadline is not None and start >= deadline:
        summary.update(skipped=True, iterations=0, time_s=0.0)
        return summary, None
    deadline = _run_deadline(deadline, start, restart, slots, restarts)
    rng = np.random.default_rng([seed, restart])
    if init_name == "random":
        fscs = random_init(model, min(max_nodes, RANDOM_RESTART_NODES), rng)
    else:
        fscs = build_init(init_name, model, max_nodes, rng)

    def progress(event: dict[str, Any]) -> None:
        if on_progress is not None:
            on_progress({"restart": restart, **event})

    options = dict(jesp_options)
    kicks = int(options.pop("kicks", 0))
    reports = _REPORTS
    done_iterations = 0  # best responses of the finished JESP calls of this run
    incumbent = -math.inf

    def report(fscs: list[FSC], value: float, iterations: int) -> None:
        # The anytime incumbent, for solve()'s hard stop (worker processes only).
        nonlocal incumbent
        if reports is not None and value > incumbent:
            incumbent = value
            reports.put((restart, init_name, value, fscs, done_iterations + iterations, start))

    run = jesp(
        model,
        fscs,
        best_response=best_response,
        deadline=deadline,
        rng=rng,
        on_progress=progress if on_progress is not None else None,
        on_accept=report if reports is not None else None,
        **options,
    )
    best_fscs, best_value = run.fscs, run.value
    iterations, improved_by_kicks = run.iterations, 0
    for kick in range(kicks):  # iterated local search: perturb one agent, let JESP repair it
        if deadline is not None and time.monotonic() >= deadline:
            break
        done_iterations = iterations
        agent = kick % model.num_agents
        kicked = [  # every agent moves: one agent's move alone is undone by the others' BRs
            perturb_fsc(f, model.num_actions[i], max_nodes, rng) for i, f in enumerate(best_fscs)
        ]
        again = jesp(
            model,
            kicked,
            best_response=best_response,
            deadline=deadline,
            rng=rng,
            first_agent=(agent + 1) % model.num_agents,
            on_accept=report if reports is not None else None,
            **options,
        )
        iterations += again.iterations
        if again.value > best_value + options["epsilon"] * max(1.0, abs(best_value)):
            best_fscs, best_value = again.fscs, again.value
            improved_by_kicks += 1
    summary.update(
        skipped=False,
        stopped=False,
        initial_value=run.history[0],
        jesp_value=run.value,
        value=best_value,
        iterations=iterations,
        converged=run.converged,
        kicks_improved=improved_by_kicks,
        fsc_sizes=[f.num_nodes for f in best_fscs],
        time_s=time.monotonic() - start,
    )
    return summary, best_fscs


def solve(
    model: DecPOMDP,
    *,
    restarts: int = 1,
    init: str = "auto",
    seed: int = 0,
    time_limit: float | None = None,
    workers: int = 1,
    max_nodes: int = DEFAULT_MAX_NODES,
    epsilon: float = 1e-6,
    max_iterations: int = 100,
    br_epsilon: float = 1e-4,
    best_response: BestResponseFn | None = None,
    on_progress: ProgressFn | None = None,
    kicks: int = DEFAULT_KICKS,
) -> SolveResult:
    """Best joint FSC over ``restarts`` independent JESP runs.

    Args:
        model: The Dec-POMDP (discount < 1).
        restarts: Total number of JESP runs (>= 1). Restart 0 uses ``init``; the others use
            random inits (at most ``min(max_nodes, 5)`` nodes).
        init: One of :data:`~infjesp.inits.INITS`, or ``"auto"`` (default): the portfolio
            :data:`AUTO_INITS` (restarts 0-4: ``periodic``, ``resync``, ``reactive``, ``ma``,
            ``trajectory``), then random inits.
        seed: Restart ``r`` uses ``numpy.random.default_rng([seed, r])``.
        time_limit: Total wall-clock budget in seconds shared by all runs; None for no limit.
            solve returns by ``time_limit + TIME_LIMIT_SLACK_S`` (2 s) however long a best
            response takes: runs still going are stopped and their best joint FSC so far
            (reported after every accepted best response) competes — worker processes are
            terminated (``workers >= 2`` and ``restarts >= 2``), an in-process run is
            interrupted by a SIGALRM (main thread, POSIX). Before that, the stop is
            cooperative: no best response starts after a run's deadline and each one keeps a
            reserve for its extraction (:func:`infjesp.extract.best_response`). Called from
            another thread (or without SIGALRM) an in-process run can overrun by the last
            solver sweep and one extraction.
            A run starting with ``w`` runs (itself included) still waiting for a worker gets
            ``slots / w`` of the time left (``slots = min(workers, restarts)``), the last
            ``slots`` runs get all of it; runs not started by the deadline are skipped.
        workers: Processes (``concurrent.futures.ProcessPoolExecutor``, spawn context) when > 1.
            ``best_response`` and ``on_progress`` must then be picklable top-level functions;
            ``on_progress`` runs in the worker process. The spawn start method re-imports the
            calling script, so a script that calls ``solve(workers=2)`` needs the usual
            ``if __name__ == "__main__":`` guard.
        max_nodes: Cap on every FSC's node count (inits and best responses).
        epsilon: JESP's relative acceptance margin.
        max_iterations: Best responses per run.
        br_epsilon: The best-response solver's target gap.
        best_response: The best-response solver (default :func:`infjesp.extract.best_response`).
        on_progress: Called per best response with ``restart``, ``iteration``, ``agent``,
            ``value`` (see :func:`jesp`).
        kicks: Iterated local search inside each run: after JESP converges, this many times
            perturb one agent's controller of the run's best joint FSC (:func:`perturb_fsc`,
            agents in turn), re-run JESP from there (the other agents respond first), and keep
            the result if it is better. It escapes equilibria that differ from a better one by
            a node or an action (Recycling: 31.4961 with 2 + 2 nodes → 31.9291 with 3 + 3).

    Returns:
        The best joint FSC. Never worse than the best constant joint action: if every run ends
        below it (or none ran), the blind init is returned (``source == "blind"``).

    Raises:
        InfJespError: For a discount >= 1 or a bad argument (unknown init, restarts < 1, ...).
    """
    started = time.monotonic()
    model.require_infinite_horizon()
    if init not in INITS and init != "auto":
        raise InfJespError(f"unknown init {init!r}; expected one of {', '.join(sorted(INITS))}")
    if isinstance(kicks, bool) or not isinstance(kicks, int) or kicks < 0:
        raise InfJespError(f"kicks must be an integer >= 0, got {kicks!r}")
    for name, number in (("restarts", restarts), ("workers", workers), ("max_nodes", max_nodes)):
        if isinstance(number, bool) or not isinstance(number, int) or number < 1:
            raise InfJespError(f"{name} must be an integer >= 1, got {number!r}")
    if time_limit is not None and not time_limit > 0:
        raise InfJespError(f"time_limit must be > 0 seconds, got {time_limit!r}")
    deadline = None if time_limit is None else started + float(time_limit)
    jesp_options: dict[str, Any] = {
        "epsilon": epsilon,
        "max_iterations": max_iterations,
        "br_options": {"max_nodes": max_nodes, "epsilon": br_epsilon},
        "kicks": kicks,
    }
    slots = 1 if workers == 1 else min(workers, restarts)
    arguments = [
        (
            model,
            r,
            init,
            seed,
            max_nodes,
            deadline,
            jesp_options,
            best_response,
            on_progress,
            slots,
            restarts,
        )
        for r in range(restarts)
    ]
    bounds: dict[str, Any] = {}

    def compute_bounds() -> None:  # a few seconds on Mars: not after the deadline
        bounds["constant"] = best_constant_joint_action(model)
        bounds["upper"] = qmdp_value(model)

    if workers == 1 or restarts == 1:
        compute_bounds()
        outcomes = _run_in_process(arguments, deadline)
    else:
        outcomes = _run_pool(arguments, min(workers, restarts), deadline, compute_bounds)
    runs = [summary for summary, _ in outcomes]
    best_value, best_fscs, source = -math.inf, None, "blind"
    for summary, fscs in outcomes:
        if fscs is not None and summary["value"] > best_value:
            best_value, best_fscs, source = summary["value"], fscs, f"restart {summary['restart']}"
    constant_value, constant_action = bounds["constant"]
    if best_fscs is None or best_value < constant_value:
        # blind_init(model), whose exact value is the best constant joint action's
        best_fscs = [
            FSC.constant(a, model.num_observations[i]) for i, a in enumerate(constant_action)
        ]
        best_value = constant_value
        source = "blind"
    return SolveResult(
        fscs=best_fscs,
        value=float(best_value),
        upper_bound=float(bounds["upper"]),
        fsc_sizes=[f.num_nodes for f in best_fscs],
        iterations=sum(int(s["iterations"]) for s in runs),
        time_s=time.monotonic() - started,
        runs=runs,
        source=source,
    )
