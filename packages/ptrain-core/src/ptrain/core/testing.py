"""A fork-based multi-process harness for distributed tests and small local jobs.

``run_distributed(fn, world_size, *args)`` runs ``fn(rank, world_size, *args)`` in ``world_size``
processes with a gloo process group already initialised, and returns the per-rank results.

Why fork and a file rendezvous: ``spawn`` re-imports torch in every child (~10 s each on a
2-core machine) while ``fork`` starts a child in well under a second, and ``file://`` rendezvous
needs no free TCP port, so there are no port-collision retries. Set ``PTRAIN_START_METHOD=spawn``
to use spawn instead (``fn`` and its arguments must then be picklable).

Guarantees:
- every child calls ``torch.set_num_threads(1)`` before anything else (a forked child that runs a
  multithreaded op after the parent used the OpenMP pool can hang);
- results travel back as bytes (``torch.save`` into a buffer), never as shared-memory tensors that
  die with the child;
- the first rank that raises has its exception re-raised in the parent, with its rank and remote
  traceback attached as a note; the other ranks are killed at once;
- at ``timeout`` seconds every rank still running is killed and a ``DistributedTimeoutError``
  names the ranks that hung, with the Python stack each was stuck in.
"""

from __future__ import annotations

import contextlib
import faulthandler
import gc
import io
import multiprocessing as mp
import os
import pickle
import queue as queue_module
import shutil
import signal
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "DistributedTestError",
    "DistributedTimeoutError",
    "RankFailedError",
    "run_distributed",
]

_PREIMPORTED = False


class DistributedTestError(RuntimeError):
    """Base class for harness failures that are not the user's own exception."""


class RankFailedError(DistributedTestError):
    """A rank raised an exception that could not be re-created in the parent, or died silently."""


class DistributedTimeoutError(DistributedTestError, TimeoutError):
    """Some ranks did not finish within the timeout; ``hung_ranks`` lists them."""

    def __init__(self, message: str, hung_ranks: list[int]) -> None:
        super().__init__(message)
        self.hung_ranks = hung_ranks


def _preimport_distributed_modules() -> None:
    """Import torch.distributed submodules once in the parent.

    A forked child that imports them itself pays ~15 s on its first DTensor op; importing in the
    parent makes that ~0.2 s.
    """
    global _PREIMPORTED
    if _PREIMPORTED:
        return
    import importlib

    for name in (
        "torch.distributed.device_mesh",
        "torch.distributed.tensor",
        "torch.distributed.tensor.parallel",
        "torch.distributed.pipelining",
        "torch.distributed.fsdp",
        "torch.distributed.nn.functional",
    ):
        with contextlib.suppress(ImportError):  # older torch may lack one of these
            importlib.import_module(name)
    _PREIMPORTED = True


def _serialise(value: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def _deserialise(payload: bytes) -> Any:
    # Our own children wrote this payload in this test run: it is trusted, and results may be
    # arbitrary Python objects, so weights_only=False is correct here (and only here).
    return torch.load(io.BytesIO(payload), weights_only=False)


def _child_main(
    rank: int,
    world_size: int,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    rendezvous_dir: str,
    results: Any,
    timeout: float,
) -> None:
    # Objects inherited from the parent (process groups, thread pools of earlier jobs) must never
    # be finalised here: their destructors take locks held by parent threads that do not exist in
    # a forked child, and a garbage collection running them hangs the rank.
    gc.freeze()
    torch.set_num_threads(1)
    stack_path = os.path.join(rendezvous_dir, f"stack-{rank}.txt")
    stack_file = open(stack_path, "w")  # noqa: SIM115 - must stay open for faulthandler
    faulthandler.register(signal.SIGUSR1, file=stack_file, all_threads=True)
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world_size),
    )
    try:
        dist.init_process_group(
            "gloo",
            init_method=f"file://{rendezvous_dir}/rendezvous",
            rank=rank,
            world_size=world_size,
            timeout=timedelta(seconds=max(timeout, 1.0)),
        )
        value = fn(rank, world_size, *args)
        payload = _serialise(value)
    except BaseException as exc:  # report every failure, including SystemExit/KeyboardInterrupt
        remote_traceback = traceback.format_exc()
        pickled: bytes | None
        try:
            pickled = pickle.dumps(exc)
            pickle.loads(pickled)
        except Exception:
            pickled = None
        results.put((rank, "error", (pickled, repr(exc), remote_traceback)))
        return
    results.put((rank, "ok", payload))
    with contextlib.suppress(Exception):  # best-effort cleanup
        dist.destroy_process_group()


