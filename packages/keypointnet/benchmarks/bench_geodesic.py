"""GT-row geodesics (+ metrics) vs all-pairs geodesics (+ the same metrics), one model.

    python packages/keypointnet/benchmarks/bench_geodesic.py [--quick] [--json PATH] [--repeats N]

A 2,048-point box-surface cloud (``--quick``: 512), 12 GT keypoints, k = 20. The candidate runs
``dijkstra`` from the 12 GT points only; the baseline computes the upstream all-pairs matrix.
The harness ratio is candidate / baseline; the printed and stored speedup is its inverse, with
the goal speedup >= 20x (ratio <= 0.05). The work lives in ``keypointnet.bench.bench_geodesic``.
"""

from __future__ import annotations

from keypointnet.bench import bench_geodesic
from ptrain.core.bench import bench_argument_parser, write_json

FULL_POINTS = 2048
QUICK_POINTS = 512


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the summary and the speedup, write ``--json`` when asked.

    Args:
        argv: command-line arguments (default: ``sys.argv[1:]``).

    Returns:
        The process exit code (0).
    """
    parser = bench_argument_parser(__doc__.splitlines()[0])
    args = parser.parse_args(argv)
    points = QUICK_POINTS if args.quick else FULL_POINTS
    benchmark = bench_geodesic(num_points=points, num_keypoints=12, repeats=args.repeats)
    print(f"{points} points on a box surface, 12 GT keypoints, k = 20")
    print(benchmark.summary())
    if args.json:
        write_json(args.json, [benchmark.result], meta=benchmark.meta)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
