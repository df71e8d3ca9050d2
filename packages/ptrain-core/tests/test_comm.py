"""Every collective, forward and backward, against a single-process reference at 2 and 4 ranks."""

from __future__ import annotations

import pytest
import torch

from ptrain.core import comm
from ptrain.core.testing import run_distributed

pytestmark = pytest.mark.distributed


def _randn(seed: int, *shape: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator, dtype=torch.float64)


def _uneven_splits(world_size: int) -> list[list[int]]:
    """splits[r][j]: rows rank r sends to rank j (some zero)."""
    return [[(r + 2 * j) % 3 for j in range(world_size)] for r in range(world_size)]


def _run_all_collectives(rank: int, world_size: int) -> dict[str, object]:
    """On each rank: run every collective with seeded inputs and upstream grads."""
    out: dict[str, object] = {}

    def run(name: str, fn, x: torch.Tensor, grad_seed: int) -> None:
        x = x.clone().requires_grad_()
        y = fn(x)
        g = _randn(grad_seed + rank, *y.shape)
        y.backward(g)
        out[name] = (x.detach(), y.detach(), g, x.grad)

    run("all_gather_0", lambda x: comm.all_gather(x, dim=0), _randn(rank, 2, 3), 100)
    run("all_gather_1", lambda x: comm.all_gather(x, dim=1), _randn(rank, 2, 3), 200)
    run("all_gather_neg", lambda x: comm.all_gather(x, dim=-1), _randn(rank, 2, 2, 3), 250)
    run(
        "reduce_scatter_0",
        lambda x: comm.reduce_scatter(x, dim=0),
        _randn(rank, 2 * world_size, 3),
        300,
    )
    run(
        "reduce_scatter_1",
        lambda x: comm.reduce_scatter(x, dim=1),
        _randn(rank, 3, 2 * world_size),
        400,
    )
    run("all_reduce_sum", lambda x: comm.all_reduce(x), _randn(rank, 4, 2), 500)
    run("all_reduce_avg", lambda x: comm.all_reduce(x, op="avg"), _randn(rank, 4, 2), 600)
    run("all_to_all_even", lambda x: comm.all_to_all(x), _randn(rank, 2 * world_size, 3), 700)
    splits = _uneven_splits(world_size)
    incoming = [splits[source][rank] for source in range(world_size)]
    run(
        "all_to_all_uneven",
        lambda x: comm.all_to_all(x, incoming, splits[rank]),
        _randn(rank, sum(splits[rank]), 3),
        800,
    )
    run(
        "all_to_all_auto",
        lambda x: comm.all_to_all(x, input_split_sizes=splits[rank]),
        _randn(rank, sum(splits[rank]), 3),
        850,
    )
    run("broadcast", lambda x: comm.broadcast(x, src=1), _randn(rank, 3, 2), 900)
    run("ring_shift", lambda x: comm.ring_shift(x), _randn(rank, 3), 1000)
    run("ring_shift_back", lambda x: comm.ring_shift(x, offset=-1), _randn(rank, 3), 1100)
    # max is not differentiable; check its values only.
    out["all_reduce_max"] = comm.all_reduce(_randn(rank, 5), op="max")
    # send/recv: even ranks send to the next odd rank.
    x = _randn(rank, 2, 2).requires_grad_()
    if rank % 2 == 0:
        token = comm.send(x * 3, dst=rank + 1)
        torch.autograd.backward([token])
        out["send"] = (x.detach(), x.grad)
    else:
        received = comm.recv((2, 2), src=rank - 1, dtype=torch.float64)
        (received * _randn(1200 + rank, 2, 2)).sum().backward()
        out["recv"] = received.detach()
    return out


