"""The ``ptrain-hetmem`` command: plan, bench (capacity | traffic | step), trace.

Thin: each subcommand parses flags, calls the library, prints a short summary and writes
``--json PATH`` when asked. Bad input ends in one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import csv
from typing import Any

from ptrain.core.cli import (
    UserError,
    add_json_argument,
    add_version_argument,
    cli_entry,
    positive_int,
    write_json,
)
from ptrain.hetmem.config import format_bytes, parse_bytes

PROG = "ptrain-hetmem"


def _size(text: str) -> int:
    try:
        return parse_bytes(text, "size")
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _gpt_arguments(parser: argparse.ArgumentParser, layers: int) -> None:
    parser.add_argument("--layers", type=positive_int, default=layers, help="GPT blocks")
    parser.add_argument("--width", type=positive_int, default=256, help="GPT hidden size")
    parser.add_argument("--vocab", type=positive_int, default=1024, help="vocabulary size")
    parser.add_argument("--seq", type=positive_int, default=64, help="sequence length")


def _gpt_config(args: argparse.Namespace) -> Any:
    from ptrain.core.models.gpt import GPTConfig

    if args.width % 4:
        raise UserError(f"--width must be divisible by the 4 heads, got {args.width}")
    return GPTConfig(
        vocab_size=args.vocab, seq_len=args.seq, dim=args.width, n_layers=args.layers, n_heads=4
    )


# --------------------------------------------------------------------------- plan
def _run_plan(args: argparse.Namespace) -> int:
    from ptrain.core.models.gpt import GPT
    from ptrain.hetmem.chunks import build_layout, module_param_lists, search_chunk_size

    config = _gpt_config(args)
    lists = module_param_lists(GPT(config, device="meta"))
    report = search_chunk_size(lists, args.search_range, args.interval)
    summary = report.to_dict()
    chosen = args.chunk_size or report.chosen
    layout = build_layout(lists, chosen)
    summary["used_chunk_size"] = chosen
    summary["groups"] = layout.num_groups
    bytes_per_elem = 16 if args.mode == "fp32" else 14
    model_bytes = layout.num_groups * chosen * bytes_per_elem
    min_budget = chosen * (8 if args.mode == "fp32" else 2)
    summary["model_data_bytes"] = model_bytes
    summary["min_device_budget_bytes"] = min_budget
    print(
        f"GPT {args.layers} layers x {args.width}: {report.total_elements:,} parameters in "
        f"{len(lists)} module lists, largest {report.min_size:,}"
    )
    print(f"tried {len(report.tried)} chunk sizes; fewest wasted elements:")
    for row in summary["best"][:5]:  # type: ignore[index]
        print(
            f"  {row['chunk_size']:>10,} elements: {row['groups']:3d} groups, "
            f"{row['wasted_elements']:>9,} wasted, utilisation {row['utilisation']:.4f}"
        )
    print(
        f"chunk size {chosen:,} -> {layout.num_groups} groups, model data "
        f"{format_bytes(model_bytes)} ({args.mode}), minimum device budget "
        f"{format_bytes(min_budget)} + activations"
    )
    if args.json:
        write_json(args.json, summary)
    return 0


# --------------------------------------------------------------------------- bench
def _ratio(numerator: int, denominator: int) -> str:
    return "n/a (baseline fits nothing)" if denominator == 0 else f"{numerator / denominator:.2f}x"


def _run_bench(args: argparse.Namespace) -> int:
    from ptrain.hetmem import bench

    if args.what == "capacity":
        result = bench.bench_capacity(args.budget, args.host_budget)
        print(
            f"hetmem/plain {_ratio(result['hetmem_params'], result['plain_params'])}, "
            f"hetmem/static {_ratio(result['hetmem_params'], result['static_params'])}"
        )
        if args.json:
            write_json(args.json, result)
    elif args.what == "traffic":
        result = bench.bench_traffic(args.layers, args.steps)
        print(
            f"opt/belady {result['opt_bytes'] / max(result['belady_bytes'], 1):.3f}, "
            f"opt/static {result['opt_bytes'] / max(result['static_bytes'], 1):.3f} "
            f"({result['static_policy']}), "
            f"lower bound/static {result['lower_bound_bytes'] / max(result['static_bytes'], 1):.3f}"
        )
        if args.json:
            write_json(args.json, result)
    else:
        from ptrain.core.bench import write_json as write_bench_json

        step = bench.bench_step(args.layers, repeats=args.repeats)
        print(step.summary())
        if args.json:
            write_bench_json(args.json, step, meta={"command": "ptrain-hetmem bench step"})
    return 0


# --------------------------------------------------------------------------- trace
def _run_trace(args: argparse.Namespace) -> int:
    from ptrain.hetmem.bench import run_hetmem
    from ptrain.hetmem.config import HetMemConfig

    config = HetMemConfig(device_budget=args.budget, policy=args.policy)
    engine = run_hetmem(args.layers, config, steps=args.steps)
    rows = [
        {"moment": i, "iteration": it, "stage": stage, "nonmodel_bytes": nm, "fast_chunk_bytes": fc}
        for i, (it, stage, nm, fc) in enumerate(engine.tide)
    ]
    report = engine.memory_report()
    engine.close()
    for name, tier in report["tiers"].items():
        print(
            f"{name:>6}: peak {format_bytes(tier['peak'])} of "
            f"{'unbounded' if tier['capacity'] is None else format_bytes(tier['capacity'])}, "
            f"in {format_bytes(tier['bytes_in'])}, out {format_bytes(tier['bytes_out'])}"
        )
    print(f"{len(rows)} moments over {args.steps} iterations")
    if args.csv:
        from ptrain.core.checkpoint import atomic_write

        with atomic_write(args.csv, "w") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    if args.plot:
        _plot_tide(rows, args.plot, args.budget)
        print(f"wrote {args.plot}")
    if args.json:
        write_json(args.json, {"moments": rows, "memory": report})
    return 0


def _plot_tide(rows: list[dict[str, Any]], path: str, budget: int) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("--plot needs matplotlib: pip install 'ptrain-hetmem[plot]'") from None
    moments = [r["moment"] for r in rows]
    nonmodel = [r["nonmodel_bytes"] / 2**20 for r in rows]
    chunks = [r["fast_chunk_bytes"] / 2**20 for r in rows]
    figure, axis = plt.subplots(figsize=(9, 4))
    axis.stackplot(moments, nonmodel, chunks, labels=["non-model (activations)", "chunks"])
    axis.axhline(budget / 2**20, color="black", linestyle="--", label="device budget")
    axis.set_xlabel("moment")
    axis.set_ylabel("MiB on the device tier")
    axis.legend(loc="upper right")
    axis.set_title("memory tide")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


@cli_entry(PROG)
def main(argv: list[str] | None = None) -> int:
    """Entry point of ``ptrain-hetmem``."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="PatrickStar-style chunk-based heterogeneous memory management."
    )
    add_version_argument(parser, "ptrain-hetmem")
    sub = parser.add_subparsers(dest="command", required=True)

    plan = sub.add_parser("plan", help="chunk size search report for the debug GPT")
    _gpt_arguments(plan, 12)
    plan.add_argument("--chunk-size", type=positive_int, default=None, help="use this size")
    plan.add_argument(
        "--search-range", type=positive_int, default=None, help="elements searched (default 2x)"
    )
    plan.add_argument("--interval", type=positive_int, default=1024, help="search step")
    plan.add_argument("--mode", choices=("fp32", "mixed"), default="fp32")
    add_json_argument(plan)
    plan.set_defaults(run=_run_plan)

    bench = sub.add_parser("bench", help="capacity, traffic or step-time benchmark")
    bench.add_argument("what", choices=("capacity", "traffic", "step"))
    bench.add_argument("--budget", type=_size, default=64 << 20, help="fast tier (capacity)")
    bench.add_argument("--host-budget", type=_size, default=128 << 20, help="host tier")
    bench.add_argument("--layers", type=positive_int, default=None, help="GPT blocks")
    bench.add_argument("--steps", type=positive_int, default=3, help="steps (traffic)")
    bench.add_argument("--repeats", type=positive_int, default=7, help="timed rounds (step)")
    add_json_argument(bench)
    bench.set_defaults(run=_run_bench)

    trace = sub.add_parser("trace", help="memory timeline per moment (the tide)")
    trace.add_argument("--layers", type=positive_int, default=4)
    trace.add_argument("--budget", type=_size, default=48 << 20, help="fast tier bytes")
    trace.add_argument("--steps", type=positive_int, default=3)
    trace.add_argument("--policy", choices=("opt", "lru", "static", "static-z3"), default="opt")
    trace.add_argument("--csv", default=None, help="write one row per moment")
    trace.add_argument("--plot", default=None, help="write a PNG (needs matplotlib)")
    add_json_argument(trace)
    trace.set_defaults(run=_run_trace)

    args = parser.parse_args(argv)
    if args.command == "bench" and args.layers is None:
        args.layers = 8 if args.what == "traffic" else 4
    return int(args.run(args))
