"""ParallelDims validation, mesh construction and init_distributed."""

from __future__ import annotations

import socket

import pytest
import torch.distributed as dist

from ptrain.core.dist import ParallelDims, destroy_distributed, init_distributed
from ptrain.core.testing import run_distributed


def test_dp_shard_is_inferred_from_the_other_dims() -> None:
    dims = ParallelDims(dp_replicate=2, tp=2, world_size=8)
    assert dims.dp_shard == 2
    assert dims.dp_size == 4
    assert dims.size("dp_cp") == 4
    assert dims.enabled("tp") and not dims.enabled("pp")


def test_product_mismatch_names_every_dim_and_the_world_size() -> None:
    with pytest.raises(ValueError) as error:
        ParallelDims(dp_shard=2, tp=3, world_size=4)
    message = str(error.value)
    for part in ("dp_replicate(1)", "dp_shard(2)", "cp(1)", "tp(3)", "pp(1)", "= 6", "world_size"):
        assert part in message
    assert "4" in message


def test_uninferable_dp_shard_is_explained() -> None:
    with pytest.raises(ValueError, match=r"cannot infer dp_shard: world_size 6 .* = 4"):
        ParallelDims(tp=4, world_size=6)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"tp": 0, "world_size": 4}, "ParallelDims.tp must be a positive integer, got 0"),
        ({"pp": 1.5, "world_size": 4}, "ParallelDims.pp must be a positive integer"),
        ({"dp_shard": -2, "world_size": 4}, "ParallelDims.dp_shard must be a positive integer"),
        ({"world_size": 0}, "ParallelDims.world_size must be a positive integer"),
        ({"dp_shard": 2, "cp": 2, "ep": 3, "world_size": 4}, "ep(3) must divide"),
    ],
)
def test_invalid_dims_raise_value_error_naming_the_field(kwargs: dict, needle: str) -> None:
    with pytest.raises(ValueError) as error:
        ParallelDims(**kwargs)
    assert needle in str(error.value)


def test_expert_parallel_is_carved_out_of_data_shards_not_multiplied() -> None:
    dims = ParallelDims(dp_shard=4, tp=2, ep=4, world_size=8)
    assert dims.size("ep") == 4 and dims.size("dp_shard_mod_ep") == 1
    with pytest.raises(ValueError, match="unknown mesh dim 'expert'"):
        dims.size("expert")


def _mesh_layout(rank: int, world_size: int) -> dict[str, list[int]]:
    dims = ParallelDims(dp_replicate=2, dp_shard=2, tp=2, ep=2, world_size=world_size)
    mesh = dims.build_mesh("cpu")
    assert mesh.mesh_dim_names == ("pp", "dp_replicate", "dp_shard", "cp", "tp")
    layout = {}
    for name in ("tp", "dp_shard", "dp_replicate", "dp", "dp_cp", "dp_shard_cp", "ep", "pp"):
        layout[name] = dist.get_process_group_ranks(dims.get_group(name))
    return layout


@pytest.mark.distributed
def test_mesh_groups_follow_the_torchtitan_order() -> None:
    layouts = run_distributed(_mesh_layout, 8)
    # ranks = arange(8).reshape(pp=1, dp_replicate=2, dp_shard=2, cp=1, tp=2)
    assert layouts[0]["tp"] == [0, 1]
    assert layouts[0]["dp_shard"] == [0, 2]
    assert layouts[0]["dp_replicate"] == [0, 4]
    assert layouts[0]["dp"] == [0, 2, 4, 6]
    assert layouts[0]["dp_cp"] == [0, 2, 4, 6]
    assert layouts[0]["ep"] == [0, 2]  # ep spans the data-shard ranks
    assert layouts[0]["pp"] == [0]
    assert layouts[5]["tp"] == [4, 5]
    assert layouts[5]["dp"] == [1, 3, 5, 7]
    assert layouts[5]["ep"] == [5, 7]


def _wrong_world(rank: int, world_size: int) -> str:
    try:
        ParallelDims(dp_shard=4, world_size=4).build_mesh("cpu")
    except ValueError as error:
        return str(error)
    return ""


@pytest.mark.distributed
def test_build_mesh_checks_the_real_world_size() -> None:
    message = run_distributed(_wrong_world, 2)[0]
    assert "world_size is 4 but the process group has 2 ranks" in message


def _info(rank: int, world_size: int) -> tuple[int, int, str]:
    info = init_distributed()
    return info.rank, info.world_size, info.backend


@pytest.mark.distributed
def test_init_distributed_describes_an_existing_group() -> None:
    assert run_distributed(_info, 2) == [(0, 2, "gloo"), (1, 2, "gloo")]


def test_init_distributed_falls_back_to_a_single_process(monkeypatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "PTRAIN_BACKEND"):
        monkeypatch.delenv(name, raising=False)
    assert not dist.is_initialized()
    try:
        info = init_distributed()
        assert (info.rank, info.world_size, info.backend) == (0, 1, "gloo")
        assert dist.get_world_size() == 1
    finally:
        destroy_distributed()
    assert not dist.is_initialized()


def test_init_distributed_reads_torchrun_environment(monkeypatch) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    try:
        info = init_distributed(backend="gloo")
        assert (info.rank, info.world_size, info.local_rank) == (0, 1, 0)
    finally:
        destroy_distributed()


def test_init_distributed_rejects_inconsistent_environment(monkeypatch) -> None:
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match=r"RANK=3 is outside \[0, WORLD_SIZE=2\)"):
        init_distributed(backend="gloo")
    monkeypatch.setenv("RANK", "zero")
    with pytest.raises(ValueError, match="RANK='zero' is not an integer"):
        init_distributed(backend="gloo")
