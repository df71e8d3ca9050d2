"""Baseline policies: FIFO, SRTF (oracle), Tiresias (2D-LAS), Optimus (greedy marginal gain).

FIFO, SRTF and Tiresias run every job at its requested GPU count and batch size; Optimus picks
GPU counts at the requested batch size (Pollux's "Optimus+Oracle": it reads the true remaining
work and throughput from the job model, or the online table in the live runner).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field, replace

import numpy as np

from ptrain.sched.policies.base import estimated_rates, fixed_batch, place
from ptrain.sched.types import Allocation, JobView, SchedulerState

__all__ = ["FifoPolicy", "OptimusPolicy", "SrtfPolicy", "TiresiasPolicy"]


def _keep_running(state: SchedulerState) -> tuple[dict[int, int], dict[int, int]]:
    counts = {j.job_id: j.num_gpus for j in state.jobs if j.num_gpus > 0}
    batches = {j.job_id: j.batch_size for j in state.jobs if j.num_gpus > 0}
    return counts, batches


def _greedy_in_order(state: SchedulerState, order: list[JobView], *, backfill: bool) -> Allocation:
    """Requested configs in ``order`` while they fit (skip or stop at the first that does not)."""
    free = state.cluster.num_gpus
    counts: dict[int, int] = {}
    batches: dict[int, int] = {}
    for job in order:
        n = job.spec.num_gpus
        if n <= free:
            counts[job.job_id] = n
            batches[job.job_id] = fixed_batch(job)
            free -= n
        elif not backfill:
            break
    return place(counts, batches, state.current, state.cluster)


@dataclass
class FifoPolicy:
    """First come, first served at the requested size; non-preemptive, no backfilling."""

    name: str = "fifo"

    def decide(self, state: SchedulerState) -> Allocation:
        counts, batches = _keep_running(state)
        free = state.cluster.num_gpus - sum(counts.values())
        for job in sorted(state.jobs, key=lambda j: (j.spec.submit_time, j.job_id)):
            if job.job_id in counts:
                continue
            if job.spec.num_gpus > free:
                break  # head-of-line blocking: later jobs wait behind this one
            counts[job.job_id] = job.spec.num_gpus
            batches[job.job_id] = fixed_batch(job)
            free -= job.spec.num_gpus
        return place(counts, batches, state.current, state.cluster)


def _remaining_time(job: JobView, state: SchedulerState) -> float:
    remaining = job.remaining_work
    if remaining is None:  # live runner without a model: fall back to the request
        return float(job.spec.submit_time)
    rate = float(estimated_rates(job, np.array([job.spec.num_gpus]), state.cluster)[0])
    return remaining / rate if rate > 0 else float("inf")


@dataclass
class SrtfPolicy:
    """Shortest remaining time first (oracle remaining work), preemptive, with backfilling."""

    name: str = "srtf"

    def decide(self, state: SchedulerState) -> Allocation:
        order = sorted(state.jobs, key=lambda j: (_remaining_time(j, state), j.job_id))
        return _greedy_in_order(state, order, backfill=True)


@dataclass
class TiresiasPolicy:
    """Discretised 2D-LAS: queues by attained GPU-time, FIFO within a queue, preemptive.

    Attributes:
        thresholds_gpu_hours: queue boundaries (Pollux's reimplementation: one at 16 GPU-h, so
            two queues).
    """

    thresholds_gpu_hours: tuple[float, ...] = (16.0,)
    name: str = "tiresias"

    def queue_of(self, job: JobView) -> int:
        hours = job.attained_service / 3600.0
        return sum(hours >= t for t in self.thresholds_gpu_hours)

    def decide(self, state: SchedulerState) -> Allocation:
        order = sorted(state.jobs, key=lambda j: (self.queue_of(j), j.spec.submit_time, j.job_id))
        return _greedy_in_order(state, order, backfill=True)


@dataclass
class OptimusPolicy:
    """Greedy marginal gain: one GPU to each job (arrival order), then GPUs one at a time to
    the job whose predicted remaining time falls most, at its requested batch size."""

    name: str = "optimus"
    _cache: dict[tuple[int, int, int, int, int], np.ndarray] = field(
        default_factory=dict, repr=False
    )

    def _rates(self, job: JobView, cap: int, state: SchedulerState) -> np.ndarray:
        """Progress/s on 0..cap GPUs at the requested batch, cached per 5% of training."""
        sizes = np.arange(0, cap + 1)
        if job.model is None:
            return estimated_rates(job, sizes, state.cluster)
        bucket = int(20 * min(job.work_done / job.model.total_work, 1.0))
        key = (id(job.model), fixed_batch(job), bucket, cap, state.cluster.gpus_per_node)
        cached = self._cache.get(key)
        if cached is None:
            probe = replace(job, work_done=job.model.total_work * bucket / 20)
            cached = self._cache[key] = estimated_rates(probe, sizes, state.cluster)
        return cached

    def decide(self, state: SchedulerState) -> Allocation:
        cluster = state.cluster
        free = cluster.num_gpus
        jobs = sorted(state.jobs, key=lambda j: (j.spec.submit_time, j.job_id))
        counts: dict[int, int] = {}
        tables: dict[int, np.ndarray] = {}
        for job in jobs:
            if free == 0:
                break
            counts[job.job_id] = 1
            free -= 1
        heap: list[tuple[float, int]] = []
        by_id = {j.job_id: j for j in jobs}
        for job_id in counts:
            job = by_id[job_id]
            cap = min(cluster.num_gpus, max(fixed_batch(job), 1))
            rates = self._rates(job, cap, state)
            remaining = job.remaining_work
            work = 1.0 if remaining is None else remaining
            with np.errstate(divide="ignore"):
                tables[job_id] = np.where(rates > 0, work / np.maximum(rates, 1e-300), np.inf)
            self._push(heap, job_id, 1, tables[job_id])
        while free > 0 and heap:
            gain, job_id = heapq.heappop(heap)
            n = counts[job_id]
            if -gain <= 0:
                break
            counts[job_id] = n + 1
            free -= 1
            self._push(heap, job_id, n + 1, tables[job_id])
        batches = {j: fixed_batch(by_id[j]) for j in counts}
        return place(counts, batches, state.current, cluster)

    @staticmethod
    def _push(heap: list[tuple[float, int]], job_id: int, n: int, times: np.ndarray) -> None:
        if n + 1 < len(times):
            gain = float(times[n] - times[n + 1])
            if gain > 0:
                heapq.heappush(heap, (-gain, job_id))
