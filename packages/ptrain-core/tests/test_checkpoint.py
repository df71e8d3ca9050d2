"""Tests of atomic, resumable checkpoints (ptrain.core.checkpoint)."""

from __future__ import annotations

import os
import random
import select
import signal
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ptrain.core.checkpoint import (
    Checkpointer,
    CheckpointError,
    atomic_write,
    load_checkpoint,
    save_checkpoint,
)
from ptrain.core.cli import UserError

TOTAL_STEPS = 20
INTERRUPT_AT = 8


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def _build(seed: int) -> tuple[nn.Module, torch.optim.Optimizer, Any]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=5, gamma=0.5)
    return model, optimizer, scheduler


def _train(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    start: int,
    stop: int,
    checkpointer: Checkpointer | None = None,
) -> list[float]:
    """Steps draw data from torch, and noise from numpy and python random; dropout uses torch."""
    losses = []
    model.train()
    for step in range(start, stop):
        x_BF = torch.randn(16, 8)
        noise = float(np.random.standard_normal()) * random.random()
        y_B1 = x_BF.sum(dim=1, keepdim=True) + noise
        loss = F.mse_loss(model(x_BF), y_B1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if checkpointer is not None:
            checkpointer.save(
                step + 1, model=model, optimizer=optimizer, scheduler=scheduler, extra={"s": step}
            )
    return losses


def _uninterrupted_run() -> tuple[list[float], dict[str, torch.Tensor]]:
    _seed_everything(0)
    model, optimizer, scheduler = _build(0)
    losses = _train(model, optimizer, scheduler, 0, TOTAL_STEPS)
    return losses, model.state_dict()


def _interrupted_run(directory: Path, *, restore_rng: bool) -> tuple[list[float], nn.Module]:
    _seed_everything(0)
    checkpointer = Checkpointer(directory, keep=2)
    model, optimizer, scheduler = _build(0)
    _train(model, optimizer, scheduler, 0, INTERRUPT_AT, checkpointer)
    del model, optimizer, scheduler  # the "process" dies here

    _seed_everything(123)  # a new process would start from some other RNG state
    model, optimizer, scheduler = _build(123)
    if restore_rng:
        start = checkpointer.resume(model, optimizer, scheduler)
    else:
        latest = checkpointer.latest()
        assert latest is not None
        start = load_checkpoint(
            latest, model=model, optimizer=optimizer, scheduler=scheduler, restore_rng=False
        ).step
    assert start == INTERRUPT_AT
    return _train(model, optimizer, scheduler, start, TOTAL_STEPS), model


def test_resumed_run_is_bitwise_equal_to_uninterrupted_run(tmp_path: Path) -> None:
    losses, final_state = _uninterrupted_run()
    resumed_losses, model = _interrupted_run(tmp_path, restore_rng=True)
    assert resumed_losses == losses[INTERRUPT_AT:]
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, final_state[name]), name


def test_without_rng_restore_the_resumed_run_diverges(tmp_path: Path) -> None:
    # Shows the test above detects a missing RNG restore.
    losses, _ = _uninterrupted_run()
    resumed_losses, _ = _interrupted_run(tmp_path, restore_rng=False)
    assert resumed_losses != losses[INTERRUPT_AT:]


def test_every_rng_is_restored(tmp_path: Path) -> None:
    path = tmp_path / "rng.pt"
    _seed_everything(7)
    save_checkpoint(path)
    expected = (torch.rand(3), np.random.rand(3), random.random(), np.random.standard_normal())
    _seed_everything(99)
    load_checkpoint(path)
    got = (torch.rand(3), np.random.rand(3), random.random(), np.random.standard_normal())
    assert torch.equal(got[0], expected[0])
    assert np.array_equal(got[1], expected[1])
    assert got[2:] == expected[2:]


