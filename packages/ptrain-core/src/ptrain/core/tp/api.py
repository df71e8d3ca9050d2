"""Convert a model to a tensor-parallel mode, move activations between layouts, gather weights.

``apply_tp(model, mode, groups)`` replaces, in place, the layers of a ``ptrain.core.models.gpt``
``GPT`` (or of one ``Block``, ``Attention`` or ``MLP``) by the mode's sharded layers. Weights
are copied shard by shard from the module when it holds real values; on a meta-device model the
shards are created empty (then ``GPT.init_weights(seed)`` or ``load_full_state_dict``).

=======  =====================  ============================  ================================
mode     q, k, v, fc1 (, head)  proj, fc2                     ln1, ln2, norm
=======  =====================  ============================  ================================
1d       ColumnParallelLinear   RowParallelLinear             LayerNormTP (replicated)
2d/2.5d  Linear2D               Linear2D                      LayerNormTP (hidden over tp_col)
3d       Linear3D("ab")         Linear3D("ba")                LayerNormTP (layout a)
=======  =====================  ============================  ================================
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from ptrain.core.tp._ops import gather, reduce_from, split, vocab_ce
from ptrain.core.tp.groups import Group, TPGroups
from ptrain.core.tp.layers import (
    ColumnParallelLinear,
    LayerNormTP,
    Linear2D,
    Linear3D,
    PositionEmbedding,
    RowParallelLinear,
    TPModule,
    VocabEmbedding,
    batch_groups,
    hidden_group,
)

__all__ = [
    "LayoutWrapper",
    "apply_tp",
    "dtensor_state_dict",
    "enter_layout",
    "exit_layout",
    "full_state_dict",
    "load_dtensor_state_dict",
    "load_full_state_dict",
    "local_batch",
    "param_shard_bytes",
    "tp_cross_entropy",
    "vocab_parallel_cross_entropy",
]


# --------------------------------------------------------------------------- layouts
def _check_groups(mode: str, groups: TPGroups) -> None:
    if groups.mode != mode:
        raise ValueError(f"groups were built for {groups.mode}, not {mode}")


def enter_layout(x: torch.Tensor, mode: str, groups: TPGroups, layout: str = "a") -> torch.Tensor:
    """Replicated full activation ``[b, ..., h]`` → this rank's piece in the mode's layout.

    The backward all-gathers the grad, so the replicated input gets the full grad on every rank.
    """
    _check_groups(mode, groups)
    for group in batch_groups(groups, layout):
        if x.shape[0] % group.size:
            raise ValueError(
                f"{mode} layout: batch {x.shape[0]} is not divisible by the split over "
                f"{[g.label for g in batch_groups(groups, layout)]}"
            )
        x = split(x, 0, group)
    return split(x, -1, hidden_group(groups, layout))


def exit_layout(y: torch.Tensor, mode: str, groups: TPGroups, layout: str = "a") -> torch.Tensor:
    """This rank's piece in the mode's layout → the replicated full activation (inverse of
    ``enter_layout``); the backward keeps this rank's piece of the (replicated) grad."""
    _check_groups(mode, groups)
    y = gather(y, -1, hidden_group(groups, layout))
    for group in reversed(batch_groups(groups, layout)):
        y = gather(y, 0, group)
    return y


def local_batch(t: torch.Tensor, groups: TPGroups, layout: str = "a") -> torch.Tensor:
    """This rank's batch chunk of a replicated ``[b, ...]`` tensor (no grad; e.g. targets)."""
    for group in batch_groups(groups, layout):
        if t.shape[0] % group.size:
            raise ValueError(
                f"{groups.mode} layout: batch {t.shape[0]} is not divisible by {group.label} "
                f"size {group.size}"
            )
        t = t.chunk(group.size, 0)[group.rank]
    return t


class LayoutWrapper(nn.Module):
    """Run ``module`` (converted with ``apply_tp``) on replicated full activations:
    ``exit_layout(module(enter_layout(x)))`` — lets blocks of different modes follow each other."""

    def __init__(self, module: nn.Module, mode: str, groups: TPGroups) -> None:
        super().__init__()
        self.module = module
        self.mode = mode
        self.groups = groups

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        y = self.module(enter_layout(x, self.mode, self.groups), *args, **kwargs)
        return exit_layout(y, self.mode, self.groups)


# --------------------------------------------------------------------------- conversion
def _target_device(param: torch.Tensor | None, device: Any) -> Any:
    if device is not None:
        return device
    if param is None or param.device.type == "meta":
        from ptrain.core.dist import default_device_type

        return default_device_type() if param is None else "meta"
    return param.device


def _copy_in(new: TPModule, old: nn.Module) -> None:
    for name in new.tp_specs:
        source = getattr(old, name, None)
        if isinstance(source, torch.Tensor) and source.device.type != "meta":
            new.load_full_(name, source.detach())


