"""DDP, ZeRO-1 (AdamW, LAMB), ZeRO-3 and gradient accumulation against single-process training.

Tolerance (fp32; only the order of the gradient sums differs): losses within 1e-5, final weights
within 1e-4 (Adam's m/√v turns rounding noise on near-zero gradients into ~lr-sized steps).
"""

from __future__ import annotations

import functools
from typing import Any

import pytest
import torch

from ptrain.core.data_parallel import (
    ZeroRedundancyOptimizer,
    accumulate_gradients,
    apply_data_parallel,
    build_optimizer,
    unwrap,
)
from ptrain.core.dist import ParallelDims
from ptrain.core.models.gpt import GPT, GPTConfig, gpt_loss, synthetic_batch
from ptrain.core.optim import LAMB
from ptrain.core.testing import run_distributed

CONFIG = GPTConfig.debug(dim=32, n_layers=1, n_heads=2, vocab_size=64, seq_len=16)
STEPS = 3
BATCH = 8
TOLERANCE = 1e-5
WEIGHT_TOLERANCE = 1e-4
OPTIMIZERS: dict[str, tuple[type[torch.optim.Optimizer], dict[str, Any]]] = {
    "adamw": (torch.optim.AdamW, {"lr": 1e-2, "weight_decay": 0.1}),
    "lamb": (LAMB, {"lr": 1e-2, "weight_decay": 0.1}),
}


def _model() -> GPT:
    model = GPT(CONFIG, device="meta")
    model.to_empty(device="cpu")
    model.init_weights(seed=0)
    return model


@functools.cache
def _serial(optimizer_name: str, accum: int = 1) -> tuple[list[float], dict[str, torch.Tensor]]:
    model = _model()
    cls, kwargs = OPTIMIZERS[optimizer_name]
    optimizer = cls(model.parameters(), **kwargs)
    losses = []
    for step in range(STEPS):
        tokens, targets = synthetic_batch(CONFIG, BATCH, seed=step)
        optimizer.zero_grad()
        micro = list(zip(tokens.chunk(accum), targets.chunk(accum), strict=True))
        loss = accumulate_gradients(model, micro, lambda m, b: gpt_loss(m(b[0]), b[1]))
        optimizer.step()
        losses.append(loss)
    return losses, {k: v.clone() for k, v in model.state_dict().items()}


def _full_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    from torch.distributed.tensor import DTensor

    return {
        k: (v.full_tensor() if isinstance(v, DTensor) else v.clone())
        for k, v in unwrap(model).state_dict().items()
    }


def _counting_hook(counter: list[int]) -> Any:
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    def hook(state, bucket):  # type: ignore[no-untyped-def]  # DDP rejects string annotations
        counter[0] += 1
        return allreduce_hook(state, bucket)

    return hook


def _rank_train(rank: int, world: int, cases: list[tuple[str, str, int]]) -> dict[str, Any]:
    """Every case on the same ranks: (mode, optimizer, grad accumulation)."""
    import torch.distributed as dist

    dims = ParallelDims(dp_shard=world, world_size=world)
    dims.build_mesh("cpu")
    out: dict[str, Any] = {}
    for mode, optimizer_name, accum in cases:
        model = apply_data_parallel(_model(), dims, mode)
        cls, kwargs = OPTIMIZERS[optimizer_name]
        optimizer = build_optimizer(model, dims, mode, cls, **kwargs)
        reductions = [0]
        if mode in ("ddp", "zero1"):
            model.register_comm_hook(None, _counting_hook(reductions))
        losses = []
        for step in range(STEPS):
            tokens, targets = synthetic_batch(CONFIG, BATCH, seed=step)
            tokens, targets = tokens.chunk(world)[rank], targets.chunk(world)[rank]
            optimizer.zero_grad()
            micro = list(zip(tokens.chunk(accum), targets.chunk(accum), strict=True))
            local = accumulate_gradients(model, micro, lambda m, b: gpt_loss(m(b[0]), b[1]))
            optimizer.step()
            mean = torch.tensor(local)
            dist.all_reduce(mean)
            losses.append(mean.item() / world)
        owned = None
        if isinstance(optimizer, ZeroRedundancyOptimizer):
            owned = sum(p.numel() for p in optimizer.owned_params())
        from torch.distributed.tensor import DTensor

        held = sum(  # parameter elements this rank stores
            (p.to_local() if isinstance(p, DTensor) else p).numel() for p in model.parameters()
        )
        out[f"{mode}-{optimizer_name}-{accum}"] = {
            "losses": losses,
            "state": _full_state(model),
            "reductions": reductions[0],
            "owned": owned,
            "held": held,
        }
    return out


