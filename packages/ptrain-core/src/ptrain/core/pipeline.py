"""Pipeline parallelism: split a model made of repeated blocks into stages and run GPipe, 1F1B or
interleaved 1F1B through ``torch.distributed.pipelining`` (CPU/gloo or GPU/NCCL).

The splitter (``split_model``) cuts a model like ``ptrain.core.models.gpt.GPT`` — a few modules
before a ``ModuleList`` of identical blocks, the blocks, a few modules after — into contiguous
stage modules: the embeddings and the first blocks on stage 0, ..., the last blocks, the final
norm and the head on the last stage. Each stage module keeps the serial model's parameter names
(``tok_emb.weight``, ``blocks.3.ln1.weight``, ``head.weight``), so a stage's ``state_dict()`` is a
slice of the serial one and optimizers/checkpoints need no renaming.

``build_pipeline`` wraps the stage(s) this rank owns in ``PipelineStage`` and builds the schedule:

==============  ==========================================  ==================================
schedule        torch class                                 stages per rank (``chunks``)
==============  ==========================================  ==================================
``gpipe``       ``ScheduleGPipe``                           1
``1f1b``        ``Schedule1F1B``                            1
``interleaved`` ``ScheduleInterleaved1F1B``                 ``chunks`` ≥ 2 (default 2); rank
                                                            ``r`` holds stages ``r, r+p, ...``
==============  ==========================================  ==================================

Loss and gradient scaling (what we do, tested against the serial model): ``loss_fn`` is applied
per micro-batch and must be a *mean* over that micro-batch (``gpt_loss``); we keep torch's default
``scale_grads=True``, which divides every gradient by the number of micro-batches after the last
backward. With equal micro-batches (the batch must divide evenly; we check) the parameters' grads
then equal the serial model's gradient of the *mean loss over the whole batch*, and
``Pipeline.step`` returns that mean loss (the average of the micro-batch losses) on every rank of
the pipeline group. torch divides whatever is in ``.grad`` at the end of the step, including
gradients accumulated before it, so ``Pipeline.step`` sets the held grads to ``None`` first
(``zero_grad=True``); to accumulate gradients, use more micro-batches in one step rather than
several steps (with ``zero_grad=False`` earlier grads would be divided by ``m`` again).

Example (4 ranks, one per stage)::

    model = GPT(GPTConfig.debug(n_layers=4), device="meta")
    pipe = build_pipeline(model, group=None, schedule="1f1b", microbatches=8, init_seed=0)
    loss = pipe.step(tokens, target=targets)  # grads are in pipe.modules' parameters
    optimizer = torch.optim.AdamW(pipe.parameters())
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import nn

from ptrain.core.comm import GroupLike, resolve_group

__all__ = [
    "GPT_SPEC",
    "SCHEDULES",
    "BlockModelSpec",
    "Pipeline",
    "PipelineChunk",
    "ScheduleName",
    "build_pipeline",
    "partition_blocks",
    "split_model",
    "stage_ids_for_rank",
]

ScheduleName = Literal["gpipe", "1f1b", "interleaved"]
SCHEDULES: tuple[str, ...] = ("gpipe", "1f1b", "interleaved")


def _gpt_embed(stage: Any, tokens: torch.Tensor) -> torch.Tensor:
    # tokens (B, T) -> x (B, T, D); a pipeline stage always holds whole sequences
    positions = torch.arange(tokens.shape[1], device=tokens.device)
    return stage.tok_emb(tokens) + stage.pos_emb(positions)


def _gpt_finish(stage: Any, x: torch.Tensor) -> torch.Tensor:
    # x (B, T, D) -> logits (B, T, V)
    return stage.head(stage.norm(x))


@dataclass(frozen=True)
class BlockModelSpec:
    """How a model made of repeated blocks is laid out (what ``split_model`` needs to know).

    Attributes:
        blocks: attribute name of the ``nn.ModuleList`` of repeated blocks.
        first: attribute names of the modules used before the blocks (kept on the first stage).
        last: attribute names of the modules used after the blocks (kept on the last stage).
        embed: ``embed(stage_module, *inputs) -> x``, run on the first stage (it may use the
            modules named in ``first`` as attributes of ``stage_module``).
        finish: ``finish(stage_module, x) -> output``, run on the last stage.
    """

    blocks: str = "blocks"
    first: tuple[str, ...] = ("tok_emb", "pos_emb")
    last: tuple[str, ...] = ("norm", "head")
    embed: Callable[..., torch.Tensor] = _gpt_embed
    finish: Callable[[nn.Module, torch.Tensor], torch.Tensor] = _gpt_finish


GPT_SPEC = BlockModelSpec()
"""The layout of ``ptrain.core.models.gpt.GPT``."""


class PipelineChunk(nn.Module):
    """One pipeline stage: ``blocks[start:stop]`` plus the embedding (first) or the head (last).

    Parameter names equal the serial model's (``blocks.<i>.…`` keeps the global block index).
    ``forward`` takes the model's inputs on the first stage, else the hidden state ``(B, T, D)``.

    Attributes:
        stage_index: index of this stage in the pipeline (0 … num_stages-1).
        num_stages: total stages (ranks × chunks per rank).
        block_range: the global indices of the blocks held here.
    """

    def __init__(
        self,
        modules: dict[str, nn.Module],
        blocks: dict[str, nn.Module],
        *,
        spec: BlockModelSpec,
        stage_index: int,
        num_stages: int,
        block_range: range,
    ) -> None:
        super().__init__()
        for name, module in modules.items():
            self.add_module(name, module)
        self.blocks = nn.ModuleDict(blocks)
        self.spec = spec
        self.stage_index = stage_index
        self.num_stages = num_stages
        self.block_range = block_range

    @property
    def is_first(self) -> bool:
        """Whether this stage runs the embedding."""
        return self.stage_index == 0

    @property
    def is_last(self) -> bool:
        """Whether this stage runs the head."""
        return self.stage_index == self.num_stages - 1

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        x = self.spec.embed(self, *inputs) if self.is_first else inputs[0]
        for block in self.blocks.values():
            x = block(x)
        return self.spec.finish(self, x) if self.is_last else x


def partition_blocks(num_blocks: int, num_stages: int) -> list[range]:
    """Contiguous, balanced block ranges: the first ``num_blocks % num_stages`` stages get one more.

    Raises:
        ValueError: fewer blocks than stages (a stage would be empty).
    """
    if num_stages < 1:
        raise ValueError(f"num_stages must be >= 1, got {num_stages}")
    if num_blocks < num_stages:
        raise ValueError(
            f"cannot split {num_blocks} blocks into {num_stages} pipeline stages: every stage "
            f"needs at least one block (use more layers or fewer stages/chunks)"
        )
    base, extra = divmod(num_blocks, num_stages)
    ranges, start = [], 0
    for stage in range(num_stages):
        stop = start + base + (1 if stage < extra else 0)
        ranges.append(range(start, stop))
        start = stop
    return ranges


def stage_ids_for_rank(rank: int, pp_size: int, chunks: int) -> list[int]:
    """The stage indices rank ``rank`` holds: ``rank, rank + pp_size, …`` (looped placement)."""
    return [rank + chunk * pp_size for chunk in range(chunks)]


def split_model(
    model: nn.Module,
    num_stages: int,
    stage_ids: Sequence[int],
    spec: BlockModelSpec = GPT_SPEC,
) -> list[PipelineChunk]:
    """Cut ``model`` into ``num_stages`` contiguous stages and return those in ``stage_ids``.

    The kept modules are deep copies (the model itself is untouched); on a ``meta``-device model
    the copies stay on meta, so build the serial model on meta, split, then materialise only what
    this rank holds (``build_pipeline(init_seed=...)`` does this).

    Args:
        model: a model with ``spec.blocks`` (a ``ModuleList``) and the ``first``/``last`` modules.
        num_stages: total number of stages (pipeline ranks × chunks per rank).
        stage_ids: the stage indices to build.
        spec: the layout (default: the GPT's).

    Returns:
        One ``PipelineChunk`` per entry of ``stage_ids``.
    """
    blocks = getattr(model, spec.blocks, None)
    if not isinstance(blocks, nn.ModuleList):
        raise TypeError(
            f"{type(model).__name__}.{spec.blocks} must be an nn.ModuleList of repeated blocks"
        )
    for name in (*spec.first, *spec.last):
        if not isinstance(getattr(model, name, None), nn.Module):
            raise TypeError(f"{type(model).__name__} has no submodule {name!r} named in the spec")
    ranges = partition_blocks(len(blocks), num_stages)
    chunks = []
    for stage_index in stage_ids:
        if not 0 <= stage_index < num_stages:
            raise ValueError(f"stage index {stage_index} is outside 0..{num_stages - 1}")
        names: list[str] = []
        if stage_index == 0:
            names += spec.first
        if stage_index == num_stages - 1:
            names += spec.last
        modules = {name: copy.deepcopy(getattr(model, name)) for name in names}
        kept = {str(i): copy.deepcopy(blocks[i]) for i in ranges[stage_index]}
        chunks.append(
            PipelineChunk(
                modules,
                kept,
                spec=spec,
                stage_index=stage_index,
                num_stages=num_stages,
                block_range=ranges[stage_index],
            )
        )
    return chunks


def _materialise(
    chunks: list[PipelineChunk], model: nn.Module, seed: int, device: torch.device
) -> None:
    """Give meta chunks the values the serial model would get from ``init_weights(seed)``."""
    # The GPT's seeded init draws every tensor from one generator in module order, so a slice's
    # values depend on what comes before it: initialise a full copy on CPU once (this is a
    # small-model convenience; a large model should load a checkpoint per stage instead).
    full = copy.deepcopy(model).to_empty(device="cpu")
    init = getattr(full, "init_weights", None)
    if init is None:
        raise TypeError(f"{type(model).__name__} has no init_weights(seed); pass a built model")
    init(seed)
    state = full.state_dict()
    for chunk in chunks:
        chunk.to_empty(device=device)
        chunk.load_state_dict({name: state[name] for name in chunk.state_dict()})


@dataclass
class Pipeline:
    """A built pipeline on this rank: the stage modules it holds and the torch schedule.

    Attributes:
        modules: this rank's stage modules (``PipelineChunk``), in stage order.
        stages: the matching ``torch.distributed.pipelining.PipelineStage`` objects.
        schedule: the torch schedule object.
        schedule_name: ``gpipe``, ``1f1b`` or ``interleaved``.
        microbatches: micro-batches per ``step``.
        group: the pipeline process group (``None``: the world).
        last_rank: global rank holding the last stage (it broadcasts the loss).
        device: where this rank's stages live.
    """

    modules: list[PipelineChunk]
    stages: list[Any]
    schedule: Any
    schedule_name: str
    microbatches: int
    group: dist.ProcessGroup | None
    last_rank: int = field(default=0)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def parameters(self) -> Iterator[nn.Parameter]:
        """Every parameter this rank holds (for the optimizer)."""
        for module in self.modules:
            yield from module.parameters()

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """``(serial_name, parameter)`` for every parameter this rank holds."""
        for module in self.modules:
            yield from module.named_parameters()

    @property
    def holds_last_stage(self) -> bool:
        """Whether this rank computes the loss."""
        return any(module.is_last for module in self.modules)

    @property
    def holds_first_stage(self) -> bool:
        """Whether this rank takes the model inputs."""
        return any(module.is_first for module in self.modules)

    def step(
        self, *inputs: torch.Tensor, target: torch.Tensor | None, zero_grad: bool = True
    ) -> torch.Tensor:
        """One forward+backward over the whole batch, split into ``microbatches`` along dim 0.

        Every rank of the pipeline group calls it; only the first stage's inputs and the last
        stage's ``target`` are used (others may pass the same tensors, or any placeholders).

        Args:
            *inputs: the model inputs for the whole batch, e.g. ``tokens`` ``(B, T)``.
            target: the loss target for the whole batch, e.g. ``targets`` ``(B, T)``.
            zero_grad: set the held parameters' grads to ``None`` first (see module docstring).

        Returns:
            The mean of the micro-batch losses (= the serial mean loss over the batch), a 0-d
            tensor on every rank of the pipeline group (broadcast from the last stage).
        """
        batch = inputs[0].shape[0] if inputs else (target.shape[0] if target is not None else 0)
        if batch % self.microbatches != 0:
            raise ValueError(
                f"batch size {batch} is not divisible by microbatches={self.microbatches}: "
                f"unequal micro-batches would weight the mean loss unevenly"
            )
        if zero_grad:
            for parameter in self.parameters():
                parameter.grad = None
        losses: list[torch.Tensor] = []
        if self.holds_first_stage:
            self.schedule.step(*inputs, target=target, losses=losses)
        else:
            self.schedule.step(target=target, losses=losses)
        if losses:
            loss = torch.stack([value.detach() for value in losses]).mean()
        else:
            loss = torch.zeros((), dtype=torch.float64)
        loss = loss.to(device=self.device, dtype=torch.float64)  # NCCL needs it on the GPU
        dist.broadcast(loss, src=self.last_rank, group=self.group)
        return loss


def build_pipeline(
    model: nn.Module,
    group: GroupLike = None,
    *,
    schedule: ScheduleName = "1f1b",
    microbatches: int,
    chunks: int | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    spec: BlockModelSpec = GPT_SPEC,
    init_seed: int | None = None,
    device: torch.device | str = "cpu",
    prepare: Callable[[PipelineChunk], Any] | None = None,
) -> Pipeline:
    """Split ``model``, keep this rank's stage(s), and build the ``torch.distributed.pipelining``
    schedule over the pipeline group.

    Args:
        model: the serial model (any device; ``meta`` avoids a full copy, then pass
            ``init_seed`` to materialise this rank's stages with the serial model's seeded init).
        group: the pipeline group (``None``, a ``ProcessGroup``, ``mesh["pp"]`` or
            ``(mesh, "pp")``); its size is the number of pipeline ranks ``p``.
        schedule: ``gpipe``, ``1f1b`` or ``interleaved``.
        microbatches: micro-batches per step ``m``. ``interleaved`` needs ``m`` to be a multiple
            of ``p`` (Megatron's rule; torch 2.13 is laxer, we keep the documented one).
        chunks: stages per rank ``v`` (only ``interleaved``; default 2). ``p·v`` must not exceed
            the number of blocks.
        loss_fn: ``loss_fn(output, target) -> scalar`` per micro-batch, a *mean* over it
            (default: mean cross-entropy over the logits, in the logits' dtype).
        spec: the model layout (default: ``GPT_SPEC``).
        init_seed: when the model is on ``meta``, materialise with ``model.init_weights(seed)``.
        device: where this rank's stages live.
        prepare: called on each materialised stage module before it is wrapped in a
            ``PipelineStage``; the place to shard it further, e.g.
            ``lambda chunk: fully_shard(chunk, mesh=mesh["dp_shard"])`` for pp × ZeRO-3 (a
            returned ``nn.Module`` replaces the chunk as the stage's module; anything else
            keeps the chunk).

    Returns:
        A ``Pipeline``.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    if microbatches < 1:
        raise ValueError(f"microbatches must be >= 1, got {microbatches}")
    from torch.distributed.pipelining import (
        PipelineStage,
        Schedule1F1B,
        ScheduleGPipe,
        ScheduleInterleaved1F1B,
    )

    pg = resolve_group(group)
    pp_size = dist.get_world_size(pg)
    rank = dist.get_rank(pg)
    if schedule == "interleaved":
        chunks = 2 if chunks is None else chunks
        if chunks < 2:
            raise ValueError(f"the interleaved schedule needs chunks >= 2, got {chunks}")
        if microbatches % pp_size != 0:
            raise ValueError(
                f"the interleaved schedule needs microbatches ({microbatches}) to be a multiple "
                f"of the pipeline size ({pp_size})"
            )
    elif chunks not in (None, 1):
        raise ValueError(f"schedule {schedule!r} holds one stage per rank; got chunks={chunks}")
    else:
        chunks = 1
    num_stages = pp_size * chunks
    stage_ids = stage_ids_for_rank(rank, pp_size, chunks)
    modules = split_model(model, num_stages, stage_ids, spec)
    torch_device = torch.device(device)
    if any(p.is_meta for module in modules for p in module.parameters()):
        if init_seed is None:
            raise ValueError("the model is on the meta device: pass init_seed to materialise")
        _materialise(modules, model, init_seed, torch_device)
    for module in modules:
        module.to(torch_device)
    submodules: list[nn.Module] = list(modules)
    if prepare is not None:
        for index, module in enumerate(modules):
            replaced = prepare(module)
            if isinstance(replaced, nn.Module):
                submodules[index] = replaced
    stages: list[Any] = [
        PipelineStage(submodule, module.stage_index, num_stages, torch_device, group=pg)
        for module, submodule in zip(modules, submodules, strict=True)
    ]
    loss = _mean_cross_entropy if loss_fn is None else loss_fn
    runner: Any
    if schedule == "gpipe":
        runner = ScheduleGPipe(stages[0], microbatches, loss_fn=loss, scale_grads=True)
    elif schedule == "1f1b":
        runner = Schedule1F1B(stages[0], microbatches, loss_fn=loss, scale_grads=True)
    else:
        runner = ScheduleInterleaved1F1B(stages, microbatches, loss_fn=loss, scale_grads=True)
    # the last stage (index p·v − 1) lives on pipeline rank p − 1 for every placement here
    last_rank = dist.get_global_rank(pg, pp_size - 1) if pg is not None else pp_size - 1
    return Pipeline(
        modules, stages, runner, schedule, microbatches, pg, last_rank, device=torch_device
    )


def _mean_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    # logits (B, T, V), targets (B, T) -> mean over B·T tokens, in the logits' dtype
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def main(argv: Sequence[str] | None = None) -> int:
    """Train the debug GPT a few steps under a pipeline schedule (launch with torchrun).

    ``torchrun --nproc-per-node 4 -m ptrain.core.pipeline --schedule 1f1b --microbatches 8``
    (or ``python -m ptrain.core.pipeline`` for one process, the serial reference: same losses).
    """
    import argparse

    from ptrain.core.dist import init_distributed
    from ptrain.core.models.gpt import GPT, GPTConfig, synthetic_batch

    parser = argparse.ArgumentParser(
        prog="python -m ptrain.core.pipeline",
        description="Train the debug GPT under GPipe / 1F1B / interleaved 1F1B; prints the loss.",
    )
    parser.add_argument("--schedule", choices=SCHEDULES, default="1f1b")
    parser.add_argument("--microbatches", type=int, default=8)
    parser.add_argument("--chunks", type=int, default=None, help="stages per rank (interleaved)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--layers", type=int, default=8, help="GPT blocks (>= ranks × chunks)")
    args = parser.parse_args(argv)
    info = init_distributed()
    config = GPTConfig.debug(n_layers=args.layers)
    model = GPT(config, device="meta")
    if info.world_size == 1:  # the serial reference
        model.to_empty(device="cpu")
        model.init_weights(0)
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    else:
        pipe = build_pipeline(
            model,
            None,
            schedule=args.schedule,
            microbatches=args.microbatches,
            chunks=args.chunks,
            init_seed=0,
        )
        optimizer = torch.optim.AdamW(pipe.parameters(), lr=3e-3)
    for step in range(args.steps):
        tokens, targets = synthetic_batch(config, args.batch_size, seed=step)
        if info.world_size == 1:
            optimizer.zero_grad(set_to_none=True)
            loss = _mean_cross_entropy(model(tokens), targets)
            loss.backward()
        else:
            loss = pipe.step(tokens, target=targets)
        optimizer.step()
        if info.rank == 0:
            print(f"step {step}  loss {loss.item():.6f}", flush=True)
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
