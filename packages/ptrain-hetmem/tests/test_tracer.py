"""The warm-up tracer: moments, the activation tide, and config validation."""

from __future__ import annotations

import re

import pytest

from ptrain.hetmem import AdamConfig, HetMemConfig, TierSpec, parse_bytes
from ptrain.hetmem.chunks import module_param_lists
from ptrain.hetmem.testing import TIGHT, batch, engine_steps, make_engine, make_models


def test_moments_and_tide_shape() -> None:
    _, model = make_models()
    owners = len(module_param_lists(model))
    engine = make_engine(model, device_budget=TIGHT)
    engine_steps(engine, range(2))
    trace = engine.trace
    # one moment per param-owning module in forward and in backward, one per Adam group
    assert trace.stages.count("fwd") == owners
    assert trace.stages.count("bwd") == owners
    assert trace.stages.count("adam") == engine.layout.num_groups
    fwd = [n for n, s in zip(trace.nonmodel, trace.stages, strict=True) if s == "fwd"]
    bwd = [n for n, s in zip(trace.nonmodel, trace.stages, strict=True) if s == "bwd"]
    # the tide: activations only grow during forward and only ebb during backward
    assert fwd == sorted(fwd) and fwd[-1] > fwd[0]
    assert bwd == sorted(bwd, reverse=True) and bwd[-1] < bwd[0]
    # the chunk budget is lowest where the activations peak
    capacity = engine.fast.capacity
    assert capacity is not None
    budgets = [trace.chunk_budget(capacity, t, 0) for t in range(trace.total)]
    assert min(budgets) == capacity - max(trace.nonmodel)
    # steady iterations see the same accesses as warm-up: traffic repeats
    engine_steps(engine, range(2, 4))
    assert engine.iteration_traffic[-1] == engine.iteration_traffic[-2]
    engine.close()


def test_activation_memory_returns_to_zero_after_backward() -> None:
    _, model = make_models()
    engine = make_engine(model, device_budget=TIGHT)
    tokens, targets = batch(0)
    loss = engine(tokens, targets)
    assert engine.fast.nonmodel > 0
    engine.backward(loss)
    assert engine.fast.nonmodel == 0
    engine.step()
    engine.close()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"policy": "fifo"}, "HetMemConfig.policy"),
        ({"chunk_size": 0}, "HetMemConfig.chunk_size"),
        ({"device_budget": "lots"}, "HetMemConfig.device_budget"),
        ({"mode": "fp8"}, "HetMemConfig.mode"),
        ({"tiers": ()}, "HetMemConfig.tiers"),
    ],
)
def test_config_errors_name_the_field(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        HetMemConfig(**kwargs)  # type: ignore[arg-type]


def test_other_validation() -> None:
    with pytest.raises(ValueError, match=r"AdamConfig\.betas"):
        AdamConfig(betas=(0.9, 1.0))
    with pytest.raises(ValueError, match=r"TierSpec\.kind"):
        TierSpec(kind="nvme")  # type: ignore[arg-type]
    assert parse_bytes("64MiB") == 64 * 2**20
    assert parse_bytes("1.5GB") == 1_500_000_000
    assert parse_bytes(123) == 123
