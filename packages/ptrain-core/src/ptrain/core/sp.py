"""Sequence parallelism on any backend (CPU/gloo included): ring attention and Ulysses.

Both split the *sequence* over the ranks of a group (the mesh's ``cp`` dim): rank ``r`` of ``P``
holds ``S/P`` positions of every sequence (``shard_sequence``: ``r·S/P … (r+1)·S/P − 1`` in the
``contiguous`` layout; chunks ``r`` and ``2P−1−r`` of ``2P`` in the ``zigzag`` layout), and every
layer except attention is token-wise, so only attention needs the other ranks. Shapes below:
``B`` batch, ``H`` heads (on this rank), ``S`` global sequence, ``L = S/P`` local sequence,
``D`` head dim.

**Ring attention** (``ring_attention``, ``RingAttention``; Liu et al. 2023, the LSE-merge form of
Li et al.'s ring self-attention). The K/V block pairs travel round the ring (``P − 1`` hops, each
rank sends and receives one ``2·B·H·L·D`` block per hop); each rank attends its local queries to
every block as it passes and merges the partial results with an online softmax: keeping the
log-sum-exp ``lse`` of each query row, ``out ← out·e^{lse−lse'} + o_blk·e^{lse_blk−lse'}`` with
``lse' = logaddexp(lse, lse_blk)``, so no ``L × S`` score matrix is ever held. Causal mask,
contiguous layout: block ``j`` is fully visible to rank ``r > j``, causal on the diagonal
``j = r``, skipped for ``j > r`` — so the last rank computes ``P×`` the first's scores. The
``zigzag`` layout (the load balancing of Colossal-AI's ``ring_attn``) gives every rank the same
work: from an earlier rank only the first half of its block is visible, from a later rank only
our second half sees its block, so each off-diagonal step computes exactly half a block. The
backward is a custom autograd function (flash-attention style: recompute each block's
probabilities from the saved ``lse``): dQ accumulates locally while the dK/dV of each
block travel round the ring *with* their K/V block and arrive back at the owner after ``P``
hops. Memory is ``O(L·D)`` per rank besides one ``L × L`` score block. Each K/V hop is started
before the block's compute and waited after it (``batch_isend_irecv``), so the transfer
overlaps the compute; the dK/dV hop follows the compute it depends on.

**Ulysses** (``ulysses_attention``, ``UlyssesAttention``; Jacobs et al. 2023, DeepSpeed-Ulysses).
One all-to-all turns ``[B, H, L, D]`` (sequence-sharded, all heads) into ``[B, H/P, S, D]``
(head-sharded, whole sequence) for q, k and v together, plain ``scaled_dot_product_attention``
runs on the full sequence, and a second all-to-all turns the output back. The head count must
be divisible by ``P``. Backward is the all-to-alls' own (``ptrain.core.comm.all_to_all``).

Both modules plug into ``ptrain.core.models.gpt.Attention.core``; feed the model
``shard_sequence(tokens, group)`` and its global ``position_ids``. The weights are replicated over
the sequence group, so each rank's loss covers only its tokens: average the per-rank mean losses
and the gradients over the group (``average_gradients``), or fold the group into the
data-parallel gradient reduction.

Example (per rank)::

    for block in model.blocks:
        block.attn.core = RingAttention(mesh["cp"])
    tokens_local, positions = shard_sequence(tokens, mesh["cp"])
    targets_local, _ = shard_sequence(targets, mesh["cp"])
    loss = gpt_loss(model(tokens_local, position_ids=positions), targets_local)
    loss.backward(); average_gradients(model, mesh["cp"])
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ptrain.core import comm
from ptrain.core.comm import GroupLike

SequenceLayout = Literal["contiguous", "zigzag"]
LAYOUTS: tuple[str, ...] = ("contiguous", "zigzag")

__all__ = [
    "LAYOUTS",
    "RingAttention",
    "SequenceLayout",
    "UlyssesAttention",
    "average_gradients",
    "ring_attention",
    "sequence_positions",
    "shard_sequence",
    "ulysses_attention",
]


# --------------------------------------------------------------------------- sharding helpers
def shard_sequence(
    tokens: torch.Tensor,
    group: GroupLike = None,
    seq_dim: int = 1,
    layout: SequenceLayout = "contiguous",
) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's part of the sequence and its global positions.

    Args:
        tokens: the full batch, e.g. token ids ``(B, S)`` (any tensor with the sequence at
            ``seq_dim``); the same on every rank of ``group``.
        group: the sequence-parallel group (``P`` ranks).
        seq_dim: the sequence dimension.
        layout: ``contiguous``: rank ``r`` holds positions ``r·S/P … (r+1)·S/P − 1``.
            ``zigzag``: the sequence is cut into ``2P`` chunks and rank ``r`` holds chunks ``r``
            and ``2P−1−r`` (in that order), which balances the causal-mask work of ring
            attention. Pass the same ``layout`` to the attention.

    Returns:
        ``(local, position_ids)``: ``local`` is this rank's ``S/P`` positions of ``tokens``
        along ``seq_dim``; ``position_ids`` ``(S/P,)`` int64 holds their global positions (pass
        them to ``GPT.forward``).

    Raises:
        ValueError: ``S`` is not divisible by ``P`` (``2P`` for zigzag), or an unknown layout.
    """
    size, rank = comm.group_size(group), comm.group_rank(group)
    seq = tokens.shape[seq_dim]
    positions = sequence_positions(seq, size, rank, layout, device=tokens.device)
    if layout == "contiguous":
        return tokens.narrow(seq_dim, int(positions[0]), positions.numel()), positions
    return tokens.index_select(seq_dim, positions), positions


