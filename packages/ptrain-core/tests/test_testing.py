"""The fork harness: results, a raising rank, a hanging rank, a rank that dies."""

from __future__ import annotations

import os
import time

import pytest
import torch
import torch.distributed as dist

from ptrain.core.testing import DistributedTimeoutError, RankFailedError, run_distributed

pytestmark = pytest.mark.distributed


class CustomError(Exception):
    pass


def _sum_ranks(rank: int, world_size: int, scale: float) -> dict[str, object]:
    value = torch.tensor([float(rank)])
    dist.all_reduce(value)
    return {
        "rank": rank,
        "sum": value * scale,
        "threads": torch.get_num_threads(),
        "env_rank": os.environ["RANK"],
    }


def test_returns_per_rank_values_in_rank_order() -> None:
    results = run_distributed(_sum_ranks, 4, 2.0)
    assert [result["rank"] for result in results] == [0, 1, 2, 3]
    for result in results:
        torch.testing.assert_close(result["sum"], torch.tensor([12.0]))
        assert result["threads"] == 1
    assert [result["env_rank"] for result in results] == ["0", "1", "2", "3"]


def _raise_on_rank_one(rank: int, world_size: int) -> int:
    if rank == 1:
        raise CustomError("bad shard 7")
    dist.barrier()  # rank 0 would wait for rank 1 forever
    return rank


def test_a_raising_rank_is_reraised_quickly_with_its_rank_and_traceback() -> None:
    start = time.monotonic()
    with pytest.raises(CustomError, match="bad shard 7") as error:
        run_distributed(_raise_on_rank_one, 2, timeout=60)
    assert time.monotonic() - start < 15
    note = "\n".join(error.value.__notes__)
    assert "raised on rank 1" in note
    assert "_raise_on_rank_one" in note  # the remote traceback names the function


def _hang_on_rank_one(rank: int, world_size: int) -> int:
    if rank == 1:
        time.sleep(600)
    return rank


def test_a_hanging_rank_is_killed_at_the_timeout_and_named() -> None:
    start = time.monotonic()
    with pytest.raises(DistributedTimeoutError) as error:
        run_distributed(_hang_on_rank_one, 3, timeout=3)
    elapsed = time.monotonic() - start
    assert 3 <= elapsed < 15
    assert error.value.hung_ranks == [1]
    message = str(error.value)
    assert "ranks [1] did not finish within 3 s" in message
    assert "finished: [0, 2]" in message
    assert "_hang_on_rank_one" in message  # where the hung rank was stuck


def _die_silently(rank: int, world_size: int) -> int:
    if rank == 0:
        os._exit(3)
    return rank


def test_a_rank_that_dies_without_a_result_is_reported() -> None:
    with pytest.raises(RankFailedError, match="rank 0 exited with code 3"):
        run_distributed(_die_silently, 2, timeout=30)


def _unpicklable_error(rank: int, world_size: int) -> int:
    class Local(Exception):  # cannot be pickled: defined inside a function
        pass

    raise Local("local failure")


def test_an_unpicklable_exception_becomes_rank_failed_error() -> None:
    with pytest.raises(RankFailedError, match=r"rank 0 failed with .*local failure"):
        run_distributed(_unpicklable_error, 1, timeout=30)


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="world_size must be a positive integer"):
        run_distributed(_sum_ranks, 0)
    with pytest.raises(ValueError, match="timeout must be positive"):
        run_distributed(_sum_ranks, 2, 1.0, timeout=0)