def test_full_checkpoint_loads_with_plain_weights_only_torch_load(tmp_path: Path) -> None:
    model, optimizer, scheduler = _build(0)
    _train(model, optimizer, scheduler, 0, 2)
    path = tmp_path / "c.pt"
    save_checkpoint(
        path,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        step=2,
        extra={"best": 0.5, "history": [1, 2], "name": "run", "t": torch.ones(2)},
    )
    payload = torch.load(path, weights_only=True)
    assert payload["step"] == 2
    checkpoint = load_checkpoint(path)
    assert checkpoint.step == 2
    assert checkpoint.extra["history"] == [1, 2]
    assert torch.equal(checkpoint.extra["t"], torch.ones(2))
    assert checkpoint.path == path


def test_save_refuses_extra_that_weights_only_cannot_load(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    with pytest.raises(ValueError, match=r"extra\['array'\].*numpy"):
        save_checkpoint(path, extra={"array": np.zeros(3)})
    assert not path.exists()


@pytest.mark.parametrize("interruption", [OSError("No space left on device"), KeyboardInterrupt()])
def test_crash_during_save_keeps_previous_checkpoint_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, interruption: BaseException
) -> None:
    checkpointer = Checkpointer(tmp_path, keep=2)
    model = nn.Linear(4, 4)
    checkpointer.save(1, model=model)
    saved = {k: v.clone() for k, v in model.state_dict().items()}

    def failing_save(obj: object, file: Any) -> None:
        file.write(b"PK\x03\x04 half a checkpoint")
        raise interruption

    monkeypatch.setattr(torch, "save", failing_save)
    with torch.no_grad():
        model.weight.add_(1.0)
    with pytest.raises(type(interruption)):
        checkpointer.save(2, model=model)
    monkeypatch.undo()

    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000001.pt"]
    assert checkpointer.latest() == tmp_path / "step-00000001.pt"
    fresh = nn.Linear(4, 4)
    assert checkpointer.resume(fresh) == 1
    for name, tensor in fresh.state_dict().items():
        assert torch.equal(tensor, saved[name])


def test_crash_while_overwriting_the_same_file_keeps_the_old_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "latest.pt"
    save_checkpoint(path, step=3, extra={"loss": 0.5})

    def failing_save(obj: object, file: Any) -> None:
        file.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(path, step=4, extra={"loss": 0.25})
    monkeypatch.undo()
    checkpoint = load_checkpoint(path)
    assert (checkpoint.step, checkpoint.extra) == (3, {"loss": 0.5})
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pt"]


def test_sigkill_during_a_large_write_leaves_previous_checkpoint(tmp_path: Path) -> None:
    checkpointer = Checkpointer(tmp_path, keep=2)
    small = nn.Linear(4, 4)
    checkpointer.save(1, model=small)
    saved = {k: v.clone() for k, v in small.state_dict().items()}
    large = nn.Sequential(nn.Linear(512, 1024), nn.Linear(1024, 512))  # ~4 MiB of weights
    read_fd, write_fd = os.pipe()
    with warnings.catch_warnings():
        # Python >= 3.12 warns that fork() in a process with threads may deadlock the child;
        # the child here only writes a file and then waits to be killed.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # child: write slowly, tell the parent once 1 MiB is on disk, then hang
        try:
            os.close(read_fd)
            torch.set_num_threads(1)
            real_save = torch.save

            class SlowFile:
                def __init__(self, file: Any) -> None:
                    self.file = file
                    self.written = 0

                def write(self, data: bytes) -> int:
                    count = self.file.write(data)
                    self.written += len(data)
                    if self.written > 1 << 20:
                        self.file.flush()
                        os.write(write_fd, b"x")
                        time.sleep(60)
                    return count

                def flush(self) -> None:
                    self.file.flush()

            torch.save = lambda obj, file: real_save(obj, SlowFile(file))
            checkpointer.save(2, model=large)
        finally:
            os._exit(1)
    os.close(write_fd)
    try:
        ready, _, _ = select.select([read_fd], [], [], 60)
        assert ready and os.read(read_fd, 1) == b"x", "child never reached the middle of the write"
        partial = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
        assert len(partial) == 1 and partial[0].stat().st_size > 1 << 20
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(read_fd)

    assert not (tmp_path / "step-00000002.pt").exists()
    assert checkpointer.latest() == tmp_path / "step-00000001.pt"
    fresh = nn.Linear(4, 4)
    assert checkpointer.resume(fresh) == 1
    for name, tensor in fresh.state_dict().items():
        assert torch.equal(tensor, saved[name])


