"""Autograd building blocks of the tensor-parallel layers (all traffic goes through ``comm``).

=====================  =============================  ========================================
function               forward                        backward
=====================  =============================  ========================================
``copy_to``            identity                       all-reduce (sum) of the grad
``reduce_from``        all-reduce (sum)               identity (the output is used redundantly)
``split``              this rank's chunk along dim    all-gather of the grad chunks
``gather``             all-gather along dim           this rank's chunk of the grad
``summa``              SUMMA ``X·A`` (q broadcasts    re-broadcast A in the column + reduce dX
                       of X in the row and of A in    in the row; re-broadcast X in the row +
                       the column)                    reduce dA in the column
``vocab_ce``           cross-entropy with the vocab   softmax − one-hot on the local vocab
                       split over a group             slice (no communication)
=====================  =============================  ========================================

``copy_to``/``reduce_from`` are Megatron's f and g. ``split``/``gather`` move between a replicated
activation and its shard, treating the replicated tensor as used redundantly on every rank, so
the grad of a replicated tensor is the same full grad on every rank (unlike ``comm.all_gather``,
whose backward sums over ranks).
"""

from __future__ import annotations

from typing import Any

import torch

from ptrain.core import comm
from ptrain.core.tp.groups import Group

__all__ = ["copy_to", "gather", "reduce_from", "split", "summa", "vocab_ce"]


class _CopyTo(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: Group) -> torch.Tensor:
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        g = ctx.group
        return comm._raw_all_reduce(grad, "sum", g.pg, g.label, "backward"), None


class _ReduceFrom(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: Group) -> torch.Tensor:
        return comm._raw_all_reduce(x, "sum", group.pg, group.label, "forward")

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        return grad, None


def _chunk(x: torch.Tensor, dim: int, group: Group) -> torch.Tensor:
    if x.shape[dim] % group.size != 0:
        raise ValueError(
            f"dim {dim} of size {x.shape[dim]} is not divisible by the {group.label} group "
            f"size {group.size}"
        )
    return x.chunk(group.size, dim)[group.rank].contiguous()


class _Split(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, dim: int, group: Group) -> torch.Tensor:
        ctx.dim, ctx.group = dim, group
        return _chunk(x, dim, group)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        g = ctx.group
        return comm._raw_all_gather(grad, ctx.dim, g.pg, g.label, "backward"), None, None


class _Gather(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, dim: int, group: Group) -> torch.Tensor:
        ctx.dim, ctx.group = dim, group
        return comm._raw_all_gather(x, dim, group.pg, group.label, "forward")

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        return _chunk(grad, ctx.dim, ctx.group), None, None


def copy_to(x: torch.Tensor, group: Group | None) -> torch.Tensor:
    """Identity forward; the backward sums the grad over ``group`` (Megatron's f)."""
    if group is None or group.size == 1:
        return x
    return _CopyTo.apply(x, group)


def reduce_from(x: torch.Tensor, group: Group | None) -> torch.Tensor:
    """Sum over ``group`` forward; identity backward (Megatron's g)."""
    if group is None or group.size == 1:
        return x
    return _ReduceFrom.apply(x, group)


def split(x: torch.Tensor, dim: int, group: Group | None) -> torch.Tensor:
    """This rank's chunk along ``dim``; the backward all-gathers the grad."""
    if group is None or group.size == 1:
        return x
    return _Split.apply(x, dim % x.ndim, group)


def gather(x: torch.Tensor, dim: int, group: Group | None) -> torch.Tensor:
    """All-gather along ``dim``; the backward keeps this rank's chunk of the grad."""
    if group is None or group.size == 1:
        return x
    return _Gather.apply(x, dim % x.ndim, group)


