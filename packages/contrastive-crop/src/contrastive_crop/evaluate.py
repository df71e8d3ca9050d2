"""Frozen-feature evaluation: weighted kNN (k = 20, 200) and a linear probe.

Shapes: ``N`` train images, ``M`` test images, ``D`` feature dim, ``K`` classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["extract_features", "knn_accuracy", "knn_predict", "linear_probe"]


@torch.no_grad()
def extract_features(
    backbone: nn.Module, images: Tensor, batch_size: int = 512, transform: Any = None
) -> Tensor:
    """Pooled backbone features ``(N, D)`` of un-augmented images, L2-normalised.

    Args:
        backbone: maps ``(B, C, H, W)`` to ``(B, D)``; put in eval mode for the pass.
        images: ``(N, C, H, W)`` uint8 (scaled to [0, 1]) or float.
        batch_size: images per forward.
        transform: optional batched callable applied to each float batch (e.g. normalisation).
    """
    was_training = backbone.training
    backbone.eval()
    parameter = next(backbone.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    out = []
    try:
        for batch in images.split(batch_size):
            batch = batch.to(device)
            if batch.dtype == torch.uint8:
                batch = batch.float() / 255.0
            if transform is not None:
                batch = transform(batch)
            out.append(F.normalize(backbone(batch).float(), dim=1).cpu())
    finally:
        backbone.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, 0)


def knn_predict(
    train_ND: Tensor,
    train_labels_N: Tensor,
    test_MD: Tensor,
    k: int = 200,
    temperature: float = 0.1,
    num_classes: int | None = None,
    chunk: int = 1024,
) -> Tensor:
    """InstDisc-style weighted kNN: neighbours by cosine, votes weighted ``exp(sim / τ)``.

    Features are expected L2-normalised. Returns predicted labels ``(M,)``.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    num_classes = num_classes or int(train_labels_N.max()) + 1
    k = min(k, len(train_ND))
    preds = []
    for test_chunk in test_MD.split(chunk):
        sim_MN = test_chunk @ train_ND.T
        top_sim, top_index = sim_MN.topk(k, dim=1)
        votes_MK = torch.zeros(len(test_chunk), num_classes)
        votes_MK.scatter_add_(1, train_labels_N[top_index], (top_sim / temperature).exp())
        preds.append(votes_MK.argmax(dim=1))
    return torch.cat(preds)


def knn_accuracy(
    train_ND: Tensor,
    train_labels_N: Tensor,
    test_MD: Tensor,
    test_labels_M: Tensor,
    ks: Sequence[int] = (20, 200),
    temperature: float = 0.1,
) -> dict[str, float]:
    """kNN top-1 accuracy for each k: ``{"knn@20": ..., "knn@200": ...}``."""
    num_classes = int(max(train_labels_N.max(), test_labels_M.max())) + 1
    return {
        f"knn@{k}": float(
            (
                knn_predict(train_ND, train_labels_N, test_MD, k, temperature, num_classes)
                == test_labels_M
            )
            .float()
            .mean()
        )
        for k in ks
    }


def linear_probe(
    train_ND: Tensor,
    train_labels_N: Tensor,
    test_MD: Tensor,
    test_labels_M: Tensor,
    weight_decay: float = 1e-4,
    max_iter: int = 200,
) -> float:
    """Multinomial logistic regression on frozen features (full-batch L-BFGS); test accuracy.

    Features are standardised with the training set's mean and std. Deterministic.
    """
    mean, std = train_ND.mean(0), train_ND.std(0).clamp(min=1e-6)
    x_train, x_test = (train_ND - mean) / std, (test_MD - mean) / std
    num_classes = int(max(train_labels_N.max(), test_labels_M.max())) + 1
    layer = nn.Linear(x_train.shape[1], num_classes)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    optimizer = torch.optim.LBFGS(
        layer.parameters(),
        lr=1.0,
        max_iter=max_iter,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(layer(x_train), train_labels_N)
        loss = loss + weight_decay * layer.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return float((layer(x_test).argmax(1) == test_labels_M).float().mean())
