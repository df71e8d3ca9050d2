"""Atomic, resumable checkpoints that load without unpickling arbitrary objects.

``save_checkpoint`` writes model / optimizer / scheduler state, the step, user ``extra`` data and
the state of every random number generator a training loop draws from (torch CPU and CUDA, numpy's
global generator, python ``random``) to a temporary file in the target directory, fsyncs it and
renames it over the target, so a crash or ``SIGKILL`` mid-write leaves the previous file intact.

``load_checkpoint`` always reads with ``torch.load(weights_only=True)``: a file that holds anything
other than tensors and plain data (dicts, lists, tuples, numbers, strings) is refused with a
``CheckpointError`` instead of running code from the file.

``Checkpointer`` manages ``<dir>/step-00000012.pt`` files: ``save`` keeps the newest ``keep``,
``latest`` finds the newest, ``resume`` restores it (RNG included) and returns the step to continue
from, so an interrupted seeded run ends bitwise equal to an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import tempfile
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from ptrain.core.cli import UserError

__all__ = [
    "FORMAT_MARKER",
    "FORMAT_VERSION",
    "Checkpoint",
    "CheckpointError",
    "Checkpointer",
    "atomic_write",
    "load_checkpoint",
    "save_checkpoint",
]

FORMAT_MARKER = "ptrain-checkpoint"
"""Value of the ``"format"`` key every checkpoint written by ``save_checkpoint`` carries."""

FORMAT_VERSION = 1
"""Value of the ``"version"`` key; ``load_checkpoint`` refuses files from a newer version."""

_MAX_DETAIL_CHARS = 200


class CheckpointError(UserError, ValueError):
    """A checkpoint file is missing, unreadable, unsafe or not a ptrain checkpoint.

    It is a ``ValueError`` and also a ``ptrain.core.cli.UserError``, so a command wrapped with
    ``cli_entry`` reports it as one line with exit code 2. The message is one line that names the
    file and what was expected.
    """


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """What ``load_checkpoint`` returns besides the state it loads into the given objects.

    Attributes:
        step: the step stored with the checkpoint (by convention, the number of completed steps).
        extra: the user's ``extra`` data (an empty dict when none was saved).
        path: the file that was loaded.
    """

    step: int
    extra: dict[str, Any]
    path: Path


def _current_umask() -> int:
    """Returns the process umask without changing it where /proc allows (thread-safe)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """Writes a file so that readers see either the old content or the complete new content.

    Yields a file object on a temporary file created in the target's directory. When the block
    ends without an exception the file is flushed, fsynced and ``os.replace``d over ``path``. On
    any exception (including ``KeyboardInterrupt``) the temporary file is deleted and the file
    previously at ``path``, if any, is left untouched. A process killed mid-write leaves at most a
    stray ``.<name>.*.tmp`` file next to the target, never a truncated target.

    The new file gets the permissions of the file it replaces, or ``0o666 & ~umask`` when there
    was none (temporary files are created ``0o600``).

    Args:
        path: the file to write.
        mode: ``"wb"`` for bytes or ``"w"`` for UTF-8 text.

    Yields:
        The open temporary file.

    Raises:
        ValueError: ``mode`` is not ``"w"`` or ``"wb"``.
        FileNotFoundError: the target's directory does not exist (the error names ``path``).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write: mode must be 'w' or 'wb', got {mode!r}")
    target = Path(path)
    directory = target.parent
    try:
        fd, temp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    except OSError as error:
        # mkstemp's error names the random temp path; name the file the user asked for instead.
        raise type(error)(error.errno, error.strerror, str(target)) from None
    fd_owned_by_file = False
    try:
        try:
            permissions = target.stat().st_mode & 0o7777
        except OSError:
            permissions = 0o666 & ~_current_umask()
        os.chmod(temp_name, permissions)
        encoding = None if "b" in mode else "utf-8"
        temp_file = os.fdopen(fd, mode, encoding=encoding)
        fd_owned_by_file = True
        with temp_file:
            yield temp_file
            temp_file.flush()
            os.fsync(temp_file.fileno())
        os.replace(temp_name, target)
    except BaseException:
        if not fd_owned_by_file:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise
    _fsync_directory(target.parent)


def _fsync_directory(directory: Path) -> None:
    """Makes a rename durable (best effort: not every platform can fsync a directory)."""
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


# ---------------------------------------------------------------------------------------------
# RNG state as plain data (loadable with weights_only=True)
# ---------------------------------------------------------------------------------------------


def _capture_rng_state() -> dict[str, Any]:
    """Returns every global RNG state as tensors and plain python data."""
    numpy_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        # Only when this process uses CUDA: reading the state would otherwise initialise CUDA
        # (a context per device, and forked children could no longer use CUDA).
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "numpy": {
            "bit_generator": str(numpy_state["bit_generator"]),
            "key": [int(k) for k in numpy_state["state"]["key"]],
            "pos": int(numpy_state["state"]["pos"]),
            "has_gauss": int(numpy_state["has_gauss"]),
            "gauss": float(numpy_state["gauss"]),
        },
        "python": _to_plain(random.getstate()),
    }
    return state


def _to_plain(value: Any) -> Any:
    """Converts python ``random``'s state (nested tuples of ints / floats / None) to plain data."""
    if isinstance(value, tuple):
        return tuple(_to_plain(v) for v in value)
    return value


