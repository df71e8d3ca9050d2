"""Measured pipeline bubble of GPipe and 1F1B (``ptrain-core bench pipeline``) beside (p−1)/m.

``run_pipeline_bench(stages=p, microbatches=m)`` runs each schedule on ``p`` forked gloo ranks
(``ptrain.core.testing.run_distributed``), one stage per rank, through
``torch.distributed.pipelining``. Every stage has the *same fixed cost*: a small real matmul
(a ``Linear(64, 64)`` on a 4×64 micro-batch) padded with ``time.sleep`` so that each forward
takes ``forward_s`` and each backward ``2·forward_s`` of wall time. A fixed duration is needed
because the machine may have fewer cores than ranks: a CPU-bound stage would then slow down or
speed up with its share of the cores, and the measurement would reflect the OS scheduler, not the
pipeline schedule. Sleeping stages do not compete for cores, so what is measured is the schedule
(plus the small p2p and Python overheads of the pipelining runtime, which count as bubble).

Each stage records its busy intervals — every forward and every backward of a micro-batch, from
its first to its last instruction — with ``time.perf_counter`` (CLOCK_MONOTONIC, one clock for
all processes on the machine). After an untimed warm-up step, each timed step starts behind a
barrier. Definitions, for one step:

- ``makespan`` = (latest busy end over all stages) − (earliest busy start over all stages), i.e.
  from stage 0's first forward to the last backward;
- ``busy_s`` of stage ``s`` = the sum of its busy intervals (ideally ``m·(t_f + t_b)``);
- bubble of stage ``s`` = ``(makespan − busy_s) / busy_s``: its idle time inside the step over
  its useful time, Narayanan et al.'s ``t_bubble / t_ideal``;
- ``measured_bubble`` = that ratio averaged over the stages, then over the timed steps.

With equal stages, GPipe and 1F1B both idle each stage for ``(p−1)·(t_f + t_b)``, so the ideal
value is ``formula_bubble = (p−1)/m`` for both (1F1B saves activation memory, not time). The
measured value is slightly above it: the overheads between compute intervals count as bubble.
``schedules=("interleaved",)`` (not in the CLI, used by ``benchmarks/bench_pipeline.py``) runs
interleaved 1F1B with ``v = chunks`` stages per rank, each costing ``1/v`` of the rank's work;
"stage" above then means the rank (all its chunks), and the formula is ``(p−1)/(v·m)``.
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ptrain.core.cli import UserError
from ptrain.core.testing import run_distributed

__all__ = ["PipelineBenchError", "measure_bubble", "run_pipeline_bench"]

_DIM = 64
_ROWS_PER_MICROBATCH = 4
_CPU = torch.device("cpu")


class _BackwardTimer(torch.autograd.Function):
    """Identity in forward; its backward marks where the stage's backward starts or ends."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, anchor: torch.Tensor, probe: _StageClock) -> Any:
        ctx.probe = probe
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        ctx.probe.on_backward_hook()
        return grad, torch.zeros((), dtype=grad.dtype), None


class _StageClock:
    """Pads forwards/backwards to fixed durations and records the busy intervals."""

    def __init__(self, forward_s: float, backward_s: float) -> None:
        self.forward_s = forward_s
        self.backward_s = backward_s
        self.intervals: list[tuple[str, float, float]] = []
        self._backward_start: float | None = None

    def pad(self, start: float, duration: float) -> float:
        remaining = start + duration - time.perf_counter()
        if remaining > 0:
            time.sleep(remaining)
        return time.perf_counter()

    def on_backward_hook(self) -> None:
        # Called twice per backward: first by the output-side marker (backward starts), then by
        # the input-side marker (backward's compute is done: pad it and record the interval).
        if self._backward_start is None:
            self._backward_start = time.perf_counter()
            return
        start, self._backward_start = self._backward_start, None
        end = self.pad(start, self.backward_s)
        self.intervals.append(("backward", start, end))


class _FixedCostStage(nn.Module):
    def __init__(self, clock: _StageClock) -> None:
        super().__init__()
        self.linear = nn.Linear(_DIM, _DIM)
        self.anchor = nn.Parameter(torch.zeros(()))  # puts the input marker in every graph
        self.clock = clock

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        x = _BackwardTimer.apply(x, self.anchor, self.clock)  # backward: end marker
        y = torch.tanh(self.linear(x))
        y = _BackwardTimer.apply(y, self.anchor, self.clock)  # backward: start marker
        end = self.clock.pad(start, self.clock.forward_s)
        self.clock.intervals.append(("forward", start, end))
        return y


