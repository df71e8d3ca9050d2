"""Model files for teachers and students: ``save_model`` / ``load_model``.

A file is one ``torch.save`` dict of plain data, read with ``weights_only=True``::

    {
        "format": "ones-distill-model", "format_version": 1,
        "model_class": "MixerClassifier",      # or VectorClassifier, SparseMLPClassifier,
                                               # SparseMLP, MoE (ptrain.moe classes)
        "config": {...},                       # the model config's to_dict()
        "dense_layers": {name: DenseFFN.spec()},  # MoE layers replaced ({} for a teacher)
        "state_dict": {...},
        "extra": {...},                        # e.g. how the student was gathered
    }

``load_model`` also reads ``ptrain.moe.save_model`` files (``"ptrain-moe-model"``), so any
Sparse-MLP or MoE checkpoint of ptrain-moe can be gathered. (ptrain-moe's own format only knows
its ``SparseMLP`` and ``MoE`` classes and has no slot for replaced layers, hence this format.)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ones_distill.gather import DenseFFN
from ones_distill.models import (
    MixerClassifier,
    MixerClassifierConfig,
    SparseMLPClassifier,
    SparseMLPClassifierConfig,
    VectorClassifier,
    VectorClassifierConfig,
)
from ptrain.core.checkpoint import CheckpointError, atomic_write
from ptrain.moe import MoE, MoEConfig, SparseMLP, SparseMLPConfig
from ptrain.moe import load_model as load_moe_model

__all__ = ["MODEL_FORMAT", "MODEL_FORMAT_VERSION", "load_model", "save_model"]

MODEL_FORMAT = "ones-distill-model"
MODEL_FORMAT_VERSION = 1

_CLASSES: dict[str, tuple[type[nn.Module], Any]] = {
    "VectorClassifier": (VectorClassifier, VectorClassifierConfig),
    "MixerClassifier": (MixerClassifier, MixerClassifierConfig),
    "SparseMLPClassifier": (SparseMLPClassifier, SparseMLPClassifierConfig),
    "SparseMLP": (SparseMLP, SparseMLPConfig),
    "MoE": (MoE, MoEConfig),
}


def _class_name(model: nn.Module) -> str:
    for name, (cls, _) in _CLASSES.items():
        if type(model) is cls:
            return name
    raise ValueError(
        f"save_model: cannot save a {type(model).__name__}; expected one of {sorted(_CLASSES)} "
        f"(or a student gathered from one)"
    )


def save_model(path: str | os.PathLike[str], model: nn.Module, **extra: Any) -> None:
    """Writes a teacher or a gathered student so ``load_model`` rebuilds it alone (atomically).

    Args:
        path: the file (its directory must exist).
        model: one of the registered classes, possibly with MoE layers replaced by ``DenseFFN``
            (a student from ``gather_model``).
        **extra: plain data stored beside the weights.

    Raises:
        ValueError: unsupported model class.
    """
    dense_layers = {
        name: module.spec()
        for name, module in model.named_modules()
        if isinstance(module, DenseFFN)
    }
    if isinstance(model, DenseFFN):  # a gathered lone MoE layer
        name, config = "DenseFFN", model.spec()
    else:
        name, config = _class_name(model), getattr(model, "config").to_dict()  # noqa: B009
    payload = {
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "model_class": name,
        "config": config,
        "dense_layers": {} if name == "DenseFFN" else dense_layers,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "extra": dict(extra),
    }
    with atomic_write(path, "wb") as file:
        torch.save(payload, file)


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def load_model(path: str | os.PathLike[str]) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuilds a model from an ``ones-distill`` or ``ptrain-moe`` model file (eval mode).

    Args:
        path: the file.

    Returns:
        ``(model, extra)``.

    Raises:
        CheckpointError: missing, unreadable, unsafe or not a model file; invalid config; weights
            that do not fit (one line naming the file).
    """
    file_path = Path(path)
    if not file_path.is_file():
        raise CheckpointError(f"{file_path}: no such model file")
    try:
        payload = torch.load(file_path, map_location="cpu", weights_only=True)
    except Exception as error:
        detail = " ".join(str(error).split())[:200]
        raise CheckpointError(f"{file_path}: cannot read model file ({detail})") from error
    if isinstance(payload, dict) and payload.get("format") == "ptrain-moe-model":
        return load_moe_model(file_path), dict(payload.get("extra") or {})
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise CheckpointError(
            f"{file_path}: not a model file (expected format {MODEL_FORMAT!r} or "
            f"'ptrain-moe-model')"
        )
    version = payload.get("format_version")
    if not isinstance(version, int) or version > MODEL_FORMAT_VERSION:
        raise CheckpointError(f"{file_path}: format_version {version!r} is newer than supported")
    name = payload.get("model_class")
    try:
        if name == "DenseFFN":
            model: nn.Module = DenseFFN(**payload["config"])
        elif name in _CLASSES:
            cls, config_cls = _CLASSES[name]
            model = cls(config_cls.from_dict(payload["config"]))
            for layer, spec in payload.get("dense_layers", {}).items():
                _replace(model, layer, DenseFFN(**spec))
        else:
            raise CheckpointError(
                f"{file_path}: unknown model_class {name!r}; expected one of {sorted(_CLASSES)}"
            )
    except (TypeError, ValueError, AttributeError) as error:
        if isinstance(error, CheckpointError):
            raise
        raise CheckpointError(f"{file_path}: invalid model config ({error})") from error
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as error:
        detail = " ".join(str(error).split())[:200]
        raise CheckpointError(
            f"{file_path}: weights do not fit the stored config ({detail})"
        ) from error
    return model.eval(), dict(payload.get("extra") or {})