def _linear(old: nn.Linear, groups: TPGroups, role: str, device: Any) -> nn.Linear:
    kwargs: dict[str, Any] = {
        "bias": old.bias is not None,
        "groups": groups,
        "device": _target_device(old.weight, device),
        "dtype": old.weight.dtype,
    }
    new: nn.Linear
    if groups.mode == "1d":
        cls = ColumnParallelLinear if role == "in" else RowParallelLinear
        new = cls(old.in_features, old.out_features, **kwargs)
    elif groups.mode in ("2d", "2.5d"):
        new = Linear2D(old.in_features, old.out_features, **kwargs)
    else:
        kind = "ab" if role == "in" else "ba"
        new = Linear3D(old.in_features, old.out_features, kind=kind, **kwargs)
    _copy_in(new, old)
    return new


def _layer_norm(old: nn.LayerNorm, groups: TPGroups, device: Any) -> LayerNormTP:
    if old.weight is None:
        raise ValueError("apply_tp: LayerNorm without elementwise affine is not supported")
    new = LayerNormTP(
        old.normalized_shape[0],
        eps=old.eps,
        bias=old.bias is not None,
        groups=groups,
        layout="a",
        device=_target_device(old.weight, device),
        dtype=old.weight.dtype,
    )
    _copy_in(new, old)
    return new


def _heads_split(groups: TPGroups) -> int:
    return groups.size if groups.mode == "1d" else groups.q


def _convert_attention(attn: Any, groups: TPGroups, device: Any) -> None:
    head_dim = attn.head_dim
    heads = attn.q.out_features // head_dim
    split_count = _heads_split(groups)
    if heads % split_count:
        raise ValueError(
            f"{groups.mode} tensor parallel: n_heads ({heads}) is not divisible by the hidden "
            f"split ({split_count}); heads are split across the "
            f"{'tp' if groups.mode == '1d' else 'column'} dim"
        )
    for name in ("q", "k", "v"):
        setattr(attn, name, _linear(getattr(attn, name), groups, "in", device))
    attn.proj = _linear(attn.proj, groups, "out", device)


def _convert_mlp(mlp: Any, groups: TPGroups, device: Any) -> None:
    mlp.fc1 = _linear(mlp.fc1, groups, "in", device)
    mlp.fc2 = _linear(mlp.fc2, groups, "out", device)


def _convert_block(block: Any, groups: TPGroups, device: Any) -> None:
    block.ln1 = _layer_norm(block.ln1, groups, device)
    _convert_attention(block.attn, groups, device)
    block.ln2 = _layer_norm(block.ln2, groups, device)
    _convert_mlp(block.mlp, groups, device)


def apply_tp(module: nn.Module, mode: str, groups: TPGroups, *, device: Any = None) -> nn.Module:
    """Convert ``module`` in place to tensor-parallel mode ``mode``; returns it.

    Args:
        module: a ``GPT`` (embeddings, every block, final norm and head), a ``Block``, an
            ``Attention`` or an ``MLP`` of ``ptrain.core.models.gpt``.
        mode: ``"1d"``, ``"2d"``, ``"2.5d"`` or ``"3d"``.
        groups: from ``build_tp_groups(mode, mesh["tp"], depth)``.
        device: where to create the shards (default: the module's device; ``"meta"`` stays meta).

    A converted ``Block``/``Attention``/``MLP`` takes and returns activations in the mode's
    layout (``enter_layout``/``exit_layout``, or wrap it in ``LayoutWrapper``). A converted
    ``GPT`` takes the full ``[b, s]`` tokens (the same on every tp rank) and returns the
    logits in the head's layout: use ``tp_cross_entropy(logits, targets, groups)`` for the loss.

    Raises:
        ValueError: a size the mode cannot split (the message names the dim and the divisor).
    """
    from ptrain.core.models.gpt import GPT, MLP, Attention, Block

    _check_groups(mode, groups)
    if isinstance(module, GPT):
        config = module.config
        split_count = _heads_split(groups)
        if config.n_heads % split_count:
            raise ValueError(
                f"{mode} tensor parallel: n_heads ({config.n_heads}) is not divisible by the "
                f"hidden split ({split_count})"
            )
        embeddings: tuple[tuple[str, type[VocabEmbedding | PositionEmbedding]], ...] = (
            ("tok_emb", VocabEmbedding),
            ("pos_emb", PositionEmbedding),
        )
        for name, kind in embeddings:
            old = getattr(module, name)
            new = kind(
                old.num_embeddings,
                old.embedding_dim,
                groups=groups,
                device=_target_device(old.weight, device),
                dtype=old.weight.dtype,
            )
            setattr(module, name, new)
            _copy_in(new, old)
        for block in module.blocks:
            _convert_block(block, groups, device)
        module.norm = _layer_norm(module.norm, groups, device)
        module.head = _linear(module.head, groups, "in", device)
    elif isinstance(module, Block):
        _convert_block(module, groups, device)
    elif isinstance(module, Attention):
        _convert_attention(module, groups, device)
    elif isinstance(module, MLP):
        _convert_mlp(module, groups, device)
    else:
        raise TypeError(
            f"apply_tp converts a GPT, Block, Attention or MLP, got {type(module).__name__}"
        )
    module.tp_mode = mode  # type: ignore[assignment]
    return module


