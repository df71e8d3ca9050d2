"""Large-batch optimisers (LAMB, LARS), warm-up schedules and batch-size scaling rules.

Both optimisers compute a *trust ratio* per parameter tensor ("layer") and are vectorised with
``torch._foreach_*`` ops: the only Python loops build lists of tensors. When the tensors of a param
group are shards of larger logical parameters (tensor or fully sharded data parallelism), pass the
shard process group as ``group=``: the squared norms behind the trust ratios are then summed over
that group with one ``all_reduce`` per param group and step, so the sharded optimiser takes exactly
the step the unsharded one would (design reference §2.7). Computing trust ratios from local shard
norms silently changes the algorithm.

Exclusions (design reference §2.7): with ``exclude_1d=True`` (the default) every tensor with
``ndim <= 1`` — biases, LayerNorm/BatchNorm gains — gets no weight decay and a trust ratio of 1.
Name-based exclusions, the TF-style ``exclude_from_weight_decay`` list, are built with
:func:`param_groups_no_decay`. A param group may override ``weight_decay``, ``trust_clip``,
``exclude_1d``, ``layer_adaptation`` (``False`` ⇒ trust ratio 1 for the whole group) and
``group``.

Recipes (design reference §2.8): :func:`scale_lr` (linear rule, Goyal et al. 2017; square-root
rule, You et al. 2020) and the warm-up schedules :func:`warmup_polynomial_schedule` and
:func:`warmup_cosine_schedule`.

Example::

    groups = param_groups_no_decay(model, weight_decay=0.01)
    optimizer = LAMB(groups, lr=scale_lr(1e-3, 256, 8192, rule="sqrt"))
    schedule = warmup_polynomial_schedule(optimizer, warmup_steps=500, total_steps=10_000)
    for batch in loader:
        loss = model(batch).mean()
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.distributed as dist
from torch import Tensor
from torch.optim.lr_scheduler import LambdaLR
from torch.optim.optimizer import ParamsT

__all__ = [
    "LAMB",
    "LARS",
    "param_groups_no_decay",
    "scale_lr",
    "warmup_cosine_schedule",
    "warmup_polynomial_schedule",
]

# ---------------------------------------------------------------------------------------------
# Hyperparameter validation
# ---------------------------------------------------------------------------------------------


def _where(context: str) -> str:
    return f" ({context})" if context else ""


def _check_number(
    owner: str,
    name: str,
    value: Any,
    context: str,
    *,
    low: float,
    high: float = math.inf,
    low_inclusive: bool = True,
    high_inclusive: bool = False,
) -> None:
    """Raise ValueError unless ``value`` is a real number in the given interval."""
    bad = isinstance(value, bool) or not isinstance(value, int | float)
    if not bad:
        number = float(value)
        bad = math.isnan(number)
        bad = bad or (number < low if low_inclusive else number <= low)
        bad = bad or (number > high if high_inclusive else number >= high)
    if bad:
        left = "[" if low_inclusive else "("
        right = "]" if high_inclusive else ")"
        raise ValueError(
            f"{owner}: {name} must be a number in {left}{low:g}, {high:g}{right}, "
            f"got {value!r}{_where(context)}"
        )


def _check_bool(owner: str, name: str, value: Any, context: str) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{owner}: {name} must be True or False, got {value!r}{_where(context)}")


def _check_trust_clip(owner: str, value: Any, context: str) -> None:
    if value is None:
        return
    valid = isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2
    if valid:
        low, high = value
        valid = all(isinstance(x, int | float) and not isinstance(x, bool) for x in value)
        valid = valid and math.isfinite(low) and low >= 0 and not math.isnan(high) and high >= low
    if not valid:
        raise ValueError(
            f"{owner}: trust_clip must be None or a pair (low, high) with 0 <= low <= high and "
            f"low finite, got {value!r}{_where(context)}"
        )


def _check_process_group(owner: str, value: Any, context: str) -> None:
    if value is None:
        return
    if not (dist.is_available() and isinstance(value, dist.ProcessGroup)):
        raise ValueError(
            f"{owner}: group must be None or a torch.distributed ProcessGroup, "
            f"got {value!r}{_where(context)}"
        )


def _validate_lamb(hparams: dict[str, Any], context: str = "") -> None:
    _check_number("LAMB", "lr", hparams["lr"], context, low=0.0)
    betas = hparams["betas"]
    if not (isinstance(betas, Sequence) and len(betas) == 2):
        raise ValueError(
            f"LAMB: betas must be a pair (beta1, beta2), got {betas!r}{_where(context)}"
        )
    _check_number("LAMB", "betas[0]", betas[0], context, low=0.0, high=1.0)
    _check_number("LAMB", "betas[1]", betas[1], context, low=0.0, high=1.0)
    _check_number("LAMB", "eps", hparams["eps"], context, low=0.0)
    _check_number("LAMB", "weight_decay", hparams["weight_decay"], context, low=0.0)
    _check_trust_clip("LAMB", hparams["trust_clip"], context)
    for flag in ("bias_correction", "exclude_1d", "adam", "layer_adaptation"):
        _check_bool("LAMB", flag, hparams[flag], context)
    _check_process_group("LAMB", hparams["group"], context)


def _validate_lars(hparams: dict[str, Any], context: str = "") -> None:
    _check_number("LARS", "lr", hparams["lr"], context, low=0.0)
    _check_number("LARS", "momentum", hparams["momentum"], context, low=0.0, high=1.0)
    _check_number("LARS", "weight_decay", hparams["weight_decay"], context, low=0.0)
    _check_number(
        "LARS", "trust_coefficient", hparams["trust_coefficient"], context, low=0.0,
        low_inclusive=False,
    )  # fmt: skip
    _check_number("LARS", "eps", hparams["eps"], context, low=0.0)
    _check_trust_clip("LARS", hparams["trust_clip"], context)
    for flag in ("exclude_1d", "nesterov", "layer_adaptation"):
        _check_bool("LARS", flag, hparams[flag], context)
    if hparams["nesterov"] and hparams["momentum"] == 0:
        raise ValueError(f"LARS: nesterov=True needs momentum > 0, got 0{_where(context)}")
    _check_process_group("LARS", hparams["group"], context)


# ---------------------------------------------------------------------------------------------
# Shared machinery
# ---------------------------------------------------------------------------------------------


def _bucket_by_device_and_dtype(tensors: list[Tensor]) -> list[list[int]]:
    """Indices of ``tensors`` grouped by (device, dtype), so each foreach call is homogeneous."""
    buckets: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for index, tensor in enumerate(tensors):
        buckets.setdefault((tensor.device, tensor.dtype), []).append(index)
    return list(buckets.values())


def _global_norms(local_norms: list[Tensor], process_group: Any) -> list[Tensor]:
    """Turn per-shard L2 norms into norms of the logical (unsharded) tensors.

    Args:
        local_norms: one 1-D tensor of local norms per (device, dtype) bucket.
        process_group: the group the tensors are sharded over, or None (no sharding).

    Returns:
        The global norms, in the same layout as ``local_norms``: ``sqrt(Σ_ranks ‖shard‖²)``.
        All buckets travel in ONE ``all_reduce``.
    """
    if process_group is None or not local_norms:
        return local_norms
    dtype = local_norms[0].dtype
    for norms in local_norms[1:]:
        dtype = torch.promote_types(dtype, norms.dtype)
    device = local_norms[0].device
    flat = torch.cat([norms.to(device=device, dtype=dtype) for norms in local_norms])
    flat.square_()
    dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=process_group)
    flat.sqrt_()
    pieces = flat.split([norms.numel() for norms in local_norms])
    return [
        piece.to(device=norms.device, dtype=norms.dtype)
        for piece, norms in zip(pieces, local_norms, strict=True)
    ]


def _trust_ratios(
    raw_ratios: Tensor,
    weight_norms: Tensor,
    other_norms: Tensor,
    adapt: Tensor,
    trust_clip: tuple[float, float] | None,
) -> Tensor:
    """Clamp the raw ratios, and use exactly 1 where a norm is 0 or adaptation is off.

    Args:
        raw_ratios: the unclamped trust ratio per tensor, shape (N,).
        weight_norms: ‖x‖ per tensor, shape (N,).
        other_norms: the second norm whose zero forces ratio 1 (‖u‖ for LAMB, ‖g‖ for LARS).
        adapt: bool mask (N,), False where layer adaptation is off for that tensor.
        trust_clip: optional (low, high) clamp, applied to computed ratios only.

    Returns:
        The trust ratios, shape (N,).
    """
    if trust_clip is not None:
        raw_ratios = raw_ratios.clamp(min=trust_clip[0], max=trust_clip[1])
    valid = adapt & (weight_norms > 0) & (other_norms > 0)
    return torch.where(valid, raw_ratios, torch.ones_like(raw_ratios))


def _grads_of(params: list[Tensor]) -> list[Tensor]:
    """The gradients of parameters already filtered by ``_params_with_grads`` (never None)."""
    return [cast(Tensor, param.grad) for param in params]


def _params_with_grads(optimizer_name: str, group: dict[str, Any]) -> list[Tensor]:
    params = []
    for param in group["params"]:
        if param.grad is None:
            continue
        if param.grad.is_sparse:
            raise RuntimeError(
                f"{optimizer_name} does not support sparse gradients; use a dense gradient "
                "(e.g. nn.Embedding(sparse=False))"
            )
        params.append(param)
    return params


class _ProcessGroupAwareOptimizer(torch.optim.Optimizer):
    """Keeps live ProcessGroup objects out of state dicts and validates every param group."""

    def _validate(self, hparams: dict[str, Any], context: str) -> None:  # pragma: no cover
        raise NotImplementedError

    def _step_group(self, group: dict[str, Any]) -> None:  # pragma: no cover
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Take one optimisation step.

        Args:
            closure: optional callable that re-evaluates the model and returns the loss.

        Returns:
            The closure's loss, or None.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            self._step_group(group)
        return loss

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Validate the merged hyperparameters of ``param_group``, then add it.

        Args:
            param_group: a dict with ``params`` and optional per-group hyperparameter overrides.
        """
        merged = {**self.defaults, **{k: v for k, v in param_group.items() if k != "params"}}
        self._validate(merged, f"param group {len(self.param_groups)}")
        super().add_param_group(param_group)

    def state_dict(self) -> dict[str, Any]:
        """The standard optimizer state dict, with each ``group`` entry replaced by None.

        Returns:
            A state dict that ``torch.save`` can serialise (process groups cannot be pickled).
        """
        state = super().state_dict()
        for packed_group in state["param_groups"]:
            packed_group["group"] = None
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict; each param group keeps its current process group.

        Args:
            state_dict: a dict returned by :meth:`state_dict`.
        """
        process_groups = [group.get("group") for group in self.param_groups]
        super().load_state_dict(state_dict)
        for group, process_group in zip(self.param_groups, process_groups, strict=True):
            for key, value in self.defaults.items():
                group.setdefault(key, value)
            group["group"] = process_group


# ---------------------------------------------------------------------------------------------
# LAMB
# ---------------------------------------------------------------------------------------------


class LAMB(_ProcessGroupAwareOptimizer):
    r"""LAMB: layer-wise adaptive moments (You et al., ICLR 2020, arXiv:1904.00962).

    For every parameter tensor ``x`` with gradient ``g`` at step ``t``::

        m ← β₁·m + (1−β₁)·g              v ← β₂·v + (1−β₂)·g²
        m̂ = m/(1−β₁ᵗ)   v̂ = v/(1−β₂ᵗ)     (m̂ = m, v̂ = v with bias_correction=False)
        u = m̂/(√v̂ + eps) + weight_decay·x
        ratio = ‖x‖/‖u‖   (exactly 1 if ‖x‖ = 0 or ‖u‖ = 0; clamped to trust_clip if given)
        x ← x − lr·ratio·u

    Variant notes (design reference §2.6, §6):

    - This is the paper's v3+ update with the norm of the *full* update ``r + λx`` in the
      denominator (the paperswithcode page's ‖m_t‖ is a typo).
    - ``bias_correction=True`` by default (the paper's Algorithm 2 and most ports); Colossal-AI's
      ``Lamb`` defaults to False ("Paper v3 does not use debiasing"): pass
      ``bias_correction=False`` to reproduce it.
    - The paper scales by φ(‖x‖)/‖u‖ with φ a clamp of the *weight norm*; here ``trust_clip``
      clamps the *ratio* (as in apex/timm-style ports), and ``None`` (default, also Colossal-AI's
      behaviour) means no clamp. The zero-norm fallback ratio 1 is never clamped.
    - ``adam=True`` forces ratio 1: LAMB becomes Adam with the weight decay added to the update,
      i.e. ``x ← x − lr·(m̂/(√v̂+eps) + wd·x)``, which is exactly ``torch.optim.AdamW`` with the
      same ``lr``, ``eps`` and ``weight_decay`` (and ``torch.optim.Adam`` when wd = 0).
    - ``exclude_1d=True``: tensors with ``ndim <= 1`` get no weight decay and ratio 1.
    - Per-param-group overrides: ``weight_decay``, ``trust_clip``, ``exclude_1d``,
      ``layer_adaptation`` (``False`` ⇒ ratio 1 for that group), ``adam``, ``bias_correction``,
      ``betas``, ``eps``, ``lr`` and ``group``.

    Sharded parameters: with ``group`` set, the param group's tensors are shards (over that
    process group) of logical parameters, and ‖x‖, ‖u‖ are global: the squared norms of every
    tensor are stacked into one tensor and summed with one ``all_reduce`` per param group and step.
    Every rank must then hold the same number of tensors in the same order, with gradients present
    on the same tensors on every rank (otherwise the collective hangs or pairs wrong norms).

    State per parameter: ``step`` (0-d float32 tensor, as in ``torch.optim.Adam``), ``exp_avg`` (m)
    and ``exp_avg_sq`` (v). Gradients that are None are skipped; sparse gradients raise.

    Args:
        params: parameters or param-group dicts to optimise.
        lr: learning rate, >= 0.
        betas: (β₁, β₂), each in [0, 1).
        eps: added to √v̂, >= 0.
        weight_decay: decoupled weight decay λ added to the update, >= 0.
        bias_correction: debias m and v.
        trust_clip: ``(low, high)`` clamp for the trust ratio, or None for no clamp.
        exclude_1d: no weight decay and ratio 1 for tensors with ``ndim <= 1``.
        adam: force ratio 1 (Adam/AdamW), useful as a baseline and equivalence check.
        group: process group the param group's tensors are sharded over, or None.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        *,
        bias_correction: bool = True,
        trust_clip: tuple[float, float] | None = None,
        exclude_1d: bool = True,
        adam: bool = False,
        group: dist.ProcessGroup | None = None,
    ) -> None:
        defaults: dict[str, Any] = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "bias_correction": bias_correction,
            "trust_clip": trust_clip,
            "exclude_1d": exclude_1d,
            "adam": adam,
            "layer_adaptation": True,
            "group": group,
        }
        _validate_lamb(defaults)
        super().__init__(params, defaults)

    def _validate(self, hparams: dict[str, Any], context: str) -> None:
        _validate_lamb(hparams, context)

    def _step_group(self, group: dict[str, Any]) -> None:
        params = _params_with_grads("LAMB", group)
        if not params:
            return
        beta1, beta2 = (float(beta) for beta in group["betas"])
        eps = float(group["eps"])
        lr = float(group["lr"])
        weight_decay = float(group["weight_decay"])
        exclude_1d = group["exclude_1d"]
        adaptive = group["layer_adaptation"] and not group["adam"]

        buckets = _bucket_by_device_and_dtype(params)
        updates_per_bucket: list[list[Tensor]] = []
        local_norms: list[Tensor] = []
        for indices in buckets:
            xs = [params[i] for i in indices]
            grads = _grads_of(xs)
            ms, vs, steps = self._state_lists(xs)

            torch._foreach_add_(steps, 1.0)
            torch._foreach_lerp_(ms, grads, 1.0 - beta1)
            torch._foreach_mul_(vs, beta2)
            torch._foreach_addcmul_(vs, grads, grads, value=1.0 - beta2)

            # u = m̂/(√v̂ + eps) computed as m / (c₁·√v + c₂) with the bias corrections folded
            # into the per-tensor scalars c₁ = bc₁/√bc₂ and c₂ = eps·bc₁ (no extra pass).
            denominators = list(torch._foreach_sqrt(vs))
            if group["bias_correction"]:
                counts = [float(step) for step in steps]
                bc1 = [1.0 - beta1**t for t in counts]
                bc2 = [1.0 - beta2**t for t in counts]
                torch._foreach_mul_(
                    denominators, [b1 / math.sqrt(b2) for b1, b2 in zip(bc1, bc2, strict=True)]
                )
                torch._foreach_add_(denominators, [eps * b1 for b1 in bc1])
            else:
                torch._foreach_add_(denominators, eps)
            # u = m/d written into d's own memory (d ← d/m, then d ← 1/d): two in-place passes
            # are cheaper than a fresh allocation per step, and the step keeps AdamW's single
            # temporary. (m = 0 gives d/m = ±inf and u = 0, as m/d would; only when m/d is
            # below the dtype's smallest normal number can it round to 0 instead.)
            torch._foreach_div_(denominators, ms)
            torch._foreach_reciprocal_(denominators)
            updates = denominators

            if weight_decay != 0.0:
                decayed = [k for k, x in enumerate(xs) if not (exclude_1d and x.ndim <= 1)]
                if decayed:
                    torch._foreach_add_(
                        [updates[k] for k in decayed], [xs[k] for k in decayed], alpha=weight_decay
                    )
            updates_per_bucket.append(updates)
            if adaptive:
                local_norms.append(
                    torch.stack(torch._foreach_norm(xs) + torch._foreach_norm(updates))
                )

        if not adaptive:
            for indices, updates in zip(buckets, updates_per_bucket, strict=True):
                torch._foreach_add_([params[i] for i in indices], updates, alpha=-lr)
            return

        norms_per_bucket = _global_norms(local_norms, group["group"])
        for indices, updates, norms in zip(
            buckets, updates_per_bucket, norms_per_bucket, strict=True
        ):
            xs = [params[i] for i in indices]
            count = len(xs)
            adapt = torch.tensor(
                [not (exclude_1d and x.ndim <= 1) for x in xs], device=norms.device
            )
            x_norms, u_norms = norms[:count], norms[count:]
            ratios = _trust_ratios(x_norms / u_norms, x_norms, u_norms, adapt, group["trust_clip"])
            torch._foreach_addcmul_(xs, updates, list((ratios * -lr).unbind(0)))

    def _state_lists(self, xs: list[Tensor]) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Exponential averages and step counters of ``xs``, created on first use."""
        ms, vs, steps = [], [], []
        for x in xs:
            state = self.state[x]
            if not state:
                state["step"] = torch.tensor(0.0, dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(x, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(x, memory_format=torch.preserve_format)
            elif not isinstance(state["step"], Tensor):
                state["step"] = torch.tensor(float(state["step"]), dtype=torch.float32)
            ms.append(state["exp_avg"])
            vs.append(state["exp_avg_sq"])
            steps.append(state["step"])
        return ms, vs, steps


# ---------------------------------------------------------------------------------------------
# LARS
# ---------------------------------------------------------------------------------------------


class LARS(_ProcessGroupAwareOptimizer):
    r"""LARS: layer-wise adaptive rate scaling (You, Gitman, Ginsburg 2017, arXiv:1708.03888).

    The published rule, for every parameter tensor ``w`` with gradient ``g``::

        λ = η·‖w‖ / (‖g‖ + β·‖w‖ + eps)   (exactly 1 if ‖w‖ = 0 or ‖g‖ = 0; clamped to trust_clip)
        buf ← μ·buf + lr·λ·(g + β·w)
        w ← w − buf                       (nesterov: w ← w − (μ·buf + lr·λ·(g + β·w)))

    with η = ``trust_coefficient``, β = ``weight_decay`` and μ = ``momentum``. The momentum buffer
    starts at zero, so the first step is ``buf = lr·λ·(g + β·w)`` as in ``torch.optim.SGD``.
    With ``exclude_1d=True`` tensors with ``ndim <= 1`` get β = 0 and λ = 1: plain SGD with
    momentum at ``lr``. A param group with ``layer_adaptation=False`` uses λ = 1 throughout.

    Variant notes (design reference §2.5, §6):

    - Here the local LR λ sits *inside* the momentum: the paper's Algorithm 1. google-research's
      ``LARSOptimizer`` (``supcon/utils.py``) with ``classic_momentum=True`` does the same, with
      trust 1 for zero norms, but its ratio is η·‖w‖/‖g + β·w‖ (the decayed gradient's norm)
      rather than the paper's η·‖w‖/(‖g‖ + β·‖w‖); with ``classic_momentum=False`` it computes
      the ratio from ‖w‖/‖update‖ and applies it after the momentum. Neither is offered here.
    - Colossal-AI's ``Lars`` puts the trust ratio *outside* the momentum (``buf = μ·buf + g';
      w −= lr·λ·buf``), clamps λ to [0, 50] and clamps the decayed gradient g + β·w to ±10. Those
      clamps are implementation choices, not paper rules; ``trust_clip=(0, 50)`` reproduces the
      first one, the others are not offered.

    Sharded parameters: with ``group`` set, ‖w‖ and ‖g‖ are global norms over the shard group (one
    ``all_reduce`` per param group and step); see :class:`LAMB` for the requirements on ranks.

    State per parameter: ``momentum_buffer``. Gradients that are None are skipped; sparse
    gradients raise.

    Args:
        params: parameters or param-group dicts to optimise.
        lr: global learning rate γ, >= 0.
        momentum: μ in [0, 1).
        weight_decay: β, >= 0 (enters both the gradient and the trust ratio).
        trust_coefficient: η > 0.
        eps: added to the trust ratio's denominator, >= 0.
        trust_clip: ``(low, high)`` clamp for λ, or None for no clamp.
        exclude_1d: no weight decay and λ = 1 for tensors with ``ndim <= 1``.
        nesterov: Nesterov momentum (needs momentum > 0).
        group: process group the param group's tensors are sharded over, or None.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        *,
        trust_coefficient: float = 1e-3,
        eps: float = 0.0,
        trust_clip: tuple[float, float] | None = None,
        exclude_1d: bool = True,
        nesterov: bool = False,
        group: dist.ProcessGroup | None = None,
    ) -> None:
        defaults: dict[str, Any] = {
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "trust_coefficient": trust_coefficient,
            "eps": eps,
            "trust_clip": trust_clip,
            "exclude_1d": exclude_1d,
            "nesterov": nesterov,
            "layer_adaptation": True,
            "group": group,
        }
        _validate_lars(defaults)
        super().__init__(params, defaults)

    def _validate(self, hparams: dict[str, Any], context: str) -> None:
        _validate_lars(hparams, context)

    def _step_group(self, group: dict[str, Any]) -> None:
        params = _params_with_grads("LARS", group)
        if not params:
            return
        lr = float(group["lr"])
        momentum = float(group["momentum"])
        weight_decay = float(group["weight_decay"])
        trust_coefficient = float(group["trust_coefficient"])
        eps = float(group["eps"])
        exclude_1d = group["exclude_1d"]
        adaptive = group["layer_adaptation"]

        buckets = _bucket_by_device_and_dtype(params)
        local_norms = []
        if adaptive:
            for indices in buckets:
                ws = [params[i] for i in indices]
                grads = _grads_of(ws)
                local_norms.append(
                    torch.stack(torch._foreach_norm(ws) + torch._foreach_norm(grads))
                )
            norms_per_bucket = _global_norms(local_norms, group["group"])

        for bucket_index, indices in enumerate(buckets):
            ws = [params[i] for i in indices]
            grads = _grads_of(ws)
            bufs = []
            for w in ws:
                state = self.state[w]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(
                        w, memory_format=torch.preserve_format
                    )
                bufs.append(state["momentum_buffer"])
            decayed = [not (exclude_1d and w.ndim <= 1) for w in ws]
            decay = torch.tensor(
                [weight_decay if flag else 0.0 for flag in decayed],
                dtype=ws[0].dtype,
                device=ws[0].device,
            )
            if adaptive:
                norms = norms_per_bucket[bucket_index]
                count = len(ws)
                w_norms, g_norms = norms[:count], norms[count:]
                decay = decay.to(norms.device)
                adapt = torch.tensor(decayed, device=norms.device)
                raw_ratios = trust_coefficient * w_norms / (g_norms + decay * w_norms + eps)
                ratios = _trust_ratios(raw_ratios, w_norms, g_norms, adapt, group["trust_clip"])
                scales = ratios * lr  # s = lr·λ per tensor
            else:
                scales = torch.full_like(decay, lr)
            decay_scales = scales * decay  # s·β per tensor (0 where excluded)

            # buf ← μ·buf + s·g + s·β·w: no temporary for g + β·w, and the grads stay untouched.
            torch._foreach_mul_(bufs, momentum)
            torch._foreach_addcmul_(bufs, grads, list(scales.unbind(0)))
            if weight_decay != 0.0:
                torch._foreach_addcmul_(bufs, ws, list(decay_scales.unbind(0)))
            if group["nesterov"]:
                # w ← w − μ·buf − s·(g + β·w) = (1 − s·β)·w − μ·buf − s·g
                if weight_decay != 0.0:
                    torch._foreach_mul_(ws, list((1.0 - decay_scales).unbind(0)))
                torch._foreach_add_(ws, bufs, alpha=-momentum)
                torch._foreach_addcmul_(ws, grads, list((-scales).unbind(0)))
            else:
                torch._foreach_sub_(ws, bufs)