@pytest.mark.parametrize("world_size", [2, 4])
def test_collectives_match_single_process_reference(world_size: int) -> None:
    results = run_distributed(_run_all_collectives, world_size)
    n = world_size

    def parts(name: str, index: int) -> list[torch.Tensor]:
        return [results[r][name][index] for r in range(n)]

    for name, dim in (("all_gather_0", 0), ("all_gather_1", 1), ("all_gather_neg", 2)):
        xs, ys, gs = parts(name, 0), parts(name, 1), parts(name, 2)
        expected = torch.cat(xs, dim=dim)
        grad_total = sum(gs)
        for r in range(n):
            torch.testing.assert_close(ys[r], expected)
            own = grad_total.narrow(dim, r * xs[r].shape[dim], xs[r].shape[dim])
            torch.testing.assert_close(results[r][name][3], own)

    for name, dim in (("reduce_scatter_0", 0), ("reduce_scatter_1", 1)):
        xs, ys, gs = parts(name, 0), parts(name, 1), parts(name, 2)
        total = sum(xs)
        for r in range(n):
            torch.testing.assert_close(ys[r], total.chunk(n, dim=dim)[r])
            torch.testing.assert_close(results[r][name][3], torch.cat(gs, dim=dim))

    for name, scale in (("all_reduce_sum", 1.0), ("all_reduce_avg", 1.0 / n)):
        xs, ys, gs = parts(name, 0), parts(name, 1), parts(name, 2)
        for r in range(n):
            torch.testing.assert_close(ys[r], sum(xs) * scale)
            torch.testing.assert_close(results[r][name][3], sum(gs) * scale)

    even = [[2] * n for _ in range(n)]
    for name, splits in (
        ("all_to_all_even", even),
        ("all_to_all_uneven", _uneven_splits(n)),
        ("all_to_all_auto", _uneven_splits(n)),
    ):
        xs, ys, gs = parts(name, 0), parts(name, 1), parts(name, 2)
        blocks = [list(torch.split(xs[r], splits[r])) for r in range(n)]
        for r in range(n):
            torch.testing.assert_close(ys[r], torch.cat([blocks[s][r] for s in range(n)]))
        # grad of rank r's block j = the piece of rank j's upstream grad that came from r
        incoming = [[splits[s][r] for s in range(n)] for r in range(n)]
        grad_blocks = [list(torch.split(gs[r], incoming[r])) for r in range(n)]
        for r in range(n):
            expected = torch.cat([grad_blocks[j][r] for j in range(n)])
            torch.testing.assert_close(results[r][name][3], expected)

    xs, ys, gs = parts("broadcast", 0), parts("broadcast", 1), parts("broadcast", 2)
    for r in range(n):
        torch.testing.assert_close(ys[r], xs[1])
        expected_grad = sum(gs) if r == 1 else torch.zeros_like(xs[r])
        torch.testing.assert_close(results[r]["broadcast"][3], expected_grad)

    for name, offset in (("ring_shift", 1), ("ring_shift_back", -1)):
        xs, ys, gs = parts(name, 0), parts(name, 1), parts(name, 2)
        for r in range(n):
            torch.testing.assert_close(ys[r], xs[(r - offset) % n])
            torch.testing.assert_close(results[r][name][3], gs[(r + offset) % n])

    maxima = torch.stack([_randn(r, 5) for r in range(n)]).amax(dim=0)
    for r in range(n):
        torch.testing.assert_close(results[r]["all_reduce_max"], maxima)

    for r in range(0, n, 2):
        x, grad = results[r]["send"]
        torch.testing.assert_close(results[r + 1]["recv"], x * 3)
        torch.testing.assert_close(grad, 3 * _randn(1200 + r + 1, 2, 2))


def _mesh_collectives(rank: int, world_size: int) -> dict[str, object]:
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))
    x = torch.full((1, 2), float(rank), dtype=torch.float64)
    with comm.CommTracker() as tracker:
        by_mesh = comm.all_gather(x, group=mesh["tp"])
        by_tuple = comm.all_reduce(x, group=(mesh, "dp"))
        by_group = comm.broadcast(x, src=1, group=mesh.get_group("tp"))
    return {
        "tp_rank": comm.group_rank(mesh["tp"]),
        "gathered": by_mesh,
        "reduced": by_tuple,
        "broadcast": by_group,
        "groups": sorted(tracker.as_dict(by="group")),
    }


def test_collectives_take_mesh_dims_and_ranks_within_the_group() -> None:
    results = run_distributed(_mesh_collectives, 4)
    # (2, 2) mesh: tp groups {0,1} {2,3}; dp groups {0,2} {1,3}.
    for rank, result in enumerate(results):
        tp_peers = [rank - rank % 2, rank - rank % 2 + 1]
        dp_peers = [rank % 2, rank % 2 + 2]
        assert result["tp_rank"] == rank % 2
        torch.testing.assert_close(
            result["gathered"], torch.tensor([[p, p] for p in tp_peers], dtype=torch.float64)
        )
        torch.testing.assert_close(
            result["reduced"], torch.full((1, 2), float(sum(dp_peers)), dtype=torch.float64)
        )
        # src=1 is the second rank *of the tp group*, not global rank 1.
        torch.testing.assert_close(
            result["broadcast"], torch.full((1, 2), float(tp_peers[1]), dtype=torch.float64)
        )
        assert result["groups"] == ["all_gather@tp", "all_reduce@dp", "broadcast@tp"]


