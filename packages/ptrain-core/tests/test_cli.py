"""Tests of the CLI helpers (ptrain.core.cli) and the ``ptrain-core`` command."""

from __future__ import annotations

import argparse
import importlib.metadata
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ptrain.core.__main__ import main as ptrain_core_main
from ptrain.core.checkpoint import load_checkpoint
from ptrain.core.cli import (
    UserError,
    add_json_argument,
    add_version_argument,
    cli_entry,
    progress,
    write_json,
)

VERSION = importlib.metadata.version("ptrain-core")


@cli_entry("demo")
def _demo_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="demo")
    add_version_argument(parser, "ptrain-core")
    add_json_argument(parser)
    parser.add_argument("action")
    args = parser.parse_args(argv)
    if args.action == "user-error":
        raise UserError("config.toml:3: expected 'lr' to be positive,\ngot -1")
    if args.action == "open":
        with open("/definitely/not/here.csv") as file:
            file.read()
    if args.action == "checkpoint":
        load_checkpoint("/definitely/not/here.pt")
    if args.action == "interrupt":
        raise KeyboardInterrupt
    if args.action == "bug":
        raise ZeroDivisionError("a bug")
    if args.json:
        write_json(args.json, {"action": args.action})
    return 0


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "Traceback" not in captured.err
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    return lines[0]


def test_user_error_is_one_line_and_exit_code_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert _demo_main(["user-error"]) == 2
    line = _one_error_line(capsys)
    assert line == "demo: error: config.toml:3: expected 'lr' to be positive, got -1"


def test_missing_file_is_one_line_naming_the_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert _demo_main(["open"]) == 2
    assert _one_error_line(capsys) == (
        "demo: error: No such file or directory: /definitely/not/here.csv"
    )


def test_checkpoint_error_is_a_user_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert _demo_main(["checkpoint"]) == 2
    assert _one_error_line(capsys).startswith("demo: error: /definitely/not/here.pt:")


def test_keyboard_interrupt_exits_130(capsys: pytest.CaptureFixture[str]) -> None:
    assert _demo_main(["interrupt"]) == 130
    assert _one_error_line(capsys) == "demo: error: interrupted"


def test_bugs_keep_their_traceback() -> None:
    with pytest.raises(ZeroDivisionError):
        _demo_main(["bug"])


def test_debug_env_reraises_user_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PTRAIN_DEBUG", "1")
    with pytest.raises(UserError, match="expected 'lr'"):
        _demo_main(["user-error"])


def test_argparse_exits_become_return_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert _demo_main([]) == 2  # missing positional argument
    assert "the following arguments are required: action" in capsys.readouterr().err


def test_version_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert _demo_main(["--version"]) == 0
    assert capsys.readouterr().out == f"demo {VERSION}\n"
    assert ptrain_core_main(["--version"]) == 0
    assert capsys.readouterr().out == f"ptrain-core {VERSION}\n"


def test_json_flag_help_and_default() -> None:
    parser = argparse.ArgumentParser()
    add_json_argument(parser)
    assert parser.parse_args([]).json is None
    assert parser.parse_args(["--json", "-"]).json == "-"
    assert "'-' for stdout" in parser.format_help()


def test_write_json_writes_file_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "out.json"
    write_json(path, {"loss": 0.5, "path": tmp_path})
    assert path.read_text() == json.dumps({"loss": 0.5, "path": str(tmp_path)}, indent=2) + "\n"

    class NotJson:
        pass

    with pytest.raises(TypeError, match="NotJson"):
        write_json(path, {"bad": NotJson()})
    assert json.loads(path.read_text())["loss"] == 0.5

    def crash(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("os.fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        write_json(path, {"loss": 0.25})
    monkeypatch.undo()
    assert json.loads(path.read_text())["loss"] == 0.5
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_write_json_dash_goes_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    write_json("-", [1, 2])
    assert capsys.readouterr().out == "[\n  1,\n  2\n]\n"


class _FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_silent_when_stderr_is_not_a_terminal(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert list(progress(range(50), desc="train")) == list(range(50))
    assert capsys.readouterr().err == ""


def test_progress_shows_on_a_terminal_unless_disabled_by_env(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    terminal = _FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.delenv("PTRAIN_NO_PROGRESS", raising=False)
    assert list(progress(range(5), desc="train")) == list(range(5))
    assert "train" in terminal.getvalue() and "5/5" in terminal.getvalue()

    terminal = _FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setenv("PTRAIN_NO_PROGRESS", "1")
    assert list(progress(range(5), desc="train")) == list(range(5))
    assert terminal.getvalue() == ""


def test_progress_manual_bar_with_total_and_unit(monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = _FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.delenv("PTRAIN_NO_PROGRESS", raising=False)
    with progress(total=3, desc="shards", unit="shard") as bar:
        for _ in range(3):
            bar.update(1)
    assert "shards" in terminal.getvalue() and "3/3" in terminal.getvalue()
    assert "shard/s" in terminal.getvalue()


def test_env_command_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "env.json"
    assert ptrain_core_main(["env", "--json", str(path)]) == 0
    info = json.loads(path.read_text())
    assert info["torch"] == torch.__version__
    assert info["packages"]["ptrain-core"] == VERSION
    assert info["distributed_backends"]["gloo"] == torch.distributed.is_gloo_available()
    assert info["cuda"]["available"] == torch.cuda.is_available()
    assert info["torch_threads"] == torch.get_num_threads()
    text = capsys.readouterr().out
    assert f"torch        {torch.__version__}" in text
    assert f"ptrain-core {VERSION}" in text


def test_env_command_json_to_stdout_is_pure_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert ptrain_core_main(["env", "--json", "-"]) == 0
    assert json.loads(capsys.readouterr().out)["python"].count(".") == 2


def test_env_command_bad_json_path_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no-dir" / "env.json"
    assert ptrain_core_main(["env", "--json", str(missing)]) == 2
    assert _one_error_line(capsys) == f"ptrain-core: error: No such file or directory: {missing}"


def test_no_command_prints_help_and_returns_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert ptrain_core_main([]) == 2
    captured = capsys.readouterr()
    assert "env" in captured.err and "usage: ptrain-core" in captured.err


def test_python_dash_m_runs_env() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "ptrain.core", "env"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith(f"torch        {torch.__version__}")