def _restore_rng_state(state: dict[str, Any], path: Path) -> None:
    """Restores the states captured by ``_capture_rng_state``."""
    try:
        torch.set_rng_state(state["torch"])
        cuda_states = state.get("cuda") or []
        if cuda_states and torch.cuda.is_available():
            # Restore as many devices as both the file and this machine have.
            for index in range(min(len(cuda_states), torch.cuda.device_count())):
                torch.cuda.set_rng_state(cuda_states[index], device=index)
        numpy_state = state["numpy"]
        np.random.set_state(
            {
                "bit_generator": numpy_state["bit_generator"],
                "state": {
                    "key": np.asarray(numpy_state["key"], dtype=np.uint32),
                    "pos": numpy_state["pos"],
                },
                "has_gauss": numpy_state["has_gauss"],
                "gauss": numpy_state["gauss"],
            }
        )
        random.setstate(_python_state_from_plain(state["python"]))
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise CheckpointError(
            f"{path}: RNG state is malformed ({_one_line(error)}); "
            "load with restore_rng=False to skip it"
        ) from error


def _python_state_from_plain(value: Any) -> Any:
    """Turns lists back into the tuples ``random.setstate`` requires."""
    if isinstance(value, list | tuple):
        return tuple(_python_state_from_plain(v) for v in value)
    return value


# ---------------------------------------------------------------------------------------------
# Save / load
# ---------------------------------------------------------------------------------------------

_PLAIN_SCALARS = (str, bytes, int, float, complex, bool, type(None))
_TORCH_VALUES = (torch.Tensor, torch.Size, torch.dtype, torch.device, torch.layout)


def _check_loadable(value: Any, where: str) -> None:
    """Raises ValueError when ``value`` holds something ``weights_only=True`` would refuse.

    Catching this at save time turns an unloadable checkpoint (found hours later, on resume) into
    an immediate error that names the offending entry.
    """
    kind = type(value)
    if kind in (dict, OrderedDict):
        for key, item in value.items():
            _check_loadable(key, f"{where} key {key!r}")
            _check_loadable(item, f"{where}[{key!r}]")
    elif kind in (list, tuple, set):
        for index, item in enumerate(value):
            _check_loadable(item, f"{where}[{index}]")
    elif kind in _PLAIN_SCALARS or isinstance(value, _TORCH_VALUES) or kind in _user_safe_globals():
        return
    else:
        raise ValueError(
            f"{where} is a {kind.__module__}.{kind.__qualname__}, which "
            "torch.load(weights_only=True) cannot load; store tensors and plain data "
            "(dict, list, tuple, str, int, float, bool, None) instead"
        )


def _user_safe_globals() -> set[Any]:
    """Types the user allowed with ``torch.serialization.add_safe_globals``."""
    allowed: set[Any] = set()
    for entry in torch.serialization.get_safe_globals():
        allowed.add(entry[0] if isinstance(entry, tuple) else entry)
    return allowed


def save_checkpoint(
    path: str | os.PathLike[str],
    *,
    model: torch.nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    step: int = 0,
    extra: dict[str, Any] | None = None,
    rng: bool = True,
) -> None:
    """Saves training state atomically to ``path``.

    Args:
        path: the file to write; its directory must exist. A previous file stays intact until the
            new one is complete.
        model: a module whose ``state_dict()`` is saved.
        optimizer: an optimizer whose ``state_dict()`` is saved.
        scheduler: an LR scheduler (anything with ``state_dict()``/``load_state_dict()``).
        step: the step to store; by convention the number of completed optimizer steps, i.e. the
            step a resumed run continues from.
        extra: plain data to store with the checkpoint (tensors, dicts, lists, tuples, numbers,
            strings, None), returned by ``load_checkpoint`` as ``Checkpoint.extra``.
        rng: store the torch CPU, numpy global and python ``random`` RNG states, and the CUDA
            RNG state of every device when this process has initialised CUDA.

    Raises:
        ValueError: ``step`` is not a non-negative int, ``extra`` is not a dict, or some state
            holds an object that ``torch.load(weights_only=True)`` could not load (nothing is
            written then).
    """
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"save_checkpoint: step must be a non-negative int, got {step!r}")
    if extra is not None and not isinstance(extra, dict):
        raise ValueError(
            f"save_checkpoint: extra must be a dict or None, got {type(extra).__name__}"
        )
    payload: dict[str, Any] = {
        "format": FORMAT_MARKER,
        "version": FORMAT_VERSION,
        "step": step,
        "model": model.state_dict() if model is not None else None,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "extra": dict(extra) if extra is not None else {},
        "rng": _capture_rng_state() if rng else None,
    }
    for key in ("model", "optimizer", "scheduler", "extra"):
        _check_loadable(payload[key], key)
    with atomic_write(path, "wb") as file:
        torch.save(payload, file)


