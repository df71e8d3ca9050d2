"""The helper a job uses under ``ptrain-sched serve``: its assignment, checkpoint and progress.

The runner starts each job as a torchrun command with these environment variables:

* ``PTRAIN_SCHED_WORLD_SIZE`` — GPUs/slots assigned (torchrun's ``WORLD_SIZE`` matches);
* ``PTRAIN_SCHED_BATCH_SIZE`` — the global batch size to use on them;
* ``PTRAIN_SCHED_CHECKPOINT`` — where to save and load the checkpoint;
* ``PTRAIN_SCHED_PROGRESS`` — a JSON file the job updates with its progress.

To resize or preempt a job the runner sends SIGTERM: ``should_stop()`` turns true, the job saves its
checkpoint and exits; it is relaunched later (possibly on another number of slots) and resumes
from the checkpoint. A job killed any other way restarts from its last checkpoint.

Example::

    ctx = ElasticContext.from_env(default_batch_size=32)
    state = ctx.load() or {"step": 0, "model": model.state_dict()}
    for step in range(state["step"], total_steps):
        ...  # train one step with ctx.local_batch_size
        if step % 10 == 0 or ctx.should_stop():
            ctx.save({"step": step + 1, "model": model.state_dict()})
            ctx.report(step + 1, total_steps)
        if ctx.should_stop():
            raise SystemExit(0)
    ctx.report(total_steps, total_steps, done=True)

Torch is imported only when a checkpoint is saved or loaded.
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ElasticContext", "write_text_atomic"]

ENV_WORLD_SIZE = "PTRAIN_SCHED_WORLD_SIZE"
ENV_BATCH_SIZE = "PTRAIN_SCHED_BATCH_SIZE"
ENV_CHECKPOINT = "PTRAIN_SCHED_CHECKPOINT"
ENV_PROGRESS = "PTRAIN_SCHED_PROGRESS"


@dataclass
class ElasticContext:
    """A job's view of its current assignment (see the module docstring)."""

    world_size: int
    rank: int
    batch_size: int
    checkpoint_path: Path | None
    progress_path: Path | None
    _stop: bool = field(default=False, repr=False)
    _started: float = field(default_factory=time.monotonic, repr=False)
    _start_step: int | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, default_batch_size: int = 1, install_handler: bool = True) -> ElasticContext:
        """Reads the assignment from the environment (defaults: 1 slot, ``default_batch_size``).

        Args:
            default_batch_size: the global batch when not run by the scheduler.
            install_handler: catch SIGTERM so that ``should_stop()`` reports it.
        """
        world = int(os.environ.get(ENV_WORLD_SIZE, os.environ.get("WORLD_SIZE", "1")))
        checkpoint = os.environ.get(ENV_CHECKPOINT)
        progress = os.environ.get(ENV_PROGRESS)
        ctx = cls(
            world_size=max(world, 1),
            rank=int(os.environ.get("RANK", "0")),
            batch_size=int(os.environ.get(ENV_BATCH_SIZE, str(default_batch_size))),
            checkpoint_path=Path(checkpoint) if checkpoint else None,
            progress_path=Path(progress) if progress else None,
        )
        if install_handler:
            signal.signal(signal.SIGTERM, ctx._on_signal)
        return ctx

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._stop = True

    @property
    def local_batch_size(self) -> int:
        """This rank's share of the global batch (at least 1)."""
        return max(self.batch_size // self.world_size, 1)

    def should_stop(self) -> bool:
        """True once the scheduler asked the job to stop (checkpoint and exit)."""
        return self._stop

    def load(self) -> dict[str, Any] | None:
        """The last checkpoint, or None when there is none."""
        if self.checkpoint_path is None or not self.checkpoint_path.exists():
            return None
        import torch

        state = torch.load(self.checkpoint_path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and isinstance(state.get("step"), int):
            self._start_step = state["step"]
        return state

    def save(self, state: dict[str, Any]) -> None:
        """Saves ``state`` atomically (rank 0 only; a no-op without a checkpoint path)."""
        if self.checkpoint_path is None or self.rank != 0:
            return
        import torch

        from ptrain.core.checkpoint import atomic_write

        self.checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(self.checkpoint_path, "wb") as file:
            torch.save(state, file)

    def report(self, step: int, total_steps: int, *, done: bool = False, **extra: Any) -> None:
        """Writes the progress file the runner reads (rank 0 only)."""
        if self.progress_path is None or self.rank != 0:
            return
        elapsed = time.monotonic() - self._started
        start = self._start_step or 0
        record = {
            "step": int(step),
            "total_steps": int(total_steps),
            "done": bool(done),
            "world_size": self.world_size,
            "batch_size": self.batch_size,
            "start_step": start,
            "steps_per_s": (step - start) / elapsed if elapsed > 0 else 0.0,
            "time": time.time(),
            **extra,
        }
        write_text_atomic(self.progress_path, json.dumps(record))


def write_text_atomic(path: Path, text: str) -> None:
    """Writes ``text`` to a temporary file next to ``path`` and renames it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)
