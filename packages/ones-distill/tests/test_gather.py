"""Knowledge gathering: the invariants of design doc §2.3, SVD (Eckart–Young), bad input."""

from __future__ import annotations

import itertools

import pytest
import torch

from ones_distill import (
    METHODS,
    DenseFFN,
    GatherConfig,
    GatherError,
    MixerClassifier,
    MixerClassifierConfig,
    find_moe_layers,
    gather_layer,
    gather_model,
    gather_weights,
    low_rank_approximation,
    parameter_count,
)
from ptrain.moe import SparseMLP, sparse_mlp_config


@pytest.mark.parametrize("method", METHODS)
def test_one_expert_every_method_returns_that_expert(method: str, make_moe) -> None:
    layer = make_moe(experts=1)
    dense = gather_layer(layer, GatherConfig(method=method))
    x = torch.randn(5, 3, 6)
    expected, _ = layer(x)
    got, aux = dense(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert float(aux["loss"]) == 0.0
    torch.testing.assert_close(dense.fc1.weight.t(), layer.w1[0].detach(), rtol=1e-5, atol=1e-5)


def test_svd_full_rank_equals_sum_and_avg_is_sum_over_experts(make_moe) -> None:
    layer = make_moe(experts=4)
    full = gather_weights(
        layer.w1, layer.w2, layer.b1, layer.b2, GatherConfig(method="svd", rank=6, combine="sum")
    )
    total = gather_weights(layer.w1, layer.w2, layer.b1, layer.b2, GatherConfig(method="sum"))
    avg = gather_weights(layer.w1, layer.w2, layer.b1, layer.b2, GatherConfig(method="avg"))
    torch.testing.assert_close(full.w1, total.w1, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(full.w2, total.w2, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(avg.w1, total.w1 / 4)
    torch.testing.assert_close(total.w1, layer.w1.detach().sum(0))
    mean = gather_weights(
        layer.w1, layer.w2, None, None, GatherConfig(method="svd", rank=6, combine="mean")
    )
    torch.testing.assert_close(mean.w2, avg.w2, rtol=1e-5, atol=1e-5)


def test_svd_error_is_the_discarded_singular_values_and_does_not_grow_with_rank() -> None:
    torch.manual_seed(1)
    weight = torch.randn(3, 7, 5)
    errors = []
    for rank in range(1, 6):
        approx, singular = low_rank_approximation(weight, rank)
        error = torch.linalg.matrix_norm(weight - approx)  # Frobenius, per matrix
        expected = singular[:, rank:].pow(2).sum(-1).sqrt()
        torch.testing.assert_close(error, expected, rtol=1e-4, atol=1e-5)
        assert torch.linalg.matrix_rank(approx).max() <= rank
        errors.append(error)
    for smaller, larger in itertools.pairwise(errors):
        assert bool((larger <= smaller + 1e-6).all())
    assert float(errors[-1].max()) < 1e-5  # full rank is exact
    # Eckart–Young: no other rank-2 matrix does better (a random one does much worse)
    approx, _ = low_rank_approximation(weight[0], 2)
    other = torch.randn(7, 2) @ torch.randn(2, 5)
    assert torch.linalg.matrix_norm(weight[0] - approx) < torch.linalg.matrix_norm(
        weight[0] - other
    )


def test_topk_keeps_the_most_important_neurons_of_each_expert(make_moe) -> None:
    layer = make_moe(experts=2, hidden=4)
    with torch.no_grad():  # expert 0: neurons 1, 3 dead; expert 1: neurons 0, 2 dead
        layer.w1[0][:, [1, 3]] = 0
        layer.w1[1][:, [0, 2]] = 0
    dense = gather_layer(layer, GatherConfig(method="topk"))
    assert dense.hidden == 4
    expected_w1 = torch.cat([layer.w1[0][:, [0, 2]], layer.w1[1][:, [1, 3]]], dim=1)
    torch.testing.assert_close(dense.fc1.weight.t(), expected_w1.detach())
    expected_b1 = torch.cat([layer.b1[0][[0, 2]], layer.b1[1][[1, 3]]])  # type: ignore[index]
    torch.testing.assert_close(dense.fc1.bias, expected_b1.detach())
    wide = gather_layer(layer, GatherConfig(method="topk", neurons_per_expert=3))
    assert wide.hidden == 6


def test_student_replaces_every_moe_copies_the_rest_and_matches_the_dense_size() -> None:
    config = dict(
        image_size=8,
        patch_size=2,
        in_channels=1,
        dim=8,
        depth=3,
        token_hidden=4,
        channel_hidden=12,
        num_experts=4,
        top_k=2,
        moe_blocks=[0, 2],
    )
    torch.manual_seed(0)
    teacher = MixerClassifier(MixerClassifierConfig(**config))
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = gather_model(teacher, GatherConfig(method="svd", rank=2))
    assert not find_moe_layers(student)
    assert len(find_moe_layers(teacher)) == 2  # the teacher is untouched
    for key, value in teacher.state_dict().items():
        torch.testing.assert_close(value, before[key])
    student_state = student.state_dict()
    copied = [k for k in before if "channel" not in k or k.startswith("blocks.1.")]
    assert copied and all(torch.equal(student_state[k], before[k]) for k in copied)
    assert not any("router" in k for k in student_state)
    dense = MixerClassifier(MixerClassifierConfig(**{**config, "num_experts": 0}))
    assert parameter_count(student) == parameter_count(dense)
    assert set(student_state) == set(dense.state_dict())
    logits, aux = student(torch.rand(2, 1, 8, 8))
    assert logits.shape == (2, 10) and float(aux) == 0.0


def test_sparse_mlp_teacher_gathers_token_and_channel_moes() -> None:
    torch.manual_seed(0)
    teacher = SparseMLP(sparse_mlp_config("debug", image_size=8, in_channels=1)).eval()
    layers = find_moe_layers(teacher)
    assert len(layers) == 2
    student = gather_model(teacher, GatherConfig(method="avg"))
    assert sum(isinstance(m, DenseFFN) for m in student.modules()) == 2
    features, aux = student(torch.rand(3, 1, 8, 8))
    assert features.shape == (3, 32) and float(aux) == 0.0


def test_a_lone_moe_layer_gathers_to_a_dense_ffn(make_moe) -> None:
    layer = make_moe(experts=3)
    assert isinstance(gather_model(layer), DenseFFN)


def test_no_moe_layer_is_a_clear_error() -> None:
    dense = MixerClassifier(MixerClassifierConfig(dim=8, depth=1, num_experts=0))
    with pytest.raises(GatherError, match=r"no ptrain\.moe\.MoE layer"):
        gather_model(dense, source="dense.pt")


def test_rank_larger_than_the_weights_is_a_clear_error(make_moe) -> None:
    layer = make_moe(experts=2, dim=6, hidden=10)
    with pytest.raises(GatherError, match=r"rank 7 .* rank must be <= 6"):
        gather_layer(layer, GatherConfig(method="svd", rank=7), where="blocks.0")
    with pytest.raises(GatherError, match="out of range"):
        low_rank_approximation(torch.randn(3, 4), 5)
    with pytest.raises(ValueError, match="rank"):
        GatherConfig(method="svd", rank=0)
    with pytest.raises(ValueError, match="method"):
        GatherConfig(method="median")


def test_sharded_layer_is_refused(make_moe) -> None:
    layer = make_moe(experts=2)
    layer.local_expert_ids = [1]  # what apply_expert_parallel leaves on a rank
    with pytest.raises(GatherError, match="needs every expert"):
        gather_layer(layer)


def test_default_svd_rank_is_min_dim_over_experts(make_moe) -> None:
    layer = make_moe(experts=3, dim=6, hidden=10)
    default = gather_layer(layer)
    rank2 = gather_layer(layer, GatherConfig(method="svd", rank=2))
    full = gather_layer(layer, GatherConfig(method="svd", rank=6))
    torch.testing.assert_close(default.fc1.weight, rank2.fc1.weight)
    assert not torch.allclose(default.fc1.weight, full.fc1.weight)


def test_student_of_a_frozen_teacher_is_trainable() -> None:
    teacher = MixerClassifier(MixerClassifierConfig(dim=8, depth=1, channel_hidden=8))
    teacher.requires_grad_(False)
    student = gather_model(teacher)
    assert all(p.requires_grad for p in student.parameters())