def _one_line(error: BaseException) -> str:
    """The first line of an exception message, shortened, for one-line errors."""
    text = str(error).strip().splitlines()
    first = text[0].strip() if text else ""
    detail = f"{type(error).__name__}: {first}" if first else type(error).__name__
    if len(detail) > _MAX_DETAIL_CHARS:
        detail = detail[: _MAX_DETAIL_CHARS - 3] + "..."
    return detail


def _read_payload(path: Path, map_location: Any) -> dict[str, Any]:
    """Reads and validates a checkpoint file, raising CheckpointError with a one-line message."""
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint file not found")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, expected a checkpoint file")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        message = str(error)
        if "weights_only" in message or "Weights only load failed" in message:
            raise CheckpointError(
                f"{path}: refused to load: the file holds objects other than tensors and plain "
                "data (torch.load(weights_only=True) only); expected a ptrain checkpoint"
            ) from error
        raise CheckpointError(
            f"{path}: corrupt or truncated checkpoint ({_one_line(error)}); "
            "expected a file written by ptrain.core.checkpoint.save_checkpoint"
        ) from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_MARKER:
        found = (
            f"keys {sorted(map(str, payload))[:5]}"
            if isinstance(payload, dict)
            else f"a {type(payload).__name__}"
        )
        raise CheckpointError(
            f"{path}: not a ptrain checkpoint (expected a dict with format={FORMAT_MARKER!r}, "
            f"found {found})"
        )
    version = payload.get("version")
    if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
        raise CheckpointError(
            f"{path}: unsupported ptrain checkpoint version {version!r} "
            f"(this ptrain-core reads versions 1..{FORMAT_VERSION})"
        )
    step = payload.get("step")
    if isinstance(step, bool) or not isinstance(step, int):
        raise CheckpointError(f"{path}: malformed checkpoint: 'step' is {step!r}, expected an int")
    return payload


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    model: torch.nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    restore_rng: bool = True,
    map_location: Any = "cpu",
) -> Checkpoint:
    """Loads a checkpoint written by ``save_checkpoint`` into the given objects.

    The file is read with ``torch.load(weights_only=True)``: nothing in it is executed.

    Args:
        path: the checkpoint file.
        model: a module to ``load_state_dict`` into (strict).
        optimizer: an optimizer to ``load_state_dict`` into.
        scheduler: an LR scheduler to ``load_state_dict`` into.
        restore_rng: restore the RNG states stored in the file (a file saved with ``rng=False``
            restores nothing).
        map_location: passed to ``torch.load``; the default ``"cpu"`` loads anywhere.

    Returns:
        The stored step and extra data, and the path.

    Raises:
        CheckpointError: the file is missing, corrupt or truncated, holds non-plain objects, is
            not a ptrain checkpoint, lacks state for an object that was passed, or its state does
            not fit that object. The message is one line naming the file.
    """
    checkpoint_path = Path(path)
    payload = _read_payload(checkpoint_path, map_location)
    for key, target in (("model", model), ("optimizer", optimizer), ("scheduler", scheduler)):
        if target is None:
            continue
        state = payload.get(key)
        if state is None:
            raise CheckpointError(
                f"{checkpoint_path}: has no {key} state, but a {key} was passed to load it into"
            )
        try:
            target.load_state_dict(state)
        except (RuntimeError, ValueError, KeyError, TypeError) as error:
            raise CheckpointError(
                f"{checkpoint_path}: {key} state does not fit the given {key} "
                f"({' '.join(str(error).split())[:_MAX_DETAIL_CHARS]})"
            ) from error
    if restore_rng and payload.get("rng") is not None:
        _restore_rng_state(payload["rng"], checkpoint_path)
    extra = payload.get("extra") or {}
    return Checkpoint(step=payload["step"], extra=dict(extra), path=checkpoint_path)


# ---------------------------------------------------------------------------------------------
# A directory of step checkpoints
# ---------------------------------------------------------------------------------------------


