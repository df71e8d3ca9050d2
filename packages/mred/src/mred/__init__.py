"""MReD meta-review tools: loaders, sentence classifier, controllable summarisation, evaluation.

The light modules (``mred.data``, ``mred.rouge``, ``mred.extractive``, ``mred.metrics``) import
numpy/scipy only; ``mred.classify`` and ``mred.generate`` import torch, and transformers only
when a transformer model is built.
"""

from __future__ import annotations

import importlib.metadata

from mred.data import LABELS, read_generation_csv, read_labeled_sentences
from mred.metrics import classification_metrics, control_accuracy
from mred.rouge import corpus_rouge, rouge_scores

try:
    __version__ = importlib.metadata.version("mred")
except importlib.metadata.PackageNotFoundError:  # pragma: no cover - not installed
    __version__ = "unknown"

__all__ = [
    "LABELS",
    "__version__",
    "classification_metrics",
    "control_accuracy",
    "corpus_rouge",
    "read_generation_csv",
    "read_labeled_sentences",
    "rouge_scores",
]
