"""Shared fixtures: the small release under tests/assets and the shared MReD copy (if present)."""

from __future__ import annotations

from pathlib import Path

import pytest

ASSETS = Path(__file__).parent / "assets"
RELEASE = ASSETS / "release"
# ../shared relative to the repository root (packages/mred/tests -> parents[3] is the repo root).
SHARED = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "mred"


@pytest.fixture
def assets() -> Path:
    return ASSETS


@pytest.fixture
def release() -> Path:
    return RELEASE


@pytest.fixture
def shared() -> Path:
    if not (SHARED / "full_data_info.txt").is_file():
        pytest.skip(f"the shared MReD copy is absent ({SHARED})")
    return SHARED


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread() -> None:
    """Tiny tensors: intra-op threads only spin on a busy 2-core machine."""
    import torch

    torch.set_num_threads(1)