class Checkpointer:
    """Keeps the newest ``keep`` checkpoints of a run in one directory and resumes from them.

    Files are named ``<prefix>-<step, 8 digits>.pt``. Only rank 0 of a distributed job should
    save (the files are the same on every rank for replicated state).

    Example::

        checkpointer = Checkpointer("runs/a", keep=2)
        start = checkpointer.resume(model, optimizer, scheduler)   # 0 on a fresh run
        for step in range(start, total_steps):
            train_one_step()
            checkpointer.save(step + 1, model=model, optimizer=optimizer, scheduler=scheduler)
    """

    def __init__(
        self, directory: str | os.PathLike[str], *, keep: int = 2, prefix: str = "step"
    ) -> None:
        """Creates a checkpointer (the directory is created on the first save).

        Args:
            directory: where the checkpoint files live.
            keep: how many of the newest checkpoints to keep (at least 1).
            prefix: the file name prefix (no path separators, no leading dot).

        Raises:
            ValueError: ``keep`` is below 1 or ``prefix`` is not a plain name.
        """
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ValueError(f"Checkpointer: keep must be an int >= 1, got {keep!r}")
        if not prefix or prefix.startswith(".") or "/" in prefix or os.sep in prefix:
            raise ValueError(
                f"Checkpointer: prefix must be a plain file name part without '/' or a leading "
                f"'.', got {prefix!r}"
            )
        self.directory = Path(directory)
        self.keep = keep
        self.prefix = prefix
        self._pattern = re.compile(rf"{re.escape(prefix)}-(\d+)\.pt")

    def path_for(self, step: int) -> Path:
        """Returns the file a checkpoint of ``step`` is written to.

        Args:
            step: the step.

        Returns:
            ``<directory>/<prefix>-<step:08d>.pt``.
        """
        return self.directory / f"{self.prefix}-{step:08d}.pt"

    def checkpoints(self) -> list[tuple[int, Path]]:
        """Lists the checkpoint files in the directory, oldest step first.

        Temporary files from interrupted saves and names that do not parse are ignored.

        Returns:
            ``(step, path)`` pairs sorted by step.
        """
        if not self.directory.is_dir():
            return []
        found = []
        for entry in self.directory.iterdir():
            match = self._pattern.fullmatch(entry.name)
            if match and entry.is_file():
                found.append((int(match.group(1)), entry))
        return sorted(found)

    def latest(self) -> Path | None:
        """Returns the checkpoint with the highest step, or None when there is none."""
        found = self.checkpoints()
        return found[-1][1] if found else None

    def save(
        self,
        step: int,
        *,
        model: torch.nn.Module | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any | None = None,
        extra: dict[str, Any] | None = None,
        rng: bool = True,
    ) -> Path:
        """Writes ``<prefix>-<step>.pt`` atomically, then deletes the oldest beyond ``keep``.

        Args:
            step: the number of completed steps (the step a resumed run continues from).
            model: see ``save_checkpoint``.
            optimizer: see ``save_checkpoint``.
            scheduler: see ``save_checkpoint``.
            extra: see ``save_checkpoint``.
            rng: see ``save_checkpoint``.

        Returns:
            The path written.

        Raises:
            ValueError: as ``save_checkpoint``.
        """
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"Checkpointer.save: step must be a non-negative int, got {step!r}")
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.path_for(step)
        save_checkpoint(
            path,
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            step=step,
            extra=extra,
            rng=rng,
        )
        others = [p for _, p in self.checkpoints() if p != path]
        # Keep the newest `keep` files, always counting the one just written among them.
        for stale in others[: max(0, len(others) - (self.keep - 1))]:
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
        return path

    def load_latest(
        self,
        model: torch.nn.Module | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any | None = None,
        *,
        restore_rng: bool = True,
        map_location: Any = "cpu",
    ) -> Checkpoint | None:
        """Loads the newest checkpoint into the given objects.

        Args:
            model: see ``load_checkpoint``.
            optimizer: see ``load_checkpoint``.
            scheduler: see ``load_checkpoint``.
            restore_rng: see ``load_checkpoint``.
            map_location: see ``load_checkpoint``.

        Returns:
            The loaded checkpoint (with ``extra``), or None when the directory has none.

        Raises:
            CheckpointError: the newest file cannot be loaded.
        """
        latest = self.latest()
        if latest is None:
            return None
        return load_checkpoint(
            latest,
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            restore_rng=restore_rng,
            map_location=map_location,
        )

    def resume(
        self,
        model: torch.nn.Module | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any | None = None,
    ) -> int:
        """Restores the newest checkpoint, RNG included, and returns the step to continue from.

        Args:
            model: see ``load_checkpoint``.
            optimizer: see ``load_checkpoint``.
            scheduler: see ``load_checkpoint``.

        Returns:
            The stored step, or 0 when there is no checkpoint (nothing is touched then).

        Raises:
            CheckpointError: the newest file cannot be loaded.
        """
        checkpoint = self.load_latest(model, optimizer, scheduler, restore_rng=True)
        return 0 if checkpoint is None else checkpoint.step
