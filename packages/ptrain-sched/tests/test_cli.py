"""The CLI contract, workload parsing and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ptrain.sched.cli import main
from ptrain.sched.errors import InputError
from ptrain.sched.workload import load_gavel_trace, load_pollux_csv

SHARED = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "traces"
WORKLOAD_1 = SHARED / "pollux_adaptdl" / "workloads" / "workload-1.csv"
GAVEL = SHARED / "gavel"
needs_shared = pytest.mark.skipif(
    not WORKLOAD_1.exists(), reason=f"shared traces not found at {WORKLOAD_1}"
)

SMALL = """name,time,application,num_replicas,batch_size
cifar10-0,0,cifar10,2,256
ncf-1,30,ncf,1,8192
bert-2,60,bert,2,48
cifar10-3,90,cifar10,4,512
"""


@pytest.fixture
def small_csv(tmp_path: Path) -> Path:
    path = tmp_path / "small.csv"
    path.write_text(SMALL)
    return path


CONTRACT_KEYS = {"policy", "avg_jct", "p99_jct", "makespan", "jobs", "decide_latency_ms_median"}


def test_simulate_writes_the_contract_json(small_csv: Path, tmp_path: Path) -> None:
    out = tmp_path / "run.json"
    argv = [
        "simulate",
        "--workload",
        str(small_csv),
        "--policy",
        "ones",
        "--gpus",
        "8",
        "--gpus-per-node",
        "4",
        "--seed",
        "0",
        "--json",
        str(out),
    ]
    assert main(argv) == 0
    data = json.loads(out.read_text())
    assert set(data) >= CONTRACT_KEYS
    assert data["policy"] == "ones" and data["jobs"] == 4
    assert isinstance(data["avg_jct"], float) and data["p99_jct"] >= data["avg_jct"] > 0
    assert data["makespan"] >= max(j["jct"] for j in data["per_job"])
    assert data["config"]["seed"] == 0 and len(data["per_job"]) == 4
    assert sum(data["decide_latency_histogram_ms"].values()) == data["decide_calls"]


@needs_shared
def test_contract_on_a_pollux_workload(tmp_path: Path) -> None:
    out = tmp_path / "w1.json"
    argv = [
        "simulate",
        "--workload",
        str(WORKLOAD_1),
        "--policy",
        "tiresias",
        "--gpus",
        "64",
        "--gpus-per-node",
        "4",
        "--seed",
        "0",
        "--json",
        str(out),
        "--quiet",
    ]
    assert main(argv) == 0
    data = json.loads(out.read_text())
    assert set(data) >= CONTRACT_KEYS
    assert data["jobs"] == 160 == data["jobs_submitted"]


def test_compare_and_plot(small_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "cmp.json"
    plot = tmp_path / "gantt.png"
    argv = [
        "compare",
        "--workload",
        str(small_csv),
        "--gpus",
        "8",
        "--policies",
        "fifo,tiresias,ones",
        "--json",
        str(out),
        "--plot",
        str(plot),
    ]
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "tiresias" in table and "avg JCT" in table
    data = json.loads(out.read_text())
    assert [r["policy"] for r in data["results"]] == ["fifo", "tiresias", "ones"]
    assert (tmp_path / "gantt-ones.png").stat().st_size > 1000


def test_malformed_csv_names_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(SMALL.replace("ncf-1,30,ncf,1,8192", "ncf-1,soon,ncf,1,8192"))
    with pytest.raises(InputError, match=r"bad\.csv:3: column time: expected a number, got 'soon'"):
        load_pollux_csv(bad)
    code = main(["simulate", "--workload", str(bad), "--policy", "fifo", "--gpus", "8"])
    err = capsys.readouterr().err
    assert code == 2 and "bad.csv:3" in err and len(err.strip().splitlines()) == 1
    bad.write_text(SMALL.replace("bert-2,60,bert,2,48", "bert-2,60,gpt,2,48"))
    with pytest.raises(InputError, match=r"bad\.csv:4: unknown application 'gpt'"):
        load_pollux_csv(bad)
    bad.write_text("name,time\nx,1\n")
    with pytest.raises(InputError, match=r"bad\.csv:1: expected columns"):
        load_pollux_csv(bad)


def test_cli_rejections_are_one_line(small_csv: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["simulate", "--workload", str(small_csv), "--policy", "lottery"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "ptrain-sched: error: unknown policy 'lottery'; valid policies: "
        "fifo, srtf, tiresias, optimus, pollux, ones"
    )
    assert (
        main(
            [
                "simulate",
                "--workload",
                str(small_csv),
                "--policy",
                "fifo",
                "--gpus",
                "2",
                "--gpus-per-node",
                "2",
            ]
        )
        == 2
    )
    assert "asks for 4 GPUs but the cluster has only 2" in capsys.readouterr().err
    assert main(["simulate", "--workload", str(small_csv), "--policy", "fifo", "--gpus", "6"]) == 2
    assert "multiple of --gpus-per-node" in capsys.readouterr().err


@pytest.mark.skipif(not GAVEL.is_dir(), reason=f"shared Gavel traces not found at {GAVEL}")
def test_gavel_trace_simulates(tmp_path: Path) -> None:
    trace = GAVEL / "physical_cluster" / "small_test.trace"
    specs = load_gavel_trace(trace)
    assert specs and all(s.work and s.work > 0 for s in specs)
    out = tmp_path / "g.json"
    argv = [
        "simulate",
        "--workload",
        str(trace),
        "--policy",
        "tiresias",
        "--gpus",
        "8",
        "--traces",
        str(GAVEL),
        "--json",
        str(out),
        "--quiet",
    ]
    assert main(argv) == 0
    assert json.loads(out.read_text())["jobs"] == len(specs)


@needs_shared
@pytest.mark.slow
def test_ones_contract_on_160_jobs_under_60_seconds(tmp_path: Path) -> None:
    import time

    out = tmp_path / "ones.json"
    argv = [
        "simulate",
        "--workload",
        str(WORKLOAD_1),
        "--policy",
        "ones",
        "--gpus",
        "64",
        "--gpus-per-node",
        "4",
        "--seed",
        "0",
        "--json",
        str(out),
        "--quiet",
    ]
    start = time.perf_counter()
    assert main(argv) == 0
    assert time.perf_counter() - start < 60.0
    data = json.loads(out.read_text())
    assert data["jobs"] == data["jobs_submitted"] == 160
