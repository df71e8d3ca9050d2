"""The README's API example runs as written (docs that drift from the code are a bug)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from ptrain.moe import MoE

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_api_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not README.is_file():
        pytest.skip("README.md is not beside the tests (installed without the source tree)")
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    assert blocks, "the README has no python example"
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)
    assert (tmp_path / "sparse.pt").is_file()
    y = namespace["y"]
    assert isinstance(y, torch.Tensor) and y.shape == (4, 50, 64)
    layers = namespace["layers"]
    assert isinstance(layers, list) and len(layers) == 2
    assert all(isinstance(layer, MoE) for layer in layers)


def test_readme_documents_the_bench_contract_keys() -> None:
    if not README.is_file():
        pytest.skip("README.md is not beside the tests")
    text = README.read_text()
    for key in ("moe_dropless_s", "moe_capacity_s", "dense_equal_flops_s", "naive_loop_s",
                "einsum_dispatch_s"):  # fmt: skip
        assert key in text
