"""``ptrain-moe bench layer``: forward + backward time of our MoE against four baselines.

All five variants see the same tokens and (where they have them) the same router and expert
weights. ``ptrain.core.bench.compare`` interleaves *two* callables; here five are interleaved
round-robin (1 thread, the order rotating each round, one call of each per round) so that every
variant is timed under the same load, and each time is the median over the rounds. The results
are returned as ``ptrain.core.bench.BenchResult`` records (ours vs each baseline) as well.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ptrain.core.bench import BenchResult
from ptrain.moe.layer import MoE, MoEConfig
from ptrain.moe.reference import DenseFFN, EinsumDispatchMoE, NaiveLoopMoE

__all__ = ["LAYER_GOALS", "LayerBenchConfig", "bench_layer"]

LAYER_GOALS = {
    "dense_equal_flops_s": 0.7,
    "naive_loop_s": 1.1,
    "einsum_dispatch_s": 3.0,
}
"""Goals: ``baseline_s / moe_dropless_s`` must reach these."""


@dataclass(kw_only=True, slots=True)
class LayerBenchConfig:
    """Sizes of ``bench layer`` (validated)."""

    tokens: int = 4096
    dim: int = 256
    experts: int = 8
    top_k: int = 2
    expert_hidden: int = 512
    capacity_factor: float = 1.25
    repeats: int = 7
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("tokens", "dim", "experts", "top_k", "expert_hidden", "repeats"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"bench layer: --{name.replace('_', '-')} must be >= 1, got {value}"
                )
        if self.capacity_factor <= 0:
            raise ValueError(
                f"bench layer: capacity factor must be > 0, got {self.capacity_factor}"
            )
        MoEConfig(  # validates top_k against experts
            dim=self.dim,
            expert_hidden=self.expert_hidden,
            num_experts=self.experts,
            top_k=self.top_k,
        )


def _fwd_bwd(forward: Callable[[torch.Tensor], Any], x: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        out = forward(x)
        if isinstance(out, tuple):
            y, aux = out
            loss = y.square().mean() + aux["loss"]
        else:
            loss = out.square().mean()
        loss.backward()

    return run


def bench_layer(config: LayerBenchConfig) -> tuple[dict[str, float], list[BenchResult]]:
    """Times the five variants (forward + backward of ``mean(y²)``, plus aux loss for ours).

    Args:
        config: the sizes.

    Returns:
        ``(times, results)``: ``times`` has exactly the contract keys ``moe_dropless_s``,
        ``moe_capacity_s``, ``dense_equal_flops_s``, ``naive_loop_s``, ``einsum_dispatch_s``
        (median seconds); ``results`` four records, ours vs each baseline.
    """
    torch.manual_seed(config.seed)
    moe_config = MoEConfig(
        dim=config.dim,
        expert_hidden=config.expert_hidden,
        num_experts=config.experts,
        top_k=config.top_k,
        capacity_factor=0.0,
    )
    dropless = MoE(moe_config)
    capacity = MoE(
        MoEConfig.from_dict({**moe_config.to_dict(), "capacity_factor": config.capacity_factor})
    )
    capacity.load_state_dict(dropless.state_dict())
    dense = DenseFFN(config.dim, config.top_k * config.expert_hidden)
    naive = NaiveLoopMoE(dropless)
    einsum = EinsumDispatchMoE(capacity, config.capacity_factor)
    x = torch.randn(config.tokens, config.dim, requires_grad=True)

    variants = {
        "moe_dropless_s": _fwd_bwd(dropless, x),
        "moe_capacity_s": _fwd_bwd(capacity, x),
        "dense_equal_flops_s": _fwd_bwd(dense, x),
        "naive_loop_s": _fwd_bwd(naive, x),
        "einsum_dispatch_s": _fwd_bwd(einsum, x),
    }
    samples = _round_robin(variants, config.repeats)
    times = {key: statistics.median(values) for key, values in samples.items()}
    ours = samples["moe_dropless_s"]
    results = []
    for key in list(variants)[1:]:
        goal = LAYER_GOALS.get(key)
        results.append(
            BenchResult(
                name=f"moe_dropless_vs_{key.removesuffix('_s')}",
                candidate_s=times["moe_dropless_s"],
                baseline_s=times[key],
                ratio=times["moe_dropless_s"] / times[key],
                repeats=config.repeats,
                number=1,
                threads=1,
                goal=None if goal is None else 1.0 / goal,
                candidate_samples=list(ours),
                baseline_samples=list(samples[key]),
            )
        )
    return times, results


def _round_robin(variants: dict[str, Callable[[], None]], repeats: int) -> dict[str, list[float]]:
    """One untimed call of each, then ``repeats`` rounds timing every variant once per round.

    The order rotates from round to round, so a slow spell of a shared machine hits every
    variant alike; the garbage collector is paused inside each timed call; 1 thread.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    samples: dict[str, list[float]] = {key: [] for key in variants}
    keys = list(variants)
    try:
        for key in keys:
            variants[key]()
        for round_index in range(repeats):
            shift = round_index % len(keys)
            for key in keys[shift:] + keys[:shift]:
                gc_was_enabled = gc.isenabled()
                gc.disable()
                try:
                    start = time.perf_counter()
                    variants[key]()
                    samples[key].append(time.perf_counter() - start)
                finally:
                    if gc_was_enabled:
                        gc.enable()
    finally:
        torch.set_num_threads(previous)
    return samples
