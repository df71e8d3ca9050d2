"""``parallelize(model, dims, plan)``: every parallelism applied from outside the model.

``dims`` is a :class:`~ptrain.core.dist.ParallelDims` (its mesh is built if needed); ``plan``
says how each degree is used::

    plan = ParallelPlan(tp="2d", sp="ring", dp="zero3")       # or the dict {"tp": "2d", ...}
    plan = {"tp": ["1d", "2d"]}                              # one TP mode per block
    plan = {"tp": {0: "1d", "default": "2d"}}                # per block, with a default

Order of application (torchtitan's ``parallelize_llama``): sequence parallel (``dims.cp``:
attention cores replaced by ring or Ulysses attention) → tensor parallel (``dims.tp``: each
block in its mode) → ZeRO-3 (``fully_shard`` over ``dp_shard_cp``) → materialisation of a
meta-device model (``to_empty`` + ``init_weights(seed)``: each rank creates only its shards,
never a full copy of the model) → DDP / ZeRO-1 gradient averaging over ``dp_cp``.

Which TP sizes fit a mode (``ValueError`` listing valid sizes otherwise): 1D any size; 2D a
square q²; 2.5D q²·d with ``depth`` = d; 3D a cube q³.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ptrain.core.data_parallel import DP_MODES, apply_data_parallel
from ptrain.core.dist import ParallelDims, default_device_type
from ptrain.core.tp.groups import check_tp_size, valid_tp_sizes

__all__ = [
    "SP_MODES",
    "TP_BACKENDS",
    "TP_MODES",
    "ParallelPlan",
    "check_tp_size",
    "loss_fn",
    "parallelize",
    "valid_tp_sizes",
]

TP_MODES: tuple[str, ...] = ("1d", "2d", "2.5d", "3d")
#: How 1D is built: ``"ptrain"`` (``ptrain.core.tp`` layers, plain local shards) or ``"torch"``
#: (torch's ``parallelize_module`` with Colwise/RowwiseParallel: DTensor parameters).
TP_BACKENDS: tuple[str, ...] = ("ptrain", "torch")
SP_MODES: tuple[str, ...] = ("ring", "ulysses")


@dataclass(kw_only=True)
class ParallelPlan:
    """How ``parallelize`` uses the degrees of a ``ParallelDims``.

    Attributes:
        tp: the tensor-parallel mode of every block (``"1d"``, ``"2d"``, ``"2.5d"``, ``"3d"``),
            a list with one mode per block, or a dict ``{block_index: mode}`` with an optional
            ``"default"`` key (default ``"1d"``). Ignored when ``dims.tp == 1``.
        depth: the 2.5D depth d (tp = q²·d).
        sp: ``"ring"`` or ``"ulysses"``: how attention runs over the ``cp`` ranks (required when
            ``dims.cp > 1``).
        dp: ``"ddp"``, ``"zero1"`` or ``"zero3"`` over the data-parallel dims.
        seed: the seed of ``init_weights`` when the model is materialised from the meta device.
        tp_backend: ``"ptrain"`` (default: ``ptrain.core.tp``'s layers, every mode) or
            ``"torch"`` (1D only, torch's ``parallelize_module``; parameters become DTensors).
    """

    tp: str | Sequence[str] | Mapping[Any, str] = "1d"
    depth: int = 1
    sp: str | None = None
    dp: str = "ddp"
    seed: int = 0
    tp_backend: str = "ptrain"
    _modes: list[str] = field(default_factory=list, init=False, repr=False)

    @classmethod
    def from_any(cls, plan: ParallelPlan | Mapping[str, Any] | None) -> ParallelPlan:
        """A plan from a ``ParallelPlan``, a dict of its fields, or None (all defaults)."""
        if plan is None:
            return cls()
        if isinstance(plan, ParallelPlan):
            return plan
        if isinstance(plan, Mapping):
            known = {"tp", "depth", "sp", "dp", "seed", "tp_backend"}
            unknown = sorted(set(plan) - known)
            if unknown:
                raise ValueError(f"unknown plan keys {unknown}; expected some of {sorted(known)}")
            return cls(**dict(plan))
        raise ValueError(f"plan must be a ParallelPlan, a dict or None, got {plan!r}")

    def block_modes(self, n_blocks: int) -> list[str]:
        """The TP mode of each of ``n_blocks`` blocks (validated)."""
        tp = self.tp
        if isinstance(tp, str):
            modes = [tp] * n_blocks
        elif isinstance(tp, Mapping):
            default = tp.get("default", "1d")
            bad = [
                k for k in tp if k != "default" and not (isinstance(k, int) and 0 <= k < n_blocks)
            ]
            if bad:
                raise ValueError(
                    f"plan tp has block indices {bad} outside 0..{n_blocks - 1} "
                    f"(the model has {n_blocks} blocks)"
                )
            modes = [tp.get(i, default) for i in range(n_blocks)]
        else:
            modes = list(tp)
            if len(modes) != n_blocks:
                raise ValueError(
                    f"plan tp lists {len(modes)} modes but the model has {n_blocks} blocks"
                )
        for index, mode in enumerate(modes):
            if mode not in TP_MODES:
                raise ValueError(
                    f"plan tp: block {index} has unknown mode {mode!r}; expected one of "
                    f"{', '.join(TP_MODES)}"
                )
        return modes

    def validate(self, dims: ParallelDims, n_blocks: int) -> list[str]:
        """Check the plan against ``dims``; returns the per-block TP modes."""
        if self.dp not in DP_MODES:
            raise ValueError(f"plan dp must be one of {', '.join(DP_MODES)}, got {self.dp!r}")
        if self.sp is not None and self.sp not in SP_MODES:
            raise ValueError(
                f"plan sp must be one of {', '.join(SP_MODES)} or None, got {self.sp!r}"
            )
        if dims.cp > 1 and self.sp is None:
            raise ValueError(
                f"dims.cp={dims.cp} splits sequences, so the plan must name sp='ring' or "
                "sp='ulysses'"
            )
        if self.tp_backend not in TP_BACKENDS:
            raise ValueError(
                f"plan tp_backend must be one of {', '.join(TP_BACKENDS)}, got {self.tp_backend!r}"
            )
        modes = self.block_modes(n_blocks)
        if self.depth != 1 and "2.5d" not in modes:
            raise ValueError(f"plan depth={self.depth} applies only to 2.5D blocks")
        if dims.tp > 1:
            for mode in sorted(set(modes)):
                check_tp_size(mode, dims.tp, self.depth if mode == "2.5d" else 1)
            if self.tp_backend == "torch" and set(modes) != {"1d"}:
                raise ValueError("plan tp_backend='torch' supports only 1D tensor parallelism")
        return modes


def _optional_module(name: str) -> Any:
    """``ptrain.core.<name>`` if it exists (built by another part of the package), else None."""
    try:
        return importlib.import_module(f"ptrain.core.{name}")
    except ModuleNotFoundError as error:
        if error.name is not None and error.name.startswith(f"ptrain.core.{name}"):
            return None
        raise


def _blocks(model: nn.Module) -> nn.ModuleList:
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.ModuleList):
        raise ValueError(
            f"parallelize needs a model with a 'blocks' ModuleList (like ptrain.core.models.gpt."
            f"GPT), got {type(model).__name__}"
        )
    return blocks


def _check_divisible(
    model: nn.Module, dims: ParallelDims, modes: list[str], plan: ParallelPlan
) -> None:
    config = getattr(model, "config", None)
    if config is None:
        return
    heads, dim = int(config.n_heads), int(config.dim)
    hidden = int(config.mlp_ratio) * dim
    if dims.tp > 1 and "1d" in modes:
        for name, value in (("n_heads", heads), ("mlp hidden (mlp_ratio*dim)", hidden)):
            if value % dims.tp:
                raise ValueError(
                    f"1D tensor parallel: {name}={value} is not divisible by tp={dims.tp}"
                )
    if dims.cp > 1 and plan.sp == "ulysses":
        local_heads = heads // dims.tp if "1d" in modes and dims.tp > 1 else heads
        if local_heads % dims.cp:
            raise ValueError(
                f"Ulysses attention: heads per rank ({local_heads}) not divisible by cp={dims.cp}"
            )
    if dims.cp > 1 and config.seq_len % dims.cp:
        raise ValueError(
            f"sequence parallel: seq_len={config.seq_len} is not divisible by cp={dims.cp}"
        )


def _apply_sequence_parallel(blocks: nn.ModuleList, dims: ParallelDims, mode: str) -> None:
    sp = _optional_module("sp")
    if sp is None:
        raise NotImplementedError("sequence parallelism needs ptrain.core.sp (not installed yet)")
    group = dims.get_group("cp")
    factory = sp.RingAttention if mode == "ring" else sp.UlyssesAttention
    for block in blocks:
        block.attn.core = factory(group)  # type: ignore[union-attr]


def _apply_tp_1d_torch(blocks: nn.ModuleList, dims: ParallelDims, indices: list[int]) -> None:
    """1D (Megatron) tensor parallelism with torch's parallelize_module styles (DTensor params;
    embeddings, norms and head stay replicated)."""
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        RowwiseParallel,
        parallelize_module,
    )

    mesh = dims.get_mesh("tp")
    for index in indices:
        parallelize_module(
            blocks[index],
            mesh,
            {
                "attn.q": ColwiseParallel(),
                "attn.k": ColwiseParallel(),
                "attn.v": ColwiseParallel(),
                "attn.proj": RowwiseParallel(),
                "mlp.fc1": ColwiseParallel(),
                "mlp.fc2": RowwiseParallel(),
            },
        )


def _apply_tensor_parallel(
    model: nn.Module, blocks: nn.ModuleList, dims: ParallelDims, modes: list[str], depth: int
) -> None:
    """``ptrain.core.tp``: one mode → the whole GPT (vocab-parallel embeddings and head);
    a mode per block → each block in its mode between replicated activations."""
    from ptrain.core.tp import apply_tp, build_tp_groups, enter_layout, exit_layout

    mesh = dims.get_mesh("tp")
    if len(set(modes)) == 1:
        mode = modes[0]
        groups = build_tp_groups(mode, mesh, depth if mode == "2.5d" else 1)
        apply_tp(model, mode, groups)
        setattr(model, "tp_groups", groups)  # read by loss_fn  # noqa: B010
        return
    for block, mode in zip(blocks, modes, strict=True):
        groups = build_tp_groups(mode, mesh, depth if mode == "2.5d" else 1)
        apply_tp(block, mode, groups)

        def enter(
            _: nn.Module, args: tuple[Any, ...], mode: str = mode, groups: Any = groups
        ) -> Any:
            return (enter_layout(args[0], mode, groups), *args[1:])

        def leave(
            _: nn.Module, args: tuple[Any, ...], out: Any, mode: str = mode, groups: Any = groups
        ) -> Any:
            return exit_layout(out, mode, groups)

        # hooks, not a wrapper module: the parameter names stay the serial ones (checkpoints)
        block.register_forward_pre_hook(enter)
        block.register_forward_hook(leave)


def loss_fn(model: nn.Module) -> Any:
    """``loss(logits, targets)`` for a model returned by :func:`parallelize`.

    A GPT converted whole by ``ptrain.core.tp`` returns logits in its head's layout (vocab
    and batch split over tp sub-groups): the loss is ``tp.tp_cross_entropy``; otherwise the
    serial ``gpt_loss``. Both give the mean token loss of the rank's full (tp-replicated) batch.
    """
    from ptrain.core.data_parallel import unwrap
    from ptrain.core.models.gpt import gpt_loss

    groups = getattr(unwrap(model), "tp_groups", None)
    if groups is None:
        return gpt_loss
    from ptrain.core.tp import tp_cross_entropy

    return lambda logits, targets: tp_cross_entropy(logits, targets, groups)


def parallelize(
    model: nn.Module,
    dims: ParallelDims,
    plan: ParallelPlan | Mapping[str, Any] | None = None,
    *,
    device: torch.device | str | None = None,
) -> nn.Module:
    """Apply sequence, tensor and data parallelism to ``model`` as ``plan`` says.

    Args:
        model: a ``GPT`` (or any model with a ``blocks`` ModuleList of GPT-style blocks), on the
            meta device (recommended: no rank ever holds the full model) or materialised
            (identical on every rank).
        dims: the layout; the mesh is built if ``dims.build_mesh()`` has not run.
        plan: a :class:`ParallelPlan`, a dict of its fields, or None (1D TP, DDP).
        device: where a meta-device model is materialised (default: cuda if available, else cpu).

    Returns:
        The parallel model (a ``DistributedDataParallel`` wrapper for ddp/zero1 with plain
        parameters; use ``data_parallel.unwrap`` to reach the GPT).

    Raises:
        ValueError: the plan does not fit ``dims`` (e.g. tp=8 with 2D: valid sizes listed) or the
            model's sizes are not divisible by the degrees (names the dims).
    """
    plan = ParallelPlan.from_any(plan)
    blocks = _blocks(model)
    modes = plan.validate(dims, len(blocks))
    _check_divisible(model, dims, modes, plan)
    if not dist.is_initialized():
        raise RuntimeError("parallelize needs a process group: call init_distributed() first")
    if dims.pp > 1:
        raise NotImplementedError(
            "parallelize with pp > 1: split the model with ptrain.core.pipeline first"
        )
    try:
        dims.world_mesh  # noqa: B018 - raises when the mesh is missing
    except RuntimeError:
        dims.build_mesh(device_type=torch.device(device).type if device else None)
    if dims.cp > 1 and plan.sp is not None:
        _apply_sequence_parallel(blocks, dims, plan.sp)
    if dims.tp > 1 and plan.tp_backend == "torch":
        _apply_tp_1d_torch(blocks, dims, list(range(len(blocks))))
    elif dims.tp > 1:
        _apply_tensor_parallel(model, blocks, dims, modes, plan.depth)
    sharded = dims.size("dp_cp") > 1 and plan.dp == "zero3"
    # ptrain.core.tp shards carry their serial shape for init_weights; fully_shard replaces the
    # parameters (losing that), so those are materialised first (each rank: its tp shards only).
    if sharded and dims.tp > 1 and plan.tp_backend == "ptrain":
        _materialise(model, device, plan.seed)
    if sharded:
        model = apply_data_parallel(model, dims, "zero3")
    _materialise(model, device, plan.seed)
    if not sharded:
        model = apply_data_parallel(model, dims, plan.dp)
    return model


_SHARD_TAGS = ("full_shape", "shard_from_full")


def _materialise(model: nn.Module, device: torch.device | str | None, seed: int) -> None:
    """``to_empty`` + ``init_weights(seed)`` for a model still on the meta device."""
    if not any(param.is_meta for param in model.parameters()):
        return
    target = torch.device(device) if device is not None else torch.device(default_device_type())
    # to_empty may replace meta parameters by new objects: keep the shard tags of tp layers
    # (full_shape, shard_from_full) that init_weights needs to give each shard serial values.
    tags = {
        name: {key: getattr(param, key) for key in _SHARD_TAGS if hasattr(param, key)}
        for name, param in model.named_parameters()
    }
    model.to_empty(device=target)
    for name, param in model.named_parameters():
        for key, value in tags.get(name, {}).items():
            setattr(param, key, value)
    init = getattr(model, "init_weights", None)
    if init is None:
        raise ValueError(f"{type(model).__name__} is on the meta device but has no init_weights")
    init(seed=seed)
