"""The ``ptrain-core`` command: ``ptrain-core --version`` and ``ptrain-core env [--json PATH]``.

``env`` reports what a bug report or a benchmark table needs: torch version, CUDA devices,
torch.distributed backends, CPU threads, python, platform and the installed ptrain packages.
Also runnable as ``python -m ptrain.core``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ptrain.core.bench import environment_info
from ptrain.core.cli import add_json_argument, add_version_argument, cli_entry, write_json

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
    return parser


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
    raise AssertionError(f"unhandled command {args.command!r}")  # argparse rejects the rest


if __name__ == "__main__":
    sys.exit(main())
