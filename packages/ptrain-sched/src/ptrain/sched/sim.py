"""Discrete-event cluster simulator.

Events: arrival, completion, scheduling tick (every ``tick`` seconds) and reconfiguration done
(the end of a restart penalty). Between two events every running job progresses at a constant
rate taken from its job model (throughput × statistical efficiency, recomputed at every event),
so a job's completion time is known in closed form and it finishes exactly when its work is done.
The policy is called on every tick and, with ``decide_on_events``, after arrivals and
completions; whenever a job's GPU slots change it pays ``restart_penalty`` seconds without
progress (checkpoint-restart, as Pollux's simulator); a batch-size change on the same slots is
applied in place at no cost.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ptrain.sched.apps import GavelJobModel, JobModel, Rate, load_applications
from ptrain.sched.errors import InputError
from ptrain.sched.metrics import JobRecord, latency_histogram, summarise
from ptrain.sched.policies.base import Policy
from ptrain.sched.types import (
    Allocation,
    ClusterSpec,
    FinishedJob,
    JobAssignment,
    JobSpec,
    JobView,
    SchedulerState,
)

__all__ = ["SimConfig", "SimResult", "Simulator", "simulate"]

# Order of simultaneous events: free GPUs first, then restarts done, arrivals, ticks.
_COMPLETION, _READY, _ARRIVAL, _TICK = 0, 1, 2, 3
_EPS = 1e-9


@dataclass(frozen=True, kw_only=True, slots=True)
class SimConfig:
    """Simulator knobs.

    Attributes:
        tick: seconds between scheduling ticks (Pollux: 60).
        restart_penalty: seconds of no progress after a job's slots change (Pollux: 30).
        decide_on_events: also call the policy right after arrivals and completions.
        max_time: give up (RuntimeError) past this simulated time.
    """

    tick: float = 60.0
    restart_penalty: float = 30.0
    decide_on_events: bool = True
    max_time: float = 1e8

    def __post_init__(self) -> None:
        if not self.tick > 0:
            raise ValueError(f"SimConfig.tick must be > 0, got {self.tick}")
        if self.restart_penalty < 0:
            raise ValueError(f"SimConfig.restart_penalty must be >= 0, got {self.restart_penalty}")


@dataclass(slots=True)
class _Job:
    spec: JobSpec
    model: JobModel
    total: float
    work: float = 0.0
    samples: float = 0.0
    attained: float = 0.0
    held: float = 0.0
    slots: tuple[int, ...] = ()
    batch: int = 0
    rate: Rate | None = None
    speedup: float = 0.0
    ready_at: float = 0.0
    start: float | None = None
    finish: float | None = None
    reconfigurations: int = 0
    restarts: int = 0
    preemptions: int = 0
    max_gpus: int = 0
    history: dict[int, list[float]] = field(default_factory=dict)
    epochs_at_change: float | None = None
    version: int = 0
    segment_start: float = 0.0


@dataclass
class SimResult:
    """Outcome of one simulation run."""

    policy: str
    records: list[JobRecord]
    summary: dict[str, float]
    latencies_ms: list[float]
    timeline: list[tuple[int, float, float, int, int]]
    events: int
    wall_s: float
    config: dict[str, Any]

    def to_json(self, *, include_jobs: bool = True) -> dict[str, Any]:
        """The JSON document written by ``simulate --json``."""
        out: dict[str, Any] = {
            "policy": self.policy,
            "avg_jct": self.summary["avg_jct"],
            "p99_jct": self.summary["p99_jct"],
            "makespan": self.summary["makespan"],
            "jobs": len(self.records),
            "decide_latency_ms_median": self.summary["decide_latency_ms_median"],
        }
        out.update({k: v for k, v in self.summary.items() if k not in out})
        out["jobs_submitted"] = self.config["jobs_submitted"]
        out["decide_calls"] = len(self.latencies_ms)
        out["events"] = self.events
        out["wall_s"] = self.wall_s
        out["events_per_s"] = self.events / self.wall_s if self.wall_s > 0 else math.inf
        out["config"] = self.config
        out["seed"] = self.config.get("seed")
        out["decide_latency_histogram_ms"] = latency_histogram(self.latencies_ms)
        if include_jobs:
            out["per_job"] = [r.as_dict() for r in self.records]
            out["allocation_timeline"] = [
                {"job_id": j, "start": s, "end": e, "gpus": n, "batch_size": b}
                for j, s, e, n, b in self.timeline
            ]
        return out


class Simulator:
    """Runs one workload under one policy; see the module docstring."""

    def __init__(
        self,
        specs: Sequence[JobSpec],
        policy: Policy,
        cluster: ClusterSpec,
        models: Mapping[str, JobModel] | None = None,
        config: SimConfig | None = None,
    ) -> None:
        self.cluster = cluster
        self.policy = policy
        self.config = config or SimConfig()
        models = dict(load_applications() if models is None else models)
        self.jobs: dict[int, _Job] = {}
        seen = set()
        for spec in specs:
            if spec.job_id in seen:
                raise ValueError(f"duplicate job id {spec.job_id}")
            seen.add(spec.job_id)
            if spec.num_gpus > cluster.num_gpus:
                raise InputError(
                    f"job {spec.name} asks for {spec.num_gpus} GPUs but the cluster has only "
                    f"{cluster.num_gpus}; rejected"
                )
            model = models.get(spec.application)
            if model is None:
                raise InputError(
                    f"job {spec.name}: no model for application {spec.application!r} "
                    f"(have {', '.join(sorted(models))})"
                )
            total = spec.work if spec.work is not None else model.total_work
            self.jobs[spec.job_id] = _Job(spec=spec, model=model, total=float(total))
        if not self.jobs:
            raise InputError("the workload has no jobs")
        self.now = 0.0
        self.active: set[int] = set()
        self.finished: list[FinishedJob] = []
        self.records: list[JobRecord] = []
        self.latencies_ms: list[float] = []
        self.timeline: list[tuple[int, float, float, int, int]] = []
        self.allocated_gpu_seconds = 0.0
        self.effective_gpu_seconds = 0.0
        self.events = 0
        self._heap: list[tuple[float, int, int, int, int]] = []
        self._seq = 0

    # ------------------------------------------------------------------ events
    def _push(self, when: float, kind: int, job_id: int = -1, version: int = 0) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (when, kind, self._seq, job_id, version))

    def _epochs(self, job: _Job) -> float:
        return job.samples / job.model.dataset_size

    def _advance(self, until: float) -> None:
        """Moves every running job from ``self.now`` to ``until`` at its current rate."""
        span = until - self.now
        if span <= 0:
            return
        for job_id in self.active:
            job = self.jobs[job_id]
            n = len(job.slots)
            if n == 0:
                continue
            job.attained += n * span
            job.held += span
            self.allocated_gpu_seconds += n * span
            begin = max(self.now, job.ready_at)
            working = until - begin
            if working <= 0 or job.rate is None:
                continue
            job.work = min(job.work + job.rate.progress_per_s * working, job.total)
            job.samples += job.rate.samples_per_s * working
            self.effective_gpu_seconds += job.speedup * working
            measured = job.history.setdefault(n, [])
            measured.append(job.rate.progress_per_s)
            if len(measured) > 5:
                del measured[0]
        self.now = until

    def _refresh_rate(self, job: _Job) -> None:
        """Recomputes a running job's rate and (re)schedules its completion."""
        job.version += 1
        n = len(job.slots)
        if n == 0:
            job.rate = None
            job.speedup = 0.0
            return
        gpn = self.cluster.gpus_per_node
        per_node: dict[int, int] = {}
        for slot in job.slots:
            per_node[slot // gpn] = per_node.get(slot // gpn, 0) + 1
        placement = tuple(per_node[node] for node in sorted(per_node))
        job.rate = job.model.rate(n, len(placement), job.batch, job.work, placement)
        one = job.model.rate(1, 1, job.model.min_batch, job.work).progress_per_s
        job.speedup = min(job.rate.progress_per_s / one, n) if one > 0 else 0.0
        if job.rate.progress_per_s <= 0:
            return
        begin = max(self.now, job.ready_at)
        self._push(
            begin + (job.total - job.work) / job.rate.progress_per_s,
            _COMPLETION,
            job.spec.job_id,
            job.version,
        )

    def _view(self, job: _Job) -> JobView:
        return JobView(
            spec=job.spec,
            work_done=job.work,
            samples_done=job.samples,
            epochs_done=self._epochs(job),
            attained_service=job.attained,
            num_gpus=len(job.slots),
            batch_size=job.batch if job.slots else job.model.clamp_batch(job.spec.batch_size),
            throughput_history={n: tuple(v) for n, v in job.history.items()},
            epochs_at_last_change=job.epochs_at_change,
            ever_ran=job.start is not None,
            restarts=job.restarts,
            model=job.model,
        )

    def _current(self) -> Allocation:
        return Allocation(
            {
                j: JobAssignment(slots=self.jobs[j].slots, batch_size=self.jobs[j].batch)
                for j in sorted(self.active)
                if self.jobs[j].slots
            }
        )

    def _decide(self) -> None:
        if not self.active:
            return
        state = SchedulerState(
            now=self.now,
            cluster=self.cluster,
            jobs=tuple(self._view(self.jobs[j]) for j in sorted(self.active)),
            current=self._current(),
            finished=tuple(self.finished),
        )
        started = time.perf_counter()
        allocation = self.policy.decide(state)
        self.latencies_ms.append((time.perf_counter() - started) * 1e3)
        allocation.validate(self.cluster, self.active)
        self._apply(allocation)

    def _apply(self, allocation: Allocation) -> None:
        for job_id in sorted(self.active):
            job = self.jobs[job_id]
            assignment = allocation.jobs.get(job_id)
            new_slots = assignment.slots if assignment is not None else ()
            new_batch = assignment.batch_size if assignment is not None else job.batch
            if new_slots == job.slots and (not new_slots or new_batch == job.batch):
                continue
            self._close_segment(job)
            if new_slots != job.slots:
                if job.slots:
                    job.reconfigurations += 1
                    if not new_slots:
                        job.preemptions += 1
                if new_slots:
                    if job.start is None:
                        job.start = self.now
                    else:
                        job.restarts += 1
                    job.ready_at = self.now + self.config.restart_penalty
                    if job.ready_at > self.now:
                        self._push(job.ready_at, _READY, job_id)
                job.epochs_at_change = self._epochs(job)
                job.slots = tuple(sorted(new_slots))
                job.max_gpus = max(job.max_gpus, len(new_slots))
            job.batch = new_batch
            job.segment_start = self.now

    def _close_segment(self, job: _Job) -> None:
        if job.slots and self.now > job.segment_start:
            self.timeline.append(
                (job.spec.job_id, job.segment_start, self.now, len(job.slots), job.batch)
            )

    def _complete(self, job: _Job) -> None:
        job.work = job.total
        job.finish = self.now
        self._close_segment(job)
        self.active.discard(job.spec.job_id)
        self.records.append(
            JobRecord(
                job_id=job.spec.job_id,
                name=job.spec.name,
                application=job.spec.application,
                requested_gpus=job.spec.num_gpus,
                submit=job.spec.submit_time,
                start=job.start if job.start is not None else job.finish,
                finish=job.finish,
                gpu_seconds=job.attained,
                reconfigurations=job.reconfigurations,
                restarts=job.restarts,
                preemptions=job.preemptions,
                queueing=max(job.finish - job.spec.submit_time - job.held, 0.0),
                max_gpus=job.max_gpus,
            )
        )
        self.finished.append(
            FinishedJob(application=job.spec.application, work=job.total, epochs=self._epochs(job))
        )
        job.slots = ()
        job.rate = None
        job.version += 1

    # ------------------------------------------------------------------ main loop
    def run(
        self, seed: int | None = None, extra_config: Mapping[str, Any] | None = None
    ) -> SimResult:
        """Simulates until every job has finished.

        Raises:
            RuntimeError: the policy leaves jobs waiting forever, or ``max_time`` is passed.
        """
        wall = time.perf_counter()
        for job in self.jobs.values():
            self._push(job.spec.submit_time, _ARRIVAL, job.spec.job_id)
        tick = self.config.tick
        first = min(j.spec.submit_time for j in self.jobs.values())
        self._push(math.ceil(first / tick) * tick, _TICK)
        remaining = len(self.jobs)
        arrivals_left = len(self.jobs)
        stalled = 0
        while self._heap and remaining:
            top = self._heap[0]
            if top[1] == _COMPLETION and (
                top[4] != self.jobs[top[3]].version or self.jobs[top[3]].finish is not None
            ):
                heapq.heappop(self._heap)  # stale: the job's rate changed since
                continue
            when = top[0]
            if when > self.config.max_time:
                raise RuntimeError(f"simulation passed max_time {self.config.max_time:g} s")
            self._advance(when)
            trigger = False
            while self._heap and self._heap[0][0] == when:
                _, kind, _, job_id, version = heapq.heappop(self._heap)
                if kind == _COMPLETION:
                    job = self.jobs[job_id]
                    if version != job.version or job.finish is not None:
                        continue
                    self.events += 1
                    self._complete(job)
                    remaining -= 1
                    trigger = trigger or self.config.decide_on_events
                elif kind == _ARRIVAL:
                    self.events += 1
                    self.active.add(job_id)
                    arrivals_left -= 1
                    trigger = trigger or self.config.decide_on_events
                elif kind == _READY:
                    self.events += 1
                elif kind == _TICK:
                    self.events += 1
                    trigger = True
                    if remaining:
                        next_tick = when + tick
                        if not self.active and arrivals_left:  # skip idle ticks
                            upcoming = min(
                                j.spec.submit_time
                                for j in self.jobs.values()
                                if j.start is None
                                and j.spec.job_id not in self.active
                                and j.finish is None
                            )
                            next_tick = max(next_tick, math.ceil(upcoming / tick) * tick)
                        self._push(next_tick, _TICK)
            if not remaining:
                break
            if trigger:
                self._decide()
            running = 0
            for job_id in self.active:
                job = self.jobs[job_id]
                if job.slots:
                    running += 1
                    self._refresh_rate(job)
            if self.active and not running and not arrivals_left:
                stalled += 1
                if stalled > 100:
                    raise RuntimeError(
                        f"policy {self.policy.name} leaves {len(self.active)} jobs waiting on an "
                        f"idle cluster at t={self.now:.0f} s"
                    )
            else:
                stalled = 0
        wall_s = time.perf_counter() - wall
        self.records.sort(key=lambda r: r.job_id)
        summary = summarise(
            self.records,
            num_gpus=self.cluster.num_gpus,
            allocated_gpu_seconds=self.allocated_gpu_seconds,
            effective_gpu_seconds=self.effective_gpu_seconds,
            latencies_ms=self.latencies_ms,
        )
        config = {
            "gpus": self.cluster.num_gpus,
            "gpus_per_node": self.cluster.gpus_per_node,
            "tick": self.config.tick,
            "restart_penalty": self.config.restart_penalty,
            "decide_on_events": self.config.decide_on_events,
            "jobs_submitted": len(self.jobs),
            "seed": seed,
            **(extra_config or {}),
        }
        return SimResult(
            policy=self.policy.name,
            records=self.records,
            summary=summary,
            latencies_ms=self.latencies_ms,
            timeline=sorted(self.timeline, key=lambda t: (t[1], t[0])),
            events=self.events,
            wall_s=wall_s,
            config=config,
        )


def models_for(specs: Sequence[JobSpec], traces: str | None = None) -> dict[str, JobModel]:
    """Job models for a workload: Pollux applications, plus Gavel job types when needed."""
    try:
        models: dict[str, JobModel] = dict(load_applications(traces))
    except InputError:
        if traces is None or not (Path(traces) / "simulation_throughputs.json").exists():
            raise
        models = dict(load_applications())  # a Gavel folder: Pollux tables from the package
    missing = {s.application for s in specs} - set(models)
    if missing:
        from ptrain.sched.apps import load_gavel_throughputs

        table_path = Path(traces) / "simulation_throughputs.json" if traces else None
        if table_path is None or not table_path.exists():
            raise InputError(
                f"no model for application(s) {', '.join(sorted(missing))}: pass --traces DIR "
                "with the Pollux tables or Gavel's simulation_throughputs.json"
            )
        table = load_gavel_throughputs(table_path)
        for spec in specs:
            if spec.application in missing:
                if spec.application not in table:
                    raise InputError(
                        f"{table_path}: no throughput for job type {spec.application!r}"
                    )
                models[spec.application] = GavelJobModel(
                    spec.application, table[spec.application], spec.work or 1.0
                )
    return models


def simulate(
    specs: Sequence[JobSpec],
    policy: Policy,
    cluster: ClusterSpec,
    *,
    models: Mapping[str, JobModel] | None = None,
    config: SimConfig | None = None,
    seed: int | None = None,
    extra_config: Mapping[str, Any] | None = None,
) -> SimResult:
    """Simulates ``specs`` under ``policy`` on ``cluster``; see ``Simulator``."""
    return Simulator(specs, policy, cluster, models, config).run(seed, extra_config)
