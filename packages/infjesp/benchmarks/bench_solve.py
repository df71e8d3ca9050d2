"""Inf-JESP on the shared benchmark problems at gamma 0.9, beside the best-known values.

    python packages/infjesp/benchmarks/bench_solve.py [--time-limit S] [--workers N] [--json PATH]

Each problem is solved by `infjesp.solve` with its default portfolio (restarts 0-4 from the
periodic, resync, reactive, ma and trajectory inits, the others from random FSCs) within the
time budget;
the value is the exact V(b0) of the returned joint FSC. The JSON uses the "metrics" layout that
tools/results_table.py renders into the README.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from infjesp.io import read_dpomdp
from infjesp.jesp import solve

# Best-known gamma = 0.9 values as tabulated by FB-HSVI / PBVI-BB (design doc §4.4: recalled, not
# verified) — the goals are within 1 % of these.
PROBLEMS = [
    ("dectiger", 13.448, 4),
    ("recycling", 31.929, 4),
    ("broadcastChannel", 9.271, 4),
]
# --large: the 10-minute problems. No verified best-known value at gamma 0.9 is in the
# design doc for GridSmall; Mars's ≈ 26.9 is recalled, not verified.
# Mars: 2 restarts (periodic, resync), so that with 2 workers each run keeps the whole 600 s
# (with 4, the first two runs get half of it each); JESP from the resync init converges to
# 26.9288 within seconds, the periodic run's best responses take minutes.
LARGE_PROBLEMS = [
    ("Mars", 26.9, 2),
    ("GridSmall", None, 4),
]


def _default_data() -> Path:
    override = os.environ.get("INFJESP_SHARED_DATA")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[3].parent / "shared" / "data" / "dpomdp"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    parser.add_argument("--data", type=Path, default=_default_data())
    # the goals are <= 60 s and <= 10 min per problem; solve() may add TIME_LIMIT_SLACK_S (2 s)
    parser.add_argument("--time-limit", type=float, default=55.0, help="seconds per problem (55)")
    parser.add_argument("--workers", type=int, default=2, help="processes (2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="10 s per problem")
    parser.add_argument("--repeats", type=int, default=1, help="accepted for nox -s bench")
    parser.add_argument(
        "--large",
        action="store_true",
        help="solve GridSmall and Mars instead, with --large-time-limit each",
    )
    parser.add_argument("--large-time-limit", type=float, default=590.0, help="seconds (590)")
    args = parser.parse_args(argv)
    limit = 10.0 if args.quick else args.time_limit
    problems = PROBLEMS
    if args.large:
        problems, limit = LARGE_PROBLEMS, args.large_time_limit
    metrics: list[dict[str, Any]] = []
    for problem, best_known, restarts in problems:
        model = read_dpomdp(args.data / f"{problem}.dpomdp").with_discount(0.9)
        result = solve(
            model,
            restarts=restarts,
            seed=args.seed,
            time_limit=limit,
            workers=args.workers,
        )
        values: dict[str, Any] = {"value (gamma 0.9)": round(result.value, 4)}
        shown = ""
        if best_known is not None:
            ratio = result.value / best_known
            values["fraction of best known"] = round(ratio, 4)
            shown = f"  best known {best_known:8.3f} ({100 * ratio:5.1f} %)"
        values.update(
            {
                "upper bound (QMDP)": round(result.upper_bound, 4),
                "FSC sizes": "+".join(map(str, result.fsc_sizes)),
                "best responses": result.iterations,
                "found by": next(
                    (r["init"] for r in result.runs if f"restart {r['restart']}" == result.source),
                    result.source,
                ),
                "time_s": round(result.time_s, 1),
            }
        )
        metrics.append({"name": problem, "values": values})
        print(
            f"{problem:<18} value {result.value:9.4f}{shown}  FSC {result.fsc_sizes}  "
            f"BRs {result.iterations}  {result.time_s:5.1f} s"
        )
    if args.json:
        text = json.dumps(
            {
                "metrics": metrics,
                "meta": {
                    "command": "python packages/infjesp/benchmarks/bench_solve.py"
                    + (f" --large --large-time-limit {limit:g}" if args.large else "")
                    + (" --quick" if args.quick and not args.large else "")
                    + (f" --time-limit {limit:g}" if not (args.quick or args.large) else "")
                    + f" --workers {args.workers}",
                    "restarts": {name: restarts for name, _, restarts in problems},
                },
                "environment": {
                    "python": platform.python_version(),
                    "cpu_count": os.cpu_count(),
                    "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
                },
            },
            indent=2,
        )
        if args.json == "-":
            sys.stdout.write(text + "\n")
        else:
            target = Path(args.json)
            handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
            with os.fdopen(handle, "w") as file:
                file.write(text + "\n")
            os.replace(temporary, target)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
