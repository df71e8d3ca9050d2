"""Ring and Ulysses sequence parallelism against plain scaled_dot_product_attention and the GPT."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ptrain.core import comm, sp
from ptrain.core.models.gpt import GPT, GPTConfig, synthetic_batch
from ptrain.core.testing import run_distributed

pytestmark = pytest.mark.distributed

ATOL = 1e-10


LAYOUTS: tuple[sp.SequenceLayout, ...] = ("contiguous", "zigzag")


def _attention_errors(
    rank: int, world_size: int, kind: str, causal: bool
) -> dict[str, tuple[list[float], dict[str, tuple[int, float]]]]:
    """For each layout: max errors of out, dq, dk, dv vs SDPA, and (calls, blocks) per phase."""
    generator = torch.Generator().manual_seed(0)
    # (B, H, S, D) with S = 24: 12 or 6 positions per rank
    q, k, v, grad = (
        torch.randn(2, 4, 24, 8, generator=generator, dtype=torch.float64) for _ in range(4)
    )
    ref_q, ref_k, ref_v = (t.clone().requires_grad_() for t in (q, k, v))
    reference = F.scaled_dot_product_attention(ref_q, ref_k, ref_v, is_causal=causal)
    reference.backward(grad)
    results: dict[str, tuple[list[float], dict[str, tuple[int, float]]]] = {}
    for layout in LAYOUTS:

        def local(t: torch.Tensor, layout: sp.SequenceLayout = layout) -> torch.Tensor:
            return sp.shard_sequence(t, None, seq_dim=2, layout=layout)[0]

        local_q, local_k, local_v = (local(t).clone().requires_grad_() for t in (q, k, v))
        attention: torch.nn.Module = (
            sp.RingAttention(None, causal, layout)
            if kind == "ring"
            else sp.UlyssesAttention(None, causal, layout)
        )
        with comm.CommTracker() as tracker:
            out = attention(local_q, local_k, local_v)
            out.backward(local(grad))
        errors = [(out - local(reference)).abs().max().item()]
        for mine, ref in ((local_q, ref_q), (local_k, ref_k), (local_v, ref_v)):
            assert mine.grad is not None and ref.grad is not None
            errors.append((mine.grad - local(ref.grad)).abs().max().item())
        block = local_q.numel() * local_q.element_size()  # bytes of one (B, H, L, D) block
        calls = {
            key: (entry["calls"], entry["bytes_sent"] / block)
            for key, entry in tracker.as_dict(by="phase").items()
        }
        results[layout] = (errors, calls)
    return results


@pytest.mark.parametrize("world_size", [2, 4])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("kind", ["ring", "ulysses"])
def test_attention_equals_sdpa(kind: str, causal: bool, world_size: int) -> None:
    per_rank = run_distributed(_attention_errors, world_size, kind, causal, timeout=60)
    for rank, results in enumerate(per_rank):
        assert set(results) == set(LAYOUTS)
        for layout, (errors, calls) in results.items():
            assert max(errors) < ATOL, f"rank {rank}, {layout}: out/dq/dk/dv errors {errors}"
            p = world_size
            if kind == "ring":
                # (calls, blocks sent): forward P−1 hops of (K, V) = 2(P−1) blocks, the
                # design's 2·(P−1)·b·(S/P)·h; backward P−1 hops of (K, V), P of (dK, dV)
                assert calls == {
                    "send_recv:forward": (p - 1, 2 * (p - 1)),
                    "send_recv:backward": (2 * p - 1, 2 * (p - 1) + 2 * p),
                }, calls
            else:
                # one all-to-all in (q, k, v stacked), one out; each sends (P−1)/P of its input
                assert calls == {
                    "all_to_all:forward": (2, 3 * (p - 1) / p + (p - 1) / p),
                    "all_to_all:backward": (2, (p - 1) / p + 3 * (p - 1) / p),
                }, calls


def test_zigzag_balances_the_causal_ring_work() -> None:
    """Score entries each rank computes over the whole ring (the work the causal mask leaves)."""
    size, local = 4, 8

    def work(layout: str) -> list[int]:
        totals = []
        for rank in range(size):
            total = 0
            for source in range(size):
                plan = sp._block_plan(source, rank, size, local, True, layout)
                if plan is not None:
                    rows, cols, _ = plan
                    total += len(range(local)[rows]) * len(range(local)[cols])
            totals.append(total)
        return totals

    assert work("contiguous") == [64, 128, 192, 256]  # the last rank does 4× the first's
    assert len(set(work("zigzag"))) == 1  # every rank the same
    positions = [sp.sequence_positions(16, 2, r, "zigzag").tolist() for r in range(2)]
    assert positions == [[0, 1, 2, 3, 12, 13, 14, 15], [4, 5, 6, 7, 8, 9, 10, 11]]


def _uneven(rank: int, world_size: int) -> list[str]:
    tokens = torch.zeros(2, 30, dtype=torch.long)
    with pytest.raises(ValueError, match="sequence length 30 is not divisible") as contiguous:
        sp.shard_sequence(tokens, None)
    tokens = torch.zeros(2, 20, dtype=torch.long)  # divisible by 4, not by 2·4
    with pytest.raises(ValueError, match="sequence length 20 is not divisible") as zigzag:
        sp.shard_sequence(tokens, None, layout="zigzag")
    return [str(contiguous.value), str(zigzag.value)]


def test_sequence_not_divisible_by_ring_size_is_a_clear_error() -> None:
    messages = run_distributed(_uneven, 4, timeout=60)
    assert "group size 4" in messages[0][0] and "multiple of 4" in messages[0][0]
    assert "multiple of 8" in messages[0][1]


def _bad_heads(rank: int, world_size: int) -> None:
    q = torch.randn(1, 3, 4, 8)  # 3 heads over 2 ranks
    with pytest.raises(ValueError, match=r"heads on this rank \(3\) to be divisible"):
        sp.ulysses_attention(q, q, q, None)


def test_ulysses_heads_not_divisible_is_a_clear_error() -> None:
    run_distributed(_bad_heads, 2, timeout=60)


def _gpt_sequence_parallel(
    rank: int, world_size: int, kind: str, layout: sp.SequenceLayout
) -> dict[str, float]:
    torch.set_default_dtype(torch.float64)
    config = GPTConfig.debug()
    tokens, targets = synthetic_batch(config, batch_size=2, seed=3)
    serial = GPT(config)
    serial.init_weights(seed=0)
    serial_loss = F.cross_entropy(serial(tokens).flatten(0, 1), targets.flatten())
    serial_loss.backward()

    model = GPT(config)
    model.init_weights(seed=0)
    for block in model.blocks:
        core = (
            sp.RingAttention(None, layout=layout)
            if kind == "ring"
            else sp.UlyssesAttention(None, layout=layout)
        )
        block.get_submodule("attn").core = core
    local_tokens, positions = sp.shard_sequence(tokens, None, layout=layout)
    local_targets, _ = sp.shard_sequence(targets, None, layout=layout)
    logits = model(local_tokens, position_ids=positions)  # (B, S/P, V)
    local_loss = F.cross_entropy(logits.flatten(0, 1), local_targets.flatten())
    local_loss.backward()
    sp.average_gradients(model, None)
    loss = comm.all_reduce(local_loss.detach(), op="avg")
    grad_error = max(
        (mine.grad - ref.grad).abs().max().item()
        for mine, ref in zip(model.parameters(), serial.parameters(), strict=True)
        if mine.grad is not None and ref.grad is not None
    )
    return {"loss": loss.item(), "serial": serial_loss.item(), "grad_error": grad_error}


@pytest.mark.parametrize(
    ("kind", "layout"), [("ring", "contiguous"), ("ring", "zigzag"), ("ulysses", "contiguous")]
)
def test_gpt_with_sequence_parallel_core_equals_serial(
    kind: str, layout: sp.SequenceLayout
) -> None:
    for result in run_distributed(_gpt_sequence_parallel, 4, kind, layout, timeout=90):
        assert abs(result["loss"] - result["serial"]) < ATOL
        assert result["grad_error"] < ATOL, result
