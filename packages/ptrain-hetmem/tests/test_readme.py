"""The README's API block runs as written (slow: an 8-layer GPT under a 64 MiB budget)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_has_results_markers() -> None:
    text = README.read_text()
    assert "<!-- results:start -->" in text and "<!-- results:end -->" in text


@pytest.mark.slow
def test_readme_api_block_runs(tmp_path: Path) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python block"
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        namespace: dict[str, object] = {}
        exec(compile(blocks[0], str(README), "exec"), namespace)
        engine = namespace["engine"]
        assert (tmp_path / "ckpt.pt").exists()
        engine.close()  # type: ignore[attr-defined]
    finally:
        os.chdir(cwd)
