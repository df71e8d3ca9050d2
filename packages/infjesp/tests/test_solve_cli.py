"""`infjesp solve`: the JSON contract, the policy file, progress lines and one-line errors."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

import infjesp.jesp
from infjesp.cli import main
from infjesp.jesp import exhaustive_best_response

_OVERRIDE = os.environ.get("INFJESP_SHARED_DATA")
DATA = (
    Path(_OVERRIDE)
    if _OVERRIDE
    else Path(__file__).resolve().parents[3].parent / "shared" / "data" / "dpomdp"
)
DECTIGER = DATA / "dectiger.dpomdp"
needs_data = pytest.mark.skipif(
    not DECTIGER.is_file(), reason=f"shared Dec-POMDP problems not found at {DATA}"
)
HAS_EXTRACT = importlib.util.find_spec("infjesp.extract") is not None


@pytest.fixture
def tiny_best_response(monkeypatch: pytest.MonkeyPatch) -> None:
    """Swap the real solver for the exhaustive 2-node best response (fast, in-process)."""
    monkeypatch.setattr(infjesp.jesp, "_default_best_response", lambda: exhaustive_best_response)


def _contract(result: dict[str, object]) -> None:
    assert {"value", "upper_bound", "fsc_sizes", "iterations", "time_s"} <= set(result)
    assert isinstance(result["value"], float)
    assert isinstance(result["upper_bound"], float)
    assert isinstance(result["time_s"], float)
    assert isinstance(result["iterations"], int) and not isinstance(result["iterations"], bool)
    sizes = result["fsc_sizes"]
    assert isinstance(sizes, list) and len(sizes) == 2
    assert all(isinstance(n, int) and n >= 1 for n in sizes)
    assert -20.0 - 1e-9 <= result["value"] <= result["upper_bound"]
    assert result["upper_bound"] == pytest.approx(178.0, abs=1e-3)


@needs_data
def test_solve_json_contract_and_policy_round_trip(
    tmp_path: Path, tiny_best_response: None, capsys: pytest.CaptureFixture[str]
) -> None:
    out, policy = tmp_path / "solve.json", tmp_path / "policy.json"
    code = main(
        ["solve", str(DECTIGER), "--discount", "0.9", "--seed", "0", "--restarts", "2"]
        + ["--time-limit", "30", "--json", str(out), "--out", str(policy)]
        + ["--max-nodes", "2", "--progress"]
    )
    assert code == 0
    result = json.loads(out.read_text())
    _contract(result)
    assert result["iterations"] >= 2 and len(result["runs"]) == 2
    err = capsys.readouterr().err
    assert "iteration 1 agent 0: value" in err
    evaluated = tmp_path / "eval.json"
    assert (
        main(
            ["evaluate", str(DECTIGER), "--policy", str(policy), "--discount", "0.9"]
            + ["--episodes", "50", "--json", str(evaluated)]
        )
        == 0
    )
    assert json.loads(evaluated.read_text())["value"] == pytest.approx(result["value"], abs=1e-9)


@needs_data
@pytest.mark.skipif(not HAS_EXTRACT, reason="infjesp.extract not available")
def test_solve_with_the_real_best_response_and_a_small_time_limit(tmp_path: Path) -> None:
    out = tmp_path / "solve.json"
    code = main(
        ["solve", str(DECTIGER), "--discount", "0.9", "--seed", "0", "--restarts", "1"]
        + ["--time-limit", "5", "--json", str(out), "--quiet"]
    )
    assert code == 0
    result = json.loads(out.read_text())
    _contract(result)


@needs_data
@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--discount", "0.9", "--init", "bogus"], "unknown init 'bogus'"),
        ([], "discount 1"),
        (["--discount", "1"], "discount 1"),
    ],
)
def test_solve_user_errors_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    out = tmp_path / "solve.json"
    assert main(["solve", str(DECTIGER), "--json", str(out)] + extra) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("infjesp: error:") and message in err
    assert not out.exists()


@needs_data
def test_solve_json_to_stdout_is_pure_json(
    tiny_best_response: None, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        ["solve", str(DECTIGER), "--discount", "0.9", "--init", "blind", "--max-nodes", "1"]
        + ["--json", "-", "--quiet"]
    )
    assert code == 0
    captured = capsys.readouterr()
    _contract(json.loads(captured.out))
    assert "value" in captured.err and "iteration" not in captured.err
