"""The ``Policy`` interface and helpers shared by every policy.

A policy is an object with ``name`` and a pure ``decide(state) -> Allocation``: it reads the
``SchedulerState`` (the same fields in the simulator and in the live runner) and returns, for each
job it wants running, its GPU slots and global batch size. Policies with internal state (ONES's
population) keep it on the object and draw randomness only from their own seeded generator, so a
run is a function of (workload, policy, seed).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Protocol

import numpy as np

from ptrain.sched.types import Allocation, ClusterSpec, JobAssignment, JobView, SchedulerState

__all__ = [
    "ONLINE_TABLE_WINDOW",
    "Policy",
    "estimated_rates",
    "fixed_batch",
    "online_table",
    "packed_nodes",
    "place",
]

ONLINE_TABLE_WINDOW = 5
"""ONES's ``num_monitored_throughputs``: the mean of the last 5 measurements per GPU count."""


class Policy(Protocol):
    """A scheduling policy: ``decide`` maps the cluster state to an allocation."""

    name: str

    def decide(self, state: SchedulerState) -> Allocation:
        """The allocation to apply now (jobs absent get no GPUs)."""
        ...


def packed_nodes(num_gpus: int, cluster: ClusterSpec) -> int:
    """Nodes a consolidated placement of ``num_gpus`` spans."""
    return max(math.ceil(num_gpus / cluster.gpus_per_node), 1) if num_gpus > 0 else 0


def fixed_batch(job: JobView) -> int:
    """The user's requested global batch, clipped to what the job model supports."""
    if job.model is None:
        return job.spec.batch_size
    return job.model.clamp_batch(job.spec.batch_size)


def online_table(history: Mapping[int, tuple[float, ...]], sizes: np.ndarray) -> np.ndarray:
    """ONES's throughput estimate at each GPU count in ``sizes``.

    Per measured GPU count, the mean of the last ``ONLINE_TABLE_WINDOW`` measurements; the point
    (0, 0) is added; between points linear interpolation, beyond the largest linear extrapolation
    from the last two points (``interp1d(fill_value='extrapolate')`` in the artifact), floored at
    1% of the largest measured mean so an estimate never goes to zero or below.

    Args:
        history: GPU count → measured rates, newest last.
        sizes: GPU counts to estimate at.

    Returns:
        Estimated rates, same shape as ``sizes`` (all zeros when nothing was measured).
    """
    measured = sorted(
        (n, sum(v[-ONLINE_TABLE_WINDOW:]) / len(v[-ONLINE_TABLE_WINDOW:]))
        for n, v in history.items()
        if v
    )
    sizes = np.asarray(sizes, dtype=np.float64)
    if not measured:
        return np.zeros_like(sizes)
    xs = np.array([0.0] + [n for n, _ in measured])
    ys = np.array([0.0] + [m for _, m in measured])
    estimate = np.interp(sizes, xs, ys)
    beyond = sizes > xs[-1]
    if beyond.any():
        slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
        estimate[beyond] = ys[-1] + slope * (sizes[beyond] - xs[-1])
    return np.maximum(estimate, 0.01 * ys.max())


def estimated_rates(
    job: JobView, sizes: np.ndarray, cluster: ClusterSpec, batch: Mapping[int, int] | None = None
) -> np.ndarray:
    """Progress/s of ``job`` at each GPU count in ``sizes`` (consolidated placement).

    Uses the job model when the job has one (simulator), otherwise the online table of measured
    rates (live runner). ``batch`` maps a GPU count to the global batch (default: the request).
    """
    if job.model is None:
        return online_table(job.throughput_history, sizes)
    out = np.zeros(len(sizes))
    for i, n in enumerate(np.asarray(sizes).tolist()):
        if n <= 0:
            continue
        b = fixed_batch(job) if batch is None else batch[int(n)]
        out[i] = job.model.rate(
            int(n), packed_nodes(int(n), cluster), b, job.work_done
        ).progress_per_s
    return out


