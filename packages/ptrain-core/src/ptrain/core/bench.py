"""An interleaved ratio benchmark: ours against a baseline, in one process, with JSON output.

Absolute times on a shared machine are noise; the ratio of two things timed side by side is the
result. ``compare`` times ``candidate`` and ``baseline`` in alternating blocks (the one that goes
first swaps every repeat, so slow drift of the machine cancels) and reports medians and their
ratio. The number of calls is fixed by the arguments, never adapted to elapsed time, so ranks of a
distributed job that benchmark collectives issue the same calls in the same order.

Example::

    parser = bench_argument_parser("LAMB vs AdamW step time")
    args = parser.parse_args()
    result = compare(lamb_step, adamw_step, name="lamb_step_vs_adamw",
                     repeats=3 if args.quick else args.repeats, goal=1.5)
    print(result.summary())
    if args.json:
        write_json(args.json, [result], meta={"model": "gpt-small"})
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import math
import os
import platform
import re
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import torch

from ptrain.core import cli
from ptrain.core.cli import positive_int

__all__ = [
    "BenchResult",
    "bench_argument_parser",
    "compare",
    "environment_info",
    "format_seconds",
    "write_json",
]

# Distributions of this repository that do not start with "ptrain-".
_SIBLING_DISTRIBUTIONS = ("contrastive-crop", "ones-distill", "infjesp", "mred", "keypointnet")


@dataclass(frozen=True, slots=True)
class BenchResult:
    """The outcome of ``compare``.

    Attributes:
        name: what was compared (e.g. ``"lamb_step_vs_adamw"``).
        candidate_s: median seconds per call of the candidate ("ours").
        baseline_s: median seconds per call of the baseline.
        ratio: ``candidate_s / baseline_s`` (below 1: ours is faster). ``inf`` when the baseline
            median is 0 (below the clock's resolution) and the candidate's is not; ``nan`` when
            both are 0.
        repeats: timed blocks per callable.
        number: calls per timed block.
        threads: torch intra-op threads used (None: left as it was).
        goal: the largest acceptable ratio, or None.
        candidate_samples: seconds per call of each timed block of the candidate.
        baseline_samples: seconds per call of each timed block of the baseline.
    """

    name: str
    candidate_s: float
    baseline_s: float
    ratio: float
    repeats: int
    number: int
    threads: int | None
    goal: float | None
    candidate_samples: list[float]
    baseline_samples: list[float]

    @property
    def met_goal(self) -> bool | None:
        """Whether ``ratio <= goal``; None when there is no goal."""
        if self.goal is None:
            return None
        return bool(self.ratio <= self.goal)

    def to_dict(self) -> dict[str, Any]:
        """Returns the result as JSON-ready data (non-finite ratios become None).

        Returns:
            All fields plus ``met_goal``.
        """
        return {
            "name": self.name,
            "candidate_s": self.candidate_s,
            "baseline_s": self.baseline_s,
            "ratio": self.ratio if math.isfinite(self.ratio) else None,
            "repeats": self.repeats,
            "number": self.number,
            "threads": self.threads,
            "goal": self.goal,
            "met_goal": self.met_goal,
            "candidate_samples": list(self.candidate_samples),
            "baseline_samples": list(self.baseline_samples),
        }

    def summary(self) -> str:
        """One line: ``name: ours 12.3 ms, baseline 9.8 ms, ratio 1.26x (goal <= 1.50x: met)``.

        Returns:
            The line, without a trailing newline.
        """
        line = (
            f"{self.name}: ours {format_seconds(self.candidate_s)}, "
            f"baseline {format_seconds(self.baseline_s)}, ratio {self.ratio:.2f}x"
        )
        if self.goal is not None:
            line += f" (goal <= {self.goal:.2f}x: {'met' if self.met_goal else 'NOT met'})"
        return line


def format_seconds(seconds: float) -> str:
    """Formats a duration with three significant digits in s, ms, us or ns.

    Args:
        seconds: the duration.

    Returns:
        For example ``"12.3 ms"``.
    """
    for scale, unit in ((1.0, "s"), (1e-3, "ms"), (1e-6, "us")):
        if seconds >= scale:
            return f"{_three_digits(seconds / scale)} {unit}"
    return f"{_three_digits(seconds / 1e-9)} ns"


def _three_digits(value: float) -> str:
    text = f"{value:.3g}"
    return f"{value:.0f}" if "e" in text else text


def _check_count(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"compare: {name} must be an int >= {minimum}, got {value!r}")


def _synchronize_cuda() -> None:
    """Waits for queued GPU work, so a block's time includes it (no-op without CUDA in use)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _time_block(fn: Callable[[], object], number: int, setup: Callable[[], None] | None) -> float:
    """Seconds per call over ``number`` calls of ``fn``, with the garbage collector paused."""
    if setup is not None:
        setup()
    _synchronize_cuda()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        for _ in range(number):
            fn()
        _synchronize_cuda()
        elapsed = time.perf_counter() - start
    finally:
        if gc_was_enabled:
            gc.enable()
    return elapsed / number


def compare(
    candidate: Callable[[], object],
    baseline: Callable[[], object],
    *,
    name: str,
    repeats: int = 7,
    warmup: int = 1,
    number: int = 1,
    threads: int | None = 1,
    goal: float | None = None,
    setup: Callable[[], None] | None = None,
) -> BenchResult:
    """Times ``candidate`` against ``baseline``, interleaved, and returns medians and their ratio.

    First ``warmup`` untimed calls of each (alternating, ``setup`` before each call). Then
    ``repeats`` rounds; each round times one block of ``number`` calls of each callable, the
    candidate first on even rounds and the baseline first on odd rounds. ``setup`` runs before
    every timed block, outside the timing. The number of calls of every callable is fixed by the
    arguments, so every rank of a distributed job makes the same calls. The garbage collector is
    paused inside timed blocks (as ``timeit`` does), and when CUDA is in use the GPU is
    synchronised at the start and end of each block.

    Args:
        candidate: ours, a zero-argument callable.
        baseline: what it is compared with, a zero-argument callable.
        name: the label of the result (e.g. ``"lamb_step_vs_adamw"``).
        repeats: timed blocks per callable (the medians are over these).
        warmup: untimed calls of each callable before timing.
        number: calls per timed block.
        threads: ``torch.set_num_threads`` for the duration, restored afterwards; None leaves
            the setting alone.
        goal: the largest acceptable ``candidate_s / baseline_s``, or None.
        setup: called before every timed block and every warm-up call, untimed.

    Returns:
        The medians, the ratio, and every sample.

    Raises:
        ValueError: a count is out of range, ``goal`` is not positive, ``name`` is empty, or a
            callable is not callable.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"compare: name must be a non-empty string, got {name!r}")
    for label, fn in (("candidate", candidate), ("baseline", baseline), ("setup", setup)):
        if fn is not None and not callable(fn):
            raise ValueError(f"compare: {label} must be callable, got {type(fn).__name__}")
    _check_count("repeats", repeats, 1)
    _check_count("warmup", warmup, 0)
    _check_count("number", number, 1)
    if threads is not None:
        _check_count("threads", threads, 1)
    if goal is not None and not (isinstance(goal, int | float) and goal > 0):
        raise ValueError(f"compare: goal must be a positive number or None, got {goal!r}")

    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        for _ in range(warmup):
            for fn in (candidate, baseline):
                if setup is not None:
                    setup()
                fn()
        _synchronize_cuda()
        candidate_samples: list[float] = []
        baseline_samples: list[float] = []
        for round_index in range(repeats):
            if round_index % 2 == 0:
                candidate_samples.append(_time_block(candidate, number, setup))
                baseline_samples.append(_time_block(baseline, number, setup))
            else:
                baseline_samples.append(_time_block(baseline, number, setup))
                candidate_samples.append(_time_block(candidate, number, setup))
    finally:
        if threads is not None:
            torch.set_num_threads(previous_threads)

    candidate_s = statistics.median(candidate_samples)
    baseline_s = statistics.median(baseline_samples)
    if baseline_s > 0:
        ratio = candidate_s / baseline_s
    else:
        ratio = math.inf if candidate_s > 0 else math.nan
    return BenchResult(
        name=name,
        candidate_s=candidate_s,
        baseline_s=baseline_s,
        ratio=ratio,
        repeats=repeats,
        number=number,
        threads=threads,
        goal=None if goal is None else float(goal),
        candidate_samples=candidate_samples,
        baseline_samples=baseline_samples,
    )


def bench_argument_parser(description: str) -> argparse.ArgumentParser:
    """Returns the parser every benchmark script starts from.

    Flags: ``--json PATH`` (results as JSON; ``'-'`` for stdout), ``--repeats N`` (timed blocks
    per callable, default 7), ``--quick`` (a smaller, faster run; the script decides what that
    means). Scripts add their own flags to it.

    Args:
        description: what the benchmark compares (shown by ``--help``).

    Returns:
        The parser.
    """
    parser = argparse.ArgumentParser(description=description)
    cli.add_json_argument(parser)
    parser.add_argument(
        "--repeats",
        type=positive_int,
        default=7,
        metavar="N",
        help="timed blocks per callable; the reported times are their medians (default: 7)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smaller, faster run (for CI smoke tests); ratios are noisier",
    )
    return parser


def _canonical_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_ptrain_packages() -> dict[str, str]:
    """Versions of the installed distributions of this repository.

    Returns:
        ``{distribution name: version}`` for every distribution named ``ptrain-*`` plus
        contrastive-crop, ones-distill, infjesp, mred and keypointnet, sorted by name.
    """
    found: dict[str, str] = {}
    for distribution in importlib.metadata.distributions():
        raw_name = distribution.metadata["Name"]
        if not raw_name:
            continue
        name = _canonical_name(raw_name)
        if name.startswith("ptrain-") or name in _SIBLING_DISTRIBUTIONS:
            found.setdefault(name, distribution.version)
    return dict(sorted(found.items()))


def distributed_backends() -> dict[str, bool]:
    """Which torch.distributed backends this torch build offers.

    Returns:
        ``{"gloo": bool, "nccl": bool, "mpi": bool, "ucc": bool}``.
    """
    import torch.distributed as dist

    available = dist.is_available()
    backends = {}
    for backend in ("gloo", "nccl", "mpi", "ucc"):
        check = getattr(dist, f"is_{backend}_available", None)
        backends[backend] = bool(available and check is not None and check())
    return backends


def environment_info() -> dict[str, Any]:
    """Describes the machine and software a result was measured on.

    Calling it initialises CUDA when CUDA is available (to read device names): call it after
    forking worker processes, not before.

    Returns:
        ``torch``, ``python``, ``platform``, ``cpu_count``, ``torch_threads``, ``timestamp``
        (UTC, ISO 8601), ``cuda`` (``available``, ``device_count``, ``devices``),
        ``distributed_backends`` and ``packages`` (installed ptrain distributions and versions).
    """
    cuda_available = torch.cuda.is_available()
    device_count = torch.cuda.device_count() if cuda_available else 0
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "cuda": {
            "available": cuda_available,
            "device_count": device_count,
            "devices": [torch.cuda.get_device_name(i) for i in range(device_count)],
        },
        "distributed_backends": distributed_backends(),
        "packages": installed_ptrain_packages(),
    }


def write_json(
    path: str | os.PathLike[str],
    results: Sequence[BenchResult] | BenchResult,
    meta: Mapping[str, Any] | None = None,
) -> None:
    """Writes results as ``{"results": [...], "meta": {...}, "environment": {...}}``.

    The file is written atomically (``ptrain.core.cli.write_json``); ``"-"`` writes to stdout.

    Args:
        path: the output file, or ``"-"``.
        results: the results (a single result is accepted too).
        meta: the benchmark's own parameters (model size, batch, ...), stored as given.

    Raises:
        ValueError: ``results`` holds something other than ``BenchResult``.
    """
    if isinstance(results, BenchResult):
        results = [results]
    for index, result in enumerate(results):
        if not isinstance(result, BenchResult):
            raise ValueError(
                f"write_json: results[{index}] must be a BenchResult, got {type(result).__name__}"
            )
    document = {
        "results": [result.to_dict() for result in results],
        "meta": dict(meta) if meta is not None else {},
        "environment": environment_info(),
    }
    cli.write_json(path, document)
