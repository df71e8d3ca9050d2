"""Tensor parallelism: each mode equals serial (fp64); state dicts, shard sizes, errors."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from ptrain.core.dist import ParallelDims
from ptrain.core.models.gpt import MLP, Block, GPTConfig
from ptrain.core.testing import run_distributed
from ptrain.core.tp import (
    apply_tp,
    build_tp_groups,
    enter_layout,
    exit_layout,
)
from ptrain.core.tp._ops import gather
from ptrain.core.tp.api import _to_dtensor, _tp_params
from ptrain.core.tp.layers import TPModule

ATOL = 1e-10
# (mode, world size, depth)
LAYOUTS = [("1d", 2, 1), ("1d", 4, 1), ("2d", 4, 1), ("2.5d", 4, 1), ("2.5d", 8, 2), ("3d", 8, 1)]


def _groups(mode: str, world_size: int, depth: int):
    dims = ParallelDims(dp_shard=1, tp=world_size, world_size=world_size)
    mesh = dims.build_mesh("cpu")
    return build_tp_groups(mode, mesh["tp"], depth=depth)


def _full_grads(model: nn.Module) -> dict[str, torch.Tensor]:
    out = {}
    for name, (param, owner, local_name) in _tp_params(model).items():
        grad = param.grad if param.grad is not None else torch.zeros_like(param)
        if owner is None:
            out[name] = grad
        else:
            assert isinstance(owner, TPModule)
            out[name] = _to_dtensor(grad, owner, local_name).full_tensor()
    return out


def _config() -> GPTConfig:
    # dim 64 = 4 heads of 16: divisible by 2, 4 (1D), q = 2 (2D/2.5D/3D), q² = 4 (3D)
    return GPTConfig.debug(dim=64, n_heads=4, vocab_size=64, seq_len=8, n_layers=2)


def _block_case(rank: int, world_size: int, mode: str, depth: int, what: str):
    torch.manual_seed(0)
    config = _config()
    if what == "block":
        serial: nn.Module = Block(config).double()
    elif what == "mlp":
        serial = MLP(config).double()
    else:  # a single Linear: an MLP's fc1 (column / 2D / 3D "ab")
        serial = MLP(config).double()
    with torch.no_grad():
        for p in serial.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # non-trivial LayerNorm weights and biases
    batch = 8
    x = torch.randn(batch, config.seq_len, config.dim, dtype=torch.float64, requires_grad=True)
    probe = torch.randn(
        batch,
        config.seq_len,
        config.dim if what != "linear" else 4 * config.dim,
        dtype=torch.float64,
    )

    def run(module: nn.Module, inp: torch.Tensor) -> torch.Tensor:
        return module.fc1(inp) if what == "linear" else module(inp)

    y = run(serial, x)
    (y * probe).sum().backward()

    groups = _groups(mode, world_size, depth)
    parallel = apply_tp(copy.deepcopy(serial), mode, groups)
    x2 = x.detach().clone().requires_grad_(True)
    out_layout = "b" if (what == "linear" and mode == "3d") else "a"
    y_local = run(parallel, enter_layout(x2, mode, groups))
    if what == "linear" and mode == "1d":  # column-parallel output: features split over tp
        y2 = gather(y_local, -1, groups.tp)
    else:
        y2 = exit_layout(y_local, mode, groups, layout=out_layout)
    (y2 * probe).sum().backward()
    grads = _full_grads(parallel)
    errors = {"out": (y2 - y).abs().max().item(), "dx": (x2.grad - x.grad).abs().max().item()}
    for name, p in serial.named_parameters():
        if what == "linear" and not name.startswith("fc1"):
            continue
        errors[name] = (grads[name] - p.grad).abs().max().item()
    return errors


@pytest.mark.distributed
@pytest.mark.parametrize("what", ["linear", "mlp", "block"])
@pytest.mark.parametrize(("mode", "world_size", "depth"), LAYOUTS)
def test_layer_equals_serial(mode: str, world_size: int, depth: int, what: str) -> None:
    results = run_distributed(_block_case, world_size, mode, depth, what, timeout=90)
    for rank, errors in enumerate(results):
        bad = {k: v for k, v in errors.items() if v > ATOL}
        assert not bad, f"{mode}@{world_size} {what} rank {rank}: {bad}"
