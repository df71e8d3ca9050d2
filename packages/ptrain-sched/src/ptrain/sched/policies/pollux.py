"""A Pollux-style goodput optimiser (greedy, numpy only; not Pollux's NSGA-II).

Each job's speedup on n GPUs is its goodput (progress/s = throughput × statistical efficiency)
at the best batch size for n, divided by its goodput on one GPU. Like Pollux, the allocation
maximises the power mean with p = -1 of the speedups (that is, minimises Σ 1/speedup) so that no
job starves, and the batch size of each job is re-tuned for its GPU count. Instead of NSGA-II
(population 100 × 100 generations per 60 s interval) the search is greedy: one GPU per job in
arrival order, then one GPU at a time to the job with the largest drop of 1/speedup. Restarts are
discouraged as Pollux does: a changed job's speedup is scaled by
``max(age − (restarts + 1)·R, 0) / (age + R)`` (R = the restart penalty) when the new allocation
is compared with the current one extended greedily.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

import numpy as np

from ptrain.sched.policies.base import online_table, packed_nodes, place
from ptrain.sched.types import Allocation, JobView, SchedulerState

__all__ = ["PolluxPolicy"]

_MIN_SPEEDUP = 1e-3


@dataclass
class PolluxPolicy:
    """Greedy goodput optimiser; see the module docstring.

    Attributes:
        restart_penalty: seconds a reallocation costs (the simulator's, 30 s as in Pollux).
        max_gpus_per_job: cap on one job's GPUs (None: the cluster).
    """

    restart_penalty: float = 30.0
    max_gpus_per_job: int | None = None
    name: str = "pollux"
    _cache: dict[tuple[int, int, int, int], tuple[np.ndarray, list[int]]] = field(
        default_factory=dict, repr=False
    )

    def _speedups(
        self, job: JobView, state: SchedulerState, cap: int
    ) -> tuple[np.ndarray, list[int]]:
        cluster = state.cluster
        sizes = np.arange(0, cap + 1)
        if job.model is None:
            rates = online_table(job.throughput_history, sizes)
            batches = [job.spec.batch_size] * (cap + 1)
        else:
            # Speedups depend on the application, GPU count and stage of training only: cache
            # them per 5% of progress (the granularity of the model's best-batch cache).
            bucket = int(20 * min(job.work_done / job.model.total_work, 1.0))
            key = (id(job.model), bucket, cap, cluster.gpus_per_node)
            cached = self._cache.get(key)
            if cached is not None:
                return cached
            work = job.model.total_work * bucket / 20
            rates = np.zeros(cap + 1)
            batches = [job.spec.batch_size]
            for n in range(1, cap + 1):
                nodes = packed_nodes(n, cluster)
                b = job.model.best_batch(n, nodes, work)
                batches.append(b)
                rates[n] = job.model.rate(n, nodes, b, work).progress_per_s
            base = rates[1] if rates[1] > 0 else 1.0
            self._cache[key] = (rates / base, batches)
            return self._cache[key]
        base = rates[1] if cap >= 1 and rates[1] > 0 else 1.0
        return rates / base, batches

    @staticmethod
    def _greedy(
        start: dict[int, int], speedups: dict[int, np.ndarray], order: list[int], free: int
    ) -> dict[int, int]:
        counts = dict(start)
        for job_id in order:
            if free == 0:
                break
            if counts.get(job_id, 0) == 0:
                counts[job_id] = 1
                free -= 1
        heap: list[tuple[float, int]] = []

        def push(job_id: int) -> None:
            n = counts[job_id]
            s = speedups[job_id]
            if n + 1 < len(s):
                gain = 1.0 / max(s[n], _MIN_SPEEDUP) - 1.0 / max(s[n + 1], _MIN_SPEEDUP)
                if gain > 1e-12:
                    heapq.heappush(heap, (-gain, job_id))

        for job_id in counts:
            push(job_id)
        while free > 0 and heap:
            _, job_id = heapq.heappop(heap)
            counts[job_id] += 1
            free -= 1
            push(job_id)
        return counts

    def decide(self, state: SchedulerState) -> Allocation:
        cluster = state.cluster
        cap_all = cluster.num_gpus if self.max_gpus_per_job is None else self.max_gpus_per_job
        jobs = sorted(state.jobs, key=lambda j: (j.spec.submit_time, j.job_id))
        order = [j.job_id for j in jobs]
        by_id = {j.job_id: j for j in jobs}
        speedups: dict[int, np.ndarray] = {}
        batch_tables: dict[int, list[int]] = {}
        for job in jobs:
            speedups[job.job_id], batch_tables[job.job_id] = self._speedups(
                job, state, min(cap_all, cluster.num_gpus)
            )
        fresh = self._greedy({}, speedups, order, cluster.num_gpus)
        current = {j.job_id: j.num_gpus for j in jobs if j.num_gpus > 0}
        extended = self._greedy(current, speedups, order, cluster.num_gpus - sum(current.values()))

        def score(counts: dict[int, int], penalise: bool) -> float:
            total = 0.0
            for job_id in order:
                n = counts.get(job_id, 0)
                s = float(speedups[job_id][n]) if n else 0.0
                job = by_id[job_id]
                if penalise and job.num_gpus > 0 and n != job.num_gpus:
                    age = state.now - job.spec.submit_time
                    r = self.restart_penalty
                    s *= max(age - (job.restarts + 1) * r, 0.0) / (age + r)
                total += 1.0 / max(s, _MIN_SPEEDUP)
            return total

        counts = fresh if score(fresh, True) < score(extended, False) else extended
        batches = {j: int(batch_tables[j][n]) for j, n in counts.items() if n > 0}
        targets = {j: n for j, n in counts.items() if n > 0}
        allocation = place(targets, batches, state.current, cluster)
        # Re-tune the batch for the actual placement (nodes spanned may differ from packed).
        jobs_out = {}
        for job_id, assignment in allocation.jobs.items():
            job = by_id[job_id]
            batch = assignment.batch_size
            if job.model is not None:
                nodes = cluster.nodes_spanned(assignment.slots)
                batch = job.model.best_batch(assignment.num_gpus, nodes, job.work_done)
            jobs_out[job_id] = type(assignment)(slots=assignment.slots, batch_size=batch)
        return Allocation(jobs_out)
