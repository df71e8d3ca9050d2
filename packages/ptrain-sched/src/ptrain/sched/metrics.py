"""Run metrics: JCT statistics, makespan, queueing, utilisation, reconfigurations, latency."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["JobRecord", "latency_histogram", "summarise"]


@dataclass(frozen=True, kw_only=True, slots=True)
class JobRecord:
    """One finished job (seconds; ``queueing`` = JCT minus time holding GPUs)."""

    job_id: int
    name: str
    application: str
    requested_gpus: int
    submit: float
    start: float
    finish: float
    gpu_seconds: float
    reconfigurations: int
    restarts: int
    preemptions: int
    queueing: float
    max_gpus: int

    @property
    def jct(self) -> float:
        return self.finish - self.submit

    def as_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "name": self.name,
            "application": self.application,
            "requested_gpus": self.requested_gpus,
            "submit": self.submit,
            "start": self.start,
            "finish": self.finish,
            "jct": self.jct,
            "gpu_seconds": self.gpu_seconds,
            "reconfigurations": self.reconfigurations,
            "restarts": self.restarts,
            "preemptions": self.preemptions,
            "queueing": self.queueing,
            "max_gpus": self.max_gpus,
        }


LATENCY_BINS_MS = (0.01, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0)


def latency_histogram(latencies_ms: Sequence[float]) -> dict[str, int]:
    """Counts of ``decide()`` latencies per bin, keyed ``"<=0.1"``, ..., ``">1000"``."""
    values = np.asarray(latencies_ms, dtype=np.float64)
    edges = np.array((0.0, *LATENCY_BINS_MS, np.inf))
    counts, _ = np.histogram(values, bins=edges)
    labels = [f"<={b:g}" for b in LATENCY_BINS_MS] + [f">{LATENCY_BINS_MS[-1]:g}"]
    return dict(zip(labels, (int(c) for c in counts), strict=True))


def summarise(
    records: Sequence[JobRecord],
    *,
    num_gpus: int,
    allocated_gpu_seconds: float,
    effective_gpu_seconds: float,
    latencies_ms: Sequence[float],
) -> dict[str, float]:
    """The headline metrics of one run.

    Utilisation: allocated = Σ GPU-seconds held / (GPUs × makespan); effective = Σ speedup-weighted
    GPU-seconds (a GPU counts as much as its share of the job's speedup over one GPU, restarts
    count 0) / (GPUs × makespan).
    """
    if not records:
        raise ValueError("no finished jobs")
    jct = np.array([r.jct for r in records])
    makespan = max(r.finish for r in records) - min(r.submit for r in records)
    latency = np.asarray(latencies_ms, dtype=np.float64)
    capacity = num_gpus * makespan if makespan > 0 else 1.0
    return {
        "avg_jct": float(jct.mean()),
        "median_jct": float(np.median(jct)),
        "p90_jct": float(np.percentile(jct, 90)),
        "p99_jct": float(np.percentile(jct, 99)),
        "max_jct": float(jct.max()),
        "makespan": float(makespan),
        "avg_queueing_delay": float(np.mean([r.queueing for r in records])),
        "gpu_util_allocated": float(allocated_gpu_seconds / capacity),
        "gpu_util_effective": float(effective_gpu_seconds / capacity),
        "reconfigurations_per_job": float(np.mean([r.reconfigurations for r in records])),
        "restarts_per_job": float(np.mean([r.restarts for r in records])),
        "decide_latency_ms_median": float(np.median(latency)) if len(latency) else 0.0,
        "decide_latency_ms_p99": float(np.percentile(latency, 99)) if len(latency) else 0.0,
    }
