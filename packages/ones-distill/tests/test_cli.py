"""The ``ones-distill`` command: the whole pipeline, the bench contract, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ones_distill import bench
from ones_distill.cli import main

TASK = ["--data", "synthetic", "--train-size", "800", "--test-size", "300"]


def _read(path: Path) -> dict:
    return json.loads(path.read_text())


def test_train_gather_distill_report_pipeline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    t, d, s = tmp_path / "teacher.pt", tmp_path / "dense.pt", tmp_path / "student.pt"
    common = [*TASK, "--hidden", "8", "--dim", "32", "--epochs", "2", "--batch-size", "64"]
    assert main(["train", *common, "--experts", "4", "--out", str(t)]) == 0
    assert main(["train", *common, "--experts", "0", "--out", str(d)]) == 0
    gj = tmp_path / "gather.json"
    argv = ["gather", "--teacher", str(t), "--method", "svd", "--rank", "4", "--out", str(s)]
    assert main([*argv, "--json", str(gj)]) == 0
    gathered = _read(gj)
    assert gathered["layers"] == ["ffns.0"] and gathered["gather"]["rank"] == 4
    assert gathered["student_params"] < gathered["teacher_params"]
    dj, ck = tmp_path / "distill.json", tmp_path / "ck"
    argv = ["distill", "--teacher", str(t), "--student", str(s), "--epochs", "2",
            "--temperature", "3", "--alpha", "0.2", "--checkpoint-dir", str(ck)]  # fmt: skip
    assert main([*argv, "--json", str(dj)]) == 0
    distilled = _read(dj)
    assert distilled["config"]["temperature"] == 3.0 and distilled["data"]["train_size"] == 800
    assert distilled["after"]["kl"] < distilled["before"]["kl"]
    assert len(list(ck.glob("step-*.pt"))) == 2
    out = Path(distilled["out"])
    rj = tmp_path / "report.json"
    argv = ["report", "--teacher", str(t), "--student", str(out), "--dense", str(d)]
    assert main([*argv, "--speed-repeats", "1", "--json", str(rj)]) == 0
    report = _read(rj)
    assert set(report["models"]) == {"teacher", "student", "dense"}
    assert report["models"]["student"]["params"] == report["models"]["dense"]["params"]
    benefit = report["benefit"]
    assert benefit["acc_moe"] == report["models"]["teacher"]["test_acc"]
    assert report["speed"]["speedup"] > 0
    assert "MoE benefit preserved" in capsys.readouterr().out


def test_bench_speed_writes_exactly_the_contract_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = bench.speed_benchmark

    def small(**kwargs):  # type: ignore[no-untyped-def]
        return real(**kwargs, dim=32, depth=2, channel_hidden=64, token_hidden=16)

    monkeypatch.setattr(bench, "speed_benchmark", small)
    path = tmp_path / "speed.json"
    assert main(["bench", "speed", "--repeats", "1", "--json", str(path)]) == 0
    times = _read(path)
    assert list(times) == ["teacher_b1_s", "student_b1_s", "teacher_b64_s", "student_b64_s"]
    assert all(isinstance(v, float) and v > 0 for v in times.values())


def test_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dense = tmp_path / "dense.pt"
    base = [*TASK, "--hidden", "8", "--dim", "16", "--epochs", "1"]
    assert main(["train", *base, "--experts", "0", "--out", str(dense)]) == 0
    teacher = tmp_path / "teacher.pt"
    assert main(["train", *base, "--experts", "2", "--out", str(teacher)]) == 0
    capsys.readouterr()
    cases = [
        (["gather", "--teacher", str(dense), "--out", str(tmp_path / "x.pt")], "no ptrain.moe.MoE"),
        (["gather", "--teacher", str(teacher), "--rank", "9", "--out", str(tmp_path / "x.pt")],
         "rank must be <= 8"),
        (["gather", "--teacher", str(tmp_path / "nope.pt"), "--out", "x.pt"], "no such model"),
        (["distill", "--teacher", str(teacher), "--student", str(teacher), "--alpha", "2"],
         "number in [0, 1]"),
    ]  # fmt: skip
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert message in err.splitlines()[-1] and "Traceback" not in err
        if argv[0] == "gather":  # library errors: exactly one line
            assert len(err.splitlines()) == 1
    assert not (tmp_path / "x.pt").exists()


@pytest.mark.slow
def test_bench_speed_contract_full_size(tmp_path: Path) -> None:
    path = tmp_path / "speed.json"
    assert main(["bench", "speed", "--repeats", "1", "--json", str(path)]) == 0
    times = _read(path)
    assert set(times) == {"teacher_b1_s", "student_b1_s", "teacher_b64_s", "student_b64_s"}
    assert times["student_b64_s"] < times["teacher_b64_s"]