class _RunsCodeWhenUnpickled:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (_touch, (str(self.marker),))


def _touch(path: str) -> None:
    Path(path).touch()


def test_checkpoint_with_arbitrary_pickled_object_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pt"
    payload = {"format": "ptrain-checkpoint", "version": 1, "step": 3, "model": None}
    payload["extra"] = {"x": _RunsCodeWhenUnpickled(marker)}
    torch.save(payload, path)

    with pytest.raises(CheckpointError, match="refused") as error:
        load_checkpoint(path)
    assert str(path) in str(error.value)
    assert not marker.exists()
    # The file really is dangerous: an unrestricted load runs the code.
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_missing_file_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.pt"
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    message = str(error.value)
    assert str(path) in message and "not found" in message and "\n" not in message
    assert isinstance(error.value, ValueError) and isinstance(error.value, UserError)


def test_truncated_file_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    save_checkpoint(path, model=nn.Linear(64, 64), step=5)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    message = str(error.value)
    assert message.startswith(f"{path}: corrupt or truncated checkpoint")
    assert "\n" not in message


def test_foreign_file_is_not_a_ptrain_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="not a ptrain checkpoint") as error:
        load_checkpoint(path)
    assert str(path) in str(error.value) and "format='ptrain-checkpoint'" in str(error.value)


def test_state_that_does_not_fit_the_model_is_a_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    save_checkpoint(path, model=nn.Linear(4, 4))
    with pytest.raises(CheckpointError, match="model state does not fit") as error:
        load_checkpoint(path, model=nn.Linear(4, 5))
    assert "\n" not in str(error.value)
    with pytest.raises(CheckpointError, match="has no optimizer state"):
        load_checkpoint(path, optimizer=torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=0.1))


def test_keep_two_deletes_older_and_latest_ignores_other_files(tmp_path: Path) -> None:
    checkpointer = Checkpointer(tmp_path, keep=2)
    assert checkpointer.latest() is None
    assert checkpointer.resume() == 0
    for step in range(1, 6):
        checkpointer.save(step, extra={"step": step})
    (tmp_path / ".step-00000009.pt.abc123.tmp").write_bytes(b"partial")
    (tmp_path / "step-final.pt").write_bytes(b"not a step")
    (tmp_path / "step-00000099.pt.bak").write_bytes(b"backup")
    names = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("step-0"))
    assert names == ["step-00000004.pt", "step-00000005.pt", "step-00000099.pt.bak"]
    assert checkpointer.latest() == tmp_path / "step-00000005.pt"
    assert load_checkpoint(tmp_path / "step-00000005.pt").extra == {"step": 5}


@pytest.mark.parametrize(
    ("kwargs", "named"), [({"keep": 0}, "keep"), ({"prefix": "a/b"}, "prefix")]
)
def test_checkpointer_rejects_bad_settings(tmp_path: Path, kwargs: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        Checkpointer(tmp_path, **kwargs)


def test_atomic_write_keeps_old_content_on_error_and_names_missing_directory(
    tmp_path: Path,
) -> None:
    path = tmp_path / "out.txt"
    with atomic_write(path, "w") as file:
        file.write("first")
    with pytest.raises(RuntimeError), atomic_write(path, "w") as file:
        file.write("second, half")
        raise RuntimeError("interrupted")
    assert path.read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
    missing = tmp_path / "no-such-dir" / "out.txt"
    with pytest.raises(FileNotFoundError) as error, atomic_write(missing):
        pass
    assert error.value.filename == str(missing)


def test_atomic_write_keeps_permissions_of_replaced_file(tmp_path: Path) -> None:
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    path.chmod(0o640)
    with atomic_write(path) as file:
        file.write(b"new")
    assert path.read_bytes() == b"new"
    assert path.stat().st_mode & 0o777 == 0o640