# --------------------------------------------------------------------------- loss
def vocab_parallel_cross_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    group: Group | None,
    vocab_start: int | None = None,
) -> torch.Tensor:
    """Per-token cross-entropy when the vocab dim of ``logits`` is split over ``group``.

    Args:
        logits: ``[..., V/p]``, this rank's vocab slice.
        targets: ``[...]`` global token ids.
        group: the group the vocab is split over (``None``: not split).
        vocab_start: first vocab id of the slice (default ``rank · V/p``).

    Returns:
        ``[...]`` losses, equal on every rank of ``group``. The backward is local.
    """
    if vocab_start is None:
        vocab_start = 0 if group is None else group.rank * logits.shape[-1]
    flat = vocab_ce(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), vocab_start, group)
    return flat.reshape(targets.shape)


def tp_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, groups: TPGroups) -> torch.Tensor:
    """Mean next-token loss of a GPT converted by ``apply_tp`` (same as ``gpt_loss`` serially).

    Args:
        logits: what the converted GPT returned (the head's layout).
        targets: the full ``[b, s]`` targets, the same on every tp rank.
        groups: the model's ``TPGroups``.

    Returns:
        The mean loss (a scalar, the same on every tp rank).
    """
    layout = "b" if groups.mode == "3d" else "a"
    local_targets = local_batch(targets, groups, layout)
    if groups.mode == "1d":
        vocab_group: Group | None = groups.tp if groups.size > 1 else None
    else:
        vocab_group = hidden_group(groups, layout)
    losses = vocab_parallel_cross_entropy(logits, local_targets, vocab_group)
    total = losses.sum()
    for group in batch_groups(groups, layout):
        total = reduce_from(total, group)
    return total / targets.numel()


# --------------------------------------------------------------------------- state dicts
def _tp_params(model: nn.Module) -> dict[str, tuple[torch.Tensor, TPModule | None, str]]:
    out: dict[str, tuple[torch.Tensor, TPModule | None, str]] = {}
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            full_name = f"{module_name}.{name}" if module_name else name
            owner = module if isinstance(module, TPModule) and name in module.tp_specs else None
            out[full_name] = (param, owner, name)
    return out


def _to_dtensor(param: torch.Tensor, owner: TPModule, name: str) -> DTensor:
    spec = owner.tp_specs[name]
    shape = torch.Size(spec.global_shape)
    stride = torch.empty(shape, device="meta").stride()
    return DTensor.from_local(
        param.detach(),
        owner.groups.mesh,
        list(spec.placements),
        run_check=False,
        shape=shape,
        stride=stride,
    )


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded weights under the serial names and shapes (collective; every rank gets
    them). Parameters that are not tensor-parallel are returned as they are."""
    out: dict[str, torch.Tensor] = {}
    for full_name, (param, owner, name) in _tp_params(model).items():
        if owner is None:
            out[full_name] = param.detach().clone()
        else:
            out[full_name] = _to_dtensor(param, owner, name).full_tensor()
    return out


@torch.no_grad()
def load_full_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Load unsharded weights (serial names and shapes): each rank copies its shard."""
    params = _tp_params(model)
    missing = sorted(set(params) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(params))
    if missing or unexpected:
        raise KeyError(f"state dict mismatch: missing {missing}, unexpected {unexpected}")
    for full_name, (param, owner, name) in params.items():
        value = state_dict[full_name]
        if isinstance(value, DTensor):
            value = value.full_tensor()
        if owner is None:
            param.copy_(value)
        else:
            owner.load_full_(name, value)


def dtensor_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Serial names → ``DTensor`` (serial global shape, placements on ``groups.mesh``) sharing
    storage with the shards; parameters that are not tensor-parallel stay plain tensors.
    ``torch.distributed.checkpoint`` can save it and load it into another layout."""
    out: dict[str, torch.Tensor] = {}
    for full_name, (param, owner, name) in _tp_params(model).items():
        out[full_name] = param.detach() if owner is None else _to_dtensor(param, owner, name)
    return out


@torch.no_grad()
def load_dtensor_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Load a state dict of ``DTensor``s (any placements) or full tensors into the shards."""
    params = _tp_params(model)
    for full_name, (param, owner, name) in params.items():
        if full_name not in state_dict:
            raise KeyError(f"state dict has no entry {full_name!r}")
        value = state_dict[full_name]
        if isinstance(value, DTensor):
            if (
                owner is not None
                and value.device_mesh == owner.groups.mesh
                and tuple(value.placements) == owner.tp_specs[name].placements
            ):
                param.copy_(value.to_local())
                continue
            value = value.full_tensor()
        if owner is None:
            param.copy_(value)
        else:
            owner.load_full_(name, value)


def param_shard_bytes(model: nn.Module) -> dict[str, tuple[int, int]]:
    """Serial name → (bytes held on this rank, bytes of the full parameter)."""
    out: dict[str, tuple[int, int]] = {}
    for full_name, (param, owner, name) in _tp_params(model).items():
        local = param.numel() * param.element_size()
        if owner is None:
            out[full_name] = (local, local)
        else:
            full = 1
            for n in owner.tp_specs[name].global_shape:
                full *= n
            out[full_name] = (local, full * param.element_size())
    return out
