"""Tasks: the synthetic cluster task is seeded and learnable in shape; digits loads offline."""

from __future__ import annotations

import pytest
import torch

from ones_distill.data import cluster_task, load_task
from ptrain.core.cli import UserError


def test_cluster_task_is_seeded_with_clean_test_labels() -> None:
    a = cluster_task(seed=3, train_size=300, test_size=100, label_noise=0.5)
    b = cluster_task(seed=3, train_size=300, test_size=100, label_noise=0.5)
    clean = cluster_task(seed=3, train_size=300, test_size=100)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.train_y, b.train_y)
    assert a.train_x.shape == (300, 32) and a.test_x.shape == (100, 32)
    assert torch.equal(a.test_y, clean.test_y)
    flipped = float((a.train_y != clean.train_y).float().mean())
    assert 0.3 < flipped < 0.6  # half relabelled at random, 9 in 10 of those change
    assert a.num_classes == 10


def test_digits_task_loads_offline() -> None:
    pytest.importorskip("sklearn")
    split = load_task("digits", train_size=100, test_size=50)
    assert split.train_x.shape == (100, 1, 8, 8) and split.test_y.shape == (50,)
    assert float(split.train_x.max()) <= 1.0


def test_unknown_task_is_a_user_error() -> None:
    with pytest.raises(UserError, match="unknown data"):
        load_task("imagenet")
