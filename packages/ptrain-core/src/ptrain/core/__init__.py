"""ptrain.core: distributed-training primitives shared by every ptrain package.

Modules:
    dist        ``init_distributed()``, ``ParallelDims`` → named ``DeviceMesh``
    comm        differentiable collectives (all_gather, reduce_scatter, all_reduce, all_to_all,
                broadcast, send/recv) and ``CommTracker`` byte accounting
    optim       LAMB, LARS, warm-up + decay schedules, batch-size LR scaling
    testing     ``run_distributed``: a fork-based multi-process harness for tests and small jobs
    tp          1D / 2D / 2.5D / 3D tensor-parallel layers and their process groups
    sp          sequence parallelism: ring attention and Ulysses
    pipeline    pipeline schedules (GPipe, 1F1B, interleaved) on torch.distributed.pipelining
    data_parallel  DDP, ZeRO-1, ZeRO-3 (fully_shard), gradient accumulation
    dcp         sharded checkpoints through torch.distributed.checkpoint (save and reshard)
    models      reference models (``models.gpt``: a GPT-style transformer)
    parallel    ``parallelize(model, dims, plan)``: one entry point applied from outside a model
    checkpoint  atomic, resumable checkpoints (loaded with ``weights_only=True``)
    bench       interleaved ratio benchmarks with JSON output
    cli         helpers for package CLIs (one-line errors, ``--json``, progress, ``--version``)

Submodules and names are imported lazily (PEP 562), so ``import ptrain.core.cli`` — what a
package CLI needs to start — does not import torch.
"""

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ imports on first use
    from ptrain.core import (
        bench,
        checkpoint,
        cli,
        comm,
        data_parallel,
        dcp,
        dist,
        models,
        optim,
        parallel,
        pipeline,
        sp,
        testing,
        tp,
    )
    from ptrain.core.checkpoint import Checkpointer, load_checkpoint, save_checkpoint
    from ptrain.core.comm import CommTracker
    from ptrain.core.dist import DistInfo, ParallelDims, init_distributed
    from ptrain.core.optim import LAMB, LARS
    from ptrain.core.parallel import parallelize
    from ptrain.core.testing import run_distributed

_SUBMODULES = frozenset(
    {
        "bench",
        "checkpoint",
        "cli",
        "comm",
        "data_parallel",
        "dcp",
        "dist",
        "models",
        "optim",
        "parallel",
        "pipeline",
        "sp",
        "testing",
        "tp",
    }
)
_NAMES = {
    "Checkpointer": "checkpoint",
    "load_checkpoint": "checkpoint",
    "save_checkpoint": "checkpoint",
    "CommTracker": "comm",
    "DistInfo": "dist",
    "ParallelDims": "dist",
    "init_distributed": "dist",
    "LAMB": "optim",
    "LARS": "optim",
    "run_distributed": "testing",
    "parallelize": "parallel",
}


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"ptrain.core.{name}")
    if name in _NAMES:
        return getattr(importlib.import_module(f"ptrain.core.{_NAMES[name]}"), name)
    raise AttributeError(f"module 'ptrain.core' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_SUBMODULES, *_NAMES})


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
    "data_parallel",
    "dcp",
    "dist",
    "init_distributed",
    "load_checkpoint",
    "models",
    "optim",
    "parallel",
    "parallelize",
    "pipeline",
    "run_distributed",
    "save_checkpoint",
    "sp",
    "testing",
    "tp",
]
