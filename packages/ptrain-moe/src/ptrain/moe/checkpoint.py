"""Model files that rebuild their model alone: ``save_model`` / ``load_model``.

A model file is one ``torch.save`` dict of plain data, loadable with ``weights_only=True``::

    {
        "format": "ptrain-moe-model",
        "format_version": 1,
        "model_class": "SparseMLP",          # or "MoE"
        "config": {...},                     # SparseMLPConfig.to_dict() / MoEConfig.to_dict()
        "state_dict": {...},                 # every expert, keyed by global expert id
        "extra": {...},                      # whatever the caller passed (plain data)
    }

Files are written atomically (``ptrain.core.checkpoint.atomic_write``). Under expert parallelism
``save_model`` gathers every expert first (a collective: every rank calls it; rank 0 writes), so
the file is the same whatever ``ep`` was; ``load_model`` returns the unsharded model, to be
sharded again with ``apply_expert_parallel`` under any ``ep``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ptrain.core.checkpoint import CheckpointError, atomic_write
from ptrain.moe.layer import MoE, MoEConfig
from ptrain.moe.mixer import SparseMLP, SparseMLPConfig
from ptrain.moe.parallel import full_state_dict

__all__ = ["MODEL_FORMAT", "MODEL_FORMAT_VERSION", "load_model", "read_model_file", "save_model"]

MODEL_FORMAT = "ptrain-moe-model"
MODEL_FORMAT_VERSION = 1

_MODEL_CLASSES: dict[str, tuple[type[nn.Module], Any]] = {
    "SparseMLP": (SparseMLP, SparseMLPConfig),
    "MoE": (MoE, MoEConfig),
}


def _model_class_name(model: nn.Module) -> str:
    for name, (cls, _) in _MODEL_CLASSES.items():
        if type(model) is cls:
            return name
    raise ValueError(
        f"save_model: cannot save a {type(model).__name__}; "
        f"expected one of {sorted(_MODEL_CLASSES)}"
    )


def save_model(path: str | os.PathLike[str], model: nn.Module, **extra: Any) -> None:
    """Writes ``model`` with its config so ``load_model(path)`` rebuilds it alone.

    Args:
        path: the file (its directory must exist); written atomically.
        model: a ``SparseMLP`` or ``MoE`` (sharded or not).
        **extra: plain data stored beside the weights (numbers, strings, lists, dicts, tensors).

    Raises:
        ValueError: unsupported model type.
    """
    name = _model_class_name(model)
    config = getattr(model, "config")  # noqa: B009 - both registered classes have one
    state = {key: value.detach().cpu() for key, value in full_state_dict(model).items()}
    payload = {
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "model_class": name,
        "config": config.to_dict(),
        "state_dict": state,
        "extra": dict(extra),
    }
    if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
        return
    with atomic_write(path, "wb") as file:
        torch.save(payload, file)


def read_model_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Reads and checks a model file (``weights_only=True``) without building the model.

    Returns:
        The payload dict (see the module docstring).

    Raises:
        CheckpointError: missing, unreadable, unsafe, or not a ptrain-moe model file (one line
            naming the file).
    """
    file_path = Path(path)
    if not file_path.is_file():
        raise CheckpointError(f"{file_path}: no such model file")
    try:
        payload = torch.load(file_path, map_location="cpu", weights_only=True)
    except Exception as error:  # corrupt, truncated, or holds non-plain objects
        detail = " ".join(str(error).split())[:200]
        raise CheckpointError(f"{file_path}: cannot read model file ({detail})") from error
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise CheckpointError(f"{file_path}: not a {MODEL_FORMAT} file")
    version = payload.get("format_version")
    if not isinstance(version, int) or version > MODEL_FORMAT_VERSION:
        raise CheckpointError(
            f"{file_path}: format_version {version!r} is newer than this ptrain-moe reads "
            f"({MODEL_FORMAT_VERSION})"
        )
    if payload.get("model_class") not in _MODEL_CLASSES:
        raise CheckpointError(
            f"{file_path}: unknown model_class {payload.get('model_class')!r}; expected one of "
            f"{sorted(_MODEL_CLASSES)}"
        )
    return payload


def load_model(path: str | os.PathLike[str]) -> nn.Module:
    """Rebuilds the model stored by ``save_model`` (unsharded, in eval mode).

    Args:
        path: the model file.

    Returns:
        The model with every expert (``isinstance(layer, ptrain.moe.MoE)`` finds its MoE layers).

    Raises:
        CheckpointError: the file cannot be read, its config is invalid, or its weights do not fit.
    """
    payload = read_model_file(path)
    cls, config_cls = _MODEL_CLASSES[payload["model_class"]]
    try:
        config = config_cls.from_dict(payload["config"])
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: invalid model config ({error})") from error
    model = cls(config)
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as error:
        detail = " ".join(str(error).split())[:200]
        raise CheckpointError(f"{path}: weights do not fit the stored config ({detail})") from error
    return model.eval()
