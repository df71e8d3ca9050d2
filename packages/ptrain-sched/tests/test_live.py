"""Live runner: real subprocesses on CPU slots, the same Policy interface as the simulator."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from ptrain.sched.errors import InputError
from ptrain.sched.live import LiveRunner, parse_job_spec, submit_job
from ptrain.sched.policies import place
from ptrain.sched.types import Allocation, SchedulerState

JOB = str(Path(__file__).parent / "assets" / "tiny_job.py")


def _submit(spool: Path, name: str, *args: str, gpus: int = 1, launcher: str = "python") -> None:
    spec = spool / f"{name}.spec.json"
    spec.write_text(
        json.dumps(
            {
                "name": name,
                "command": [JOB, *args],
                "gpus": gpus,
                "batch_size": 8,
                "launcher": launcher,
            }
        )
    )
    submit_job(spool, spec)


def _progress(spool: Path, name: str) -> dict:
    return json.loads((spool / "jobs" / name / "progress.json").read_text())


def _run(runner: LiveRunner, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            runner.step()
            if runner.jobs and not runner.active():
                return
            time.sleep(runner.tick)
        pytest.fail(f"live runner did not finish in {timeout} s: {runner.status()}")
    finally:
        runner.shutdown()


def test_three_jobs_on_two_slots_all_complete(tmp_path: Path) -> None:
    runner = LiveRunner(tmp_path, slots=2, policy="fifo", tick=0.2)
    for name in ("a", "b", "c"):
        _submit(tmp_path, name, "--steps", "6", "--sleep", "0.02")
    _run(runner, timeout=120)
    states = {j.name: j.state for j in runner.jobs.values()}
    assert states == {"a": "finished", "b": "finished", "c": "finished"}
    for name in ("a", "b", "c"):
        assert _progress(tmp_path, name)["step"] == 6
    status = json.loads((tmp_path / "status.json").read_text())
    assert [j["state"] for j in status["jobs"]] == ["finished"] * 3


def test_killed_job_restarts_from_its_checkpoint(tmp_path: Path) -> None:
    runner = LiveRunner(tmp_path, slots=1, policy="fifo", tick=0.2)
    _submit(tmp_path, "crashy", "--steps", "8", "--sleep", "0.02", "--crash-at", "3")
    _run(runner, timeout=90)
    job = next(iter(runner.jobs.values()))
    assert job.state == "finished" and job.crashes == 1 and job.launches == 2
    progress = _progress(tmp_path, "crashy")
    assert progress["step"] == 8
    assert progress["launches"] == [[1, 0], [1, 3]]  # second launch resumed at step 3


@dataclass
class _GrowAfter:
    """One slot until the job reports ``steps`` steps, then two (forces a resize)."""

    steps: int
    name: str = "grow"

    def decide(self, state: SchedulerState) -> Allocation:
        job = state.jobs[0]
        n = 1 if job.work_done < self.steps else 2
        return place({job.job_id: n}, {job.job_id: 8 * n}, state.current, state.cluster)


def test_resize_restarts_from_checkpoint_under_torchrun(tmp_path: Path) -> None:
    runner = LiveRunner(tmp_path, slots=2, policy=_GrowAfter(steps=4), tick=0.5)
    _submit(tmp_path, "elastic", "--steps", "20", "--sleep", "0.25", launcher="torchrun")
    _run(runner, timeout=150)
    job = next(iter(runner.jobs.values()))
    assert job.state == "finished", (tmp_path / "jobs" / "elastic" / "log.txt").read_text()
    progress = _progress(tmp_path, "elastic")
    assert progress["step"] == 20
    (first_world, first_start), (second_world, second_start) = progress["launches"][:2]
    assert (first_world, first_start) == (1, 0)
    assert second_world == 2 and second_start > 0  # resumed, no progress lost
    assert progress["batch_size"] == 16


def test_job_asking_for_more_slots_than_exist_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="asks for 4 GPUs/slots but the runner has only 2"):
        parse_job_spec({"name": "big", "command": ["x.py"], "gpus": 4}, "spec.json", slots=2)
    runner = LiveRunner(tmp_path, slots=2, policy="fifo", tick=0.1)
    _submit(tmp_path, "big", gpus=4)
    runner.step()
    assert not runner.jobs
    assert "rejected" in runner.rejected[0]["error"]


def test_cli_submit_status_cancel(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ptrain.sched.cli import main

    runner = LiveRunner(tmp_path, slots=1, policy="fifo", tick=0.1)
    spec = tmp_path / "s.json"
    spec.write_text(
        json.dumps({"name": "x", "command": [JOB, "--steps", "1000"], "launcher": "python"})
    )
    assert main(["submit", "--spool", str(tmp_path), str(spec)]) == 0
    runner.step()
    assert main(["status", "--spool", str(tmp_path)]) == 0
    assert "x" in capsys.readouterr().out
    assert main(["cancel", "--spool", str(tmp_path), "x"]) == 0
    runner.step()
    runner.shutdown()
    assert next(iter(runner.jobs.values())).state == "cancelled"
    assert main(["status", "--spool", str(tmp_path / "nope")]) == 2
