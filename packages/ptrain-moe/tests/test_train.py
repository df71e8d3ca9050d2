"""MoCo v3 pre-training: the loss goes down, resume equals an uninterrupted run, linear probe."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from ptrain.core.testing import run_distributed
from ptrain.moe import MoE, load_model
from ptrain.moe.data import TensorImageDataset, augment
from ptrain.moe.moco import momentum_at
from ptrain.moe.train import PretrainConfig, linear_probe, pretrain

SMALL_MODEL = {"patch_size": 2, "dim": 16, "token_hidden": 16, "channel_hidden": 32}


def bars_dataset(count: int = 256, seed: int = 0) -> TensorImageDataset:
    """8x8 grey images: a bright horizontal or vertical bar at a random place, plus noise."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (count,), generator=generator)
    where = torch.randint(1, 7, (count,), generator=generator)
    images = 0.1 * torch.rand(count, 1, 8, 8, generator=generator)
    for i in range(count):
        if labels[i] == 0:
            images[i, 0, where[i], 1:7] = 1.0
        else:
            images[i, 0, 1:7, where[i]] = 1.0
    return TensorImageDataset(images, labels, ("horizontal", "vertical"))


def _config(**overrides: object) -> PretrainConfig:
    settings = dict(
        overrides=SMALL_MODEL, steps=6, batch_size=32, lr=5e-3, warmup_steps=1,
        checkpoint_every=0, head_hidden=32, head_out=16,
    )  # fmt: skip
    settings.update(overrides)
    return PretrainConfig(**settings)  # type: ignore[arg-type]


def test_a_few_pretraining_steps_reduce_the_loss(tmp_path: Path) -> None:
    result = pretrain(_config(steps=12), bars_dataset(), tmp_path)
    losses = result["losses"]
    assert len(losses) == 12
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    backbone = load_model(result["backbone"])
    assert any(isinstance(m, MoE) for m in backbone.modules())


def test_resume_from_checkpoint_equals_uninterrupted_training(tmp_path: Path) -> None:
    data = bars_dataset()
    config = _config(checkpoint_every=2)
    straight = pretrain(config, data, tmp_path / "straight")
    first = pretrain(config, data, tmp_path / "resumed", stop_after=3)
    assert first["steps"] == 3 and first["backbone"] is None
    torch.manual_seed(1234)  # a resumed process starts from unrelated RNG state
    second = pretrain(config, data, tmp_path / "resumed")
    assert second["losses"] == straight["losses"]
    a = torch.load(straight["backbone"], weights_only=True)["state_dict"]
    b = torch.load(second["backbone"], weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[key], b[key]) for key in a)


def test_dense_mixer_pretrains_too(tmp_path: Path) -> None:
    result = pretrain(_config(dense=True, steps=2), bars_dataset(), tmp_path)
    backbone = load_model(result["backbone"])
    assert not any(isinstance(m, MoE) for m in backbone.modules())


def _ep_pretrain(rank: int, world: int, out: str) -> list[float]:
    config = _config(steps=3)
    return pretrain(config, bars_dataset(), out, group=dist.group.WORLD)["losses"]


@pytest.mark.distributed
def test_pretraining_with_two_rank_expert_parallelism(tmp_path: Path) -> None:
    losses = run_distributed(_ep_pretrain, 2, str(tmp_path), timeout=120)
    assert losses[0] == losses[1] and len(losses[0]) == 3
    backbone = load_model(tmp_path / "backbone.pt")  # rank 0 wrote every expert
    layers = [m for m in backbone.modules() if isinstance(m, MoE)]
    assert layers and all(m.num_local_experts == m.num_experts == 4 for m in layers)
    assert sorted((tmp_path / "checkpoints").iterdir())[0].name.startswith("rank0-step")


def test_linear_probe_separates_the_bars(tmp_path: Path) -> None:
    result = pretrain(_config(steps=4), bars_dataset(), tmp_path)
    train, test = bars_dataset(200, seed=1), bars_dataset(100, seed=2)
    probe = linear_probe(load_model(result["backbone"]), train, test)
    assert probe["test_accuracy"] >= 0.9
    assert probe["train_size"] == 200 and probe["test_size"] == 100


def test_augment_is_reproducible_and_keeps_shape() -> None:
    images = bars_dataset(8).images
    a = augment(images, torch.Generator().manual_seed(0))
    b = augment(images, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == images.shape
    assert not torch.equal(a, images)
    assert float(a.min()) >= 0 and float(a.max()) <= 1


def test_momentum_schedule_goes_from_base_to_one() -> None:
    assert momentum_at(0, 10, 0.99) == pytest.approx(0.99)
    assert momentum_at(9, 10, 0.99) == pytest.approx(1.0)
    assert 0.99 < momentum_at(5, 10, 0.99) < 1.0


def test_bad_pretrain_config_names_the_field() -> None:
    with pytest.raises(ValueError, match=r"PretrainConfig\.steps must be a positive int, got 0"):
        PretrainConfig(steps=0)
    with pytest.raises(ValueError, match="batch_size=31 is not divisible"):
        run_distributed(_odd_batch, 2, timeout=60)


def _odd_batch(rank: int, world: int) -> None:
    import tempfile

    pretrain(_config(batch_size=31), bars_dataset(), tempfile.mkdtemp(), group=dist.group.WORLD)
