"""All policies on the Pollux 1.0x workloads 1–7 at 64 GPUs (16 nodes × 4), JSON for the README.

    python packages/ptrain-sched/benchmarks/bench_workloads.py [--workloads 1 2 ...]
        [--ones-seeds 3] [--policies tiresias,ones] [--ones-options '{"variant": "artifact"}']
        [--rows ones] [--processes 2] [--json PATH]

Every policy sees the same arrival trace. FIFO, SRTF, Tiresias, Optimus and the Pollux-style
policy are deterministic (one run per workload); ONES is stochastic and runs ``--ones-seeds``
seeds per workload (mean reported; ``ones`` is the default jct variant, ``--ones-options`` picks
another), with per-workload ratios to Tiresias. Also records the simulator's events/s. ``--rows``
limits the summary rows written (the detail file keeps every run). Results go to
``benchmarks/results/bench_workloads.json`` (per-workload detail in ``bench_workloads_detail``).
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from ptrain.sched.policies import POLICIES, make_policy
from ptrain.sched.sim import simulate
from ptrain.sched.types import ClusterSpec
from ptrain.sched.workload import load_pollux_csv

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[2] / ".." / "shared" / "data" / "traces" / "pollux_adaptdl" / "workloads"
RESULTS = HERE / "results"
# Pollux artifact (design doc §4): Tiresias / Optimus+Oracle average JCT on workload-6, seconds.
ARTIFACT_W6 = {"tiresias": 3470.0, "optimus": 5302.0, "pollux": 2446.0}
ARTIFACT_MEAN = {"tiresias": 4038.0, "optimus": 5682.0, "pollux": 2751.0}


def _run(task: tuple[int, str, int, str]) -> dict[str, float]:
    """One (workload, policy, seed) simulation; its summary row."""
    w, name, seed, options = task
    specs = load_pollux_csv(SHARED / f"workload-{w}.csv")
    policy = make_policy(name, seed=seed, **json.loads(options))
    result = simulate(specs, policy, ClusterSpec.from_gpus(64, 4), seed=seed)
    assert len(result.records) == len(specs)
    row = {
        "seed": seed,
        **result.summary,
        "events_per_s": result.events / result.wall_s,
        "wall_s": result.wall_s,
    }
    print(
        f"workload-{w} {name:8s} seed {seed}: avg JCT {row['avg_jct']:7.0f} s, "
        f"p99 {row['p99_jct']:7.0f} s, makespan {row['makespan']:7.0f} s, "
        f"{row['events_per_s']:.0f} events/s, {row['wall_s']:.1f} s",
        flush=True,
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", type=int, nargs="+", default=list(range(1, 8)))
    parser.add_argument("--ones-seeds", type=int, default=3)
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument(
        "--ones-options",
        default="{}",
        help='extra OnesPolicy fields as JSON, e.g. {"variant": "artifact"}',
    )
    parser.add_argument("--json", type=Path, default=RESULTS / "bench_workloads.json")
    parser.add_argument(
        "--rows", default=None, help="policies whose summary rows are written (default: all)"
    )
    parser.add_argument("--processes", type=int, default=1, help="simulations run in parallel (1)")
    args = parser.parse_args()
    if not SHARED.is_dir():
        raise SystemExit(f"shared workloads not found at {SHARED}")
    policies = args.policies.split(",")
    detail: dict[str, dict[str, list[dict[str, float]]]] = {p: {} for p in policies}
    tasks = [
        (w, name, seed, args.ones_options if name == "ones" else "{}")
        for w in args.workloads
        for name in policies
        for seed in (range(args.ones_seeds) if name == "ones" else range(1))
    ]
    with ProcessPoolExecutor(max_workers=args.processes) as pool:
        rows = list(pool.map(_run, tasks))
    for (w, name, _, _), row in zip(tasks, rows, strict=True):
        detail[name].setdefault(f"workload-{w}", []).append(row)

    def mean_over(name: str, key: str) -> float:
        # mean over workloads of the per-workload mean over seeds
        return float(np.mean([np.mean([r[key] for r in runs]) for runs in detail[name].values()]))

    metrics = []
    tiresias_jct = mean_over("tiresias", "avg_jct") if "tiresias" in detail else None
    for name in policies:
        values: dict[str, float | str] = {
            key: mean_over(name, key)
            for key in (
                "avg_jct",
                "p99_jct",
                "makespan",
                "gpu_util_allocated",
                "reconfigurations_per_job",
                "decide_latency_ms_median",
                "events_per_s",
            )
        }
        if name == "ones":
            seed_std = [np.std([r["avg_jct"] for r in runs]) for runs in detail[name].values()]
            values["avg_jct_std_over_seeds"] = float(np.mean(seed_std))
        if tiresias_jct:
            values["avg_jct_vs_tiresias"] = float(values["avg_jct"]) / tiresias_jct
            if name == "ones":
                for key, runs in detail[name].items():
                    own = float(np.mean([r["avg_jct"] for r in runs]))
                    base = float(np.mean([r["avg_jct"] for r in detail["tiresias"][key]]))
                    values[f"{key.replace('-', '')}_vs_tiresias"] = own / base
        if name in ARTIFACT_MEAN and "workload-6" in detail[name]:
            w6 = float(np.mean([r["avg_jct"] for r in detail[name]["workload-6"]]))
            values["workload6_avg_jct"] = w6
            values["workload6_vs_artifact"] = w6 / ARTIFACT_W6[name]
            values["mean_vs_artifact_mean"] = float(values["avg_jct"]) / ARTIFACT_MEAN[name]
        label = name
        if name == "ones" and json.loads(args.ones_options):
            label = "ones " + ",".join(f"{k}={v}" for k, v in json.loads(args.ones_options).items())
        if args.rows is None or name in args.rows.split(","):
            metrics.append({"name": label, "values": values})
    workloads = " ".join(str(w) for w in args.workloads)
    command = (
        "python packages/ptrain-sched/benchmarks/bench_workloads.py "
        f"--workloads {workloads} --ones-seeds {args.ones_seeds}"
    )
    if args.policies != ",".join(POLICIES):
        command += f" --policies {args.policies}"
    if json.loads(args.ones_options):
        command += f" --ones-options '{args.ones_options}'"
    if args.rows is not None:
        command += f" --rows {args.rows}"
    meta = {
        "command": command,
        "cluster": "16 nodes x 4 GPUs",
        "workloads": [f"workload-{w}" for w in args.workloads],
        "ones_seeds": args.ones_seeds,
        "other_policies_seeds": 1,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"metrics": metrics, "meta": meta}, indent=2) + "\n")
    (args.json.parent / f"{args.json.stem}_detail.json").write_text(
        json.dumps({"detail": detail, "meta": meta}, indent=1) + "\n"
    )
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