def _bench_rank(
    rank: int,
    world_size: int,
    schedule: str,
    microbatches: int,
    forward_s: float,
    steps: int,
    chunks: int,
) -> list[list[tuple[str, float, float]]]:
    from torch.distributed.pipelining import (
        PipelineStage,
        Schedule1F1B,
        ScheduleGPipe,
        ScheduleInterleaved1F1B,
    )

    torch.manual_seed(rank)
    # v chunks per rank each cost 1/v of the rank's work, so every schedule does the same work
    clock = _StageClock(forward_s / chunks, 2 * forward_s / chunks)
    num_stages = world_size * chunks
    stages: list[Any] = [
        PipelineStage(_FixedCostStage(clock), rank + chunk * world_size, num_stages, _CPU)
        for chunk in range(chunks)
    ]

    def loss_fn(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (output - target).pow(2).mean()

    runner: Any
    if schedule == "interleaved":
        runner = ScheduleInterleaved1F1B(stages, microbatches, loss_fn=loss_fn)
    else:
        runner_class = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B}[schedule]
        runner = runner_class(stages[0], microbatches, loss_fn=loss_fn)
    batch = torch.randn(microbatches * _ROWS_PER_MICROBATCH, _DIM)
    target = torch.zeros_like(batch)
    per_step = []
    for step in range(steps + 1):  # step 0 warms up (shape inference, buffers)
        clock.intervals = []
        dist.barrier()
        if rank == 0:
            runner.step(batch, target=target)
        else:
            runner.step(target=target)
        if step > 0:
            per_step.append(list(clock.intervals))
    dist.barrier()
    return per_step


def measure_bubble(per_rank_steps: list[list[list[tuple[str, float, float]]]]) -> float:
    """The mean over steps of the mean over stages of ``(makespan − busy) / busy``.

    Args:
        per_rank_steps: ``[rank][step] -> [(kind, start, end), ...]``.
    """
    steps = len(per_rank_steps[0])
    bubbles = []
    for step in range(steps):
        intervals = [rank_steps[step] for rank_steps in per_rank_steps]
        start = min(begin for stage in intervals for _, begin, _ in stage)
        end = max(finish for stage in intervals for _, _, finish in stage)
        makespan = end - start
        per_stage = []
        for stage in intervals:
            busy = sum(finish - begin for _, begin, finish in stage)
            per_stage.append((makespan - busy) / busy)
        bubbles.append(sum(per_stage) / len(per_stage))
    return sum(bubbles) / len(bubbles)


class PipelineBenchError(UserError, ValueError):
    """Arguments the schedules cannot run with (a one-line message; the CLI exits with 2)."""


def _check_arguments(
    stages: int, microbatches: int, schedules: tuple[str, ...], chunks: int
) -> None:
    if stages < 2:
        raise PipelineBenchError(f"a pipeline needs at least 2 stages, got --stages {stages}")
    if microbatches < 1:
        raise PipelineBenchError(f"microbatches must be >= 1, got {microbatches}")
    for schedule in schedules:
        if schedule not in ("gpipe", "1f1b", "interleaved"):
            raise PipelineBenchError(
                f"schedule must be 'gpipe', '1f1b' or 'interleaved', got {schedule!r}"
            )
    if "1f1b" in schedules and microbatches < stages:
        raise PipelineBenchError(
            f"1F1B needs at least as many micro-batches as stages (torch's Schedule1F1B); got "
            f"--microbatches {microbatches} < --stages {stages}"
        )
    if "interleaved" in schedules and (chunks < 2 or microbatches % stages != 0):
        raise PipelineBenchError(
            f"interleaved needs chunks >= 2 and microbatches a multiple of stages; got "
            f"chunks={chunks}, microbatches={microbatches}, stages={stages}"
        )


def run_pipeline_bench(
    stages: int = 4,
    microbatches: int = 8,
    *,
    schedules: tuple[str, ...] = ("gpipe", "1f1b"),
    chunks: int = 2,
    forward_s: float = 0.05,
    steps: int = 3,
    timeout: float = 120.0,
) -> list[dict[str, Any]]:
    """Measure the bubble of each schedule with equal fixed-cost stages (see module docstring).

    Args:
        stages: pipeline stages ``p`` (one forked rank each).
        microbatches: micro-batches per step ``m``.
        schedules: any of ``gpipe``, ``1f1b`` and ``interleaved`` (interleaved 1F1B, ``chunks``
            stages per rank, each costing ``1/chunks`` of a rank's work; formula
            ``(p−1)/(chunks·m)``; ``m`` must be a multiple of ``p``).
        chunks: stages per rank for ``interleaved``.
        forward_s: wall time of one rank's forward of a micro-batch (a backward takes twice
            as long).
        steps: timed steps per schedule (after one warm-up step).
        timeout: seconds before the forked ranks are killed.

    Returns:
        One row per schedule: ``{"schedule", "stages", "microbatches", "measured_bubble",
        "formula_bubble"}`` with ``formula_bubble = (p−1)/m`` (``(p−1)/(v·m)`` interleaved).

    Raises:
        PipelineBenchError: fewer than 2 stages, ``m < p`` with 1F1B (torch requires
            ``m ≥ p``), or interleaved arguments it cannot run with.
    """
    _check_arguments(stages, microbatches, schedules, chunks)
    rows = []
    for schedule in schedules:
        local_chunks = chunks if schedule == "interleaved" else 1
        per_rank = run_distributed(
            _bench_rank,
            stages,
            schedule,
            microbatches,
            forward_s,
            steps,
            local_chunks,
            timeout=timeout,
        )
        rows.append(
            {
                "schedule": schedule,
                "stages": stages,
                "microbatches": microbatches,
                "measured_bubble": measure_bubble(per_rank),
                "formula_bubble": (stages - 1) / (local_chunks * microbatches),
            }
        )
    return rows
