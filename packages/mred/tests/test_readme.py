"""The README's API example runs as written (docs that drift from the code are a bug)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_api_example_runs(
    release: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not README.is_file():
        pytest.skip("README.md is not beside the tests (installed without the source tree)")
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    assert blocks, "the README has no python example"
    (tmp_path / "MReD").symlink_to(release)  # the fixture release stands in for the real one
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)
    assert (tmp_path / "runs" / "clf" / "classifier.pt").is_file()
    summaries = namespace["summaries"]
    rows = namespace["rows"]
    assert [len(s.sentences) for s in summaries] == [len(r.control) for r in rows]
