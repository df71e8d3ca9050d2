"""Bytes each tensor-parallel mode sends per device for one MLP block, measured and closed-form.

The block is ``Linear(h → 4h, no bias) → GELU → Linear(4h → h, no bias)`` on ``B`` tokens
(B = 4096, h = 1024, fp32), forward + backward, input gradient included. ``run_comm_bench()``
runs it on forked gloo ranks under ``ptrain.core.comm.CommTracker`` and returns the rows of
``ptrain-core bench comm``; every rank must send the same number of bytes, and that number must
equal ``formula_bytes`` exactly.

Closed forms, in elements sent per device for one Linear ``X[B, n]·W[n, m]`` (multiply by 4 for
fp32). They follow CommTracker's cost model: all-reduce 2(p−1)/p·S (ring), all-gather
(p−1)·S_local, reduce-scatter (p−1)·S_out, broadcast (p−1)·S from the source only, reduce S from
each non-root:

- **1D** (P ranks; column-parallel fc1, row-parallel fc2): one all-reduce of a ``[B, h]`` tensor
  per Linear (dX of fc1 in backward, Y of fc2 in forward) → block: ``2·2(P−1)/P·B·h``.
- **2D** SUMMA (P = q²; blocks X [B/q, n/q], A [n/q, m/q]): forward q broadcasts of X in the
  row and of A in the column; backward re-broadcasts A + reduces dX, re-broadcasts X + reduces
  dA. Each rank is the root of one step in q, so per Linear: ``3(q−1)·(B/q·n/q + n/q·m/q)``.
- **2.5D** Tesseract (P = q²·d; X [B/(dq), n/q], A [n/q, m/q] replicated over depth): as 2D
  within a depth layer, plus the all-reduce of dA over the d layers:
  ``3(q−1)·(B/(dq)·n/q + n/q·m/q) + 2(d−1)/d·(n/q·m/q)``.
- **3D** (P = q³; X [B/q², n/q], W [n/q, m/q²], Y [B/q², m/q]): all-gather X and W,
  reduce-scatter Y; backward all-gathers dY, reduce-scatters dX and dW:
  ``2(q−1)·(B·n + n·m + B·m)/q³``.

For B = 4096, h = 1024 this gives the design doc's values: P=4: 1D 48 MiB, 2D 84 MiB; P=8: 1D
56 MiB, 2.5D (q=2, d=2) 62 MiB, 3D 48 MiB; P=64: 1D 63, 2D 36.75, 2.5D (q=4, d=4) 32.25, 3D 18
MiB. Biases would add a small all-reduce (2D/2.5D/3D) and are left out, as in the design doc.
"""

from __future__ import annotations

import time
from typing import Any

import torch

__all__ = [
    "BENCH_HIDDEN",
    "BENCH_TOKENS",
    "COMM_CONFIGS",
    "formula_bytes",
    "linear_formula_elements",
    "measure_comm",
    "run_comm_bench",
]

BENCH_TOKENS = 4096
BENCH_HIDDEN = 1024
#: (mode, world size, 2.5D depth) measured by ``ptrain-core bench comm``.
COMM_CONFIGS: tuple[tuple[str, int, int], ...] = (
    ("1d", 4, 1),
    ("1d", 8, 1),
    ("2d", 4, 1),
    ("2.5d", 8, 2),
    ("3d", 8, 1),
)


def _side(mode: str, world_size: int, depth: int) -> int:
    from ptrain.core.tp.groups import check_tp_size

    q, _ = check_tp_size(mode, world_size, depth)
    return q


