"""ptrain.moe: Mixture-of-Experts layers with expert parallelism, and Sparse-MLP with MoCo v3.

The layer: ``MoE(MoEConfig(dim=..., expert_hidden=..., num_experts=..., top_k=2))`` returns
``(y, aux)``. Expert parallelism: ``ptrain.moe.parallel``. Sparse-MLP and the dense Mixer:
``ptrain.moe.mixer``. Checkpoints that rebuild a model alone: ``save_model`` / ``load_model``.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from ptrain.moe.checkpoint import load_model, save_model
from ptrain.moe.layer import AUX_LOSSES, MoE, MoEConfig, Routing, expert_capacity, route
from ptrain.moe.mixer import (
    SparseMLP,
    SparseMLPConfig,
    active_macs,
    dense_mixer_config,
    sparse_mlp_config,
)
from ptrain.moe.parallel import (
    apply_expert_parallel,
    full_state_dict,
    sync_gradients,
)

try:
    __version__ = version("ptrain-moe")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "AUX_LOSSES",
    "MoE",
    "MoEConfig",
    "Routing",
    "SparseMLP",
    "SparseMLPConfig",
    "__version__",
    "active_macs",
    "apply_expert_parallel",
    "dense_mixer_config",
    "expert_capacity",
    "full_state_dict",
    "load_model",
    "route",
    "save_model",
    "sparse_mlp_config",
    "sync_gradients",
]
