"""The ``ptrain-moe`` command: ``pretrain``, ``probe``, ``bench layer``.

Thin: each subcommand parses flags, calls the library, prints a short summary and writes
``--json PATH`` when asked. Bad input ends in one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
from typing import Any

from ptrain.core.cli import (
    UserError,
    add_json_argument,
    add_version_argument,
    cli_entry,
    positive_float,
    positive_int,
)
from ptrain.core.cli import write_json as write_json_file

PROG = "ptrain-moe"


# --------------------------------------------------------------------------- bench
def _run_bench_layer(args: argparse.Namespace) -> int:
    from ptrain.core.bench import write_json as write_bench_json
    from ptrain.moe.bench import LAYER_GOALS, LayerBenchConfig, bench_layer

    try:
        config = LayerBenchConfig(
            tokens=args.tokens,
            dim=args.dim,
            experts=args.experts,
            top_k=args.top_k,
            expert_hidden=args.expert_hidden,
            capacity_factor=args.capacity_factor,
            repeats=args.repeats,
        )
    except ValueError as error:
        raise UserError(str(error)) from error
    times, results = bench_layer(config)
    ours = times["moe_dropless_s"]
    print(
        f"MoE layer, {config.tokens} tokens x dim {config.dim}, {config.experts} experts, "
        f"top-{config.top_k}, expert hidden {config.expert_hidden} (forward+backward, 1 thread, "
        f"median of {config.repeats})"
    )
    for key, seconds in times.items():
        line = f"  {key:<22} {seconds * 1e3:9.1f} ms"
        if key != "moe_dropless_s":
            ratio = seconds / ours
            line += f"   {key.removesuffix('_s')}/dropless = {ratio:.2f}"
            if key in LAYER_GOALS:
                goal = LAYER_GOALS[key]
                line += f" (goal >= {goal}: {'met' if ratio >= goal else 'NOT met'})"
        print(line)
    if args.json:
        write_json_file(args.json, times)
    if args.report:
        command = (
            f"ptrain-moe bench layer --tokens {config.tokens} --dim {config.dim} "
            f"--experts {config.experts} --top-k {config.top_k} "
            f"--expert-hidden {config.expert_hidden} --repeats {config.repeats}"
        )
        write_bench_json(args.report, results, meta={"command": command, **times})
    return 0


# --------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``ptrain-moe``."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="MoE layers with expert parallelism; Sparse-MLP with MoCo v3 pre-training.",
    )
    add_version_argument(parser, "ptrain-moe")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    bench = commands.add_parser("bench", help="benchmarks")
    bench_commands = bench.add_subparsers(dest="bench_command", metavar="BENCH")
    layer = bench_commands.add_parser(
        "layer",
        help="MoE layer forward+backward vs dense FFN, naive loop and einsum dispatch",
        description=(
            "Times forward+backward (1 thread, interleaved repeats, median) of our MoE "
            "(dropless), our MoE (capacity), a dense FFN with the same active FLOPs "
            "(hidden = top-k x expert hidden), a naive per-expert loop and a GShard one-hot "
            "einsum dispatch (capacity)."
        ),
    )
    layer.add_argument("--tokens", type=positive_int, default=4096, help="tokens (default 4096)")
    layer.add_argument("--dim", type=positive_int, default=256, help="model dim (default 256)")
    layer.add_argument("--experts", type=positive_int, default=8, help="experts (default 8)")
    layer.add_argument("--top-k", type=positive_int, default=2, help="1 or 2 (default 2)")
    layer.add_argument(
        "--expert-hidden", type=positive_int, default=512, help="expert hidden (default 512)"
    )
    layer.add_argument(
        "--capacity-factor",
        type=positive_float,
        default=1.25,
        help="capacity factor of the capacity variants (default 1.25)",
    )
    layer.add_argument(
        "--repeats",
        type=positive_int,
        default=7,
        help="timed rounds, every variant once per round (default 7)",
    )
    add_json_argument(layer)
    layer.add_argument(
        "--report",
        metavar="PATH",
        default=None,
        help="also write the ptrain.core.bench result file (ratios, samples, environment)",
    )
    layer.set_defaults(handler=_run_bench_layer)

    _add_train_commands(commands)
    return parser


def _add_train_commands(commands: Any) -> None:
    from ptrain.moe.train import add_pretrain_arguments, add_probe_arguments

    pretrain = commands.add_parser(
        "pretrain",
        help="MoCo v3 pre-training of Sparse-MLP or a dense Mixer",
        description="MoCo v3 pre-training with atomic, resumable checkpoints.",
    )
    add_pretrain_arguments(pretrain)
    _add_threads(pretrain)
    add_json_argument(pretrain)
    pretrain.set_defaults(handler=_run_pretrain)

    probe = commands.add_parser(
        "probe",
        help="linear-probe evaluation of a pre-trained checkpoint",
        description="Trains a linear classifier on frozen features; reports test accuracy.",
    )
    add_probe_arguments(probe)
    _add_threads(probe)
    add_json_argument(probe)
    probe.set_defaults(handler=_run_probe)


def _add_threads(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=1,
        help="torch CPU threads (default 1: small models on a shared CPU run fastest so)",
    )


def _run_pretrain(args: argparse.Namespace) -> int:
    from ptrain.moe.train import pretrain_from_args

    result = pretrain_from_args(args)
    if args.json:
        write_json_file(args.json, result)
    return 0


def _run_probe(args: argparse.Namespace) -> int:
    from ptrain.moe.train import probe_from_args

    result = probe_from_args(args)
    if args.json:
        write_json_file(args.json, result)
    return 0


@cli_entry(PROG)
def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ptrain-moe`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    threads = getattr(args, "threads", None)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    handler = getattr(args, "handler", None)
    if handler is None:
        if args.command == "bench":
            parser.error("bench needs a benchmark name: layer")
        parser.error("a command is required: pretrain, probe or bench")
    return int(handler(args))
