"""Shared fixtures: a constant-rate job model for exact hand-made traces, the shared data path."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from ptrain.sched.apps import Rate

# packages/ptrain-sched/tests/conftest.py -> repository root is parents[3]
SHARED = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "traces"
POLLUX_WORKLOADS = SHARED / "pollux_adaptdl" / "workloads"


class LinearModel:
    """Work W; progress rate = n GPUs × ``per_gpu`` (perfect scaling, batch ignored)."""

    def __init__(self, name: str = "lin", work: float = 100.0, per_gpu: float = 1.0) -> None:
        self.name = name
        self.min_batch = 1
        self.max_batch = 1024
        self.max_local_batch = 1024
        self.total_work = work
        self.dataset_size = 10.0
        self.per_gpu = per_gpu

    def rate(self, num_gpus, num_nodes, batch_size, work_done, placement=None):
        if num_gpus < 1:
            return Rate(0.0, 0.0, 0, 0, batch_size, math.inf)
        speed = self.per_gpu * num_gpus
        return Rate(speed, speed, max(batch_size // num_gpus, 1), 0, batch_size, 1.0 / speed)

    def best_batch(self, num_gpus, num_nodes, work_done):
        return num_gpus

    def clamp_batch(self, batch_size):
        return batch_size


@pytest.fixture
def linear_models() -> dict[str, LinearModel]:
    return {"lin": LinearModel()}


def needs_shared() -> pytest.MarkDecorator:
    return pytest.mark.skipif(
        not POLLUX_WORKLOADS.is_dir(), reason=f"shared traces not found at {POLLUX_WORKLOADS}"
    )
