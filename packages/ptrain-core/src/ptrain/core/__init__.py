"""ptrain.core: distributed-training primitives shared by every ptrain package.

Modules:
    dist        ``init_distributed()``, ``ParallelDims`` → named ``DeviceMesh``
    comm        differentiable collectives (all_gather, reduce_scatter, all_reduce, all_to_all,
                broadcast, send/recv) and ``CommTracker`` byte accounting
    optim       LAMB, LARS, warm-up + decay schedules, batch-size LR scaling
    testing     ``run_distributed``: a fork-based multi-process harness for tests and small jobs
    checkpoint  atomic, resumable checkpoints (loaded with ``weights_only=True``)
    bench       interleaved ratio benchmarks with JSON output
    cli         helpers for package CLIs (one-line errors, ``--json``, progress, ``--version``)
"""

from importlib.metadata import PackageNotFoundError, version

from ptrain.core import bench, checkpoint, cli, comm, dist, optim, testing
from ptrain.core.checkpoint import Checkpointer, load_checkpoint, save_checkpoint
from ptrain.core.comm import CommTracker
from ptrain.core.dist import DistInfo, ParallelDims, init_distributed
from ptrain.core.optim import LAMB, LARS
from ptrain.core.testing import run_distributed

try:
    __version__ = version("ptrain-core")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0+unknown"

__all__ = [
    "LAMB",
    "LARS",
    "Checkpointer",
    "CommTracker",
    "DistInfo",
    "ParallelDims",
    "__version__",
    "bench",
    "checkpoint",
    "cli",
    "comm",
    "dist",
    "init_distributed",
    "load_checkpoint",
    "optim",
    "run_distributed",
    "save_checkpoint",
    "testing",
]
