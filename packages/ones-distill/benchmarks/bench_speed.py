"""Teacher (MoE-Mixer) vs gathered dense student inference on CPU, batch 1 and 64, 1 thread.

The same measurement as ``ones-distill bench speed`` (the contract), written in the
``ptrain.core.bench`` layout for the README table. Goal: teacher/student >= 1.5x at batch 64,
i.e. student/teacher (the table's ratio) <= 0.667.

    flock /tmp/ptrain-heavy.lock python benchmarks/bench_speed.py \
        --json benchmarks/results/bench_speed.json
"""

from __future__ import annotations

import dataclasses
import sys

from ones_distill.bench import speed_benchmark
from ptrain.core.bench import bench_argument_parser, write_json


def main() -> int:
    parser = bench_argument_parser(__doc__.splitlines()[0])
    args = parser.parse_args()
    times, results, meta = speed_benchmark(repeats=3 if args.quick else args.repeats)
    results = [dataclasses.replace(r, goal=1 / 1.5) if r.name.endswith("b64") else r
               for r in results]  # fmt: skip
    for result in results:
        print(result.summary())
    meta.update(times)
    meta["command"] = "python benchmarks/bench_speed.py " + " ".join(sys.argv[1:])
    if args.json:
        write_json(args.json, results, meta)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
