"""The ``bench`` contracts: largest model per memory system, bytes moved per policy, step time.

Accounting (the same for every system): a run *fits* when, at every moment, the model-data
bytes held on a tier plus (fast tier only) the live bytes of activations saved for backward
(``SavedTensorTracer``) stay within the tier's capacity. For plain torch and static partition the
model-data bytes are constant and exact (no chunk padding), so their peak is
``model bytes on the tier + activation peak``; hetmem's peak is measured during a real run whose
chunk payloads are cut from a budgeted arena.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ptrain.core.models.gpt import GPT, GPTConfig, gpt_loss, synthetic_batch
from ptrain.hetmem.config import AdamConfig, HetMemConfig, TierSpec
from ptrain.hetmem.engine import HetMemEngine, initialize
from ptrain.hetmem.tiers import BudgetExceeded
from ptrain.hetmem.tracer import SavedTensorTracer

__all__ = [
    "activation_peak",
    "bench_capacity",
    "bench_step",
    "bench_traffic",
    "gpt_config",
    "largest_fitting",
]

WIDTH, VOCAB, SEQ, BATCH, HEADS = 256, 1024, 64, 4, 4


def gpt_config(n_layers: int) -> GPTConfig:
    """The benchmark GPT: width 256, vocabulary 1024, sequence 64, 4 heads."""
    return GPTConfig(vocab_size=VOCAB, seq_len=SEQ, dim=WIDTH, n_layers=n_layers, n_heads=HEADS)


def _batch(config: GPTConfig, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    return synthetic_batch(config, BATCH, seed=seed)


def activation_peak(model: nn.Module, config: GPTConfig) -> int:
    """Peak bytes of tensors saved for backward in one plain forward + loss (parameters are
    model data and not counted)."""
    by_ptr = {int(p.data_ptr()): p for p in model.parameters()}

    def ref(tensor: torch.Tensor) -> Any:
        param = by_ptr.get(int(tensor.data_ptr()))
        if param is None:
            return None
        return (param, tuple(tensor.shape), tuple(tensor.stride()))

    tracer = SavedTensorTracer(ref, lambda m: m[0].as_strided(m[1], m[2]))
    tokens, targets = _batch(config, 0)
    with tracer:
        loss = gpt_loss(model(tokens), targets)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return tracer.peak


def _plain_fits(n_layers: int, budget: int, host: int) -> bool:
    config = gpt_config(n_layers)
    params = config.num_params()
    if 16 * params > budget:
        return False
    torch.manual_seed(0)
    return 16 * params + activation_peak(GPT(config), config) <= budget


def _static_fits(n_layers: int, budget: int, host: int) -> bool:
    config = gpt_config(n_layers)
    params = config.num_params()
    if 8 * params > budget or 8 * params > host:
        return False
    torch.manual_seed(0)
    return 8 * params + activation_peak(GPT(config), config) <= budget


def run_hetmem(
    n_layers: int,
    config: HetMemConfig,
    steps: int = 2,
    record_last: bool = False,
) -> HetMemEngine:
    """Trains the benchmark GPT ``steps`` steps under ``config``; returns the engine (closed
    tiers are the caller's job). Raises ``BudgetExceeded`` when it does not fit."""
    model_config = gpt_config(n_layers)
    torch.manual_seed(0)
    model = GPT(model_config)
    engine = initialize(model, AdamConfig(lr=1e-3), config, loss_fn=gpt_loss)
    try:
        for step in range(steps):
            engine.record_events = record_last and step == steps - 1
            tokens, targets = _batch(model_config, step)
            loss = engine(tokens, targets)
            engine.backward(loss)
            engine.step()
            if not torch.isfinite(loss):
                raise RuntimeError(f"loss is not finite at step {step}")
    except BaseException:
        engine.close()
        raise
    return engine


def _hetmem_fits(n_layers: int, budget: int, host: int) -> bool:
    config = HetMemConfig(
        device_budget=budget, tiers=(TierSpec(kind="cpu", capacity=host),), policy="opt"
    )
    try:
        engine = run_hetmem(n_layers, config, steps=2)
    except BudgetExceeded:
        return False
    ok = all(t.capacity is None or t.peak <= t.capacity for t in engine.tiers)
    engine.close()
    return ok


def largest_fitting(fits: Callable[[int], bool], limit: int = 256) -> int:
    """The largest layer count for which ``fits`` holds: doubling, then bisection (0: none)."""
    if not fits(1):
        return 0
    good, bad = 1, None
    while bad is None:
        trial = good * 2
        if trial > limit:
            return good
        if fits(trial):
            good = trial
        else:
            bad = trial
    while bad - good > 1:
        middle = (good + bad) // 2
        if fits(middle):
            good = middle
        else:
            bad = middle
    return good


def bench_capacity(budget: int, host_budget: int, log: Callable[[str], None] = print) -> dict:
    """The ``bench capacity`` contract: the largest GPT (parameters) per system."""
    result: dict[str, int] = {"budget_bytes": budget}
    systems = {
        "plain": _plain_fits,
        "static": _static_fits,
        "hetmem": _hetmem_fits,
    }
    for name, fits in systems.items():
        start = time.perf_counter()
        layers = largest_fitting(lambda n, f=fits: f(n, budget, host_budget))  # type: ignore[misc]
        params = gpt_config(layers).num_params() if layers else 0
        result[f"{name}_params"] = params
        elapsed = time.perf_counter() - start
        log(f"{name:>7}: {layers:3d} layers, {params:,} params ({elapsed:.1f} s)")
    return result


def bench_traffic(n_layers: int = 8, steps: int = 3, log: Callable[[str], None] = print) -> dict:
    """The ``bench traffic`` contract: fast-tier bytes in + out per steady iteration.

    The fast tier holds 50% of the model data (16 B/param). ``static_bytes`` is the static
    partition that runs at that budget: ZeRO-Offload (``static``: parameters and gradients
    pinned on the fast tier) when it fits, else ZeRO-3-Offload (``static-z3``: fetch on use,
    free after use) — at 50% ZeRO-Offload's parameters and gradients alone fill the tier. Extra
    keys: ``static_policy`` (which one), ``static_offload_bytes`` and
    ``static_offload_budget_bytes`` (ZeRO-Offload at the smallest budget it runs with, a
    multiple of 4 MiB above 50%), and ``lower_bound_bytes`` (``traffic_lower_bound``: no
    placement policy can move less at this budget).
    """
    params = gpt_config(n_layers).num_params()
    budget = 16 * params // 2
    out: dict[str, Any] = {}
    engine = run_hetmem(n_layers, HetMemConfig(device_budget=budget, policy="opt"), steps, True)
    out["opt_bytes"] = engine.iteration_traffic[-1]
    belady = engine.belady_bytes()
    lower_bound = engine.traffic_lower_bound()
    peak = max(engine.trace.nonmodel)
    engine.close()
    engine = run_hetmem(n_layers, HetMemConfig(device_budget=budget, policy="lru"), steps)
    out["lru_bytes"] = engine.iteration_traffic[-1]
    engine.close()
    offload_budget = budget
    while True:
        try:
            engine = run_hetmem(
                n_layers, HetMemConfig(device_budget=offload_budget, policy="static"), steps
            )
            break
        except BudgetExceeded:
            offload_budget += 4 << 20
    offload_bytes = engine.iteration_traffic[-1]
    engine.close()
    if offload_budget == budget:
        out["static_bytes"], out["static_policy"] = offload_bytes, "static"
    else:
        engine = run_hetmem(n_layers, HetMemConfig(device_budget=budget, policy="static-z3"), steps)
        out["static_bytes"], out["static_policy"] = engine.iteration_traffic[-1], "static-z3"
        engine.close()
    out["belady_bytes"] = belady
    out["lower_bound_bytes"] = lower_bound
    out["static_offload_bytes"] = offload_bytes
    out["static_offload_budget_bytes"] = offload_budget
    log(
        f"{n_layers} layers, {params:,} params, model data {16 * params:,} B, fast tier "
        f"{budget:,} B, activation peak {peak:,} B (ZeRO-Offload needs {offload_budget:,} B)"
    )
    for key in ("opt_bytes", "lru_bytes", "static_bytes", "belady_bytes", "lower_bound_bytes"):
        log(f"  {key:>17}: {out[key]:,} B per steady iteration")
    log(f"  static partition at this budget: {out['static_policy']}")
    return out


def bench_step(
    n_layers: int = 4, repeats: int = 7, threads: int | None = 1, goal: float | None = 1.3
) -> Any:
    """Step time of hetmem (everything fits the budget) against plain torch Adam."""
    from ptrain.core.bench import compare

    model_config = gpt_config(n_layers)
    torch.manual_seed(0)
    plain = GPT(model_config)
    torch.manual_seed(0)
    engine = initialize(
        GPT(model_config),
        AdamConfig(lr=1e-3),
        HetMemConfig(device_budget="1GiB", policy="opt"),
        loss_fn=gpt_loss,
    )
    optimizer = torch.optim.Adam(plain.parameters(), lr=1e-3, foreach=False)
    tokens, targets = _batch(model_config, 0)

    def plain_step() -> None:
        loss = gpt_loss(plain(tokens), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def hetmem_step() -> None:
        loss = engine(tokens, targets)
        engine.backward(loss)
        engine.step()

    result = compare(
        hetmem_step,
        plain_step,
        name=f"step_time_{n_layers}layers_fits",
        repeats=repeats,
        warmup=2,
        threads=threads,
        goal=goal,
    )
    engine.close()
    return result
