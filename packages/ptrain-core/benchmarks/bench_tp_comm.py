"""Tensor-parallel communication per device (measured = closed form) and MLP wall time.

    python packages/ptrain-core/benchmarks/bench_tp_comm.py [--quick] [--json PATH] [--repeats N]

1. Bytes: one MLP block (Linear 1024→4096, GELU, Linear 4096→1024, no bias; 4096 tokens, fp32)
   forward + backward under 1D@4, 1D@8, 2D@4, 2.5D@8 (q=2, d=2) and 3D@8 on forked gloo ranks,
   counted by ``CommTracker`` (the rows of ``ptrain-core bench comm``), beside the closed form of
   ``ptrain.core.tp.bench`` and the design doc's reference; then the closed form at P=64
   (1D, 2D q=8, 2.5D q=4 d=4, 3D q=4), analytic only.
2. Wall time (report only: gloo on 2 shared cores is not a speed test): the same block, forward
   + backward, slowest rank's median over ``--repeats`` steps at 4 ranks (1D, 2D, 2.5D with d=1;
   3D needs 8) against the serial block on 1 thread, run by rank 0 between the parallel steps
   while the other ranks wait (interleaved, so both see the same machine load).

Writes ``benchmarks/results/bench_comm.json`` by default (``--json`` to choose), in the layout
``tools/results_table.py`` renders (``metrics`` and ``results``).
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path
from typing import Any

from ptrain.core.bench import bench_argument_parser, environment_info
from ptrain.core.cli import write_json
from ptrain.core.tp.bench import (
    BENCH_HIDDEN,
    BENCH_TOKENS,
    COMM_CONFIGS,
    formula_bytes,
    measure_comm,
)

MIB = 2**20
#: the design doc's reference values (MiB per device, §4 of ptrain-core.md)
DESIGN_MIB = {
    ("1d", 4): 48.0,
    ("2d", 4): 84.0,
    ("1d", 8): 56.0,
    ("2.5d", 8): 62.0,
    ("3d", 8): 48.0,
    ("1d", 64): 63.0,
    ("2d", 64): 36.8,
    ("2.5d", 64): 32.2,
    ("3d", 64): 18.0,
}
P64 = (("1d", 64, 1), ("2d", 64, 1), ("2.5d", 64, 4), ("3d", 64, 1))
WALL = (("1d", 4, 1), ("2d", 4, 1), ("2.5d", 4, 1), ("3d", 8, 1))


def _label(mode: str, world_size: int, depth: int) -> str:
    return f"{mode}@{world_size}" + (f" (d={depth})" if mode == "2.5d" else "")


def main(argv: list[str] | None = None) -> int:
    parser = bench_argument_parser(__doc__.splitlines()[0])
    args = parser.parse_args(argv)
    repeats = 2 if args.quick else min(args.repeats, 5)
    tokens = 1024 if args.quick else BENCH_TOKENS
    metrics: list[dict[str, Any]] = []
    rows = []
    for mode, world_size, depth in COMM_CONFIGS:
        result = measure_comm(mode, world_size, depth, tokens=tokens)
        rows.append(
            {key: result[key] for key in ("mode", "world_size")}
            | {
                "measured_bytes": result["measured_bytes"],
                "formula_bytes": result["formula_bytes"],
            }
        )
        values: dict[str, Any] = {
            "measured_MiB": result["measured_bytes"] / MIB,
            "formula_MiB": result["formula_bytes"] / MIB,
            "collective_calls": result["calls"],
        }
        if tokens == BENCH_TOKENS:
            values["design_doc_MiB"] = DESIGN_MIB[(mode, world_size)]
        metrics.append({"name": f"comm {_label(mode, world_size, depth)}", "values": values})
        print(
            f"{_label(mode, world_size, depth):<14} measured {values['measured_MiB']:8.2f} MiB"
            f"  formula {values['formula_MiB']:8.2f} MiB  calls {result['calls']}"
        )
    for mode, world_size, depth in P64:
        mib = formula_bytes(mode, world_size, depth, tokens=tokens) / MIB
        values = {"formula_MiB": mib}
        if tokens == BENCH_TOKENS:
            values["design_doc_MiB"] = DESIGN_MIB[(mode, world_size)]
        metrics.append(
            {"name": f"comm {_label(mode, world_size, depth)} (formula only)", "values": values}
        )
        print(f"{_label(mode, world_size, depth):<14} formula  {mib:8.2f} MiB (P=64, analytic)")

    results = []
    for mode, world_size, depth in WALL:
        result = measure_comm(
            mode, world_size, depth, tokens=tokens, repeats=repeats + 1, serial=True
        )
        candidate = statistics.median(result["seconds"][1:])  # the first step warms up
        baseline = statistics.median(result["serial_seconds"][1:])
        name = f"tp_mlp_{mode}@{world_size}_vs_serial"
        results.append(
            {
                "name": name,
                "candidate_s": candidate,
                "baseline_s": baseline,
                "ratio": candidate / baseline,
                "repeats": repeats,
                "goal": None,
            }
        )
        print(
            f"{name:<28} {candidate:.3f} s vs serial {baseline:.3f} s "
            f"({candidate / baseline:.2f}×, report only)"
        )

    document = {
        "rows": rows,
        "metrics": metrics,
        "results": results,
        "meta": {
            "command": "python packages/ptrain-core/benchmarks/bench_tp_comm.py"
            + (" --quick" if args.quick else ""),
            "tokens": tokens,
            "hidden": BENCH_HIDDEN,
            "dtype": "float32",
            "repeats": repeats,
            "note": "wall times on forked gloo ranks sharing the machine's cores: report only",
        },
        "environment": environment_info(),
    }
    default = Path(__file__).parent / "results" / "bench_comm.json"
    target = args.json if args.json is not None else str(default)
    write_json(target, document)
    return 0 if all(row["measured_bytes"] == row["formula_bytes"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