# ---------------------------------------------------------------------------------------------
# Param groups, batch-size scaling and schedules
# ---------------------------------------------------------------------------------------------


def param_groups_no_decay(
    model: torch.nn.Module,
    weight_decay: float,
    no_decay: Iterable[str] = (r"bias$", r"norm", r"LayerNorm"),
) -> list[dict[str, Any]]:
    """Split a model's trainable parameters into a decay and a no-decay param group by name.

    The PyTorch form of TF's ``exclude_from_weight_decay`` / ``exclude_from_layer_adaptation``:
    a parameter whose qualified name matches any regex in ``no_decay`` (``re.search``) goes to a
    group with ``weight_decay=0`` and ``layer_adaptation=False`` (trust ratio 1 in LAMB/LARS).

    Args:
        model: the module whose ``named_parameters()`` are split (frozen ones are left out).
        weight_decay: weight decay for the decay group, >= 0.
        no_decay: regexes matched against parameter names.

    Returns:
        ``[{"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0, "layer_adaptation": False}]``; either list may
        be empty.
    """
    _check_number("param_groups_no_decay", "weight_decay", weight_decay, "", low=0.0)
    patterns = [re.compile(pattern) for pattern in no_decay]
    decay: list[Tensor] = []
    excluded: list[Tensor] = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if any(pattern.search(name) for pattern in patterns):
            excluded.append(param)
        else:
            decay.append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": excluded, "weight_decay": 0.0, "layer_adaptation": False},
    ]


