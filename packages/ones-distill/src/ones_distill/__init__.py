"""ones_distill: OneS knowledge integration — gather a trained MoE into a dense student, distil.

``gather_model(teacher, GatherConfig(method="svd", rank=R))`` returns a copy of any model built
from ``ptrain.moe.MoE`` layers with every MoE replaced by one dense FFN (``DenseFFN``);
``fit(student, x, y, FitConfig(...), teacher=teacher)`` distils it; ``moe_benefit`` reports the
fraction of the MoE's benefit the student keeps.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from ones_distill.distill import FitConfig, FitResult, fit, kd_loss
from ones_distill.gather import (
    METHODS,
    DenseFFN,
    GatherConfig,
    GatherError,
    default_rank,
    find_moe_layers,
    gather_layer,
    gather_model,
    gather_weights,
    low_rank_approximation,
    parameter_count,
)
from ones_distill.metrics import BenefitWarning, accuracy, mean_kl, moe_benefit
from ones_distill.modelfile import load_model, save_model
from ones_distill.models import (
    MixerClassifier,
    MixerClassifierConfig,
    SparseMLPClassifier,
    SparseMLPClassifierConfig,
    VectorClassifier,
    VectorClassifierConfig,
)

try:
    __version__ = version("ones-distill")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "METHODS",
    "BenefitWarning",
    "DenseFFN",
    "FitConfig",
    "FitResult",
    "GatherConfig",
    "GatherError",
    "MixerClassifier",
    "MixerClassifierConfig",
    "SparseMLPClassifier",
    "SparseMLPClassifierConfig",
    "VectorClassifier",
    "VectorClassifierConfig",
    "__version__",
    "accuracy",
    "default_rank",
    "find_moe_layers",
    "fit",
    "gather_layer",
    "gather_model",
    "gather_weights",
    "kd_loss",
    "load_model",
    "low_rank_approximation",
    "mean_kl",
    "moe_benefit",
    "parameter_count",
    "save_model",
]
