"""The README's API example runs as written, on the shared Dec-Tiger file."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
_OVERRIDE = os.environ.get("INFJESP_SHARED_DATA")
DATA = (
    Path(_OVERRIDE)
    if _OVERRIDE
    else Path(__file__).resolve().parents[3].parent / "shared" / "data" / "dpomdp"
)


def test_readme_api_example_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    if not README.is_file():
        pytest.skip("README.md is not beside the tests")
    if not (DATA / "dectiger.dpomdp").is_file():
        pytest.skip(f"shared Dec-POMDP problems not found at {DATA}")
    (block,) = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dectiger.dpomdp").write_text((DATA / "dectiger.dpomdp").read_text())
    exec(compile(block, str(README), "exec"), {})
    printed = capsys.readouterr().out
    assert "(-20.0" in printed and "5.190812" in printed  # the values the comments promise
    assert (tmp_path / "policy.json").is_file()
