"""Data: the design doc's synthetic cluster task and scikit-learn's digits (offline).

Shape legend: ``N`` examples, ``F`` features, ``K`` channels, ``H``/``W`` image side.

A data set is a ``Split`` of ``(inputs, labels)`` tensors for train and test.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ptrain.core.cli import UserError

__all__ = ["DATASETS", "Split", "cluster_task", "digits_task", "load_task"]

DATASETS = ("synthetic", "digits")


@dataclass(frozen=True, slots=True)
class Split:
    """Train and test tensors: inputs ``(N, ...)`` float, labels ``(N,)`` long."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor

    @property
    def num_classes(self) -> int:
        """Number of classes (max label + 1)."""
        return int(max(self.train_y.max(), self.test_y.max())) + 1


def cluster_task(
    *,
    seed: int = 0,
    train_size: int = 24_000,
    test_size: int = 6_000,
    clusters: int = 8,
    features: int = 32,
    classes: int = 10,
    teacher_hidden: int = 32,
    separation: float = 4.0,
    label_noise: float = 0.0,
) -> Split:
    """The design doc's cluster task (§3): each Gaussian cluster has its own labelling function.

    Inputs are ``center_k + N(0, I)`` with centers ``~ N(0, separation² I)`` in ``R^F``; the label
    of a point of cluster ``k`` is ``argmax W2_k · tanh(W1_k · (x − center_k))`` (a random 2-layer
    net per cluster). A fraction ``label_noise`` of the *training* labels is replaced by random
    classes; test labels stay clean.

    Returns:
        The split (inputs ``(N, F)``).
    """
    if not 0 <= label_noise <= 1:
        raise UserError(f"label_noise must be in [0, 1], got {label_noise}")
    gen = torch.Generator().manual_seed(seed)
    centers = torch.randn(clusters, features, generator=gen) * separation
    w1 = torch.randn(clusters, features, teacher_hidden, generator=gen) / features**0.5
    w2 = torch.randn(clusters, teacher_hidden, classes, generator=gen) / teacher_hidden**0.5
    total = train_size + test_size
    cluster = torch.randint(clusters, (total,), generator=gen)
    offset = torch.randn(total, features, generator=gen)
    x = centers[cluster] + offset
    hidden = torch.tanh(torch.einsum("nf,nfh->nh", offset, w1[cluster]))
    y = torch.einsum("nh,nhc->nc", hidden, w2[cluster]).argmax(dim=1)
    train_y = y[:train_size].clone()
    if label_noise > 0:
        flip = torch.rand(train_size, generator=gen) < label_noise
        train_y[flip] = torch.randint(classes, (int(flip.sum()),), generator=gen)
    return Split(x[:train_size], train_y, x[train_size:], y[train_size:])


def digits_task(*, seed: int = 0, test_fraction: float = 0.25) -> Split:
    """scikit-learn's bundled digits (1,797 images ``(1, 8, 8)``), a seeded random split.

    Raises:
        UserError: scikit-learn is not installed.
    """
    from ptrain.moe.data import digits_dataset

    data = digits_dataset()
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    test = int(len(data) * test_fraction)
    x, y = data.images[order], data.labels[order]
    return Split(x[test:], y[test:], x[:test], y[:test])


def load_task(
    name: str, *, seed: int = 0, train_size: int | None = None, test_size: int | None = None
) -> Split:
    """A task by name: ``"synthetic"`` (cluster task) or ``"digits"``.

    Args:
        name: the task.
        seed: the task seed (synthetic: the generator; digits: the split).
        train_size: cap on training examples (synthetic: how many to draw).
        test_size: cap on test examples.

    Raises:
        UserError: unknown name.
    """
    if name == "synthetic":
        return cluster_task(
            seed=seed, train_size=train_size or 24_000, test_size=test_size or 6_000
        )
    if name == "digits":
        split = digits_task(seed=seed)
        return Split(
            split.train_x[:train_size],
            split.train_y[:train_size],
            split.test_x[:test_size],
            split.test_y[:test_size],
        )
    raise UserError(f"unknown data {name!r}; expected one of {', '.join(DATASETS)}")
