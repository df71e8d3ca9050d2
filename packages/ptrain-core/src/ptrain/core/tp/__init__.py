"""1D / 2D / 2.5D / 3D tensor parallelism, torch-native (DeviceMesh groups, DTensor placements).

Example (on every rank)::

    from ptrain.core.tp import apply_tp, build_tp_groups, tp_cross_entropy
    groups = build_tp_groups("2d", dims.get_mesh("tp"))          # tp = q² ranks
    model = apply_tp(GPT(config, device="meta"), "2d", groups)    # shards only
    model.init_weights(seed=0)                                    # same values as serial
    loss = tp_cross_entropy(model(tokens), targets, groups)       # tokens/targets: full batch

Modules: ``groups`` (mode meshes and size checks), ``layers`` (the sharded layers), ``api``
(``apply_tp``, layouts, loss, state dicts), ``bench`` (the communication benchmark and the
closed-form byte counts).
"""

from ptrain.core.tp.api import (
    LayoutWrapper,
    apply_tp,
    dtensor_state_dict,
    enter_layout,
    exit_layout,
    full_state_dict,
    load_dtensor_state_dict,
    load_full_state_dict,
    local_batch,
    param_shard_bytes,
    tp_cross_entropy,
    vocab_parallel_cross_entropy,
)
from ptrain.core.tp.groups import (
    TP_MODES,
    TPGroups,
    TPMode,
    build_tp_groups,
    check_tp_size,
    valid_tp_sizes,
)
from ptrain.core.tp.layers import (
    ColumnParallelLinear,
    LayerNormTP,
    Linear2D,
    Linear3D,
    PositionEmbedding,
    RowParallelLinear,
    VocabEmbedding,
)

__all__ = [
    "TP_MODES",
    "ColumnParallelLinear",
    "LayerNormTP",
    "LayoutWrapper",
    "Linear2D",
    "Linear3D",
    "PositionEmbedding",
    "RowParallelLinear",
    "TPGroups",
    "TPMode",
    "VocabEmbedding",
    "apply_tp",
    "build_tp_groups",
    "check_tp_size",
    "dtensor_state_dict",
    "enter_layout",
    "exit_layout",
    "full_state_dict",
    "load_dtensor_state_dict",
    "load_full_state_dict",
    "local_batch",
    "param_shard_bytes",
    "tp_cross_entropy",
    "valid_tp_sizes",
    "vocab_parallel_cross_entropy",
]
