"""Overhead of ptrain.core.comm's collective wrappers vs the raw torch.distributed call.

    python benchmarks/bench_collectives.py [--quick] [--json PATH] [--repeats N]

Two gloo ranks (the fork harness) run the same schedule. Each ``compare`` times our wrapper
against the equivalent raw call doing the same work (ours is out of place, so the raw call
allocates its output too); for an input that requires grad, ours (an autograd Function) is timed
against torch's own differentiable ``torch.distributed.nn.functional`` op. Blocks of 5 calls are
interleaved (ours, raw, raw, ours, ...) with an untimed barrier before each, so both ranks start
every timed block together and drift hits both sides alike; the ratio is of the medians over
``--repeats`` blocks, on rank 0. Goal ≤ 1.05×.

On two shared CPU cores a single gloo call of 64 KiB varies from 0.5 to 6 ms with scheduling, so
small messages measure the OS, not the wrapper; the wrapper's own cost is a fixed ~15-30 µs of
Python per call (measured on a 1-rank group), which is why the sizes start at 256 KiB.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as distributed_nn

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

    # The differentiable path (input requires grad) against torch's own differentiable
    # collectives in torch.distributed.nn.functional, which do the same autograd bookkeeping.
    xg = x.clone().requires_grad_()

    def torch_nn_all_reduce() -> torch.Tensor:
        return distributed_nn.all_reduce(xg)

    def torch_nn_all_gather() -> torch.Tensor:
        return torch.cat(distributed_nn.all_gather(xg))

    def torch_nn_all_to_all() -> torch.Tensor:
        with warnings.catch_warnings():  # deprecated in 2.13, still torch's differentiable op
            warnings.simplefilter("ignore", FutureWarning)
            return distributed_nn.all_to_all_single(torch.empty_like(xg), xg)

    return {
        "all_reduce_autograd": (lambda: comm.all_reduce(xg), torch_nn_all_reduce),
        "all_gather_autograd": (lambda: comm.all_gather(xg), torch_nn_all_gather),
        "all_to_all_autograd": (lambda: comm.all_to_all(xg), torch_nn_all_to_all),
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
                name=f"{op}_{numel * 4 // 1024}KiB_vs_"
                + ("torch_nn" if op.endswith("autograd") else "raw"),
                repeats=repeats,
                warmup=5,
                number=number,
                threads=1,
                goal=GOAL,
                setup=dist.barrier,  # both ranks start every timed block together
            )
            results.append(result)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = bench_argument_parser(__doc__.splitlines()[0])
    parser.set_defaults(repeats=41)
    parser.add_argument("--ranks", type=int, default=2, help="gloo ranks (default: 2)")
    args = parser.parse_args(argv)
    # fp32 elements: 256 KiB, 1 MiB, 4 MiB (the quick run: 256 KiB only)
    sizes = [64 * 1024] if args.quick else [64 * 1024, 256 * 1024, 1024 * 1024]
    number = 5
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