class _Summa(torch.autograd.Function):
    """``Y_ij = Σ_t X_it · A_tj`` on a q×q grid (Colossal-AI's ``Matmul_AB_2D`` and its backward).

    ``row`` is the group of ranks sharing i (varying j: X blocks are broadcast along it),
    ``col`` the group sharing j (varying i: A blocks are broadcast along it). Only the local
    blocks are saved; the backward broadcasts them again (memory O(1/q²), traffic 3× forward).
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, a: torch.Tensor, row: Group, col: Group) -> torch.Tensor:
        ctx.row, ctx.col = row, col
        x = x.contiguous()
        a = a.contiguous()
        ctx.save_for_backward(x, a)
        out = x.new_zeros((x.shape[0], a.shape[1]))
        for t in range(row.size):
            x_t = comm._raw_broadcast(x, t, row.pg, row.label, "forward")
            a_t = comm._raw_broadcast(a, t, col.pg, col.label, "forward")
            out.addmm_(x_t, a_t)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        x, a = ctx.saved_tensors
        row, col = ctx.row, ctx.col
        grad = grad.contiguous()
        grad_x = grad_a = None
        if ctx.needs_input_grad[0]:
            for t in range(row.size):  # dX_it = Σ_j dY_ij · A_tjᵀ, reduced onto (i, t)
                a_t = comm._raw_broadcast(a, t, col.pg, col.label, "backward")
                part = comm._raw_reduce(grad @ a_t.t(), t, row.pg, row.label, "backward")
                if row.rank == t:
                    grad_x = part
        if ctx.needs_input_grad[1]:
            for t in range(col.size):  # dA_tj = Σ_i X_itᵀ · dY_ij, reduced onto (t, j)
                x_t = comm._raw_broadcast(x, t, row.pg, row.label, "backward")
                part = comm._raw_reduce(x_t.t() @ grad, t, col.pg, col.label, "backward")
                if col.rank == t:
                    grad_a = part
        return grad_x, grad_a, None, None


def summa(x: torch.Tensor, a: torch.Tensor, row: Group, col: Group) -> torch.Tensor:
    """SUMMA product of the local blocks ``x [n, k/q]`` and ``a [k/q, m/q]`` → ``[n, m/q]``."""
    if row.size == 1:
        return x @ a
    return _Summa.apply(x, a, row, col)


class _VocabCE(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, logits: torch.Tensor, target: torch.Tensor, start: int, group: Group | None
    ) -> torch.Tensor:
        logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
        local_max = logits.max(dim=-1).values
        if group is not None and group.size > 1:
            local_max = comm._raw_all_reduce(local_max, "max", group.pg, group.label, "forward")
        shifted = logits - local_max.unsqueeze(-1)
        exp = shifted.exp()
        sum_exp = exp.sum(dim=-1)
        vocab = logits.shape[-1]
        inside = (target >= start) & (target < start + vocab)
        local_target = (target - start).clamp(0, vocab - 1)
        picked = shifted.gather(-1, local_target.unsqueeze(-1)).squeeze(-1) * inside
        if group is not None and group.size > 1:
            both = torch.stack([sum_exp, picked])
            both = comm._raw_all_reduce(both, "sum", group.pg, group.label, "forward")
            sum_exp, picked = both[0], both[1]
        loss = sum_exp.log() - picked
        ctx.save_for_backward(exp.div_(sum_exp.unsqueeze(-1)), local_target, inside)
        return loss

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        softmax, local_target, inside = ctx.saved_tensors
        grad_logits = softmax.clone()
        grad_logits.scatter_add_(
            -1, local_target.unsqueeze(-1), -inside.to(softmax.dtype).unsqueeze(-1)
        )
        return grad_logits * grad.unsqueeze(-1), None, None, None


def vocab_ce(
    logits: torch.Tensor, target: torch.Tensor, start: int, group: Group | None
) -> torch.Tensor:
    """Per-row cross-entropy of ``logits [n, V/p]`` (vocab slice ``start …``) vs ``target [n]``."""
    return _VocabCE.apply(logits, target, start, group)
