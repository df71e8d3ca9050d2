"""Sparse-MLP / dense Mixer: shapes, equal active FLOPs, Re-represent, model files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ptrain.core.checkpoint import CheckpointError
from ptrain.moe import (
    MoE,
    SparseMLP,
    SparseMLPConfig,
    active_macs,
    dense_mixer_config,
    load_model,
    save_model,
    sparse_mlp_config,
)
from ptrain.moe.mixer import MixerBlock, ReRepresent, SparseBlock


@pytest.mark.parametrize(
    ("name", "overrides"),
    [
        ("debug", {}),
        ("S", {"image_size": 32, "patch_size": 16}),
        ("B", {"image_size": 32, "patch_size": 16}),
        pytest.param("L", {"image_size": 32, "patch_size": 16}, marks=pytest.mark.slow),
    ],
)
def test_forward_shapes_for_every_config(name: str, overrides: dict[str, int]) -> None:
    config = sparse_mlp_config(name, **overrides)
    for variant in (config, dense_mixer_config(config)):
        model = SparseMLP(variant)
        images = torch.rand(2, 3, variant.image_size, variant.image_size)
        features, aux = model(images)
        assert features.shape == (2, variant.dim)
        assert aux.shape == ()
        assert (float(aux.detach()) > 0) == variant.sparse
        kinds = [type(block) for block in model.blocks]
        tail = variant.depth - variant.num_sparse
        assert kinds[:tail] == [MixerBlock] * tail  # sparse blocks are the last ones
        expected = SparseBlock if variant.sparse else MixerBlock
        assert kinds[tail:] == [expected] * variant.num_sparse


def test_default_presets_use_224_images_with_patch_16() -> None:
    for name in ("S", "B", "L"):
        config = sparse_mlp_config(name)
        assert (config.image_size, config.patch_size, config.patches) == (224, 16, 196)


@pytest.mark.parametrize("wrap_channel_moe", [False, True])
@pytest.mark.parametrize("rerepresent", [False, True])
def test_dense_mixer_has_the_same_active_flops(wrap_channel_moe: bool, rerepresent: bool) -> None:
    config = sparse_mlp_config("debug", wrap_channel_moe=wrap_channel_moe, rerepresent=rerepresent)
    sparse, dense = active_macs(config), active_macs(dense_mixer_config(config))
    assert abs(sparse - dense) / sparse < 0.01
    model = SparseMLP(config)
    features, _ = model(torch.rand(3, 3, 32, 32))
    features.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_sparse_model_has_more_parameters_than_its_dense_twin() -> None:
    config = sparse_mlp_config("debug")
    count = lambda model: sum(p.numel() for p in model.parameters())  # noqa: E731
    assert count(SparseMLP(config)) > count(SparseMLP(dense_mixer_config(config)))


def test_active_macs_counts_a_dense_block_by_hand() -> None:
    config = SparseMLPConfig(
        image_size=8, patch_size=2, in_channels=1, dim=4, depth=1, token_hidden=3,
        channel_hidden=5, num_sparse=0,
    )  # fmt: skip
    s, c = 16, 4
    assert active_macs(config) == s * c * 1 * 4 + 2 * s * c * 3 + 2 * s * c * 5


def test_rerepresent_shapes_and_moe_items() -> None:
    config = sparse_mlp_config("debug")  # S = 64, C = 32
    assert (config.patches, config.s1, config.c1) == (64, 128, 16)
    layer = ReRepresent(64, 32, 128, 16)
    assert layer(torch.rand(2, 64, 32)).shape == (2, 128, 16)
    block = SparseBlock(config)
    assert block.moe_s.config.dim == 128 and block.moe_s.config.top_k == 1
    assert block.moe_c.config.dim == 32 and block.moe_c.config.top_k == 2
    wrapped = SparseBlock(sparse_mlp_config("debug", wrap_channel_moe=True))
    assert wrapped.moe_c.config.dim == 16
    out, aux = block(torch.rand(2, 64, 32))
    assert out.shape == (2, 64, 32) and aux.shape == ()


def test_bad_image_size_is_a_value_error_naming_the_values() -> None:
    with pytest.raises(ValueError, match="image_size=30 is not divisible by patch_size=4"):
        sparse_mlp_config("debug", image_size=30)
    with pytest.raises(ValueError, match="unknown Sparse-MLP preset 'XL'"):
        sparse_mlp_config("XL")
    model = SparseMLP(sparse_mlp_config("debug"))
    with pytest.raises(ValueError, match=r"expected images \(B, 3, 32, 32\), got \(2, 3, 28, 28\)"):
        model(torch.rand(2, 3, 28, 28))


def test_model_file_rebuilds_the_model_alone(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = SparseMLP(sparse_mlp_config("debug", image_size=8, patch_size=2, in_channels=1))
    path = tmp_path / "model.pt"
    save_model(path, model, epoch=3)
    payload = torch.load(path, weights_only=True)  # plain data only
    assert payload["format_version"] == 1 and payload["model_class"] == "SparseMLP"
    assert payload["config"] == model.config.to_dict()
    assert payload["extra"] == {"epoch": 3}
    loaded = load_model(path)
    images = torch.rand(3, 1, 8, 8)
    model.eval()
    torch.testing.assert_close(loaded(images)[0], model(images)[0])
    layers = [m for m in loaded.modules() if isinstance(m, MoE)]
    assert len(layers) == 2  # MoE_s and MoE_c of the one sparse block
    assert layers[0].w1.shape == (4, 32, 32)  # (experts, S1, MoE_s hidden)


def test_model_file_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"bad\.pt: cannot read model file"):
        load_model(bad)
    other = tmp_path / "other.pt"
    torch.save({"format": "something"}, other)
    with pytest.raises(CheckpointError, match=r"other\.pt: not a ptrain-moe-model file"):
        load_model(other)
    with pytest.raises(CheckpointError, match=r"missing\.pt: no such model file"):
        load_model(tmp_path / "missing.pt")
