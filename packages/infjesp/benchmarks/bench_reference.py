"""Reproduce the solver-independent reference numbers of the shared Dec-POMDP problems.

    python packages/infjesp/benchmarks/bench_reference.py [--json PATH] [--data DIR] [--quick]

Finite horizon, undiscounted (the files' discount 1): brute-force optima (every policy tree of the
agent with fewer trees, an exact best response for the other), set beside the published masplan
values. Infinite horizon at gamma 0.9: the best constant joint action (a lower bound on any joint
FSC) and the QMDP and MDP upper bounds. Each row records its run time. The JSON uses the
"metrics" layout that tools/results_table.py renders into the README.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from infjesp.finite import brute_force_optimum
from infjesp.io import read_dpomdp
from infjesp.model import best_constant_joint_action, mdp_value, qmdp_value

# Published finite-horizon optima (masplan.org "optimal values"; data README, recycling recomputed).
FINITE_HORIZON = [
    ("dectiger", 2, -4.0),
    ("dectiger", 3, 5.190812),
    ("broadcastChannel", 2, 2.0),
    ("broadcastChannel", 3, 2.99),
    ("GridSmall", 2, 0.91),
    ("recycling", 2, 7.0),
    ("recycling", 3, 10.660125),
]
# gamma = 0.9 bounds from the data README (computed there with numpy from the same files).
BOUNDS = {
    "dectiger": (-20.0, 178.0),
    "recycling": (12.95, 33.8479),
    "GridSmall": (3.4052, 8.9049),
    "broadcastChannel": (9.1, 9.7310),
    "Mars": (-2.0, 29.1646),
}


def _default_data() -> Path:
    override = os.environ.get("INFJESP_SHARED_DATA")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[3].parent / "shared" / "data" / "dpomdp"


def _write_json(path: str, obj: Any) -> None:
    text = json.dumps(obj, indent=2) + "\n"
    if path == "-":
        sys.stdout.write(text)
        return
    target = Path(path)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    with os.fdopen(handle, "w") as file:
        file.write(text)
    os.replace(temporary, target)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    parser.add_argument("--data", type=Path, default=_default_data(), help="the .dpomdp folder")
    parser.add_argument("--quick", action="store_true", help="horizon 2 and Dec-Tiger only")
    parser.add_argument("--repeats", type=int, default=1, help="accepted for nox -s bench")
    args = parser.parse_args(argv)
    if not (args.data / "dectiger.dpomdp").is_file():
        print(f"bench_reference: no problem files in {args.data}", file=sys.stderr)
        return 2
    metrics = []
    times: dict[str, float] = {}
    for problem, horizon, published in FINITE_HORIZON:
        if args.quick and (horizon > 2 or problem != "dectiger"):
            continue
        # The published optima are undiscounted; recycling and GridSmall files say 0.9.
        model = read_dpomdp(args.data / f"{problem}.dpomdp").with_discount(1.0)
        start = time.perf_counter()
        value, _ = brute_force_optimum(model, horizon)
        name = f"{problem}_h{horizon}"
        times[name] = time.perf_counter() - start
        metrics.append({"name": name, "values": {"optimum (gamma 1)": round(float(value), 6)}})
        print(f"{name:<22} optimum {value:10.6f}   published {published:10.6f}")
    for problem, (constant, qmdp) in BOUNDS.items():
        if args.quick and problem != "dectiger":
            continue
        model = read_dpomdp(args.data / f"{problem}.dpomdp").with_discount(0.9)
        start = time.perf_counter()
        best, _ = best_constant_joint_action(model)
        values = {
            "best constant (gamma 0.9)": round(float(best), 4),
            "QMDP bound": round(float(qmdp_value(model)), 4),
            "MDP bound": round(float(mdp_value(model)), 4),
        }
        times[f"{problem}_bounds"] = time.perf_counter() - start
        metrics.append({"name": f"{problem}_bounds", "values": values})
        print(
            f"{problem + '_bounds':<22} best constant {best:9.4f} (ref {constant})   "
            f"QMDP {values['QMDP bound']:9.4f} (ref {qmdp})"
        )
    if args.json:
        _write_json(
            args.json,
            {
                "metrics": metrics,
                "meta": {
                    "command": "python packages/infjesp/benchmarks/bench_reference.py"
                    + (" --quick" if args.quick else ""),
                    "time_s": times,
                },
                "environment": {
                    "python": platform.python_version(),
                    "cpu_count": os.cpu_count(),
                    "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
                },
            },
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
