"""PointNet / DGCNN segmentation networks: shapes, invariances, the vectorised k-NN graph."""

from __future__ import annotations

import pytest
import torch

from keypointnet.models import DGCNNSeg, PointNetSeg, build_model
from keypointnet.models.dgcnn import edge_features

TINY = {
    "pointnet": {"channels": (8, 16, 32), "head_channels": (16,)},
    "dgcnn": {"k": 4, "edge_channels": ((8,), (8,)), "emb_dims": 16, "head_channels": (16,)},
}


def _points(batch: int, count: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, count, 3, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", ["pointnet", "dgcnn"])
@pytest.mark.parametrize("norm", ["batch", "group", "none"])
def test_output_shape_is_one_logit_row_per_point(name: str, norm: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, 5, norm=norm, **TINY[name])
    logits = model(_points(3, 37))
    assert logits.shape == (3, 37, 5)
    logits.sum().backward()  # every layer is reachable from the output
    assert all(p.grad is not None for p in model.parameters())


def test_pointnet_transforms_keep_shapes_and_regularise() -> None:
    torch.manual_seed(0)
    model = PointNetSeg(
        4, channels=(8, 16, 32), head_channels=(16,), input_transform=True, feature_transform=True
    )
    logits = model(_points(2, 20))
    assert logits.shape == (2, 20, 4)
    # The T-Nets start at the identity, so the orthogonality penalty starts at 0 ...
    assert float(model.regularization_loss().detach()) == pytest.approx(0.0, abs=1e-6)
    # ... and grows, with a gradient, once the feature transform is no longer orthogonal.
    assert model.feature_transform is not None
    with torch.no_grad():
        model.feature_transform.out.bias.fill_(0.1)
    model(_points(2, 20))
    penalty = model.regularization_loss()
    assert float(penalty.detach()) > 0.1
    penalty.backward()
    assert model.feature_transform.out.bias.grad is not None
    assert float(PointNetSeg(4, channels=(8, 16)).regularization_loss()) == 0.0


@pytest.mark.parametrize("name", ["pointnet", "dgcnn"])
def test_permuting_the_points_permutes_the_logits(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, 3, norm="batch", **TINY[name]).eval()
    points = _points(2, 30, seed=1)
    order = torch.randperm(30, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = model(points)[:, order]
        got = model(points[:, order])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["pointnet", "dgcnn"])
def test_group_norm_makes_a_shape_independent_of_its_batch(name: str) -> None:
    # This is what makes data-parallel training equal to single-process training.
    torch.manual_seed(0)
    model = build_model(name, 3, norm="group", dropout=0.0, **TINY[name]).train()
    points = _points(4, 25, seed=3)
    torch.testing.assert_close(model(points)[:2], model(points[:2]), rtol=1e-5, atol=1e-6)
    batch_model = build_model(name, 3, norm="batch", dropout=0.0, **TINY[name]).train()
    assert not torch.allclose(batch_model(points)[:2], batch_model(points[:2]), atol=1e-4)


def test_edge_features_match_a_loop_over_points() -> None:
    x = _points(2, 9, seed=4)
    k = 3
    edges = edge_features(x, k)  # (B, 2F, N, k)
    assert edges.shape == (2, 6, 9, k)
    for b in range(2):
        for i in range(9):
            distances = ((x[b] - x[b, i]) ** 2).sum(dim=1)
            nearest = distances.argsort()[:k]
            assert nearest[0] == i  # a point is its own nearest neighbour
            expected = torch.cat([x[b, nearest] - x[b, i], x[b, i].expand(k, 3)], dim=1)  # (k, 6)
            torch.testing.assert_close(edges[b, :, i].T, expected)


def test_dgcnn_clamps_k_to_the_number_of_points() -> None:
    model = DGCNNSeg(2, k=20, edge_channels=((4,),), emb_dims=8, head_channels=())
    assert model(_points(1, 6)).shape == (1, 6, 2)


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("pointnet", {"norm": "layer"}, "norm"),
        ("pointnet", {"channels": (8,)}, "channels"),
        ("pointnet", {"dropout": 1.0}, "dropout"),
        ("dgcnn", {"k": 0}, "k must"),
        ("dgcnn", {"edge_channels": ()}, "edge_channels"),
        ("resnet", {}, "model must be one of"),
    ],
)
def test_bad_arguments_are_named(name: str, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_model(name, 2, **kwargs)  # type: ignore[arg-type]


def test_bad_input_shape_is_reported() -> None:
    model = PointNetSeg(2, channels=(4, 8))
    with pytest.raises(ValueError, match=r"\(B, N, 3\)"):
        model(torch.zeros(2, 10, 4))