def place(
    targets: Mapping[int, int],
    batches: Mapping[int, int],
    current: Allocation,
    cluster: ClusterSpec,
) -> Allocation:
    """Turns GPU counts into slots, keeping each job's current slots where it can.

    A job keeping its count keeps its slots; a job shrinking keeps the slots on the nodes where it
    has most; a job growing keeps its slots and adds free ones on its own nodes first, then whole
    free nodes, then the fullest node that still fits the rest (best fit), so jobs stay
    consolidated.

    Args:
        targets: job id → GPU count (0 or absent: no GPUs).
        batches: job id → global batch size.
        current: the allocation now.
        cluster: the cluster.

    Raises:
        ValueError: the counts add up to more GPUs than the cluster has.
    """
    gpn = cluster.gpus_per_node
    wanted = {j: n for j, n in targets.items() if n > 0}
    total = sum(wanted.values())
    if total > cluster.num_gpus:
        raise ValueError(f"targets ask for {total} GPUs, the cluster has {cluster.num_gpus}")
    owner = np.full(cluster.num_gpus, -1, dtype=np.int64)
    kept: dict[int, list[int]] = {}
    for job_id, n in wanted.items():
        slots = current.slots(job_id)
        if not slots:
            continue
        if len(slots) > n:
            per_node: dict[int, int] = {}
            for s in slots:
                per_node[s // gpn] = per_node.get(s // gpn, 0) + 1
            slots = tuple(sorted(slots, key=lambda s: (-per_node[s // gpn], s))[:n])
        kept[job_id] = list(slots)
        owner[list(slots)] = job_id
    free_per_node = (owner.reshape(cluster.nodes, gpn) == -1).sum(axis=1)
    growing = sorted(
        ((n - len(kept.get(j, [])), j) for j, n in wanted.items() if n > len(kept.get(j, []))),
        key=lambda t: (-t[0], t[1]),
    )
    for need, job_id in growing:
        chosen = kept.setdefault(job_id, [])
        own_nodes = sorted({s // gpn for s in chosen})
        node_order: list[int] = [node for node in own_nodes if free_per_node[node] > 0]
        remaining = need - sum(min(free_per_node[node], need) for node in node_order)
        if remaining > 0:
            full = [
                int(node)
                for node in np.flatnonzero(free_per_node == gpn)
                if int(node) not in node_order
            ]
            take_full = full[: remaining // gpn]
            node_order += take_full
            remaining -= gpn * len(take_full)
            if remaining > 0:
                others = [
                    int(node)
                    for node in np.flatnonzero(free_per_node > 0)
                    if int(node) not in node_order
                ]
                fits = [node for node in others if free_per_node[node] >= remaining]
                if fits:  # best fit: the node with the fewest free GPUs that still fits
                    node_order.append(min(fits, key=lambda node: (free_per_node[node], node)))
                else:  # spread over the nodes with most free GPUs
                    node_order += sorted(others, key=lambda node: (-free_per_node[node], node))
        left = need
        for node in node_order:
            if left == 0:
                break
            base = node * gpn
            free_slots = np.flatnonzero(owner[base : base + gpn] == -1)[:left] + base
            owner[free_slots] = job_id
            chosen.extend(int(s) for s in free_slots)
            free_per_node[node] -= len(free_slots)
            left -= len(free_slots)
        if left:  # cannot happen: total <= num_gpus
            raise RuntimeError(f"place: could not find {left} free slots for job {job_id}")
    return Allocation(
        {j: JobAssignment(slots=tuple(sorted(kept[j])), batch_size=int(batches[j])) for j in wanted}
    )


def counts_of(state: SchedulerState) -> dict[int, int]:
    """Job id → GPUs held now."""
    return {job.job_id: job.num_gpus for job in state.jobs if job.num_gpus > 0}
