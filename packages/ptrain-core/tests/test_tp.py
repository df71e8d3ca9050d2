"""Tensor parallelism: each mode equals serial (fp64); state dicts, shard sizes, errors."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ptrain.core.comm import CommTracker
from ptrain.core.dist import ParallelDims
from ptrain.core.models.gpt import GPT, MLP, Block, GPTConfig, synthetic_batch
from ptrain.core.testing import run_distributed
from ptrain.core.tp import (
    apply_tp,
    build_tp_groups,
    check_tp_size,
    dtensor_state_dict,
    enter_layout,
    exit_layout,
    full_state_dict,
    load_dtensor_state_dict,
    load_full_state_dict,
    param_shard_bytes,
    tp_cross_entropy,
)
from ptrain.core.tp._ops import gather
from ptrain.core.tp.api import _to_dtensor, _tp_params
from ptrain.core.tp.bench import formula_bytes
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


def _block_case(groups, mode: str, what: str) -> dict[str, float]:
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


def _gpt_case(
    rank: int, world_size: int, mode: str, depth: int, groups, path: str
) -> dict[str, float]:
    """A small GPT built on meta, sharded, initialised from a seed: loss and grads == serial."""
    config = _config()
    serial = GPT(config).double()
    serial.init_weights(seed=3)
    tokens, targets = synthetic_batch(config, batch_size=8, seed=1)
    logits = serial(tokens)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))  # fp64
    loss.backward()

    model = GPT(config, device="meta")
    apply_tp(model, mode, groups, device="cpu")
    model.double()
    model.init_weights(seed=3)  # layout-independent seeded init: the serial values, sharded
    errors: dict[str, float] = {}
    full = full_state_dict(model)
    errors["init"] = max((full[k] - v).abs().max().item() for k, v in serial.state_dict().items())
    tp_loss = tp_cross_entropy(model(tokens), targets, groups)
    tp_loss.backward()
    errors["loss"] = abs(tp_loss.item() - loss.item())
    grads = _full_grads(model)
    errors["grads"] = max(
        (grads[k] - p.grad).abs().max().item() for k, p in serial.named_parameters()
    )

    # full state dict -> load -> gather round trip (into a fresh model with other values)
    other = apply_tp(GPT(config, device="meta"), mode, groups, device="cpu").double()
    other.init_weights(seed=99)
    load_full_state_dict(other, full)
    again = full_state_dict(other)
    errors["round_trip"] = max((again[k] - v).abs().max().item() for k, v in full.items())
    # a DTensor state dict saved with DCP loads into another mode's layout of the same ranks
    other_mode = {
        "2d": ("1d", 1),
        "2.5d": ("1d", 1) if depth == 1 else ("3d", 1),
        "3d": ("2.5d", 2),
    }
    if world_size == 4 and mode == "1d":
        other_mode["1d"] = ("2d", 1)
    if mode in other_mode:
        target_mode, target_depth = other_mode[mode]
        root = groups.mesh._get_root_mesh() if mode != "1d" else groups.mesh
        target_groups = build_tp_groups(target_mode, root["tp"], depth=target_depth)
        target = apply_tp(GPT(config, device="meta"), target_mode, target_groups, device="cpu")
        target.double()
        import torch.distributed.checkpoint as dcp

        if mode in ("2d", "3d"):  # through DCP, which reshards between the two layouts
            dcp.save(dtensor_state_dict(model), checkpoint_id=path)
            loaded = dtensor_state_dict(target)
            dcp.load(loaded, checkpoint_id=path)
        else:  # in memory (DTensors of the other layout)
            loaded = dtensor_state_dict(model)
        load_dtensor_state_dict(target, loaded)
        moved = full_state_dict(target)
        errors["dtensor_reshard"] = max((moved[k] - v).abs().max().item() for k, v in full.items())

    # bytes held: weights are 1/P (1D, 3D) or 1/q² (2D, 2.5D) of the full matrix
    shard = {"1d": world_size, "2d": world_size, "2.5d": groups.q**2, "3d": world_size}[mode]
    wrong = [
        name
        for name, (local, whole) in param_shard_bytes(model).items()
        if name.endswith("weight") and full[name].ndim == 2 and local * shard != whole
    ]
    errors["shard_bytes_wrong"] = float(len(wrong))
    return errors


def _comm_case(groups, mode: str, world_size: int, depth: int) -> dict[str, float]:
    """Bytes this rank sends for an MLP block (fwd + bwd) equal the closed form exactly."""
    config = GPTConfig(dim=64, n_heads=1, mlp_ratio=4, bias=False, vocab_size=8, seq_len=8)
    mlp = apply_tp(MLP(config), mode, groups)
    tokens = 32
    x = enter_layout(torch.randn(tokens, config.dim), mode, groups).requires_grad_(True)
    with CommTracker() as tracker:
        mlp(x).sum().backward()
    expected = formula_bytes(mode, world_size, depth, tokens=tokens, hidden=config.dim)
    return {"bytes_minus_formula": float(abs(tracker.bytes_sent - expected))}


def _layout_case(
    rank: int, world_size: int, mode: str, depth: int, path: str
) -> dict[str, dict[str, float]]:
    groups = _groups(mode, world_size, depth)
    out = {"comm": _comm_case(groups, mode, world_size, depth)}
    out |= {what: _block_case(groups, mode, what) for what in ("linear", "mlp", "block")}
    out["gpt"] = _gpt_case(rank, world_size, mode, depth, groups, path)
    return out


@pytest.mark.distributed
@pytest.mark.parametrize(("mode", "world_size", "depth"), LAYOUTS)
def test_mode_equals_serial(mode: str, world_size: int, depth: int, tmp_path) -> None:
    """Linear, MLP, attention Block and a whole GPT (loss, grads, init, state dicts, shard
    sizes) under each mode equal the serial model in fp64."""
    path = str(tmp_path / "ckpt")
    results = run_distributed(_layout_case, world_size, mode, depth, path, timeout=120)
    for rank, cases in enumerate(results):
        for what, errors in cases.items():
            bad = {k: v for k, v in errors.items() if v > ATOL}
            assert not bad, f"{mode}@{world_size} {what} rank {rank}: {bad}"


@pytest.mark.parametrize(
    ("mode", "size", "depth", "listed"),
    [
        ("2d", 8, 1, "1, 4, 9, 16"),
        ("2d", 2, 1, "1, 4, 9"),
        ("3d", 4, 1, "1, 8, 27, 64"),
        ("2.5d", 4, 2, "2, 8, 18, 32"),
        ("2.5d", 12, 2, "2, 8, 18"),
    ],
)
def test_bad_tp_size_lists_valid_sizes(mode: str, size: int, depth: int, listed: str) -> None:
    with pytest.raises(ValueError, match=f"got {size}") as info:
        check_tp_size(mode, size, depth)
    assert listed in str(info.value)


def test_good_tp_sizes() -> None:
    assert check_tp_size("2d", 4) == (2, 1)
    assert check_tp_size("2.5d", 8, 2) == (2, 2)
    assert check_tp_size("3d", 27) == (3, 1)
    assert check_tp_size("1d", 6) == (6, 1)
    with pytest.raises(ValueError, match="depth"):
        check_tp_size("2d", 4, depth=2)


def _errors_case(rank: int, world_size: int) -> list[str]:
    from ptrain.core.tp import Linear2D

    dims = ParallelDims(dp_shard=1, tp=world_size, world_size=world_size)
    mesh = dims.build_mesh("cpu")
    messages = []
    for call in (
        lambda: build_tp_groups("3d", mesh["tp"]),
        lambda: Linear2D(9, 8, groups=build_tp_groups("2d", mesh["tp"])),
        lambda: apply_tp(
            GPT(GPTConfig.debug(dim=48, n_heads=3), device="meta"),
            "2d",
            build_tp_groups("2d", mesh["tp"]),
        ),
    ):
        try:
            call()
        except ValueError as exc:
            messages.append(str(exc))
        else:
            messages.append("no error")
    import torch.distributed as dist

    world = build_tp_groups("2d", dist.group.WORLD)  # a ProcessGroup spanning the world works too
    messages.append(f"{world.q}x{world.q}")
    return messages


@pytest.mark.distributed
def test_bad_sizes_name_the_dims() -> None:
    cube, linear, heads, from_group = run_distributed(_errors_case, 4, timeout=60)[0]
    assert from_group == "2x2"
    assert "3D needs a cube tp size (1, 8, 27, 64" in cube and "got 4" in cube
    assert "in_features (9)" in linear and "divisible by 2" in linear
    assert "n_heads (3)" in heads


def _dp_mixed_case(rank: int, world_size: int) -> dict[str, float]:
    """dp_shard=2 × tp=4: TP groups per data-parallel replica; blocks of two modes in one GPT."""
    from ptrain.core.tp import LayoutWrapper

    dims = ParallelDims(dp_shard=2, tp=4, world_size=world_size)
    mesh = dims.build_mesh("cpu")
    groups_2d = build_tp_groups("2d", dims.get_mesh("tp"))
    groups_1d = build_tp_groups("1d", dims.get_mesh("tp"))
    config = _config()
    serial = GPT(config).double()
    serial.init_weights(seed=1)
    tokens, targets = synthetic_batch(config, 8, seed=mesh["dp_shard"].get_local_rank())
    logits = serial(tokens)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    loss.backward()
    errors = {}
    model = apply_tp(GPT(config, device="meta"), "2d", groups_2d, device="cpu").double()
    model.init_weights(seed=1)
    errors["2d_loss"] = abs(
        tp_cross_entropy(model(tokens), targets, groups_2d).item() - loss.item()
    )
    mixed = GPT(config).double()
    mixed.init_weights(seed=1)
    mixed.blocks[0] = LayoutWrapper(apply_tp(mixed.blocks[0], "1d", groups_1d), "1d", groups_1d)
    mixed.blocks[1] = LayoutWrapper(apply_tp(mixed.blocks[1], "2d", groups_2d), "2d", groups_2d)
    mixed_logits = mixed(tokens)
    mixed_loss = F.cross_entropy(mixed_logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    mixed_loss.backward()
    errors["mixed_loss"] = abs(mixed_loss.item() - loss.item())
    errors["mixed_emb_grad"] = (
        (mixed.tok_emb.weight.grad - serial.tok_emb.weight.grad).abs().max().item()
    )
    grads = _full_grads(mixed.blocks[1].module)
    errors["mixed_block_grad"] = max(
        (grads[name] - p.grad).abs().max().item() for name, p in serial.blocks[1].named_parameters()
    )
    return errors


@pytest.mark.distributed
def test_dp_times_tp_and_mixed_modes() -> None:
    for rank, errors in enumerate(run_distributed(_dp_mixed_case, 8, timeout=120)):
        bad = {k: v for k, v in errors.items() if v > ATOL}
        assert not bad, f"rank {rank}: {bad}"


def test_formulas_give_the_design_doc_values() -> None:
    mib = 2**20
    small = {("1d", 4, 1): 48, ("2d", 4, 1): 84, ("1d", 8, 1): 56, ("2.5d", 8, 2): 62}
    small |= {("3d", 8, 1): 48, ("1d", 64, 1): 63, ("2d", 64, 1): 36.75}
    small |= {("2.5d", 64, 4): 32.25, ("3d", 64, 1): 18}
    for (mode, size, depth), value in small.items():
        assert formula_bytes(mode, size, depth) == value * mib, (mode, size)
    large = {("1d", 4, 1): 768, ("2d", 4, 1): 1344, ("2.5d", 8, 2): 992, ("3d", 8, 1): 768}
    large |= {("2d", 64, 1): 588, ("2.5d", 64, 4): 516, ("3d", 64, 1): 288}
    for (mode, size, depth), value in large.items():
        assert formula_bytes(mode, size, depth, tokens=16384, hidden=4096) == value * mib


@pytest.mark.slow
@pytest.mark.distributed
def test_bench_comm_cli_contract(tmp_path) -> None:
    """``ptrain-core bench comm --json PATH``: the issue's rows, keys in order, measured exact."""
    import json

    from ptrain.core.__main__ import main

    target = tmp_path / "comm.json"
    assert main(["bench", "comm", "--json", str(target)]) == 0
    rows = json.loads(target.read_text())
    assert [(r["mode"], r["world_size"]) for r in rows] == [
        ("1d", 4),
        ("1d", 8),
        ("2d", 4),
        ("2.5d", 8),
        ("3d", 8),
    ]
    for row in rows:
        assert list(row) == ["mode", "world_size", "measured_bytes", "formula_bytes"]
        assert row["measured_bytes"] == row["formula_bytes"]
    assert [r["formula_bytes"] // 2**20 for r in rows] == [48, 56, 84, 62, 48]
