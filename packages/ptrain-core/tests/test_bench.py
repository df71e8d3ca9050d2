"""Tests of the interleaved ratio benchmark harness (ptrain.core.bench)."""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import pytest
import torch

from ptrain.core.bench import (
    BenchResult,
    bench_argument_parser,
    compare,
    environment_info,
    format_seconds,
    write_json,
)


def _logging_pair(log: list[str]):
    return (lambda: log.append("C")), (lambda: log.append("B"))


def test_calls_are_interleaved_alternating_order_with_setup_before_each_block() -> None:
    log: list[str] = []
    candidate, baseline = _logging_pair(log)
    compare(
        candidate,
        baseline,
        name="order",
        repeats=3,
        warmup=1,
        number=2,
        setup=lambda: log.append("S"),
    )
    warmup = ["S", "C", "S", "B"]
    candidate_first = ["S", "C", "C", "S", "B", "B"]
    baseline_first = ["S", "B", "B", "S", "C", "C"]
    assert log == warmup + candidate_first + baseline_first + candidate_first


def test_number_of_calls_does_not_depend_on_how_long_they_take() -> None:
    counts = {"fast": 0, "slow": 0}

    def fast() -> None:
        counts["fast"] += 1

    def slow() -> None:
        counts["slow"] += 1
        time.sleep(0.002)

    compare(slow, fast, name="count", repeats=4, warmup=2, number=3)
    assert counts == {"fast": 2 + 4 * 3, "slow": 2 + 4 * 3}


def test_ratio_reflects_which_callable_is_slower() -> None:
    result = compare(
        lambda: time.sleep(0.02), lambda: time.sleep(0.004), name="sleep", repeats=3, warmup=0
    )
    assert result.candidate_s >= 0.02
    assert result.ratio > 1.5
    assert result.ratio == pytest.approx(result.candidate_s / result.baseline_s)
    assert len(result.candidate_samples) == len(result.baseline_samples) == 3
    assert result.candidate_s == sorted(result.candidate_samples)[1]


def test_threads_are_set_during_the_run_and_restored_even_on_error() -> None:
    before = torch.get_num_threads()
    seen: list[int] = []
    compare(lambda: seen.append(torch.get_num_threads()), lambda: None, name="t", repeats=2)
    assert set(seen) == {1}
    assert torch.get_num_threads() == before

    def boom() -> None:
        raise RuntimeError("kernel failed")

    with pytest.raises(RuntimeError, match="kernel failed"):
        compare(boom, lambda: None, name="t", threads=1)
    assert torch.get_num_threads() == before

    seen.clear()
    result = compare(
        lambda: seen.append(torch.get_num_threads()), lambda: None, name="t", threads=None
    )
    assert set(seen) == {before}
    assert result.threads is None


def _result(ratio_goal: float | None, candidate_s: float = 0.0123, baseline_s: float = 0.0098):
    return BenchResult(
        name="lamb_step_vs_adamw",
        candidate_s=candidate_s,
        baseline_s=baseline_s,
        ratio=candidate_s / baseline_s,
        repeats=7,
        number=1,
        threads=1,
        goal=ratio_goal,
        candidate_samples=[candidate_s],
        baseline_samples=[baseline_s],
    )


def test_summary_is_one_line_with_times_ratio_and_goal() -> None:
    assert (
        _result(1.5).summary()
        == "lamb_step_vs_adamw: ours 12.3 ms, baseline 9.8 ms, ratio 1.26x (goal <= 1.50x: met)"
    )
    missed = _result(1.1)
    assert missed.met_goal is False
    assert missed.summary().endswith("(goal <= 1.10x: NOT met)")
    no_goal = _result(None)
    assert no_goal.met_goal is None
    assert no_goal.summary() == "lamb_step_vs_adamw: ours 12.3 ms, baseline 9.8 ms, ratio 1.26x"


def test_format_seconds_picks_a_readable_unit() -> None:
    assert format_seconds(2.5) == "2.5 s"
    assert format_seconds(0.0123) == "12.3 ms"
    assert format_seconds(0.0009996) == "1000 us"
    assert format_seconds(4.2e-6) == "4.2 us"
    assert format_seconds(3e-8) == "30 ns"


def test_to_dict_is_json_and_maps_infinite_ratio_to_null() -> None:
    data = json.loads(json.dumps(_result(1.5).to_dict()))
    assert data["met_goal"] is True
    assert data["ratio"] == pytest.approx(0.0123 / 0.0098)
    infinite = BenchResult(
        name="x",
        candidate_s=1.0,
        baseline_s=0.0,
        ratio=math.inf,
        repeats=1,
        number=1,
        threads=1,
        goal=None,
        candidate_samples=[1.0],
        baseline_samples=[0.0],
    )
    assert json.loads(json.dumps(infinite.to_dict(), allow_nan=False))["ratio"] is None


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"repeats": 0}, "repeats"),
        ({"number": 0}, "number"),
        ({"warmup": -1}, "warmup"),
        ({"threads": 0}, "threads"),
        ({"goal": 0.0}, "goal"),
        ({"name": ""}, "name"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(kwargs: dict, named: str) -> None:
    arguments = {"name": "x", **kwargs}
    with pytest.raises(ValueError, match=named):
        compare(lambda: None, lambda: None, **arguments)


def test_write_json_file_has_results_meta_environment(tmp_path: Path) -> None:
    path = tmp_path / "bench.json"
    path.write_text("previous")
    write_json(path, [_result(1.5)], meta={"batch": 32})
    data = json.loads(path.read_text())
    assert data["results"][0]["name"] == "lamb_step_vs_adamw"
    assert data["meta"] == {"batch": 32}
    environment = data["environment"]
    for key in ("torch", "python", "platform", "cpu_count", "torch_threads", "timestamp"):
        assert key in environment
    assert environment["torch"] == torch.__version__
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", environment["timestamp"])
    assert "ptrain-core" in environment["packages"]
    assert [p.name for p in tmp_path.iterdir()] == ["bench.json"]  # no temp file left


def test_write_json_rejects_non_results_and_keeps_previous_file(tmp_path: Path) -> None:
    path = tmp_path / "bench.json"
    path.write_text("previous")
    with pytest.raises(ValueError, match=r"results\[0\]"):
        write_json(path, [{"name": "x"}])  # type: ignore[list-item]
    assert path.read_text() == "previous"


def test_write_json_dash_writes_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    write_json("-", _result(None))
    data = json.loads(capsys.readouterr().out)
    assert data["results"][0]["goal"] is None
    assert data["meta"] == {}


def test_environment_info_reports_threads_now() -> None:
    assert environment_info()["torch_threads"] == torch.get_num_threads()


def test_bench_argument_parser_flags() -> None:
    parser = bench_argument_parser("LAMB vs AdamW step time")
    assert parser.description == "LAMB vs AdamW step time"
    defaults = parser.parse_args([])
    assert (defaults.json, defaults.repeats, defaults.quick) == (None, 7, False)
    args = parser.parse_args(["--json", "out.json", "--repeats", "3", "--quick"])
    assert (args.json, args.repeats, args.quick) == ("out.json", 3, True)
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--repeats", "0"])
    assert exit_info.value.code == 2
