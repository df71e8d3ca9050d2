"""Sharded checkpoints through ``torch.distributed.checkpoint`` (DCP): save under one layout,
load under another.

Every rank writes only its own shards; the checkpoint is a directory of DCP files keyed by the
serial model's names and global shapes, so a checkpoint saved at dp=2×tp=2 loads at tp=4, under
ZeRO-3, or into a plain single-process model with identical weights: DCP reshards on load.

Where the state dict comes from:

- a model converted by ``ptrain.core.tp`` (our 1D/2D/2.5D/3D layers hold plain local shards):
  ``tp.dtensor_state_dict`` / ``tp.load_dtensor_state_dict`` describe the shards as DTensors;
- anything else (plain, DDP-wrapped, ``fully_shard``-ed, torch ``parallelize_module``):
  torch's ``get_model_state_dict`` / ``set_model_state_dict`` (which drop the DDP/FSDP
  prefixes) — or ``model.state_dict()`` without a process group.

Optimizer state (optional) goes through torch's ``get_optimizer_state_dict`` /
``set_optimizer_state_dict``, keyed by parameter names, so it reshards too: the state tensors of
``ptrain.core.tp`` shards are described as DTensors with their parameter's placements, and a
:class:`~ptrain.core.data_parallel.ZeroRedundancyOptimizer` rank saves the state of the tensors
it owns under their names. Param-group hyperparameters (lr, betas, ...) are not restored: they
come from the optimizer as built by the resuming run (LR schedules are functions of the step).

Atomicity: all ranks write into ``<path>.partial``; after every rank has finished, rank 0 writes
``ptrain.json`` (step, user metadata) and renames the directory to ``<path>`` (an older ``<path>``
is moved aside first and deleted afterwards). A crash at any point leaves either the previous
checkpoint or none under ``<path>``, never a half-written one.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import shutil
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException

from ptrain.core.checkpoint import CheckpointError

__all__ = [
    "METADATA_FILE",
    "load",
    "load_model_state_dict",
    "model_state_dict",
    "read_metadata",
    "save",
]

#: The file rank 0 writes last into a checkpoint directory (step and user metadata, JSON).
METADATA_FILE = "ptrain.json"


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _uses_ptrain_tp(model: nn.Module) -> bool:
    import importlib.util

    if importlib.util.find_spec("ptrain.core.tp") is None:
        return False
    from ptrain.core import tp

    probe = getattr(tp, "is_tp_model", None)
    if probe is not None:
        return bool(probe(model))
    return any(type(m).__module__.startswith("ptrain.core.tp") for m in model.modules())


def _inner(model: nn.Module) -> nn.Module:
    from ptrain.core.data_parallel import unwrap

    return unwrap(model)


def model_state_dict(model: nn.Module) -> dict[str, Any]:
    """The model's state dict with serial names; sharded tensors as DTensors (global shapes)."""
    if _uses_ptrain_tp(_inner(model)):
        from ptrain.core import tp
        from ptrain.core.data_parallel import has_dtensor_params

        if has_dtensor_params(_inner(model)):
            raise ValueError(
                "sharded checkpoints of a ptrain.core.tp model under ZeRO-3 (fully_shard) are "
                "not supported: use ZeRO-1/DDP, or tp_backend='torch' for 1D"
            )
        return dict(tp.dtensor_state_dict(_inner(model)))
    if not _distributed():
        return dict(_inner(model).state_dict())
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return dict(get_model_state_dict(model))


def load_model_state_dict(model: nn.Module, state_dict: Mapping[str, Any]) -> None:
    """Copy ``state_dict`` (as filled by DCP) into the model's parameters and buffers."""
    if _uses_ptrain_tp(_inner(model)):
        from ptrain.core import tp

        tp.load_dtensor_state_dict(_inner(model), dict(state_dict))
        return
    if not _distributed():
        _inner(model).load_state_dict(dict(state_dict))
        return
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    set_model_state_dict(model, dict(state_dict))


def _optimizer_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, templates: Mapping[str, Any]
) -> dict[str, Any]:
    """The optimizer state keyed by parameter names; state tensors of ``ptrain.core.tp``
    shards are described as DTensors like their parameter (``templates``), so they reshard."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict
    from torch.distributed.tensor import DTensor

    from ptrain.core.data_parallel import ZeroRedundancyOptimizer

    inner = optimizer.optim if isinstance(optimizer, ZeroRedundancyOptimizer) else optimizer
    state: dict[str, Any] = dict(get_optimizer_state_dict(model, inner))
    for name, entry in state.get("state", {}).items():
        template = templates.get(name)
        if not isinstance(template, DTensor) or not isinstance(entry, dict):
            continue
        local_shape = template.to_local().shape
        for key, value in list(entry.items()):
            plain = isinstance(value, torch.Tensor) and not isinstance(value, DTensor)
            if plain and value.ndim > 0 and value.shape == local_shape:
                entry[key] = DTensor.from_local(
                    value, template.device_mesh, template.placements, run_check=False,
                    shape=template.shape, stride=template.stride(),
                )  # fmt: skip
    return state


def _set_optimizer_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any], tp_model: bool
) -> None:
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict
    from torch.distributed.tensor import DTensor

    from ptrain.core.data_parallel import ZeroRedundancyOptimizer

    if tp_model:  # back from the DTensor description to the plain local shards
        for entry in state.get("state", {}).values():
            if isinstance(entry, dict):
                for key, value in list(entry.items()):
                    if isinstance(value, DTensor):
                        entry[key] = value.to_local()
    inner = optimizer.optim if isinstance(optimizer, ZeroRedundancyOptimizer) else optimizer
    set_optimizer_state_dict(model, inner, state)


@contextlib.contextmanager
def _single_process_quiet() -> Iterator[None]:
    """DCP warns that it "assumes the intent" to run in one process; without a process group
    that is the intent, so that one warning is silenced (nothing else)."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="torch.distributed is disabled, unavailable or uninitialized"
        )
        yield


