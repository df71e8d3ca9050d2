"""Value objects shared by the simulator, the policies and the live runner.

A policy sees a ``SchedulerState`` (the cluster, the active jobs as ``JobView`` snapshots and the
current ``Allocation``) and returns a new ``Allocation``: for each job the GPU slots it holds and
its global batch size. Slot ``i`` is GPU ``i % gpus_per_node`` of node ``i // gpus_per_node``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ptrain.sched.apps import JobModel

__all__ = [
    "Allocation",
    "ClusterSpec",
    "FinishedJob",
    "JobAssignment",
    "JobSpec",
    "JobView",
    "SchedulerState",
]


@dataclass(frozen=True, kw_only=True, slots=True)
class ClusterSpec:
    """``nodes`` × ``gpus_per_node`` identical GPU slots."""

    nodes: int
    gpus_per_node: int

    def __post_init__(self) -> None:
        if self.nodes < 1:
            raise ValueError(f"ClusterSpec.nodes must be >= 1, got {self.nodes}")
        if self.gpus_per_node < 1:
            raise ValueError(f"ClusterSpec.gpus_per_node must be >= 1, got {self.gpus_per_node}")

    @classmethod
    def from_gpus(cls, gpus: int, gpus_per_node: int) -> ClusterSpec:
        """A cluster of ``gpus`` GPUs in nodes of ``gpus_per_node`` (``gpus`` must divide)."""
        if gpus < 1 or gpus_per_node < 1 or gpus % gpus_per_node:
            raise ValueError(
                f"--gpus {gpus} must be a positive multiple of --gpus-per-node {gpus_per_node}"
            )
        return cls(nodes=gpus // gpus_per_node, gpus_per_node=gpus_per_node)

    @property
    def num_gpus(self) -> int:
        return self.nodes * self.gpus_per_node

    def node_of(self, slot: int) -> int:
        return slot // self.gpus_per_node

    def nodes_spanned(self, slots: tuple[int, ...]) -> int:
        """How many distinct nodes the slots touch (0 for no slots)."""
        return len({slot // self.gpus_per_node for slot in slots})


@dataclass(frozen=True, kw_only=True, slots=True)
class JobSpec:
    """A submitted job as a workload file describes it.

    Attributes:
        job_id: dense integer id (row order in the workload).
        name: the workload's name (``cifar10-0``).
        submit_time: seconds from the start of the trace.
        application: key of the job model (``cifar10``, or a Gavel job type).
        num_gpus: the user's requested GPU count (fixed config for FIFO/SRTF/Tiresias).
        batch_size: the user's requested global batch size.
        work: total work in progress units, or None to take the application's.
    """

    job_id: int
    name: str
    submit_time: float
    application: str
    num_gpus: int
    batch_size: int
    work: float | None = None

    def __post_init__(self) -> None:
        if self.submit_time < 0:
            raise ValueError(f"job {self.name}: submit time must be >= 0, got {self.submit_time}")
        if self.num_gpus < 1:
            raise ValueError(f"job {self.name}: num_gpus must be >= 1, got {self.num_gpus}")
        if self.batch_size < 1:
            raise ValueError(f"job {self.name}: batch_size must be >= 1, got {self.batch_size}")


@dataclass(frozen=True, kw_only=True, slots=True)
class JobAssignment:
    """What one job gets: its slots (sorted) and its global batch size."""

    slots: tuple[int, ...]
    batch_size: int

    @property
    def num_gpus(self) -> int:
        return len(self.slots)


@dataclass(frozen=True, slots=True)
class Allocation:
    """Job id → ``JobAssignment``; jobs absent hold no GPUs."""

    jobs: Mapping[int, JobAssignment] = field(default_factory=dict)

    def gpus(self, job_id: int) -> int:
        assignment = self.jobs.get(job_id)
        return 0 if assignment is None else assignment.num_gpus

    def slots(self, job_id: int) -> tuple[int, ...]:
        assignment = self.jobs.get(job_id)
        return () if assignment is None else assignment.slots

    def used_slots(self) -> int:
        return sum(a.num_gpus for a in self.jobs.values())

    def validate(self, cluster: ClusterSpec, active: set[int] | None = None) -> None:
        """Raises ValueError if a slot is out of range or used twice, or a job is not active."""
        seen: set[int] = set()
        for job_id, assignment in self.jobs.items():
            if active is not None and job_id not in active:
                raise ValueError(f"allocation names job {job_id}, which is not active")
            if assignment.batch_size < 1 and assignment.slots:
                raise ValueError(f"job {job_id}: batch size {assignment.batch_size} < 1")
            for slot in assignment.slots:
                if not 0 <= slot < cluster.num_gpus:
                    raise ValueError(f"job {job_id}: slot {slot} outside 0..{cluster.num_gpus - 1}")
                if slot in seen:
                    raise ValueError(f"slot {slot} allocated twice (job {job_id})")
                seen.add(slot)


@dataclass(frozen=True, kw_only=True, slots=True)
class JobView:
    """A policy's read-only snapshot of one active (submitted, unfinished) job.

    Attributes:
        spec: the submission.
        work_done: progress so far, in the job model's units (initial-batch iterations).
        samples_done: training samples processed so far.
        epochs_done: ``samples_done`` / dataset size.
        attained_service: GPU-seconds held so far (Tiresias' 2D attained service).
        num_gpus: GPUs held now.
        batch_size: global batch size now (the request when not running).
        throughput_history: GPU count → last measured progress rates (units/s), newest last.
        epochs_at_last_change: ``epochs_done`` when its allocation last changed (None: never ran).
        ever_ran: whether it has held GPUs before.
        restarts: reconfigurations so far.
        model: the ground-truth job model (simulator) or None (live runner); "oracle" policies
            (SRTF, Optimus+Oracle, Pollux) read it, ONES only reads it through its predictor.
    """

    spec: JobSpec
    work_done: float
    samples_done: float
    epochs_done: float
    attained_service: float
    num_gpus: int
    batch_size: int
    throughput_history: Mapping[int, tuple[float, ...]]
    epochs_at_last_change: float | None
    ever_ran: bool
    restarts: int
    model: JobModel | None = None

    @property
    def job_id(self) -> int:
        return self.spec.job_id

    @property
    def total_work(self) -> float | None:
        """The true total work when known (simulator), else None."""
        if self.spec.work is not None:
            return self.spec.work
        return None if self.model is None else self.model.total_work

    @property
    def remaining_work(self) -> float | None:
        total = self.total_work
        return None if total is None else max(total - self.work_done, 0.0)


@dataclass(frozen=True, kw_only=True, slots=True)
class FinishedJob:
    """A completed job as a predictor may learn from it (ONES refits on every completion)."""

    application: str
    work: float
    epochs: float


@dataclass(frozen=True, kw_only=True, slots=True)
class SchedulerState:
    """Everything ``Policy.decide`` may look at."""

    now: float
    cluster: ClusterSpec
    jobs: tuple[JobView, ...]
    current: Allocation
    finished: tuple[FinishedJob, ...] = ()

    def job(self, job_id: int) -> JobView:
        for view in self.jobs:
            if view.job_id == job_id:
                return view
        raise KeyError(job_id)