CASES = [
    ("ddp", "adamw", 1),
    ("ddp", "adamw", 2),
    ("zero1", "adamw", 1),
    ("zero1", "lamb", 1),
    ("zero3", "adamw", 2),
]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def results() -> list[dict[str, Any]]:
    return run_distributed(_rank_train, 2, CASES, timeout=120)


@pytest.mark.distributed
@pytest.mark.parametrize(("mode", "optimizer_name", "accum"), CASES)
def test_data_parallel_mode_equals_single_process_training(
    results: list[dict[str, Any]], mode: str, optimizer_name: str, accum: int
) -> None:
    serial_losses, serial_state = _serial(optimizer_name)
    for rank_result in results:
        got = rank_result[f"{mode}-{optimizer_name}-{accum}"]
        assert got["losses"] == pytest.approx(serial_losses, abs=TOLERANCE)
        assert serial_losses[-1] < serial_losses[0]  # the comparison is about training
        for name, value in serial_state.items():
            torch.testing.assert_close(got["state"][name], value, atol=WEIGHT_TOLERANCE, rtol=0)


@pytest.mark.distributed
def test_accumulation_reduces_gradients_once_per_step(results: list[dict[str, Any]]) -> None:
    plain = results[0]["ddp-adamw-1"]["reductions"]
    accumulated = results[0]["ddp-adamw-2"]["reductions"]
    assert plain >= STEPS
    assert accumulated == plain  # two micro-batches per step, still one reduction per bucket


def test_accumulated_micro_batches_equal_the_big_batch_serially() -> None:
    big_losses, big_state = _serial("adamw", accum=1)
    acc_losses, acc_state = _serial("adamw", accum=4)
    assert acc_losses == pytest.approx(big_losses, abs=TOLERANCE)
    for name, value in big_state.items():
        torch.testing.assert_close(acc_state[name], value, atol=WEIGHT_TOLERANCE, rtol=0)


@pytest.mark.distributed
def test_zero1_shards_the_optimizer_state(results: list[dict[str, Any]]) -> None:
    total = CONFIG.num_params()
    owned = [r["zero1-adamw-1"]["owned"] for r in results]
    assert sum(owned) == total  # every tensor has exactly one owner
    assert max(owned) < 0.75 * total  # balanced: no rank holds (nearly) everything


@pytest.mark.distributed
def test_zero3_holds_one_shard_of_every_parameter(results: list[dict[str, Any]]) -> None:
    total = CONFIG.num_params()
    held = [r["zero3-adamw-2"]["held"] for r in results]
    assert sum(held) == total  # dim-0 shards: together exactly the model, nothing replicated
    assert max(held) <= total // 2 + CONFIG.dim * 4  # ~1/2 each (uneven rows of small tensors)
    assert results[0]["ddp-adamw-1"]["held"] == total  # DDP: a full replica


def test_bad_mode_is_a_value_error_listing_the_modes() -> None:
    dims = ParallelDims(dp_shard=1, world_size=1)
    with pytest.raises(ValueError, match="one of ddp, zero1, zero3, got 'zero2'"):
        apply_data_parallel(_model(), dims, "zero2")
