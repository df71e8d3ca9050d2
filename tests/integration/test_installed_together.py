"""Cross-package checks: every package installed side by side in one environment."""

from __future__ import annotations

import importlib
import importlib.metadata
import pkgutil
import subprocess
import sys

import pytest

PTRAIN_DISTRIBUTIONS = {
    "ptrain-core": "ptrain.core",
    "ptrain-hetmem": "ptrain.hetmem",
    "ptrain-moe": "ptrain.moe",
    "ptrain-sched": "ptrain.sched",
}
OTHER_DISTRIBUTIONS = {
    "contrastive-crop": "contrastive_crop",
    "ones-distill": "ones_distill",
    "infjesp": "infjesp",
    "mred": "mred",
    "keypointnet": "keypointnet",
}


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.parametrize(
    ("distribution", "module"), sorted({**PTRAIN_DISTRIBUTIONS, **OTHER_DISTRIBUTIONS}.items())
)
def test_every_installed_package_imports_beside_the_others(distribution: str, module: str) -> None:
    if not _installed(distribution):
        pytest.skip(f"{distribution} is not in this repository yet")
    imported = importlib.import_module(module)
    assert imported.__name__ == module


def test_ptrain_is_one_namespace_spanning_every_ptrain_package() -> None:
    import ptrain

    assert not hasattr(ptrain, "__file__") or ptrain.__file__ is None  # PEP 420: no __init__.py
    found = {f"ptrain.{info.name}" for info in pkgutil.iter_modules(ptrain.__path__)}
    expected = {module for dist, module in PTRAIN_DISTRIBUTIONS.items() if _installed(dist)}
    assert expected and expected <= found


def test_ptrain_core_env_lists_the_installed_packages() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "ptrain.core", "env"], capture_output=True, text=True, check=True
    )
    assert "torch" in completed.stdout
    assert "ptrain-core" in completed.stdout