def _stack_dump(rendezvous_dir: str, rank: int) -> str:
    path = os.path.join(rendezvous_dir, f"stack-{rank}.txt")
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError:
        return ""


def run_distributed(
    fn: Callable[..., Any],
    world_size: int,
    *args: Any,
    timeout: float = 60.0,
) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` gloo ranks and collect the results.

    Args:
        fn: the per-rank function. With the default fork start method it may be a closure.
        world_size: number of processes (ranks), at least 1.
        *args: extra positional arguments passed to every rank.
        timeout: seconds after which every rank still running is killed.

    Returns:
        The list of per-rank return values, indexed by rank.

    Raises:
        Exception: the first failing rank's own exception (same type), with a note naming the
            rank and carrying its traceback; ``RankFailedError`` if it cannot be re-created or a
            rank died without reporting.
        DistributedTimeoutError: some ranks did not finish within ``timeout``.
    """
    if not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive integer, got {world_size!r}")
    if timeout <= 0:
        raise ValueError(f"timeout must be positive, got {timeout!r}")
    start_method = os.environ.get("PTRAIN_START_METHOD", "fork")
    if start_method not in ("fork", "spawn", "forkserver"):
        raise ValueError(
            f"PTRAIN_START_METHOD must be fork, spawn or forkserver, got {start_method!r}"
        )
    _preimport_distributed_modules()
    gc.collect()  # finalise the parent's garbage here, not in the forked children
    context: Any = mp.get_context(start_method)
    rendezvous_dir = tempfile.mkdtemp(prefix="ptrain-rdzv-")
    results = context.Queue()
    processes = [
        context.Process(
            target=_child_main,
            args=(rank, world_size, fn, args, rendezvous_dir, results, timeout),
            name=f"ptrain-rank-{rank}",
            daemon=True,
        )
        for rank in range(world_size)
    ]
    try:
        for process in processes:
            process.start()
        return _collect(processes, results, world_size, timeout, rendezvous_dir)
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
        for process in processes:
            process.join(timeout=5)
        results.close()
        shutil.rmtree(rendezvous_dir, ignore_errors=True)


def _collect(
    processes: list[Any],
    results: Any,
    world_size: int,
    timeout: float,
    rendezvous_dir: str,
) -> list[Any]:
    deadline = time.monotonic() + timeout
    outputs: dict[int, Any] = {}
    while len(outputs) < world_size:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            hung = [rank for rank in range(world_size) if rank not in outputs]
            _raise_timeout(processes, hung, sorted(outputs), timeout, rendezvous_dir)
        try:
            rank, status, payload = results.get(timeout=min(remaining, 0.05))
        except queue_module.Empty:
            _check_silent_deaths(processes, outputs, results)
            continue
        if status == "error":
            _raise_rank_error(rank, payload)
        outputs[rank] = _deserialise(payload)
    return [outputs[rank] for rank in range(world_size)]


def _check_silent_deaths(processes: list[Any], outputs: dict[int, Any], results: Any) -> None:
    for rank, process in enumerate(processes):
        if rank in outputs or process.exitcode is None:
            continue
        # The process ended; its message may still be in flight through the queue's pipe.
        try:
            item = results.get(timeout=1.0)
        except queue_module.Empty:
            raise RankFailedError(
                f"rank {rank} exited with code {process.exitcode} without returning a result"
            ) from None
        other_rank, status, payload = item
        if status == "error":
            _raise_rank_error(other_rank, payload)
        outputs[other_rank] = _deserialise(payload)


def _raise_rank_error(rank: int, payload: tuple[bytes | None, str, str]) -> None:
    pickled, description, remote_traceback = payload
    note = f"raised on rank {rank}; remote traceback:\n{remote_traceback}"
    if pickled is not None:
        exc = pickle.loads(pickled)
        if isinstance(exc, BaseException):
            exc.add_note(note)
            raise exc
    raise RankFailedError(f"rank {rank} failed with {description}\n{note}")


def _raise_timeout(
    processes: list[Any],
    hung: list[int],
    finished: list[int],
    timeout: float,
    rendezvous_dir: str,
) -> None:
    for rank in hung:
        pid = processes[rank].pid
        if pid is not None and processes[rank].is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGUSR1)
    time.sleep(0.3)  # let faulthandler write the stacks
    stacks = []
    for rank in hung:
        dump = _stack_dump(rendezvous_dir, rank)
        if dump:
            stacks.append(f"--- rank {rank} was at:\n{dump}")
    message = (
        f"ranks {hung} did not finish within {timeout:g} s and were killed"
        f" (finished: {finished if finished else 'none'})"
    )
    if stacks:
        message += "\n" + "\n".join(stacks)
    raise DistributedTimeoutError(message, hung)
