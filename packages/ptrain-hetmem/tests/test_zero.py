"""ZeRO over chunks: 2 gloo ranks (half the batch each) train like 1 rank on the whole batch."""

from __future__ import annotations

import pytest
import torch

from ptrain.core.models.gpt import GPT, gpt_loss, synthetic_batch
from ptrain.core.testing import run_distributed
from ptrain.hetmem.config import AdamConfig, HetMemConfig
from ptrain.hetmem.engine import initialize
from ptrain.hetmem.testing import CHUNK, CONFIG

STEPS = 3


def _train(rank: int, world: int) -> dict[str, object]:
    torch.manual_seed(0)
    model = GPT(CONFIG)
    engine = initialize(
        model,
        AdamConfig(lr=1e-2),
        HetMemConfig(device_budget="8MiB", chunk_size=CHUNK),
        loss_fn=gpt_loss,
    )
    losses = []
    grads: dict[str, torch.Tensor] = {}
    for step in range(STEPS):
        tokens, targets = synthetic_batch(CONFIG, 4, seed=step)
        share = 4 // world
        rows = slice(rank * share, (rank + 1) * share)
        loss = engine(tokens[rows], targets[rows])
        engine.backward(loss)
        if step == 0:
            grads = {
                slot.name: g.grad.view(slot.name).detach().clone()
                for g in engine.groups
                if g.owned and g.grad is not None
                for slot in g.grad.slots
            }
        engine.step()
        losses.append(loss.item())
    owned = {
        slot.name: g.param.view(slot.name).detach().clone()
        for g in engine.groups
        if g.owned
        for slot in g.param.slots
    }
    state_bytes = sum(g.exp_avg.nbytes for g in engine.groups if g.exp_avg.payload is not None)
    engine.close()
    return {"params": owned, "grads": grads, "losses": losses, "state_bytes": state_bytes}


@pytest.mark.distributed
def test_two_rank_zero_equals_one_rank() -> None:
    (single,) = run_distributed(_train, 1, timeout=120)
    ranks = run_distributed(_train, 2, timeout=120)
    merged: dict[str, torch.Tensor] = {}
    merged_grads: dict[str, torch.Tensor] = {}
    for result in ranks:
        merged.update(result["params"])  # type: ignore[arg-type]
        merged_grads.update(result["grads"])  # type: ignore[arg-type]
    reference = single["params"]
    assert set(merged) == set(reference) == set(merged_grads)  # type: ignore[arg-type]
    for name, value in single["grads"].items():  # type: ignore[union-attr]
        # the reduce-scattered mean of two half-batch gradients differs from the whole-batch
        # gradient only by float summation order
        torch.testing.assert_close(merged_grads[name], value, atol=1e-6, rtol=1e-5)
    for name, value in reference.items():  # type: ignore[union-attr]
        # Adam divides by sqrt(v): for a gradient near zero, rounding noise of the gradient
        # moves the update noticeably, so parameters get 1% of lr * steps (3e-4) of tolerance
        torch.testing.assert_close(merged[name], value, atol=3e-4, rtol=0)
    # each rank owns (about) half of the Adam states
    total = single["state_bytes"]
    for result in ranks:
        assert result["state_bytes"] <= total // 2 + CHUNK * 4  # type: ignore[operator]
    # mean of the ranks' losses = the whole-batch loss at step 0 (same weights)
    first = sum(r["losses"][0] for r in ranks) / 2  # type: ignore[index]
    assert abs(first - single["losses"][0]) < 1e-5  # type: ignore[index]