def scale_lr(base_lr: float, base_batch_size: int, batch_size: int, rule: str = "linear") -> float:
    """Scale a learning rate tuned at ``base_batch_size`` to ``batch_size``.

    ``"linear"``: lr·k with k = batch_size/base_batch_size (Goyal et al. 2017, arXiv:1706.02677,
    for SGD/LARS with warm-up). ``"sqrt"``: lr·√k, the order the LAMB paper's introduction gives
    for adaptive optimisers (You et al. 2020, arXiv:1904.00962).

    Args:
        base_lr: the learning rate at ``base_batch_size``, >= 0.
        base_batch_size: the batch size ``base_lr`` was tuned for, > 0.
        batch_size: the new batch size, > 0.
        rule: ``"linear"`` or ``"sqrt"``.

    Returns:
        The scaled learning rate.
    """
    _check_number("scale_lr", "base_lr", base_lr, "", low=0.0)
    for name, value in (("base_batch_size", base_batch_size), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"scale_lr: {name} must be a positive integer, got {value!r}")
    factor = batch_size / base_batch_size
    if rule == "linear":
        return base_lr * factor
    if rule == "sqrt":
        return base_lr * math.sqrt(factor)
    raise ValueError(f"scale_lr: rule must be 'linear' or 'sqrt', got {rule!r}")


