"""``ptrain-moe bench layer``: forward + backward time of our MoE against four baselines.

All five variants see the same tokens and (where they have them) the same router and expert
weights. Timing uses ``ptrain.core.bench.compare`` (1 thread, interleaved rounds, medians): our
dropless MoE is the candidate against each baseline in turn; its time is the median over all its
samples.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ptrain.core.bench import BenchResult, compare
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
        (median seconds); ``results`` the four ``compare`` results (ours vs each baseline).
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

    ours = _fwd_bwd(dropless, x)
    baselines = {
        "moe_capacity_s": _fwd_bwd(capacity, x),
        "dense_equal_flops_s": _fwd_bwd(dense, x),
        "naive_loop_s": _fwd_bwd(naive, x),
        "einsum_dispatch_s": _fwd_bwd(einsum, x),
    }
    results: list[BenchResult] = []
    ours_samples: list[float] = []
    times: dict[str, float] = {}
    for key, baseline in baselines.items():
        goal = LAYER_GOALS.get(key)
        result = compare(
            ours,
            baseline,
            name=f"moe_dropless_vs_{key.removesuffix('_s')}",
            repeats=config.repeats,
            threads=1,
            goal=None if goal is None else 1.0 / goal,
        )
        results.append(result)
        ours_samples.extend(result.candidate_samples)
        times[key] = result.baseline_s
    return {"moe_dropless_s": statistics.median(ours_samples), **times}, results