def linear_formula_elements(
    mode: str, world_size: int, tokens: int, n: int, m: int, depth: int = 1
) -> int:
    """Elements one device sends for one Linear ``X[tokens, n]·W[n, m]``, forward + backward.

    Integer arithmetic in the same order as CommTracker, so the result is exact.
    """
    q = _side(mode, world_size, depth)
    if mode == "1d":  # one all-reduce of [tokens, n] (column) or [tokens, m] (row): see bench
        raise ValueError("1D depends on the Linear's role; use formula_bytes for the block")
    if mode == "2d":
        return 3 * (q - 1) * ((tokens // q) * (n // q) + (n // q) * (m // q))
    if mode == "2.5d":
        block = (n // q) * (m // q)
        return 3 * (q - 1) * ((tokens // (depth * q)) * (n // q) + block) + (
            2 * (depth - 1) * block // depth
        )
    if mode == "3d":
        cube = q**3
        return 2 * (q - 1) * (tokens * n // cube + n * m // cube + tokens * m // cube)
    raise ValueError(f"unknown tensor-parallel mode {mode!r}")


def formula_bytes(
    mode: str,
    world_size: int,
    depth: int = 1,
    tokens: int = BENCH_TOKENS,
    hidden: int = BENCH_HIDDEN,
    element_size: int = 4,
) -> int:
    """Closed-form bytes one device sends for the MLP block (h → 4h → h), forward + backward."""
    if mode == "1d":
        p = world_size
        per_all_reduce = 2 * (p - 1) * (tokens * hidden * element_size) // p
        return 2 * per_all_reduce  # dX of fc1 (backward) + Y of fc2 (forward)
    ffn = 4 * hidden
    elements = linear_formula_elements(mode, world_size, tokens, hidden, ffn, depth)
    elements += linear_formula_elements(mode, world_size, tokens, ffn, hidden, depth)
    return elements * element_size


def _rank_measure(
    rank: int,
    world_size: int,
    mode: str,
    depth: int,
    tokens: int,
    hidden: int,
    repeats: int,
    serial: bool,
) -> dict[str, Any]:
    from ptrain.core.comm import CommTracker
    from ptrain.core.dist import ParallelDims
    from ptrain.core.models.gpt import MLP, GPTConfig
    from ptrain.core.tp.api import apply_tp
    from ptrain.core.tp.groups import build_tp_groups
    from ptrain.core.tp.layers import batch_groups, hidden_group

    dims = ParallelDims(dp_shard=1, tp=world_size, world_size=world_size)
    groups = build_tp_groups(mode, dims.build_mesh("cpu")["tp"], depth=depth)
    config = GPTConfig(dim=hidden, n_heads=1, mlp_ratio=4, bias=False, vocab_size=8, seq_len=8)
    with torch.device("meta"):
        mlp = MLP(config)
    apply_tp(mlp, mode, groups, device="cpu")  # shards only: no full weight on any rank
    generator = torch.Generator().manual_seed(rank)
    with torch.no_grad():
        for param in mlp.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
    rows = tokens
    for group in batch_groups(groups, "a"):
        rows //= group.size
    split = hidden_group(groups, "a")
    cols = hidden // (split.size if split is not None else 1)
    x = torch.randn(rows, cols, generator=generator).requires_grad_(True)
    seconds: list[float] = []
    serial_seconds: list[float] = []
    reference = MLP(config) if serial and rank == 0 else None
    full_x = torch.randn(tokens, hidden, requires_grad=True) if reference is not None else None
    tracker = CommTracker()
    for step in range(repeats):
        x.grad = None
        mlp.zero_grad(set_to_none=True)
        torch.distributed.barrier()
        start = time.perf_counter()
        if step == 0:
            with tracker:
                mlp(x).sum().backward()
        else:
            mlp(x).sum().backward()
        seconds.append(time.perf_counter() - start)
        if serial:  # interleaved: rank 0 runs the serial block while the others wait
            torch.distributed.barrier()
            if reference is not None and full_x is not None:
                start = time.perf_counter()
                reference(full_x).sum().backward()
                serial_seconds.append(time.perf_counter() - start)
            torch.distributed.barrier()
    return {
        "serial_seconds": serial_seconds,
        "bytes_sent": tracker.bytes_sent,
        "calls": len(tracker.records),
        "by_op": tracker.as_dict("op"),
        "seconds": seconds,
    }


def measure_comm(
    mode: str,
    world_size: int,
    depth: int = 1,
    *,
    tokens: int = BENCH_TOKENS,
    hidden: int = BENCH_HIDDEN,
    repeats: int = 1,
    serial: bool = False,
    timeout: float = 600.0,
) -> dict[str, Any]:
    """Run the MLP block once per repeat on ``world_size`` forked ranks; bytes from the first.

    With ``serial=True`` rank 0 also times the unsharded block after every step (the other
    ranks wait), returned as ``serial_seconds``.

    Returns:
        ``{"mode", "world_size", "depth", "measured_bytes", "formula_bytes", "calls",
        "by_op", "per_rank_bytes", "seconds", "serial_seconds"}`` — ``seconds`` holds the
        slowest rank's time of each repeat (fwd + bwd).

    Raises:
        RuntimeError: the ranks sent different numbers of bytes.
    """
    from ptrain.core.testing import run_distributed

    _side(mode, world_size, depth)  # validate before forking
    results = run_distributed(
        _rank_measure, world_size, mode, depth, tokens, hidden, repeats, serial, timeout=timeout
    )
    per_rank = [int(r["bytes_sent"]) for r in results]
    if len(set(per_rank)) != 1:
        raise RuntimeError(f"{mode}@{world_size}: ranks sent different byte counts {per_rank}")
    slowest = [max(r["seconds"][i] for r in results) for i in range(repeats)]
    return {
        "mode": mode,
        "world_size": world_size,
        "depth": depth,
        "measured_bytes": per_rank[0],
        "formula_bytes": formula_bytes(mode, world_size, depth, tokens, hidden),
        "calls": int(results[0]["calls"]),
        "by_op": results[0]["by_op"],
        "per_rank_bytes": per_rank,
        "seconds": slowest,
        "serial_seconds": results[0]["serial_seconds"],
    }


def run_comm_bench(
    configs: tuple[tuple[str, int, int], ...] = COMM_CONFIGS,
) -> list[dict[str, Any]]:
    """The rows of ``ptrain-core bench comm``: ``{"mode", "world_size", "measured_bytes",
    "formula_bytes"}`` for 1D at 4 and 8 ranks, 2D at 4, 2.5D at 8 (q=2, d=2), 3D at 8."""
    rows = []
    for mode, world_size, depth in configs:
        result = measure_comm(mode, world_size, depth)
        rows.append(
            {
                "mode": mode,
                "world_size": world_size,
                "measured_bytes": result["measured_bytes"],
                "formula_bytes": result["formula_bytes"],
            }
        )
    return rows