def sequence_positions(
    seq: int,
    size: int,
    rank: int,
    layout: SequenceLayout = "contiguous",
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The global positions rank ``rank`` of ``size`` holds under ``layout`` (see
    ``shard_sequence``), as an int64 tensor of ``seq // size`` entries."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    parts = size if layout == "contiguous" else 2 * size
    if seq % parts != 0:
        raise ValueError(
            f"sequence length {seq} is not divisible by the sequence-parallel group size {size}"
            + ("" if layout == "contiguous" else f" × 2 (the zigzag layout cuts {parts} chunks)")
            + f"; pad or crop the sequence to a multiple of {parts}"
        )
    if layout == "contiguous":
        local = seq // size
        return torch.arange(rank * local, (rank + 1) * local, device=device)
    chunk = seq // parts
    return torch.cat(
        [
            torch.arange(rank * chunk, (rank + 1) * chunk, device=device),
            torch.arange((parts - 1 - rank) * chunk, (parts - rank) * chunk, device=device),
        ]
    )


def average_gradients(module: nn.Module, group: GroupLike = None) -> None:
    """Average every parameter's ``.grad`` over ``group`` in place (replicated weights).

    Use after a sequence-parallel backward in which each rank's loss was the mean over its own
    tokens: the average of the per-rank gradients is the gradient of the mean over all tokens.
    """
    pg = comm.resolve_group(group)
    size = dist.get_world_size(pg)
    for parameter in module.parameters():
        if parameter.grad is not None:
            dist.all_reduce(parameter.grad, group=pg)
            parameter.grad.div_(size)


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if q.ndim != 4 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(
            f"q, k, v must all be [batch, heads, seq, head_dim] with the same shape, got "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )


# --------------------------------------------------------------------------- ring attention
def _block_scores(q: torch.Tensor, k: torch.Tensor, scale: float, diagonal: bool) -> torch.Tensor:
    # q (B, H, L, D), k (B, H, L, D) -> scores (B, H, L, L); diagonal: causal within the block
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    if diagonal:
        length = q.shape[-2]
        future = torch.ones(length, length, dtype=torch.bool, device=q.device).triu_(1)
        scores = scores.masked_fill(future, float("-inf"))
    return scores


_ALL = slice(None)


def _block_plan(
    source: int, rank: int, size: int, local: int, causal: bool, layout: str
) -> tuple[slice, slice, bool] | None:
    """Which query rows of this rank see which key rows of ``source``'s block.

    Returns ``(query_rows, key_rows, diagonal)`` (``diagonal``: causal mask inside the block,
    whose local order is position order), or ``None`` when nothing is visible.
    """
    if not causal:
        return _ALL, _ALL, False
    if source == rank:
        return _ALL, _ALL, True
    if layout == "contiguous":
        return (_ALL, _ALL, False) if source < rank else None
    # zigzag: rank r holds chunks (r, 2P−1−r). An earlier rank's first chunk is visible to both
    # of ours and its second chunk to neither; a later rank's whole block is visible to our
    # second chunk only. Every rank computes the same amount: balanced.
    half = local // 2
    if source < rank:
        return _ALL, slice(0, half), False
    return slice(half, local), _ALL, False


class _RingHop:
    """One ring hop in flight: send to the next rank, receive from the previous one.

    Started before a block's compute and waited after it, so the transfer overlaps the compute
    (gloo and NCCL both progress p2p in the background). The sent tensor must not be modified
    until ``wait``.
    """

    def __init__(
        self,
        tensor: torch.Tensor,
        pg: dist.ProcessGroup | None,
        label: str,
        phase: str,
    ) -> None:
        size, rank = dist.get_world_size(pg), dist.get_rank(pg)
        self.output = torch.empty_like(tensor)
        operations = [
            dist.P2POp(dist.isend, tensor, comm._global_rank(pg, (rank + 1) % size, size), pg),
            dist.P2POp(dist.irecv, self.output, comm._global_rank(pg, (rank - 1) % size, size), pg),
        ]
        self.requests = dist.batch_isend_irecv(operations)
        nbytes = tensor.numel() * tensor.element_size()
        comm._record("send_recv", label, size, tensor, nbytes, nbytes, phase)

    def wait(self) -> torch.Tensor:
        for request in self.requests:
            request.wait()
        return self.output


class _RingAttention(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        causal: bool,
        scale: float,
        layout: str,
        pg: dist.ProcessGroup | None,
        label: str,
    ) -> torch.Tensor:
        size, rank = dist.get_world_size(pg), dist.get_rank(pg)
        local = q.shape[-2]
        out = torch.zeros_like(q)  # (B, H, L, D)
        lse = torch.full(q.shape[:-1], float("-inf"), dtype=q.dtype, device=q.device)  # (B,H,L)
        kv = torch.stack([k, v])  # (2, B, H, L, D): one message per hop
        for step in range(size):
            source = (rank - step) % size  # the rank whose K/V block is here now
            hop = _RingHop(kv, pg, label, "forward") if step < size - 1 else None
            plan = _block_plan(source, rank, size, local, causal, layout)
            if plan is not None:
                rows, cols, diagonal = plan
                scores = _block_scores(q[..., rows, :], kv[0][..., cols, :], scale, diagonal)
                block_lse = torch.logsumexp(scores, dim=-1)  # (B, H, rows)
                block_out = torch.matmul(
                    torch.exp(scores - block_lse.unsqueeze(-1)), kv[1][..., cols, :]
                )
                old_lse = lse[..., rows]
                new_lse = torch.logaddexp(old_lse, block_lse)
                out[..., rows, :] = out[..., rows, :] * torch.exp(old_lse - new_lse).unsqueeze(
                    -1
                ) + block_out * torch.exp(block_lse - new_lse).unsqueeze(-1)
                lse[..., rows] = new_lse
            if hop is not None:
                kv = hop.wait()
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.causal, ctx.scale, ctx.layout, ctx.pg, ctx.label = causal, scale, layout, pg, label
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:
        q, k, v, out, lse = ctx.saved_tensors
        causal, scale, layout, pg, label = ctx.causal, ctx.scale, ctx.layout, ctx.pg, ctx.label
        size, rank = dist.get_world_size(pg), dist.get_rank(pg)
        nxt, prev = (rank + 1) % size, (rank - 1) % size
        local = q.shape[-2]
        grad_out = grad_out.contiguous()
        delta = (grad_out * out).sum(dim=-1, keepdim=True)  # (B, H, L, 1)
        grad_q = torch.zeros_like(q)
        kv = torch.stack([k, v])  # (2, B, H, L, D)
        grad_kv = torch.zeros_like(kv)  # dK, dV of the block held now; travels with it
        for step in range(size):
            source = (rank - step) % size
            hop = _RingHop(kv, pg, label, "backward") if step < size - 1 else None
            plan = _block_plan(source, rank, size, local, causal, layout)
            if plan is not None:
                rows, cols, diagonal = plan
                q_rows, grad_rows = q[..., rows, :], grad_out[..., rows, :]
                block_k, block_v = kv[0][..., cols, :], kv[1][..., cols, :]
                scores = _block_scores(q_rows, block_k, scale, diagonal)
                probs = torch.exp(scores - lse[..., rows].unsqueeze(-1))  # (B, H, rows, cols)
                grad_probs = torch.matmul(grad_rows, block_v.transpose(-1, -2))
                grad_scores = probs * (grad_probs - delta[..., rows, :]) * scale
                grad_q[..., rows, :] += torch.matmul(grad_scores, block_k)
                grad_kv[0][..., cols, :] += torch.matmul(grad_scores.transpose(-1, -2), q_rows)
                grad_kv[1][..., cols, :] += torch.matmul(probs.transpose(-1, -2), grad_rows)
            # the grads follow their block to the next rank; after the last step (P hops in
            # all) each block's dK/dV arrive at the rank that owns it
            grad_kv = comm._raw_send_recv(grad_kv, nxt, prev, pg, label, "backward")
            if hop is not None:
                kv = hop.wait()
        return grad_q, grad_kv[0], grad_kv[1], None, None, None, None, None


def ring_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    group: GroupLike = None,
    causal: bool = True,
    scale: float | None = None,
    layout: SequenceLayout = "contiguous",
) -> torch.Tensor:
    """Exact softmax attention over a sequence sharded over ``group`` (K/V passed round a ring).

    Args:
        q: this rank's queries ``(B, H, L, D)`` at the positions ``shard_sequence`` gives it.
        k: this rank's keys, same shape and positions.
        v: this rank's values, same shape and positions.
        group: the sequence-parallel group (``P`` ranks, every rank the same ``L``).
        causal: apply the causal mask over *global* positions.
        scale: score scale (default ``1/sqrt(D)``, as ``scaled_dot_product_attention``).
        layout: how the sequence is sharded (``contiguous`` or the load-balanced ``zigzag``;
            see ``shard_sequence``).

    Returns:
        This rank's output rows ``(B, H, L, D)``, equal to the rows at this rank's positions of
        ``scaled_dot_product_attention`` on the whole sequence. Differentiable in q, k, v.
    """
    _check_qkv(q, k, v)
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    pg, label = comm._prepare(group)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    if dist.get_world_size(pg) == 1:
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)
    if layout == "zigzag" and q.shape[-2] % 2 != 0:
        raise ValueError(
            f"the zigzag layout holds two equal chunks per rank; local length {q.shape[-2]} is odd"
        )
    result: torch.Tensor = _RingAttention.apply(
        q.contiguous(), k.contiguous(), v.contiguous(), causal, scale, layout, pg, label
    )
    return result


