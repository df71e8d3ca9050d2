"""The ``ptrain-hetmem`` command: the contracts checked from outside."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ptrain.hetmem.cli import main


def test_plan_reports_the_search(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "plan.json"
    assert main(["plan", "--layers", "2", "--search-range", "16384", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["chosen_chunk_size"] == report["used_chunk_size"] >= report["min_chunk_size"]
    assert report["sizes_tried"] == 17
    assert "chunk size" in capsys.readouterr().out


@pytest.mark.slow
def test_bench_capacity_contract_keys(tmp_path: Path) -> None:
    out = tmp_path / "capacity.json"
    assert main(["bench", "capacity", "--budget", "16MiB", "--host-budget", "32MiB",
                 "--json", str(out)]) == 0  # fmt: skip
    result = json.loads(out.read_text())
    assert set(result) == {"budget_bytes", "plain_params", "static_params", "hetmem_params"}
    assert result["budget_bytes"] == 16 * 2**20
    assert all(isinstance(v, int) for v in result.values())
    # 16 MiB cannot hold one layer's 16 B/param in plain torch; hetmem offloads to the host
    assert result["plain_params"] == 0
    assert result["hetmem_params"] > result["static_params"] > 0


def test_capacity_search_doubles_then_bisects() -> None:
    from ptrain.hetmem.bench import largest_fitting

    calls: list[int] = []

    def fits(layers: int) -> bool:
        calls.append(layers)
        return layers <= 11

    assert largest_fitting(fits) == 11
    assert calls == [1, 2, 4, 8, 16, 12, 10, 11]
    assert largest_fitting(lambda n: False) == 0


@pytest.mark.slow
def test_bench_traffic_contract_keys(tmp_path: Path) -> None:
    out = tmp_path / "traffic.json"
    assert main(["bench", "traffic", "--layers", "2", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert {"opt_bytes", "lru_bytes", "static_bytes", "belady_bytes"} <= set(result)
    assert result["opt_bytes"] >= result["belady_bytes"] >= result["lower_bound_bytes"] > 0
    assert result["static_policy"] in ("static", "static-z3")


def test_bad_budget_is_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "capacity", "--budget", "lots"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # argparse prints usage first
    assert last.startswith("ptrain-hetmem bench: error: argument --budget") and "'lots'" in last


def test_trace_writes_csv_and_plot(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    csv_path, png = tmp_path / "tide.csv", tmp_path / "tide.png"
    assert main(["trace", "--layers", "1", "--budget", "12MiB", "--steps", "2",
                 "--csv", str(csv_path), "--plot", str(png)]) == 0  # fmt: skip
    header, *rows = csv_path.read_text().splitlines()
    assert header == "moment,iteration,stage,nonmodel_bytes,fast_chunk_bytes"
    assert len(rows) > 10
    assert png.stat().st_size > 1000