def _barrier() -> None:
    if _distributed():
        dist.barrier()


def _rank() -> int:
    return dist.get_rank() if _distributed() else 0


def save(
    path: str | os.PathLike[str],
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    step: int = 0,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Save a sharded checkpoint atomically (collective: every rank calls it).

    Args:
        path: the checkpoint directory to create (replaced if it exists).
        model: the (parallel) model.
        optimizer: optionally its optimizer (state keyed by parameter names).
        step: stored in ``ptrain.json``.
        metadata: JSON-serialisable user data stored in ``ptrain.json`` (config, layout, ...).

    Returns:
        The final checkpoint directory.
    """
    final = Path(path)
    partial = final.with_name(final.name + ".partial")
    if _rank() == 0:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    _barrier()
    state: dict[str, Any] = {"model": model_state_dict(model)}
    if optimizer is not None:
        state["optim"] = _optimizer_state(model, optimizer, state["model"])
    with _single_process_quiet():
        dcp.save(state, checkpoint_id=str(partial), no_dist=not _distributed())
    _barrier()
    if _rank() == 0:
        info: dict[str, Any] = {"step": int(step), "has_optimizer": optimizer is not None}
        info["metadata"] = dict(metadata or {})
        (partial / METADATA_FILE).write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
        old = final.with_name(final.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            final.rename(old)
        partial.rename(final)
        _fsync_directory(final.parent)
        shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


def _fsync_directory(directory: Path) -> None:
    try:
        handle = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(handle)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(handle)


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``ptrain.json`` of a checkpoint: ``{"step", "has_optimizer", "metadata"}``.

    Raises:
        CheckpointError: ``path`` is not a complete checkpoint written by :func:`save`.
    """
    where = Path(path)
    info_path = where / METADATA_FILE
    if not where.is_dir():
        raise CheckpointError(f"{where}: no such checkpoint directory")
    if not info_path.is_file() or not (where / ".metadata").is_file():
        raise CheckpointError(
            f"{where}: not a complete ptrain DCP checkpoint (missing {METADATA_FILE} or .metadata)"
        )
    try:
        info = json.loads(info_path.read_text())
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{info_path}: unreadable ({error})") from None
    if not isinstance(info, dict) or "step" not in info:
        raise CheckpointError(f"{info_path}: expected a JSON object with a 'step' key")
    return info


def _root_cause(error: BaseException) -> str:
    """The innermost ``SomeError: message`` line of a (possibly multi-rank) DCP failure."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    causes = [line for line in lines if re.match(r"^[A-Za-z_.]*(Error|Exception): ", line)]
    detail = causes[-1] if causes else (lines[0] if lines else type(error).__name__)
    return detail[:300]


def load(
    path: str | os.PathLike[str],
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save` into ``model`` (any layout; collective).

    Args:
        path: the checkpoint directory.
        model: the model, already parallelised (and materialised) the way it will run.
        optimizer: optionally its optimizer; the checkpoint must hold optimizer state.

    Returns:
        The checkpoint's ``ptrain.json`` (``step``, ``metadata``).

    Raises:
        CheckpointError: the directory is not a complete checkpoint, lacks optimizer state, or
            its tensors do not match the model (names or global shapes).
    """
    info = read_metadata(path)
    if optimizer is not None and not info.get("has_optimizer"):
        raise CheckpointError(f"{path}: the checkpoint holds no optimizer state")
    own_groups: Any = None
    state: dict[str, Any] = {"model": model_state_dict(model)}
    if optimizer is not None:
        state["optim"] = _optimizer_state(model, optimizer, state["model"])
        # Param-group hyperparameters are kept from the optimizer as built now (ZeRO-1 ranks
        # hold different groups, which DCP would store only once); the state tensors reshard.
        own_groups = copy.deepcopy(state["optim"].get("param_groups"))
    try:
        with _single_process_quiet():
            dcp.load(state, checkpoint_id=str(path), no_dist=not _distributed())
    except (Exception, CheckpointException) as error:  # DCP wraps per-rank failures
        raise CheckpointError(f"{path}: does not fit this model ({_root_cause(error)})") from error
    load_model_state_dict(model, state["model"])
    if optimizer is not None:
        if own_groups is not None:
            state["optim"]["param_groups"] = own_groups
        _set_optimizer_state(model, optimizer, state["optim"], _uses_ptrain_tp(_inner(model)))
    return info