def _tracked_collectives(rank: int, world_size: int) -> dict[str, object]:
    x = torch.ones(1000, requires_grad=True)  # fp32: 4000 bytes
    splits = _uneven_splits(world_size)[rank]
    with comm.CommTracker() as tracker:
        comm.all_gather(x).sum().backward()
        forward_only = comm.all_reduce(x.detach())
        comm.reduce_scatter(torch.ones(4000))
        comm.broadcast(torch.ones(1000), src=0)
        comm.all_to_all(torch.ones(sum(splits), 10), input_split_sizes=splits)
    del forward_only
    with comm.CommTracker() as nested_outer:
        with comm.CommTracker() as nested_inner:
            comm.all_reduce(torch.ones(8))
        comm.all_reduce(torch.ones(8))
    return {
        "ops": tracker.as_dict(),
        "phases": tracker.as_dict(by="phase"),
        "table": tracker.table(),
        "outer_calls": len(nested_outer.records),
        "inner_calls": len(nested_inner.records),
        "all_ranks": tracker.gather(),
    }


def test_comm_tracker_counts_hand_computed_bytes() -> None:
    world_size = 4
    results = run_distributed(_tracked_collectives, world_size)
    n, nbytes = world_size, 4000
    splits = _uneven_splits(world_size)
    for rank, result in enumerate(results):
        ops = result["ops"]
        # all_gather of 1000 fp32: send own 4000 B to 3 peers, receive 3 x 4000 B
        assert ops["all_gather"] == {"calls": 1, "bytes_sent": 12000, "bytes_received": 12000}
        # its backward is a reduce-scatter of the 4000-element grad (out 1000 elements), plus
        # the explicit reduce-scatter of 4000 elements: (n-1) * 4000 B each
        assert ops["reduce_scatter"] == {"calls": 2, "bytes_sent": 24000, "bytes_received": 24000}
        # ring all-reduce: 2 (n-1)/n S
        assert ops["all_reduce"]["bytes_sent"] == 2 * (n - 1) * nbytes // n == 6000
        expected_broadcast = (
            {"calls": 1, "bytes_sent": 3 * nbytes, "bytes_received": 0}
            if rank == 0
            else {"calls": 1, "bytes_sent": 0, "bytes_received": nbytes}
        )
        assert ops["broadcast"] == expected_broadcast
        row = 10 * 4
        sent_rows = sum(c for j, c in enumerate(splits[rank]) if j != rank)
        received_rows = sum(splits[s][rank] for s in range(n) if s != rank)
        assert ops["all_to_all"]["bytes_sent"] == sent_rows * row
        assert ops["all_to_all"]["bytes_received"] == received_rows * row
        assert ops["all_to_all_splits"]["calls"] == 1
        assert result["phases"]["reduce_scatter:backward"]["calls"] == 1
        assert "all_gather" in result["table"] and "total" in result["table"]
        assert result["outer_calls"] == 2 and result["inner_calls"] == 1
        assert result["all_ranks"][rank] == ops
    # Over the group, what is sent is what is received, for every op.
    for op in ("all_gather", "reduce_scatter", "all_reduce", "broadcast", "all_to_all"):
        sent = sum(result["ops"][op]["bytes_sent"] for result in results)
        received = sum(result["ops"][op]["bytes_received"] for result in results)
        assert sent == received, op


def _bad_arguments(rank: int, world_size: int) -> list[str]:
    messages = []
    for call in (
        lambda: comm.reduce_scatter(torch.ones(3)),
        lambda: comm.all_to_all(torch.ones(3, 2)),
        lambda: comm.all_to_all(torch.ones(3, 2), input_split_sizes=[1, 1]),
        lambda: comm.all_gather(torch.ones(2), dim=3),
        lambda: comm.broadcast(torch.ones(2), src=5),
        lambda: comm.all_reduce(torch.ones(2), op="prod"),
    ):
        try:
            call()
        except ValueError as error:
            messages.append(str(error))
    return messages


def test_bad_arguments_raise_clear_errors_before_communicating() -> None:
    messages = run_distributed(_bad_arguments, 2, timeout=30)[0]
    assert len(messages) == 6
    assert "not divisible by the group size 2" in messages[0]
    assert "cannot be split evenly over 2 ranks" in messages[1]
    assert "must have 2 entries summing to 3" in messages[2]
    assert "out of range" in messages[3]
    assert "outside the group of size 2" in messages[4]
    assert "'prod'" in messages[5]


def test_resolve_group_rejects_unknown_types() -> None:
    with pytest.raises(TypeError, match="group must be"):
        comm.resolve_group("tp")  # type: ignore[arg-type]