# --------------------------------------------------------------------------- Ulysses
def ulysses_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    group: GroupLike = None,
    causal: bool = True,
    scale: float | None = None,
    layout: SequenceLayout = "contiguous",
) -> torch.Tensor:
    """Attention over a sequence sharded over ``group`` by swapping to head sharding (all-to-all).

    Args:
        q: this rank's queries ``(B, H, L, D)`` (all ``H`` heads, local positions).
        k: keys, same shape.
        v: values, same shape.
        group: the sequence-parallel group (``P`` ranks); ``H`` must be divisible by ``P``.
        causal: apply the causal mask over global positions.
        scale: score scale (default ``1/sqrt(D)``).
        layout: how the sequence is sharded (``shard_sequence``); Ulysses's work is balanced
            either way, ``zigzag`` is accepted so one sharding serves both attentions.

    Returns:
        This rank's output rows ``(B, H, L, D)``. Differentiable in q, k, v.

    Raises:
        ValueError: ``H`` is not divisible by ``P``.
    """
    _check_qkv(q, k, v)
    size = comm.group_size(group)
    batch, heads, local, head_dim = q.shape
    if heads % size != 0:
        raise ValueError(
            f"Ulysses needs the number of attention heads on this rank ({heads}) to be divisible "
            f"by the sequence-parallel group size ({size}); use ring attention or another size"
        )
    if size == 1:
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)
    # gathered index j (rank-major) holds global position order[j]
    order = None
    if layout != "contiguous":
        order = torch.cat(
            [sequence_positions(size * local, size, p, layout, q.device) for p in range(size)]
        )
    group_heads = heads // size
    # (3, B, H, L, D) -> (P, 3, B, H/P, L, D): head group j goes to rank j
    qkv = torch.stack([q, k, v]).view(3, batch, size, group_heads, local, head_dim)
    qkv = qkv.permute(2, 0, 1, 3, 4, 5)
    received = comm.all_to_all(qkv.contiguous(), group=group)  # (P=source/seq chunk, 3, ...)
    # -> (3, B, H/P, P·L = S, D)
    full = received.permute(1, 2, 3, 0, 4, 5).reshape(3, batch, group_heads, size * local, head_dim)
    if order is not None:  # into position order for the causal mask
        full = full.index_select(3, torch.argsort(order))
    out = F.scaled_dot_product_attention(full[0], full[1], full[2], is_causal=causal, scale=scale)
    if order is not None:  # back to rank-major order
        out = out.index_select(2, order)
    # (B, H/P, S, D) -> (P=seq chunk, B, H/P, L, D): sequence chunk j goes back to rank j
    out = out.reshape(batch, group_heads, size, local, head_dim).permute(2, 0, 1, 3, 4)
    back = comm.all_to_all(out.contiguous(), group=group)  # (P=source/head group, B, H/P, L, D)
    return back.permute(1, 0, 2, 3, 4).reshape(batch, heads, local, head_dim)


# --------------------------------------------------------------------------- modules
class _SequenceParallelAttention(nn.Module):
    """A sequence-parallel attention kernel as a module: a drop-in ``gpt.Attention.core``."""

    kernel: Callable[..., torch.Tensor]

    def __init__(
        self, group: GroupLike = None, causal: bool = True, layout: SequenceLayout = "contiguous"
    ) -> None:
        super().__init__()
        self.group = group
        self.causal = causal
        self.layout: SequenceLayout = layout

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``(B, H, L, D)`` × 3 → ``(B, H, L, D)``."""
        kernel = type(self).kernel
        return kernel(q, k, v, self.group, causal=self.causal, layout=self.layout)


class RingAttention(_SequenceParallelAttention):
    """``ring_attention`` as a module: a drop-in ``gpt.Attention.core`` for sequence shards."""

    kernel = staticmethod(ring_attention)


class UlyssesAttention(_SequenceParallelAttention):
    """``ulysses_attention`` as a module: a drop-in ``gpt.Attention.core`` for sequence shards."""

    kernel = staticmethod(ulysses_attention)
