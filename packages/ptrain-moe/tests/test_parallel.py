"""Expert parallelism equals the single-process layer, composes with DP, and reshards."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist

from ptrain.core.dist import ParallelDims
from ptrain.core.testing import run_distributed
from ptrain.moe import (
    MoE,
    MoEConfig,
    SparseMLP,
    apply_expert_parallel,
    full_state_dict,
    load_model,
    save_model,
    sparse_mlp_config,
    sync_gradients,
)

pytestmark = pytest.mark.distributed

TOKENS = 48


def _config(capacity_factor: float = 0.0) -> MoEConfig:
    return MoEConfig(
        dim=6, expert_hidden=10, num_experts=8, top_k=2, capacity_factor=capacity_factor
    )


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(TOKENS, 6, generator=generator, dtype=torch.float64)
    target = torch.randn(TOKENS, 6, generator=generator, dtype=torch.float64)
    return x, target


def _reference() -> dict[str, Any]:
    torch.manual_seed(0)
    layer = MoE(_config()).double()
    x, target = _inputs()
    x.requires_grad_(True)
    y, _ = layer(x)
    ((y * target).sum()).backward()
    return {
        "y": y.detach(),
        "x_grad": x.grad,
        "router": layer.router.weight.grad,
        "w1": layer.w1.grad,
        "b2": layer.b2.grad,  # type: ignore[union-attr]
    }


def _ep_rank(rank: int, world: int) -> dict[str, Any]:
    torch.manual_seed(0)
    layer = MoE(_config()).double()
    apply_expert_parallel(layer, None)
    x, target = _inputs()
    mine = slice(rank * TOKENS // world, (rank + 1) * TOKENS // world)
    x_local = x[mine].clone().requires_grad_(True)
    y, aux = layer(x_local)
    ((y * target[mine]).sum()).backward()
    counts = aux["tokens_per_expert"].view(world, -1).sum(1).tolist()
    router_grad = layer.router.weight.grad
    dist.all_reduce(router_grad)  # each rank saw only its tokens: sum = full-batch gradient
    return {
        "y": y.detach(),
        "x_grad": x_local.grad,
        "router": router_grad,
        "w1": layer.w1.grad,
        "b2": layer.b2.grad,  # type: ignore[union-attr]
        "experts": layer.local_expert_ids,
        "send_splits": counts,
    }


@pytest.mark.parametrize("world", [2, 4])
def test_expert_parallel_equals_single_process(world: int) -> None:
    reference = _reference()
    results = run_distributed(_ep_rank, world, timeout=120)
    torch.testing.assert_close(torch.cat([r["y"] for r in results]), reference["y"])
    torch.testing.assert_close(torch.cat([r["x_grad"] for r in results]), reference["x_grad"])
    local = 8 // world
    for rank, result in enumerate(results):
        assert result["experts"] == list(range(rank * local, (rank + 1) * local))
        torch.testing.assert_close(result["router"], reference["router"])
        torch.testing.assert_close(result["w1"], reference["w1"][rank * local : (rank + 1) * local])
        torch.testing.assert_close(result["b2"], reference["b2"][rank * local : (rank + 1) * local])
    # the splits really were uneven (the all-to-all's uneven path was exercised)
    assert any(len(set(r["send_splits"])) > 1 for r in results)


def _dp_ep_rank(rank: int, world: int) -> dict[str, Any]:
    dims = ParallelDims(dp_shard=-1, ep=2, world_size=world)
    dims.build_mesh("cpu")
    torch.manual_seed(0)
    layer = MoE(_config()).double()
    apply_expert_parallel(layer, dims.get_mesh("ep"))
    x, target = _inputs()
    mine = slice(rank * TOKENS // world, (rank + 1) * TOKENS // world)
    y, _ = layer(x[mine])
    loss = ((y * target[mine]).sum(1)).mean()  # this rank's mean over its batch
    loss.backward()
    sync_gradients(layer, expert_dp_group=dims.get_mesh("dp_shard_mod_ep"))
    return {
        "y": y.detach(),
        "experts": layer.local_expert_ids,
        "router": layer.router.weight.grad,
        "w1": layer.w1.grad,
    }


def test_expert_parallel_composes_with_data_parallel() -> None:
    torch.manual_seed(0)
    layer = MoE(_config()).double()
    x, target = _inputs()
    y, _ = layer(x)
    ((y * target).sum(1)).mean().backward()
    results = run_distributed(_dp_ep_rank, 4, timeout=120)
    torch.testing.assert_close(torch.cat([r["y"] for r in results]), y.detach())
    for result in results:
        experts = result["experts"]
        torch.testing.assert_close(result["router"], layer.router.weight.grad)
        torch.testing.assert_close(result["w1"], layer.w1.grad[experts[0] : experts[-1] + 1])  # type: ignore[index]


def _save_at_ep(rank: int, world: int, path: str) -> dict[str, Any]:
    torch.manual_seed(3)
    model = SparseMLP(sparse_mlp_config("debug", image_size=8, patch_size=2, in_channels=1))
    apply_expert_parallel(model, None)
    full = full_state_dict(model)
    save_model(path, model, note="saved at ep=2")
    model.eval()
    images = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    return {"features": model(images)[0], "full_keys": sorted(full)}


def _load_at_ep(rank: int, world: int, path: str) -> torch.Tensor:
    model = load_model(path)
    assert isinstance(model, SparseMLP)
    apply_expert_parallel(model, None)
    images = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    return model(images)[0]


def test_checkpoint_saved_at_ep2_loads_at_ep1_and_the_reverse(tmp_path: Path) -> None:
    path = tmp_path / "ep2.pt"
    results = run_distributed(_save_at_ep, 2, str(path), timeout=120)
    torch.testing.assert_close(results[0]["features"], results[1]["features"])
    # ep=2 → ep=1: every expert is in the file, keyed by global id
    model = load_model(path)
    images = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(model(images)[0], results[0]["features"])
    moe_layers = [m for m in model.modules() if isinstance(m, MoE)]
    assert moe_layers and all(m.num_local_experts == m.num_experts for m in moe_layers)
    payload = torch.load(path, weights_only=True)
    assert payload["extra"] == {"note": "saved at ep=2"}
    assert sorted(payload["state_dict"]) == results[0]["full_keys"]
    # ep=1 file → ep=2
    torch.manual_seed(5)
    single = SparseMLP(sparse_mlp_config("debug", image_size=8, patch_size=2, in_channels=1))
    single.eval()
    save_model(tmp_path / "ep1.pt", single)
    expected = single(torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(1)))[0]
    loaded = run_distributed(_load_at_ep, 2, str(tmp_path / "ep1.pt"), timeout=120)
    for features in loaded:
        torch.testing.assert_close(features, expected)


def _ep_capacity_rank(rank: int, world: int) -> dict[str, Any]:
    torch.manual_seed(0)
    layer = MoE(_config(capacity_factor=0.5)).double()
    apply_expert_parallel(layer, None)
    x, _ = _inputs()
    mine = slice(rank * TOKENS // world, (rank + 1) * TOKENS // world)
    y, aux = layer(x[mine])
    return {"y": y.detach(), "dropped": aux["dropped"], "capacity": aux["capacity"]}


def test_expert_parallel_capacity_is_per_source_rank() -> None:
    """With capacity, each rank's output equals the unsharded layer run on that rank's tokens."""
    results = run_distributed(_ep_capacity_rank, 2, timeout=120)
    torch.manual_seed(0)
    layer = MoE(_config(capacity_factor=0.5)).double()
    x, _ = _inputs()
    for rank, result in enumerate(results):
        y, aux = layer(x[rank * TOKENS // 2 : (rank + 1) * TOKENS // 2])
        torch.testing.assert_close(result["y"], y.detach())
        assert result["dropped"] == aux["dropped"] > 0
        assert result["capacity"] == aux["capacity"] == 3  # ceil(0.5 · 2 · 24 / 8)
