"""Sharded checkpoints: save under dp=2×tp=2, load under tp=4 (1D and 2D) and in one process
with identical weights; atomic replacement; clear errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from ptrain.core import dcp
from ptrain.core.checkpoint import CheckpointError
from ptrain.core.data_parallel import build_optimizer, unwrap
from ptrain.core.dist import ParallelDims
from ptrain.core.models.gpt import GPT, GPTConfig, gpt_loss, synthetic_batch
from ptrain.core.parallel import loss_fn, parallelize
from ptrain.core.testing import run_distributed

CONFIG = GPTConfig.debug()


pytestmark = pytest.mark.usefixtures("one_thread")


def _full_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    from ptrain.core import tp

    return tp.full_state_dict(unwrap(model))


def _save_rank(rank: int, world: int, path: str) -> dict[str, torch.Tensor]:
    dims = ParallelDims(dp_shard=2, tp=2, world_size=world)
    model = parallelize(GPT(CONFIG, device="meta"), dims, {"tp": "1d", "dp": "zero1"})
    optimizer = build_optimizer(model, dims, "zero1", torch.optim.AdamW, lr=1e-2)
    tokens, targets = synthetic_batch(CONFIG, 4, seed=0)
    tokens, targets = tokens.chunk(2)[rank // 2], targets.chunk(2)[rank // 2]
    loss_fn(model)(model(tokens), targets).backward()
    optimizer.step()  # the saved weights are trained, not the seeded init the loaders start from
    dcp.save(path, model, optimizer, step=1, metadata={"layout": "dp2xtp2"})
    return _full_weights(model)


def _load_rank(rank: int, world: int, path: str) -> dict[str, dict[str, torch.Tensor]]:
    out = {}
    for mode in ("1d", "2d"):
        dims = ParallelDims(dp_shard=1, tp=4, world_size=world)
        model = parallelize(GPT(CONFIG, device="meta"), dims, {"tp": mode})
        info = dcp.load(path, model)
        assert info["step"] == 1 and info["metadata"] == {"layout": "dp2xtp2"}
        out[mode] = _full_weights(model)
    return out


@pytest.mark.distributed
def test_save_dp2_tp2_load_tp4_and_single_process_identical_weights(tmp_path: Path) -> None:
    path = str(tmp_path / "ckpt")
    saved = run_distributed(_save_rank, 4, path, timeout=120)[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no .partial / .old left
    initial = GPT(CONFIG)
    initial.init_weights(seed=0)
    assert not torch.equal(saved["head.weight"], initial.head.weight)
    loaded = run_distributed(_load_rank, 4, path, timeout=120)
    for rank_result in loaded:
        for mode in ("1d", "2d"):
            for name, value in saved.items():
                assert torch.equal(rank_result[mode][name], value), (mode, name)
    single = GPT(CONFIG)
    assert dcp.load(path, single)["step"] == 1
    for name, value in single.state_dict().items():
        assert torch.equal(value, saved[name]), name


def test_single_process_round_trip_with_optimizer_and_atomic_replace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = GPT(CONFIG)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    tokens, targets = synthetic_batch(CONFIG, 2, seed=1)
    gpt_loss(model(tokens), targets).backward()
    optimizer.step()
    path = tmp_path / "ckpt"
    dcp.save(path, model, optimizer, step=3)
    other = GPT(CONFIG)
    other_optimizer = torch.optim.AdamW(other.parameters(), lr=1e-2)
    assert dcp.load(path, other, other_optimizer)["step"] == 3
    for name, value in model.state_dict().items():
        assert torch.equal(other.state_dict()[name], value)
    for param, other_param in zip(model.parameters(), other.parameters(), strict=True):
        state, other_state = optimizer.state[param], other_optimizer.state[other_param]
        assert torch.equal(state["exp_avg_sq"], other_state["exp_avg_sq"])

    def crash(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(dcp.dcp, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        dcp.save(path, GPT(CONFIG), step=4)
    assert dcp.read_metadata(path)["step"] == 3  # the previous checkpoint is untouched
    assert dcp.load(path, other)["step"] == 3


def test_incomplete_or_mismatched_checkpoints_are_checkpoint_errors(tmp_path: Path) -> None:
    (tmp_path / "half").mkdir()
    with pytest.raises(CheckpointError, match="not a complete ptrain DCP checkpoint"):
        dcp.load(tmp_path / "half", GPT(CONFIG))
    with pytest.raises(CheckpointError, match="no such checkpoint directory"):
        dcp.load(tmp_path / "missing", GPT(CONFIG))
    dcp.save(tmp_path / "small", GPT(CONFIG))
    with pytest.raises(CheckpointError, match="holds no optimizer state"):
        model = GPT(CONFIG)
        dcp.load(tmp_path / "small", model, torch.optim.AdamW(model.parameters()))
    with pytest.raises(CheckpointError, match=r"does not fit this model \(ValueError: Size mis"):
        dcp.load(tmp_path / "small", GPT(GPTConfig.debug(dim=32)))
