"""PatrickStar-style chunk-based heterogeneous memory management for training.

Example:
    >>> from ptrain.hetmem import AdamConfig, HetMemConfig, initialize
    >>> # engine = initialize(model, optimizer=AdamConfig(lr=1e-3),
    >>> #                     config=HetMemConfig(device_budget="64MiB", policy="opt"))
"""

from importlib.metadata import PackageNotFoundError, version

from ptrain.hetmem.chunks import ChunkType, build_layout, module_param_lists, search_chunk_size
from ptrain.hetmem.config import AdamConfig, HetMemConfig, TierSpec, parse_bytes
from ptrain.hetmem.engine import HetMemEngine, NotSupportedError, initialize
from ptrain.hetmem.states import (
    LEGAL_TRANSITIONS,
    ChunkState,
    IllegalTransitionError,
    TensorState,
)
from ptrain.hetmem.tiers import BudgetExceeded

try:
    __version__ = version("ptrain-hetmem")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "LEGAL_TRANSITIONS",
    "AdamConfig",
    "BudgetExceeded",
    "ChunkState",
    "ChunkType",
    "HetMemConfig",
    "HetMemEngine",
    "IllegalTransitionError",
    "NotSupportedError",
    "TensorState",
    "TierSpec",
    "build_layout",
    "initialize",
    "module_param_lists",
    "parse_bytes",
    "search_chunk_size",
]
