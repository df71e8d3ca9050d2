"""ONES decide() latency per generation at 64 GPUs / 256 jobs and 1024 GPUs / 1024 jobs.

    python packages/ptrain-sched/benchmarks/bench_decide.py [--calls 100] [--json PATH]

Builds a cluster state with J active jobs (all executed: each has a measured throughput and a
progress prediction, so every operator and the fitness do full work), warms the population up,
then times ``OnesPolicy.decide`` (K = 16, one generation per call) with ``time.perf_counter``.
Goals from the issue: ≤ 20 ms per generation at C = 64, J = 256; ≤ 1 s at C = 1024, J = 1024.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from ptrain.sched.apps import load_applications
from ptrain.sched.policies import OnesPolicy
from ptrain.sched.types import (
    Allocation,
    ClusterSpec,
    FinishedJob,
    JobSpec,
    JobView,
    SchedulerState,
)

RESULTS = Path(__file__).parent / "results" / "bench_decide.json"


def make_state(gpus: int, jobs: int, seed: int = 0) -> SchedulerState:
    """J executed jobs with random progress and measured throughputs on a C-GPU cluster."""
    rng = np.random.default_rng(seed)
    apps = load_applications()
    names = sorted(apps)
    views = []
    for i in range(jobs):
        app = apps[names[i % len(names)]]
        work = float(rng.uniform(0.05, 0.9) * app.total_work)
        views.append(
            JobView(
                spec=JobSpec(
                    job_id=i,
                    name=f"j{i}",
                    submit_time=float(i),
                    application=app.name,
                    num_gpus=int(rng.choice([1, 2, 4])),
                    batch_size=app.min_batch * 4,
                ),
                work_done=work,
                samples_done=work * app.min_batch,
                epochs_done=5.0,
                attained_service=3600.0,
                num_gpus=0,
                batch_size=app.min_batch,
                throughput_history={
                    1: (float(rng.uniform(1, 10)),),
                    2: (float(rng.uniform(2, 18)),),
                },
                epochs_at_last_change=0.0,
                ever_ran=True,
                restarts=0,
                model=app,
            )
        )
    finished = tuple(
        FinishedJob(application=n, work=apps[n].total_work, epochs=10.0) for n in names
    )
    return SchedulerState(
        now=10_000.0,
        cluster=ClusterSpec.from_gpus(gpus, 4),
        jobs=tuple(views),
        current=Allocation({}),
        finished=finished,
    )


def _samples(
    state: SchedulerState, generations: int, calls: int, variant: str = "jct"
) -> list[float]:
    policy = OnesPolicy.from_variant(variant, seed=0, generations_per_decision=generations)
    for _ in range(3):  # warm-up: the population exists, caches are hot
        policy.decide(state)
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        policy.decide(state)
        samples.append((time.perf_counter() - start) * 1e3)
    return samples


def time_decide(gpus: int, jobs: int, calls: int, variant: str = "jct") -> dict[str, float]:
    """decide() with one generation (median, p99) and the marginal cost of one generation."""
    state = make_state(gpus, jobs)
    one = _samples(state, 1, calls, variant)
    eleven = _samples(state, 11, max(calls // 5, 5), variant)
    return {
        "median_ms": statistics.median(one),
        "p99_ms": float(np.percentile(one, 99)),
        "marginal_ms_per_generation": (statistics.median(eleven) - statistics.median(one)) / 10,
        "calls": calls,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args()
    metrics = []
    cases = [
        (variant, gpus, jobs, goal_ms)
        for variant in ("jct", "artifact")
        for gpus, jobs, goal_ms in ((64, 256, 20.0), (1024, 1024, 1000.0))
    ]
    for variant, gpus, jobs, goal_ms in cases:
        calls = args.calls if gpus <= 256 else max(args.calls // 5, 10)
        timing = time_decide(gpus, jobs, calls, variant)
        prefix = "ones" if variant == "jct" else "ones variant=artifact"
        name = f"{prefix} decide_{gpus}gpus_{jobs}jobs"
        verdict = "met" if timing["median_ms"] <= goal_ms else "NOT met"
        print(
            f"{name}: decide() with 1 generation: median {timing['median_ms']:.2f} ms, "
            f"p99 {timing['p99_ms']:.2f} ms; one more generation costs "
            f"{timing['marginal_ms_per_generation']:.2f} ms (goal <= {goal_ms:g} ms per "
            f"generation, judged on the whole decide(): {verdict})"
        )
        metrics.append(
            {
                "name": name,
                "values": {
                    "decide_1gen_median_ms": timing["median_ms"],
                    "decide_1gen_p99_ms": timing["p99_ms"],
                    "marginal_ms_per_generation": timing["marginal_ms_per_generation"],
                    "goal_met": verdict,
                },
            }
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "metrics": metrics,
                "meta": {
                    "command": "python packages/ptrain-sched/benchmarks/bench_decide.py",
                    "population_size": 16,
                    "generations_per_call": 1,
                    "machine": f"{platform.machine()} {platform.python_version()}",
                },
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
