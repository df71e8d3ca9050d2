"""The ``ptrain-core`` command: ``--version``, ``env``, ``bench comm`` and ``bench pipeline``.

``ptrain-core bench comm --json PATH`` measures the bytes each tensor-parallel mode sends for one
MLP block (``ptrain.core.tp.bench``); ``ptrain-core bench pipeline --stages 4 --microbatches 8
--json PATH`` measures the bubble of GPipe and 1F1B (``ptrain.core.pipeline_bench``).

``env`` reports what a bug report or a benchmark table needs: torch version, CUDA devices,
torch.distributed backends, CPU threads, python, platform and the installed ptrain packages.
Also runnable as ``python -m ptrain.core``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ptrain.core.bench import environment_info
from ptrain.core.cli import (
    add_json_argument,
    add_version_argument,
    cli_entry,
    positive_int,
    write_json,
)

__all__ = ["build_parser", "format_environment", "main"]

PROG = "ptrain-core"


def build_parser() -> argparse.ArgumentParser:
    """Returns the argument parser of ``ptrain-core``.

    Returns:
        The parser, with the ``env`` subcommand.
    """
    parser = argparse.ArgumentParser(
        prog=PROG, description="ptrain-core: shared distributed-training primitives."
    )
    add_version_argument(parser, "ptrain-core")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    env = commands.add_parser(
        "env",
        help="show torch, CUDA, distributed backends, threads, python and ptrain packages",
        description="Show the software and hardware ptrain runs on (paste it into bug reports).",
    )
    add_json_argument(env)
    bench = commands.add_parser(
        "bench",
        help="communication and pipeline-bubble measurements",
        description="Measure what the parallel modes cost (bytes sent, pipeline bubble).",
    )
    which = bench.add_subparsers(dest="bench", metavar="BENCH")
    comm = which.add_parser(
        "comm",
        help="bytes sent per device by each tensor-parallel mode for one MLP block",
        description=(
            "Run one MLP block (Linear h->4h, GELU, Linear 4h->h; 4096 tokens, h=1024, fp32) "
            "forward + backward under 1D/2D/2.5D/3D tensor parallelism on forked gloo ranks "
            "and compare the bytes each device sends (CommTracker) with the closed form."
        ),
    )
    add_json_argument(comm)
    pipe = which.add_parser(
        "pipeline",
        help="measured pipeline bubble of GPipe and 1F1B vs (p-1)/m",
        description=(
            "Run GPipe and 1F1B on forked ranks with equal-cost stages, record each stage's "
            "busy intervals and compare the measured bubble with (p-1)/m."
        ),
    )
    pipe.add_argument("--stages", type=positive_int, default=4, help="pipeline stages (ranks)")
    pipe.add_argument("--microbatches", type=positive_int, default=8, help="micro-batches")
    add_json_argument(pipe)
    return parser


def format_rows(rows: list[dict[str, Any]]) -> str:
    """Formats a list of flat dicts (same keys) as an aligned text table.

    Args:
        rows: the rows; floats are printed with 4 significant digits.

    Returns:
        The table without a trailing newline ("(no rows)" when empty).
    """
    if not rows:
        return "(no rows)"
    keys = list(rows[0])

    def cell(value: Any) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    cells = [[cell(row.get(key, "")) for key in keys] for row in rows]
    widths = [max(len(key), *(len(line[i]) for line in cells)) for i, key in enumerate(keys)]
    lines = ["  ".join(key.ljust(w) for key, w in zip(keys, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in cells]
    return "\n".join(line.rstrip() for line in lines)


def format_environment(info: dict[str, Any]) -> str:
    """Formats ``environment_info()`` as aligned human-readable lines.

    Args:
        info: the dict returned by ``ptrain.core.bench.environment_info``.

    Returns:
        The text, one fact per line, without a trailing newline.
    """
    cuda = info["cuda"]
    if cuda["available"]:
        cuda_text = f"available, {cuda['device_count']} device(s): " + ", ".join(cuda["devices"])
    else:
        cuda_text = "not available"
    backends = ", ".join(
        f"{name} {'yes' if ok else 'no'}" for name, ok in info["distributed_backends"].items()
    )
    packages = ", ".join(f"{name} {version}" for name, version in info["packages"].items())
    rows = [
        ("torch", info["torch"]),
        ("cuda", cuda_text),
        ("distributed", backends),
        ("cpu threads", f"{info['torch_threads']} torch threads, {info['cpu_count']} CPUs"),
        ("python", info["python"]),
        ("platform", info["platform"]),
        ("packages", packages or "none"),
    ]
    return "\n".join(f"{label:<12} {value}" for label, value in rows)


@cli_entry(PROG)
def main(argv: list[str] | None = None) -> int:
    """Runs ``ptrain-core``.

    Without a command it prints the help to stderr and returns 2 (a usage error).

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit code.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    if args.command == "env":
        info = environment_info()
        if args.json is not None:
            write_json(args.json, info)  # first, so a bad path fails before any output
        if args.json != "-":
            print(format_environment(info))
        return 0
    if args.command == "bench":
        rows: list[dict[str, Any]]
        if args.bench == "comm":
            from ptrain.core.tp.bench import run_comm_bench

            rows = run_comm_bench()
        elif args.bench == "pipeline":
            from ptrain.core.pipeline_bench import run_pipeline_bench

            rows = run_pipeline_bench(stages=args.stages, microbatches=args.microbatches)
        else:
            print(f"{PROG} bench: choose what to measure: comm or pipeline", file=sys.stderr)
            return 2
        if args.json is not None:
            write_json(args.json, rows)
        if args.json != "-":
            print(format_rows(rows))
        return 0
    raise AssertionError(f"unhandled command {args.command!r}")  # argparse rejects the rest


if __name__ == "__main__":
    sys.exit(main())
