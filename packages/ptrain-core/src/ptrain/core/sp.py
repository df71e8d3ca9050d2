"""Sequence parallelism on any backend (CPU/gloo included): ring attention and Ulysses.

Both split the *sequence* over the ranks of a group (the mesh's ``cp`` dim): rank ``r`` of ``P``
holds tokens ``r·S/P … (r+1)·S/P − 1`` of every sequence (``shard_sequence``), and every layer
except attention is token-wise, so only attention needs the other ranks. Shapes below:
``B`` batch, ``H`` heads (on this rank), ``S`` global sequence, ``L = S/P`` local sequence,
``D`` head dim.

**Ring attention** (``ring_attention``, ``RingAttention``; Liu et al. 2023, the LSE-merge form of
Li et al.'s ring self-attention). The K/V block pairs travel round the ring (``P − 1`` hops, each
rank sends and receives one ``2·B·H·L·D`` block per hop); each rank attends its local queries to
every block as it passes and merges the partial results with an online softmax: keeping the
log-sum-exp ``lse`` of each query row, ``out ← out·e^{lse−lse'} + o_blk·e^{lse_blk−lse'}`` with
``lse' = logaddexp(lse, lse_blk)``, so no ``L × S`` score matrix is ever held. Causal mask: block
``j`` is fully visible to rank ``r > j``, causal on the diagonal ``j = r``, skipped for ``j > r``
(no load balancing: with the causal mask the last rank does the most work; zigzag sharding is not
implemented). The backward is a custom autograd function (flash-attention style: recompute each
block's probabilities from the saved ``lse``): dQ accumulates locally while the dK/dV of each
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
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ptrain.core import comm
from ptrain.core.comm import GroupLike

__all__ = [
    "RingAttention",
    "UlyssesAttention",
    "average_gradients",
    "ring_attention",
    "shard_sequence",
    "ulysses_attention",
]


# --------------------------------------------------------------------------- sharding helpers
def shard_sequence(
    tokens: torch.Tensor, group: GroupLike = None, seq_dim: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's contiguous slice of the sequence and its global positions.

    Args:
        tokens: the full batch, e.g. token ids ``(B, S)`` (any tensor with the sequence at
            ``seq_dim``); the same on every rank of ``group``.
        group: the sequence-parallel group (``P`` ranks).
        seq_dim: the sequence dimension.

    Returns:
        ``(local, position_ids)``: ``local`` is ``tokens`` narrowed to positions
        ``r·S/P … (r+1)·S/P − 1`` along ``seq_dim``; ``position_ids`` ``(S/P,)`` int64 holds
        those global positions (pass them to ``GPT.forward``).

    Raises:
        ValueError: ``S`` is not divisible by ``P``.
    """
    size, rank = comm.group_size(group), comm.group_rank(group)
    seq = tokens.shape[seq_dim]
    if seq % size != 0:
        raise ValueError(
            f"sequence length {seq} is not divisible by the sequence-parallel group size {size}; "
            f"pad or crop the sequence to a multiple of {size}"
        )
    local = seq // size
    positions = torch.arange(rank * local, (rank + 1) * local, device=tokens.device)
    return tokens.narrow(seq_dim, rank * local, local), positions


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


def _visible(source: int, rank: int, causal: bool) -> bool:
    return not causal or source <= rank


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
        pg: dist.ProcessGroup | None,
        label: str,
    ) -> torch.Tensor:
        size, rank = dist.get_world_size(pg), dist.get_rank(pg)
        out = torch.zeros_like(q)  # (B, H, L, D)
        lse = torch.full(q.shape[:-1], float("-inf"), dtype=q.dtype, device=q.device)  # (B,H,L)
        kv = torch.stack([k, v])  # (2, B, H, L, D): one message per hop
        for step in range(size):
            source = (rank - step) % size  # the rank whose K/V block is here now
            hop = _RingHop(kv, pg, label, "forward") if step < size - 1 else None
            if _visible(source, rank, causal):
                scores = _block_scores(q, kv[0], scale, causal and source == rank)
                block_lse = torch.logsumexp(scores, dim=-1)  # (B, H, L)
                block_out = torch.matmul(torch.exp(scores - block_lse.unsqueeze(-1)), kv[1])
                new_lse = torch.logaddexp(lse, block_lse)
                out = out * torch.exp(lse - new_lse).unsqueeze(-1) + block_out * torch.exp(
                    block_lse - new_lse
                ).unsqueeze(-1)
                lse = new_lse
            if hop is not None:
                kv = hop.wait()
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.causal, ctx.scale, ctx.pg, ctx.label = causal, scale, pg, label
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:
        q, k, v, out, lse = ctx.saved_tensors
        causal, scale, pg, label = ctx.causal, ctx.scale, ctx.pg, ctx.label
        size, rank = dist.get_world_size(pg), dist.get_rank(pg)
        nxt, prev = (rank + 1) % size, (rank - 1) % size
        grad_out = grad_out.contiguous()
        delta = (grad_out * out).sum(dim=-1, keepdim=True)  # (B, H, L, 1)
        grad_q = torch.zeros_like(q)
        kv = torch.stack([k, v])  # (2, B, H, L, D)
        grad_kv = torch.zeros_like(kv)  # dK, dV of the block held now; travels with it
        for step in range(size):
            source = (rank - step) % size
            hop = _RingHop(kv, pg, label, "backward") if step < size - 1 else None
            if _visible(source, rank, causal):
                scores = _block_scores(q, kv[0], scale, causal and source == rank)
                probs = torch.exp(scores - lse.unsqueeze(-1))  # (B, H, L, L)
                grad_probs = torch.matmul(grad_out, kv[1].transpose(-1, -2))
                grad_scores = probs * (grad_probs - delta) * scale
                grad_q += torch.matmul(grad_scores, kv[0])
                grad_kv[0] += torch.matmul(grad_scores.transpose(-1, -2), q)
                grad_kv[1] += torch.matmul(probs.transpose(-1, -2), grad_out)
            # the grads follow their block to the next rank; after the last step (P hops in
            # all) each block's dK/dV arrive at the rank that owns it
            grad_kv = comm._raw_send_recv(grad_kv, nxt, prev, pg, label, "backward")
            if hop is not None:
                kv = hop.wait()
        return grad_q, grad_kv[0], grad_kv[1], None, None, None, None


