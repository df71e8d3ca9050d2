"""Measured pipeline bubble of GPipe, 1F1B and interleaved 1F1B beside Narayanan's formulas.

    python packages/ptrain-core/benchmarks/bench_pipeline.py [--quick] [--json PATH]

Runs ``ptrain.core.pipeline_bench.run_pipeline_bench`` (equal fixed-cost stages on forked gloo
ranks through ``torch.distributed.pipelining``; see its docstring for the exact definition of the
measured bubble) for p ∈ {2, 4} stages and m ∈ {8, 16} micro-batches, and prints each measured
bubble beside ``(p−1)/m`` (``(p−1)/(2m)`` for interleaved with 2 chunks per rank). The stages
sleep to a fixed duration, so this measures the schedule, not the CPU (the machine has fewer
cores than ranks). The excess over the formula is the runtime's per-micro-batch overhead
(p2p, Python), which counts as bubble. ``--quick`` runs p=4, m=8 only. ``--json`` writes
``{"metrics": [{"name", "values"}], "meta", "environment"}`` for ``tools/results_table.py``.
(``--repeats`` is not used: each run times 3 steps after a warm-up step.)
"""

from __future__ import annotations

import time
from typing import Any

from ptrain.core.bench import bench_argument_parser, environment_info
from ptrain.core.cli import write_json
from ptrain.core.pipeline_bench import run_pipeline_bench

FULL = ((4, 8), (4, 16), (2, 8))
QUICK = ((4, 8),)
SCHEDULES = ("gpipe", "1f1b", "interleaved")
FORWARD_S = 0.05


def run_benchmark(configs: tuple[tuple[int, int], ...]) -> dict[str, Any]:
    """Every schedule at every ``(stages, microbatches)``; returns the JSON document."""
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    for stages, microbatches in configs:
        rows += run_pipeline_bench(
            stages, microbatches, schedules=SCHEDULES, forward_s=FORWARD_S, steps=3
        )
    metrics = [
        {
            "name": f"bubble {row['schedule']} p={row['stages']} m={row['microbatches']}",
            "values": {
                "measured_bubble": row["measured_bubble"],
                "formula_bubble": row["formula_bubble"],
            },
        }
        for row in rows
    ]
    meta = {
        "command": "python packages/ptrain-core/benchmarks/bench_pipeline.py --json "
        "packages/ptrain-core/benchmarks/results/bench_pipeline.json",
        "rows": rows,
        "forward_s": FORWARD_S,
        "backward_s": 2 * FORWARD_S,
        "interleaved_chunks": 2,
        "timed_steps": 3,
        "formula": "(p-1)/m gpipe and 1f1b, (p-1)/(v*m) interleaved (Narayanan et al. 2021)",
        "time_s": time.perf_counter() - start,
    }
    return {"metrics": metrics, "meta": meta, "environment": environment_info()}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table, write JSON with ``--json``."""
    parser = bench_argument_parser(__doc__.splitlines()[0])
    args = parser.parse_args(argv)
    document = run_benchmark(QUICK if args.quick else FULL)
    print(f"{'schedule':<12} {'p':>2} {'m':>3} {'measured':>9} {'(p-1)/(v·m)':>12}")
    for row in document["meta"]["rows"]:
        print(
            f"{row['schedule']:<12} {row['stages']:>2} {row['microbatches']:>3} "
            f"{row['measured_bubble']:>9.3f} {row['formula_bubble']:>12.3f}"
        )
    if args.json:
        write_json(args.json, document)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
