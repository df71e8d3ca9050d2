"""Train the reference GPT under any parallel layout: ``examples/train_gpt.py`` calls ``main``.

Launch with torchrun (CPU/gloo or GPU/nccl)::

    torchrun --nproc-per-node 4 examples/train_gpt.py --dp 2 --tp 2 --tp-mode 1d
    torchrun --nproc-per-node 4 examples/train_gpt.py --tp 4 --tp-mode 2d --zero 3
    torchrun --nproc-per-node 4 examples/train_gpt.py --dp 2 --sp ring --steps 20
    python examples/train_gpt.py --steps 10                  # one process, the reference

Every rank builds the GPT on the meta device and ``parallelize`` materialises only its shards.
Step ``s`` trains on ``synthetic_batch(config, batch_size, seed=seed*1_000_003 + s)`` (the same
global batch whatever the layout): each data-parallel rank takes its slice of the sequences,
each sequence-parallel (``cp``) rank its slice of the tokens, and each of ``--grad-accum``
micro-batches a slice of that (only the last one reduces gradients). The printed loss is the
global batch's mean token loss, so runs under different layouts print the same numbers (up to
float rounding). ``--checkpoint DIR`` resumes from DIR when it holds a checkpoint and saves to
it at the end (and every ``--save-every`` steps), atomically, in the sharded DCP format — a run
saved under one layout resumes under another.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ptrain.core.cli import (
    UserError,
    add_json_argument,
    add_version_argument,
    cli_entry,
    non_negative_int,
    positive_float,
    positive_int,
    write_json,
)
from ptrain.core.dist import ParallelDims
from ptrain.core.models.gpt import GPT, GPTConfig, synthetic_batch

__all__ = ["TrainSettings", "main", "make_optimizer", "train_gpt"]

PROG = "train_gpt"
OPTIMIZERS = ("adamw", "lamb")


@dataclass(kw_only=True)
class TrainSettings:
    """What ``train_gpt`` does besides the layout.

    Attributes:
        steps: optimizer steps to reach (a resumed run continues up to this step).
        batch_size: sequences in the global batch of one step.
        grad_accum: micro-batches per step (must divide the per-data-parallel-rank batch).
        optimizer: ``"adamw"`` or ``"lamb"``.
        lr: learning rate.
        weight_decay: decoupled weight decay.
        seed: model initialisation seed; also selects the data.
        checkpoint: directory to resume from / save to (None: no checkpoints).
        save_every: also save every this many steps (0: only at the end).
        config: the model sizes (default ``GPTConfig.debug()``).
        schedule: pipeline schedule when ``dims.pp > 1`` (``gpipe``, ``1f1b``, ``interleaved``).
        microbatches: pipeline micro-batches per step when ``dims.pp > 1``.
    """

    steps: int = 10
    batch_size: int = 8
    grad_accum: int = 1
    optimizer: str = "adamw"
    lr: float = 3e-3
    weight_decay: float = 0.0
    seed: int = 0
    checkpoint: str | None = None
    save_every: int = 0
    config: GPTConfig = field(default_factory=GPTConfig.debug)
    schedule: str = "1f1b"
    microbatches: int = 4

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "grad_accum"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"TrainSettings.{name} must be a positive integer, got {value!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"TrainSettings.optimizer must be one of {', '.join(OPTIMIZERS)}, "
                f"got {self.optimizer!r}"
            )


def make_optimizer(
    model: nn.Module, dims: ParallelDims, dp_mode: str, settings: TrainSettings
) -> torch.optim.Optimizer:
    """AdamW or LAMB for the parallel model, ZeRO-1-sharded when ``dp_mode == "zero1"``.

    LAMB's trust ratios need the norms of whole logical tensors: tensors that are DTensors
    (torch tensor parallelism, FSDP) compute global norms through DTensor; plain local shards
    of ``ptrain.core.tp`` layers get ``group=<tp group>``.
    """
    from ptrain.core.data_parallel import build_optimizer

    if settings.optimizer == "adamw":
        return build_optimizer(
            model, dims, dp_mode, torch.optim.AdamW, lr=settings.lr,
            weight_decay=settings.weight_decay,
        )  # fmt: skip
    from ptrain.core.optim import LAMB

    kwargs: dict[str, Any] = {"lr": settings.lr, "weight_decay": settings.weight_decay}
    if dims.tp > 1 and dp_mode == "zero3" and _all_dtensor(model):
        # fully_shard shards of tp shards: norms summed over the dp-shard and tp ranks together
        world = dims.world_mesh
        kwargs["shard_group"] = world["dp_shard", "cp", "tp"]._flatten().get_group()
    elif dims.tp > 1 and not _all_dtensor(model):
        # Sharded tensors: norms summed over the tp group. A tensor replicated over (part of)
        # the group is counted once per copy in both norms of the ratio, which leaves it equal.
        kwargs["group"] = dims.get_group("tp")
    return build_optimizer(model, dims, dp_mode, LAMB, **kwargs)


def _all_dtensor(model: nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    return all(isinstance(p, DTensor) for p in model.parameters())


def _rank_slice(tensor: torch.Tensor, index: int, count: int) -> torch.Tensor:
    return tensor.chunk(count)[index]


def train_gpt(
    dims: ParallelDims,
    plan: Any,
    settings: TrainSettings,
    *,
    log: Callable[[str], None] | None = None,
) -> list[float]:
    """Train the GPT under ``dims`` and ``plan`` (collective; every rank calls it).

    Args:
        dims: the layout (the world size must match the process group).
        plan: a ``ParallelPlan`` or dict for ``parallelize`` (``tp``, ``sp``, ``dp``, ``depth``).
        settings: steps, batch, optimizer, checkpointing.
        log: called with one line per step on global rank 0 (default: no output).

    Returns:
        The global mean loss of every step run by this call (identical on every rank).
    """
    from ptrain.core import dcp
    from ptrain.core.data_parallel import accumulate_gradients
    from ptrain.core.parallel import ParallelPlan, loss_fn, parallelize

    plan = ParallelPlan.from_any(plan)
    plan.seed = settings.seed
    config = settings.config
    dp = dims.dp_size
    if settings.batch_size % (dp * settings.grad_accum):
        raise ValueError(
            f"batch size {settings.batch_size} must be divisible by dp ({dp}) × grad-accum "
            f"({settings.grad_accum}) = {dp * settings.grad_accum}"
        )
    if config.seq_len % dims.cp:
        raise ValueError(f"seq_len {config.seq_len} is not divisible by cp={dims.cp}")
    zero3_ptrain_tp = plan.dp == "zero3" and dims.tp > 1 and plan.tp_backend == "ptrain"
    if settings.checkpoint is not None and zero3_ptrain_tp and dims.size("dp_cp") > 1:
        raise ValueError(
            "--checkpoint with --zero 3 and --tp > 1 is not supported (sharded checkpoints "
            "of ZeRO-3 x ptrain.core.tp); use --zero 1"
        )
    dims.build_mesh("cpu" if dist.get_backend() == "gloo" else None)
    if dims.pp > 1:
        return _train_pipeline(dims, plan, settings, log)
    model = parallelize(GPT(config, device="meta"), dims, plan)
    loss_of = loss_fn(model)
    optimizer = make_optimizer(model, dims, plan.dp, settings)
    device = next(model.parameters()).device
    rank = dist.get_rank()
    say = log if (log is not None and rank == 0) else (lambda line: None)

    start = 0
    if settings.checkpoint is not None and Path(settings.checkpoint).is_dir():
        info = dcp.load(settings.checkpoint, model, optimizer)
        start = int(info["step"])
        say(f"resumed from {settings.checkpoint} at step {start}")

    dp_index = dims.get_mesh("dp").get_local_rank()
    cp_group = dims.get_group("cp") if dims.cp > 1 else None
    loss_group = dims.get_group("dp_cp")

    def micro_loss(net: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        tokens, targets, positions = batch
        return loss_of(net(tokens, position_ids=positions), targets)

    losses = []
    for step in range(start, settings.steps):
        begin = time.perf_counter()
        tokens, targets = synthetic_batch(
            config, settings.batch_size, seed=settings.seed * 1_000_003 + step
        )
        tokens = _rank_slice(tokens, dp_index, dp).to(device)
        targets = _rank_slice(targets, dp_index, dp).to(device)
        if cp_group is not None:
            from ptrain.core.sp import shard_sequence

            tokens, positions = shard_sequence(tokens, cp_group)
            targets, _ = shard_sequence(targets, cp_group)
            positions = positions.to(device)
        else:
            positions = torch.arange(tokens.shape[1], device=device)
        micro = list(
            zip(
                tokens.chunk(settings.grad_accum),
                targets.chunk(settings.grad_accum),
                [positions] * settings.grad_accum,
                strict=True,
            )
        )
        optimizer.zero_grad()
        local = accumulate_gradients(model, micro, micro_loss)
        optimizer.step()
        mean = torch.tensor([local], dtype=torch.float64, device=device)
        dist.all_reduce(mean, group=loss_group)
        loss = float(mean.item()) / dims.size("dp_cp")
        losses.append(loss)
        say(
            f"step {step + 1:4d}/{settings.steps}  loss {loss:.4f}  "
            f"({(time.perf_counter() - begin) * 1e3:.0f} ms)"
        )
        done = step + 1
        periodic = settings.save_every and done % settings.save_every == 0
        if settings.checkpoint is not None and (periodic or done == settings.steps):
            dcp.save(
                settings.checkpoint, model, optimizer, step=done,
                metadata={"config": config.to_dict(), "layout": _layout(dims, plan)},
            )  # fmt: skip
            say(f"saved {settings.checkpoint} at step {done}")
    return losses


def _train_pipeline(
    dims: ParallelDims, plan: Any, settings: TrainSettings, log: Callable[[str], None] | None
) -> list[float]:
    """Pipeline parallelism (``ptrain.core.pipeline``) × data parallelism: DDP-style gradient
    averaging after each pipeline step, or ZeRO-3 by ``fully_shard`` on each stage."""
    from ptrain.core.pipeline import build_pipeline
    from ptrain.core.sp import average_gradients

    if dims.tp > 1 or dims.cp > 1:
        raise ValueError("--pp composes with data parallelism only (not with --tp or --sp) here")
    if settings.checkpoint is not None:
        raise ValueError("--checkpoint is not supported with --pp yet")
    if plan.dp == "zero1":
        raise ValueError("--zero 1 is not supported with --pp; use --zero 3 or plain DDP")
    dp = dims.dp_size
    local_batch = settings.batch_size // dp
    if local_batch % settings.microbatches:
        raise ValueError(
            f"the per-data-parallel-rank batch {local_batch} is not divisible by "
            f"--microbatches {settings.microbatches}"
        )
    prepare = None
    if plan.dp == "zero3" and dp > 1:
        from torch.distributed.fsdp import fully_shard

        dp_mesh = dims.get_mesh("dp_shard")

        def prepare(chunk: nn.Module) -> Any:
            return fully_shard(chunk, mesh=dp_mesh)

    pipe = build_pipeline(
        GPT(settings.config, device="meta"), dims.get_mesh("pp"), schedule=settings.schedule,  # type: ignore[arg-type]
        microbatches=settings.microbatches, init_seed=settings.seed, prepare=prepare,
    )  # fmt: skip
    params = list(pipe.parameters())
    optimizer: torch.optim.Optimizer
    if settings.optimizer == "adamw":
        optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    else:
        from ptrain.core.data_parallel import LocalShardOptimizer, has_dtensor_params
        from ptrain.core.optim import LAMB

        if has_dtensor_params(nn.ModuleList(pipe.modules)):
            optimizer = LocalShardOptimizer(
                params, LAMB, lr=settings.lr, weight_decay=settings.weight_decay
            )
        else:
            optimizer = LAMB(params, lr=settings.lr, weight_decay=settings.weight_decay)
    say = log if (log is not None and dist.get_rank() == 0) else (lambda line: None)
    dp_index = dims.get_mesh("dp").get_local_rank()
    dp_group = dims.get_group("dp")
    losses = []
    for step in range(settings.steps):
        begin = time.perf_counter()
        tokens, targets = synthetic_batch(
            settings.config, settings.batch_size, seed=settings.seed * 1_000_003 + step
        )
        tokens = _rank_slice(tokens, dp_index, dp).to(pipe.device)
        targets = _rank_slice(targets, dp_index, dp).to(pipe.device)
        mean = pipe.step(tokens, target=targets).detach().clone()
        if dp > 1 and plan.dp != "zero3":
            for module in pipe.modules:
                average_gradients(module, dp_group)
        optimizer.step()
        dist.all_reduce(mean, group=dp_group)
        loss = float(mean.item()) / dp
        losses.append(loss)
        say(
            f"step {step + 1:4d}/{settings.steps}  loss {loss:.4f}  "
            f"({(time.perf_counter() - begin) * 1e3:.0f} ms)"
        )
    return losses


def _layout(dims: ParallelDims, plan: Any) -> dict[str, Any]:
    return {
        "dp_replicate": dims.dp_replicate, "dp_shard": dims.dp_shard, "cp": dims.cp,
        "tp": dims.tp, "pp": dims.pp, "tp_mode": plan.tp if isinstance(plan.tp, str) else "mixed",
        "sp": plan.sp, "dp_mode": plan.dp, "depth": plan.depth,
    }  # fmt: skip


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Train the debug GPT on synthetic Markov data under data, tensor and sequence "
            "parallelism. Launch with torchrun; the product dp × cp × tp must equal the world "
            "size (one of --dp/--cp may be left out and is inferred)."
        ),
    )
    add_version_argument(parser, "ptrain-core")
    parser.add_argument(
        "--dp",
        type=positive_int,
        default=None,
        help="data-parallel degree (default: what --tp and --cp leave)",
    )
    parser.add_argument(
        "--dp-replicate",
        type=positive_int,
        default=1,
        help="of --dp, how many replicas (HSDP under --zero 3); default 1",
    )
    parser.add_argument("--tp", type=positive_int, default=1, help="tensor-parallel degree")
    parser.add_argument(
        "--tp-mode",
        choices=("1d", "2d", "2.5d", "3d"),
        default="1d",
        help="tensor-parallel scheme of every block (default 1d)",
    )
    parser.add_argument(
        "--depth", type=positive_int, default=1, help="2.5D depth d (tp = q*q*d); default 1"
    )
    parser.add_argument(
        "--sp",
        choices=("ring", "ulysses"),
        default=None,
        help="sequence parallelism over --cp ranks",
    )
    parser.add_argument(
        "--cp",
        type=positive_int,
        default=None,
        help="sequence-parallel degree (default: 1, or what --dp and --tp leave "
        "when --sp is given)",
    )
    parser.add_argument(
        "--pp",
        type=positive_int,
        default=1,
        help="pipeline stages (composes with --dp and --zero 3; default 1)",
    )
    parser.add_argument(
        "--schedule",
        choices=("gpipe", "1f1b", "interleaved"),
        default="1f1b",
        help="pipeline schedule with --pp > 1 (default 1f1b)",
    )
    parser.add_argument(
        "--microbatches",
        type=positive_int,
        default=4,
        help="pipeline micro-batches per step with --pp > 1 (default 4)",
    )
    parser.add_argument(
        "--zero",
        type=int,
        choices=(1, 3),
        default=None,
        help="ZeRO stage: 1 shards optimizer state, 3 (fully_shard) shards "
        "everything; default plain DDP",
    )
    parser.add_argument("--steps", type=positive_int, default=10, help="optimizer steps")
    parser.add_argument(
        "--batch-size", type=positive_int, default=8, help="global batch in sequences (default 8)"
    )
    parser.add_argument(
        "--grad-accum", type=positive_int, default=1, help="micro-batches per step (default 1)"
    )
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default="adamw")
    parser.add_argument("--lr", type=positive_float, default=3e-3, help="learning rate")
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument(
        "--checkpoint",
        default=None,
        metavar="DIR",
        help="resume from DIR if it holds a checkpoint; save there at the end",
    )
    parser.add_argument(
        "--save-every",
        type=non_negative_int,
        default=0,
        help="also save every N steps (default: only at the end)",
    )
    add_json_argument(parser)
    return parser  # fmt: skip


def _dims_from_args(args: argparse.Namespace, world_size: int) -> ParallelDims:
    if args.sp is None and args.cp not in (None, 1):
        raise UserError(f"--cp {args.cp} needs --sp ring or --sp ulysses")
    cp = args.cp
    dp = args.dp
    if cp is None:
        if args.sp is None:
            cp = 1
        else:
            rest = world_size // (args.tp * args.pp * (dp or 1))
            if world_size % (args.tp * args.pp * (dp or 1)) or rest < 2:
                raise UserError(
                    f"--sp {args.sp}: world size {world_size} leaves no cp degree > 1 after "
                    f"--dp {dp or 1} × --tp {args.tp} × --pp {args.pp}; pass --cp"
                )
            cp = rest
    if args.sp is not None and cp < 2:
        raise UserError(f"--sp {args.sp} needs --cp of at least 2, got {cp}")
    if dp is None:
        if world_size % (args.tp * args.pp * cp):
            raise UserError(
                f"world size {world_size} is not divisible by --tp {args.tp} × --cp {cp}"
                + (f" × --pp {args.pp}" if args.pp > 1 else "")
            )
        dp = world_size // (args.tp * args.pp * cp)
    if dp % args.dp_replicate:
        raise UserError(f"--dp-replicate {args.dp_replicate} must divide --dp {dp}")
    product = dp * cp * args.tp * args.pp
    if product != world_size:
        pp = f" × --pp {args.pp}" if args.pp > 1 else ""
        raise UserError(
            f"--dp {dp} × --cp {cp} × --tp {args.tp}{pp} = {product}, but the world size is "
            f"{world_size} (torchrun --nproc-per-node × --nnodes)"
        )
    try:
        return ParallelDims(
            dp_replicate=args.dp_replicate, dp_shard=dp // args.dp_replicate, cp=cp,
            tp=args.tp, pp=args.pp, world_size=world_size,
        )  # fmt: skip
    except ValueError as error:
        raise UserError(str(error)) from None


def main(argv: list[str] | None = None) -> int:
    """``train_gpt`` command: parse flags, join the torchrun job, train, print loss per step.

    Under torchrun every rank checks the flags; only rank 0 prints a user error (one line,
    exit 2 on every rank), so a typo does not print the same line once per process.
    """
    if os.environ.get("RANK", "0") not in ("", "0"):
        quiet = io.StringIO()
        with contextlib.redirect_stderr(quiet):
            code = _main(argv)
        if code != 2:  # not a user error: show whatever was written
            sys.stderr.write(quiet.getvalue())
        return code
    return _main(argv)


@cli_entry(PROG)
def _main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    world_size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    dims = _dims_from_args(args, world_size)
    from ptrain.core.parallel import ParallelPlan, check_tp_size

    dp_mode = {None: "ddp", 1: "zero1", 3: "zero3"}[args.zero]
    plan = ParallelPlan(tp=args.tp_mode, depth=args.depth, sp=args.sp, dp=dp_mode)
    if args.tp > 1:
        try:
            check_tp_size(args.tp_mode, args.tp, args.depth)
        except ValueError as error:
            raise UserError(f"--tp {args.tp} --tp-mode {args.tp_mode}: {error}") from None
    try:
        settings = TrainSettings(
            steps=args.steps, batch_size=args.batch_size, grad_accum=args.grad_accum,
            optimizer=args.optimizer, lr=args.lr, weight_decay=args.weight_decay, seed=args.seed,
            checkpoint=args.checkpoint, save_every=args.save_every, schedule=args.schedule,
            microbatches=args.microbatches,
        )  # fmt: skip
    except ValueError as error:
        raise UserError(str(error)) from None
    dp = dims.dp_size
    if settings.batch_size % (dp * settings.grad_accum):
        raise UserError(
            f"--batch-size {settings.batch_size} must be divisible by dp ({dp}) × --grad-accum "
            f"({settings.grad_accum}) = {dp * settings.grad_accum}"
        )
    if args.checkpoint is not None and Path(args.checkpoint).exists():
        from ptrain.core.dcp import read_metadata

        read_metadata(args.checkpoint)  # a CheckpointError (one line) before any rank starts

    from ptrain.core.dist import destroy_distributed, init_distributed

    init_distributed()
    try:
        rank = dist.get_rank()
        if rank == 0:
            print(
                f"{PROG}: world {world_size} = dp {dp} (replicate {dims.dp_replicate}) × "
                f"cp {dims.cp} × tp {dims.tp} × pp {dims.pp}; tp-mode {args.tp_mode}, "
                f"sp {args.sp}, "
                f"{dp_mode}, {settings.optimizer}, {settings.steps} steps",
                flush=True,
            )
        try:
            losses = train_gpt(dims, plan, settings, log=lambda line: print(line, flush=True))
        except (ValueError, NotImplementedError) as error:
            raise UserError(str(error).splitlines()[0]) from None
        if rank == 0 and args.json:
            write_json(args.json, {"losses": losses, "layout": _layout(dims, plan)})
        if rank == 0 and losses and not all(math.isfinite(x) for x in losses):
            print(f"{PROG}: warning: non-finite loss", file=sys.stderr)
    finally:
        destroy_distributed()
    return 0