def ring_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    group: GroupLike = None,
    causal: bool = True,
    scale: float | None = None,
) -> torch.Tensor:
    """Exact softmax attention over a sequence sharded contiguously over ``group``.

    Args:
        q: this rank's queries ``(B, H, L, D)`` for global positions ``r·L … (r+1)·L − 1``.
        k: this rank's keys, same shape and positions.
        v: this rank's values, same shape and positions.
        group: the sequence-parallel group (``P`` ranks, every rank the same ``L``).
        causal: apply the causal mask over *global* positions.
        scale: score scale (default ``1/sqrt(D)``, as ``scaled_dot_product_attention``).

    Returns:
        This rank's output rows ``(B, H, L, D)``, equal to rows ``r·L … (r+1)·L − 1`` of
        ``scaled_dot_product_attention`` on the gathered sequence. Differentiable in q, k, v.
    """
    _check_qkv(q, k, v)
    pg, label = comm._prepare(group)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    if dist.get_world_size(pg) == 1:
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)
    result: torch.Tensor = _RingAttention.apply(
        q.contiguous(), k.contiguous(), v.contiguous(), causal, scale, pg, label
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
) -> torch.Tensor:
    """Attention over a sequence sharded over ``group`` by swapping to head sharding (all-to-all).

    Args:
        q: this rank's queries ``(B, H, L, D)`` (all ``H`` heads, local positions).
        k: keys, same shape.
        v: values, same shape.
        group: the sequence-parallel group (``P`` ranks); ``H`` must be divisible by ``P``.
        causal: apply the causal mask over global positions.
        scale: score scale (default ``1/sqrt(D)``).

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
    group_heads = heads // size
    # (3, B, H, L, D) -> (P, 3, B, H/P, L, D): head group j goes to rank j
    qkv = torch.stack([q, k, v]).view(3, batch, size, group_heads, local, head_dim)
    qkv = qkv.permute(2, 0, 1, 3, 4, 5)
    received = comm.all_to_all(qkv.contiguous(), group=group)  # (P=source/seq chunk, 3, ...)
    # -> (3, B, H/P, P·L = S, D)
    full = received.permute(1, 2, 3, 0, 4, 5).reshape(3, batch, group_heads, size * local, head_dim)
    out = F.scaled_dot_product_attention(full[0], full[1], full[2], is_causal=causal, scale=scale)
    # (B, H/P, S, D) -> (P=seq chunk, B, H/P, L, D): sequence chunk j goes back to rank j
    out = out.reshape(batch, group_heads, size, local, head_dim).permute(2, 0, 1, 3, 4)
    back = comm.all_to_all(out.contiguous(), group=group)  # (P=source/head group, B, H/P, L, D)
    return back.permute(1, 0, 2, 3, 4).reshape(batch, heads, local, head_dim)


# --------------------------------------------------------------------------- modules
class RingAttention(nn.Module):
    """``ring_attention`` as a module: a drop-in ``gpt.Attention.core`` for sequence shards."""

    def __init__(self, group: GroupLike = None, causal: bool = True) -> None:
        super().__init__()
        self.group = group
        self.causal = causal

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``(B, H, L, D)`` × 3 → ``(B, H, L, D)``."""
        return ring_attention(q, k, v, self.group, causal=self.causal)


class UlyssesAttention(nn.Module):
    """``ulysses_attention`` as a module: a drop-in ``gpt.Attention.core`` for sequence shards."""

    def __init__(self, group: GroupLike = None, causal: bool = True) -> None:
        super().__init__()
        self.group = group
        self.causal = causal

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``(B, H, L, D)`` × 3 → ``(B, H, L, D)``."""
        return ulysses_attention(q, k, v, self.group, causal=self.causal)
