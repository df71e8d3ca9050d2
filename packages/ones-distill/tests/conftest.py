"""Shared fixtures: tiny MoE layers and classifiers."""

from __future__ import annotations

import pytest
import torch

from ptrain.moe import MoE, MoEConfig


def _make_moe(experts: int, dim: int = 6, hidden: int = 10, top_k: int = 1, seed: int = 0) -> MoE:
    torch.manual_seed(seed)
    layer = MoE(MoEConfig(dim=dim, expert_hidden=hidden, num_experts=experts, top_k=top_k))
    with torch.no_grad():  # non-zero biases so bias handling is exercised
        assert layer.b1 is not None and layer.b2 is not None
        layer.b1.normal_()
        layer.b2.normal_()
    return layer.eval()


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture
def make_moe():  # type: ignore[no-untyped-def]
    """Factory: ``make_moe(experts, dim=6, hidden=10, top_k=1, seed=0)`` with random biases."""
    return _make_moe