def _check_schedule(
    name: str, warmup_steps: Any, total_steps: Any, end_factor: Any, power: float = 1.0
) -> None:
    for argument, value in (("warmup_steps", warmup_steps), ("total_steps", total_steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name}: {argument} must be a non-negative integer, got {value!r}")
    if total_steps < 1:
        raise ValueError(f"{name}: total_steps must be >= 1, got {total_steps!r}")
    if warmup_steps > total_steps:
        raise ValueError(
            f"{name}: warmup_steps must be <= total_steps, got warmup_steps={warmup_steps!r} "
            f"and total_steps={total_steps!r}"
        )
    _check_number(name, "end_factor", end_factor, "", low=0.0, high=1.0, high_inclusive=True)
    _check_number(name, "power", power, "", low=0.0, low_inclusive=False)


@dataclass(frozen=True)  # no slots: LambdaLR.state_dict() saves a callable's __dict__
class _WarmupDecay:
    """LR multiplier: linear warm-up 0 → 1, then polynomial or cosine decay 1 → end_factor."""

    warmup_steps: int
    total_steps: int
    end_factor: float
    power: float
    cosine: bool

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return step / self.warmup_steps
        if step >= self.total_steps:
            return self.end_factor
        progress = (step - self.warmup_steps) / (self.total_steps - self.warmup_steps)
        if self.cosine:
            remaining = 0.5 * (1.0 + math.cos(math.pi * progress))
        else:
            remaining = (1.0 - progress) ** self.power
        return self.end_factor + (1.0 - self.end_factor) * remaining


def warmup_polynomial_schedule(
    optimizer: torch.optim.Optimizer,
    warmup_steps: int,
    total_steps: int,
    power: float = 1.0,
    end_factor: float = 0.0,
) -> LambdaLR:
    """Linear warm-up, then polynomial decay (the LARS/LAMB large-batch recipe).

    The multiplier of every param group's base LR at scheduler step ``s`` is ``s/warmup_steps``
    for ``s < warmup_steps``; then ``end + (1 − end)·(1 − p)^power`` with
    ``p = (s − warmup_steps)/(total_steps − warmup_steps)``; and ``end_factor`` from
    ``total_steps`` on.

    Args:
        optimizer: the optimizer whose LRs are scheduled.
        warmup_steps: length of the warm-up, 0 <= warmup_steps <= total_steps.
        total_steps: the step at which the decay reaches ``end_factor``, >= 1.
        power: decay exponent, > 0 (1 = linear decay).
        end_factor: final LR as a fraction of the base LR, in [0, 1].

    Returns:
        A ``LambdaLR``; call its ``step()`` once per optimizer step.
    """
    _check_schedule("warmup_polynomial_schedule", warmup_steps, total_steps, end_factor, power)
    multiplier = _WarmupDecay(warmup_steps, total_steps, float(end_factor), float(power), False)
    return LambdaLR(optimizer, multiplier)


def warmup_cosine_schedule(
    optimizer: torch.optim.Optimizer,
    warmup_steps: int,
    total_steps: int,
    end_factor: float = 0.0,
) -> LambdaLR:
    """Linear warm-up, then half-cosine decay to ``end_factor``·base LR at ``total_steps``.

    The multiplier after warm-up is ``end + (1 − end)·(1 + cos(π·p))/2`` with ``p`` as in
    :func:`warmup_polynomial_schedule`; it stays at ``end_factor`` after ``total_steps``.

    Args:
        optimizer: the optimizer whose LRs are scheduled.
        warmup_steps: length of the warm-up, 0 <= warmup_steps <= total_steps.
        total_steps: the step at which the decay reaches ``end_factor``, >= 1.
        end_factor: final LR as a fraction of the base LR, in [0, 1].

    Returns:
        A ``LambdaLR``; call its ``step()`` once per optimizer step.
    """
    _check_schedule("warmup_cosine_schedule", warmup_steps, total_steps, end_factor)
    multiplier = _WarmupDecay(warmup_steps, total_steps, float(end_factor), 1.0, True)
    return LambdaLR(optimizer, multiplier)
