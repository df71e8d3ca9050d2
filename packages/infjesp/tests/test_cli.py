"""The `infjesp` command: info, evaluate (the JSON contract), convert, and one-line errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from infjesp.cli import main
from infjesp.fsc import FSC, write_fscs_json
from infjesp.io import read_dpomdp

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


@needs_data
def test_info_reports_sizes_and_bounds(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "info.json"
    assert main(["info", str(DECTIGER), "--discount", "0.9", "--json", str(out)]) == 0
    info = json.loads(out.read_text())
    assert (info["agents"], info["states"], info["actions"]) == (2, 2, [3, 3])
    assert info["best_constant_value"] == pytest.approx(-20.0)
    assert info["best_constant_joint_action"] == ["listen", "listen"]
    assert info["qmdp_upper_bound"] == pytest.approx(178.0, abs=1e-3)
    assert "valid" in capsys.readouterr().out


@needs_data
def test_evaluate_contract_exact_and_monte_carlo(tmp_path: Path) -> None:
    model = read_dpomdp(DECTIGER).with_discount(0.9)
    # both agents always listen: hand-checkable value -2 / (1 - 0.9) = -20
    policy = tmp_path / "policy.json"
    write_fscs_json(policy, model, [FSC.constant(0, 2), FSC.constant(0, 2)], "dectiger", 0.9)
    out = tmp_path / "eval.json"
    code = main(
        ["evaluate", str(DECTIGER), "--policy", str(policy), "--discount", "0.9"]
        + ["--episodes", "500", "--json", str(out)]
    )
    assert code == 0
    result = json.loads(out.read_text())
    assert set(result) == {"value", "mc_mean", "mc_ci95"}
    assert result["value"] == pytest.approx(-20.0, abs=1e-9)
    assert abs(result["mc_mean"] - result["value"]) <= result["mc_ci95"] + 1e-3


@needs_data
def test_evaluate_a_stochastic_policy_agrees_within_the_interval(tmp_path: Path) -> None:
    import numpy as np

    model = read_dpomdp(DECTIGER).with_discount(0.9)
    rng = np.random.default_rng(3)
    fscs = [FSC.random(3, 2, 4, rng), FSC.random(3, 2, 4, rng)]
    policy = tmp_path / "policy.json"
    write_fscs_json(policy, model, fscs, "dectiger", 0.9)
    out = tmp_path / "eval.json"
    code = main(
        ["evaluate", str(DECTIGER), "--policy", str(policy), "--discount", "0.9"]
        + ["--episodes", "4000", "--seed", "1", "--json", str(out)]
    )
    assert code == 0
    result = json.loads(out.read_text())
    assert result["mc_ci95"] > 0
    assert abs(result["mc_mean"] - result["value"]) <= 1.5 * result["mc_ci95"] + 1e-3


@needs_data
def test_convert_writes_dot_per_agent(tmp_path: Path) -> None:
    model = read_dpomdp(DECTIGER)
    policy = tmp_path / "policy.json"
    write_fscs_json(policy, model, [FSC.constant(0, 2), FSC.constant(1, 2)], "dectiger", 0.9)
    assert main(["convert", str(DECTIGER), "--policy", str(policy), "--out", str(tmp_path)]) == 0
    assert "listen" in (tmp_path / "agent0.dot").read_text()
    assert "open-left" in (tmp_path / "agent1.dot").read_text()


def test_malformed_file_is_one_line_with_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    bad = tmp_path / "bad.dpomdp"
    bad.write_text("agents: 2\ndiscount: 1\nvalues: reward\nstates: a b\nactions:\nx y\n")
    assert main(["info", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith(f"infjesp: error: {bad}:")
    assert "Traceback" not in err


@needs_data
def test_infinite_horizon_evaluation_refuses_discount_one(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    model = read_dpomdp(DECTIGER)
    policy = tmp_path / "policy.json"
    write_fscs_json(policy, model, [FSC.constant(0, 2), FSC.constant(0, 2)], "dectiger", 1.0)
    assert main(["evaluate", str(DECTIGER), "--policy", str(policy)]) == 2
    assert "pass --discount 0.9" in capsys.readouterr().err


def test_version_and_usage(capsys: pytest.CaptureFixture) -> None:
    assert main(["--version"]) == 0
    assert "infjesp 0.1.0" in capsys.readouterr().out
    assert main([]) == 2
    assert main(["info"]) == 2  # argparse usage error
