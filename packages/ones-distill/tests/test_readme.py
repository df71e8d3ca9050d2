"""The README's API example runs as written (docs that drift from the code are a bug)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_api_example_runs() -> None:
    if not README.is_file():
        pytest.skip("README.md is not beside the tests (installed without the source tree)")
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    assert blocks, "the README has no python example"
    namespace: dict[str, object] = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)
    from ones_distill import DenseFFN, find_moe_layers

    student = namespace["student"]
    assert not find_moe_layers(student)  # type: ignore[arg-type]
    assert any(isinstance(m, DenseFFN) for m in student.modules())  # type: ignore[attr-defined]
