"""Overhead of ptrain.core.comm's differentiable wrappers vs the raw torch.distributed call.

    python benchmarks/bench_collectives.py [--quick] [--json PATH] [--repeats N]

Two gloo ranks (the fork harness), both running the same interleaved schedule: each ``compare``
times our wrapper (autograd Function + group resolution + byte accounting hook) against the
equivalent raw call doing the same work (ours is out of place, so the raw call allocates its
output too). A barrier (untimed) starts every timed block on both ranks together. The ratio is
rank 0's; goal ≤ 1.05×.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from ptrain.core import comm
from ptrain.core.bench import BenchResult, bench_argument_parser, compare, write_json
from ptrain.core.testing import run_distributed

GOAL = 1.05
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter_single = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


def _cases(numel: int, world_size: int) -> dict[str, tuple[Any, Any]]:
    x = torch.randn(numel)

    def raw_all_reduce() -> torch.Tensor:
        out = x.clone()
        dist.all_reduce(out)
        return out

    def raw_all_gather() -> torch.Tensor:
        gathered = x.new_empty(numel * world_size)
        _all_gather_single(gathered, x)
        return gathered

    def raw_reduce_scatter() -> torch.Tensor:
        scattered = x.new_empty(numel // world_size)
        _reduce_scatter_single(scattered, x)
        return scattered

    def raw_all_to_all() -> torch.Tensor:
        exchanged = torch.empty_like(x)
        dist.all_to_all_single(exchanged, x)
        return exchanged

    return {
        "all_reduce": (lambda: comm.all_reduce(x), raw_all_reduce),
        "all_gather": (lambda: comm.all_gather(x), raw_all_gather),
        "reduce_scatter": (lambda: comm.reduce_scatter(x), raw_reduce_scatter),
        "all_to_all": (lambda: comm.all_to_all(x), raw_all_to_all),
    }


def _rank(
    rank: int, world_size: int, sizes: list[int], repeats: int, number: int
) -> list[BenchResult]:
    results = []
    for numel in sizes:
        for op, (ours, raw) in _cases(numel, world_size).items():
            result = compare(
                ours,
                raw,
                name=f"{op}_{numel * 4 // 1024}KiB_vs_raw",
                repeats=repeats,
                warmup=3,
                number=number,
                threads=1,
                goal=GOAL,
                setup=dist.barrier,  # both ranks start every timed block together
            )
            results.append(result)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = bench_argument_parser(__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=2, help="gloo ranks (default: 2)")
    args = parser.parse_args(argv)
    sizes = [16 * 1024] if args.quick else [16 * 1024, 256 * 1024]  # fp32: 64 KiB, 1 MiB
    number = 5 if args.quick else 20
    per_rank = run_distributed(_rank, args.ranks, sizes, args.repeats, number, timeout=600)
    results: list[BenchResult] = per_rank[0]
    for result in results:
        print(result.summary())
    if args.json:
        write_json(
            args.json,
            results,
            meta={
                "benchmark": "bench_collectives",
                "ranks": args.ranks,
                "backend": "gloo",
                "sizes_fp32_elements": sizes,
                "calls_per_block": number,
                "quick": args.quick,
                "command": "python packages/ptrain-core/benchmarks/bench_collectives.py"
                + (" --quick" if args.quick else ""),
            },
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
