"""parallelize(): the debug GPT trained under parallel layouts equals single-process training;
plan errors; the train_gpt command line.

Tolerance: every step's global loss within 1e-4 of the single-process loss (about 2e-5
relative; fp32, the layouts only change the order of sums, which AdamW's m/√v amplifies over 10
steps). Observed: below 1e-6 for the TP layouts, 1.5e-5 at step 10 for ring attention + ZeRO-3.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import pytest

from ptrain.core.dist import ParallelDims
from ptrain.core.models.gpt import GPT, GPTConfig
from ptrain.core.parallel import ParallelPlan, parallelize
from ptrain.core.testing import run_distributed
from ptrain.core.train_gpt import TrainSettings, main, train_gpt

TOLERANCE = 1e-4
STEPS = 10

# (name, ParallelDims kwargs, plan, optimizer, steps): the two layouts for 10 steps,
# the other compositions for 4 (to keep the suite short).
LAYOUTS: list[tuple[str, dict[str, int], dict[str, Any], str, int]] = [
    ("dp2-tp2-1d", {"dp_shard": 2, "tp": 2}, {"tp": "1d"}, "adamw", STEPS),
    ("tp4-2d", {"dp_shard": 1, "tp": 4}, {"tp": "2d"}, "adamw", STEPS),
    ("tp4-2d+1d-blocks-lamb", {"dp_shard": 1, "tp": 4}, {"tp": ["2d", "1d"]}, "lamb", 4),
    ("dp2-cp2-ring-zero3", {"dp_shard": 2, "cp": 2}, {"sp": "ring", "dp": "zero3"}, "adamw", 4),
    ("dp2-tp2-torch1d-zero1-lamb", {"dp_shard": 2, "tp": 2},
     {"tp": "1d", "tp_backend": "torch", "dp": "zero1"}, "lamb", 4),
    ("pp2-dp2-zero3-lamb", {"dp_shard": 2, "pp": 2}, {"dp": "zero3"}, "lamb", 4),
    ("dp2-tp2-1d-zero3-lamb", {"dp_shard": 2, "tp": 2}, {"tp": "1d", "dp": "zero3"}, "lamb", 4),
]  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_thread")


def _settings(optimizer: str, steps: int = STEPS) -> TrainSettings:
    return TrainSettings(steps=steps, batch_size=8, optimizer=optimizer, lr=1e-2)


def _rank_layouts(rank: int, world: int) -> dict[str, list[float]]:
    out = {}
    for name, dims_kwargs, plan, optimizer, steps in LAYOUTS:
        dims = ParallelDims(world_size=world, **dims_kwargs)
        out[name] = train_gpt(dims, plan, _settings(optimizer, steps))
    return out


@functools.cache
def _single_process(optimizer: str) -> list[float]:
    return run_distributed(_rank_single, 1, optimizer, timeout=120)[0]


def _rank_single(rank: int, world: int, optimizer: str) -> list[float]:
    return train_gpt(ParallelDims(world_size=1), {}, _settings(optimizer))


@pytest.fixture(scope="module")
def layout_losses() -> list[dict[str, list[float]]]:
    return run_distributed(_rank_layouts, 4, timeout=180)


@pytest.mark.distributed
@pytest.mark.parametrize(("name", "optimizer", "steps"), [(x[0], x[3], x[4]) for x in LAYOUTS])
def test_debug_gpt_trained_under_a_layout_matches_single_process(
    layout_losses: list[dict[str, list[float]]], name: str, optimizer: str, steps: int
) -> None:
    reference = _single_process(optimizer)[:steps]  # no LR schedule: a prefix is a shorter run
    assert reference[-1] < reference[0]
    for rank_losses in layout_losses:
        assert len(rank_losses[name]) == steps
        assert rank_losses[name] == pytest.approx(reference, abs=TOLERANCE)


# --------------------------------------------------------------------------- plan errors
@pytest.mark.parametrize(
    ("tp", "plan", "message"),
    [
        (8, {"tp": "2d"}, r"2D needs a square tp size \(1, 4, 9, 16, 25, ...\), got 8"),
        (4, {"tp": "3d"}, r"3D needs a cube tp size \(1, 8, 27, 64, ...\), got 4"),
        (8, {"tp": "2.5d", "depth": 3}, r"2.5D needs a tp size q\*q\*depth with depth=3 \(3, 12"),
        (4, {"tp": ["1d", "3d"]}, r"3D needs a cube tp size"),
        (2, {"tp": ["1d"]}, "plan tp lists 1 modes but the model has 2 blocks"),
        (2, {"tp": {5: "1d"}}, r"block indices \[5\] outside 0..1"),
        (2, {"tp": "4d"}, "block 0 has unknown mode '4d'"),
        (2, {"dp": "zero2"}, "plan dp must be one of ddp, zero1, zero3, got 'zero2'"),
        (2, {"sp": "ring"}, None),  # fine without cp: checked below with cp
    ],
)
def test_plans_that_do_not_fit_are_value_errors(tp: int, plan: dict, message: str | None) -> None:
    dims = ParallelDims(dp_shard=1, tp=tp, world_size=tp)
    model = GPT(GPTConfig.debug(), device="meta")
    if message is None:
        ParallelPlan.from_any(plan).validate(dims, 2)
        return
    with pytest.raises(ValueError, match=message):
        parallelize(model, dims, plan)


def test_sizes_that_do_not_divide_name_the_dims() -> None:
    model = GPT(GPTConfig.debug(n_heads=2, dim=64), device="meta")
    with pytest.raises(ValueError, match="n_heads=2 is not divisible by tp=4"):
        parallelize(model, ParallelDims(dp_shard=1, tp=4, world_size=4), {"tp": "1d"})
    with pytest.raises(ValueError, match=r"dims\.cp=2 splits sequences, so the plan must name sp"):
        parallelize(model, ParallelDims(dp_shard=1, cp=2, world_size=2), {})
    with pytest.raises(ValueError, match="unknown plan keys \\['pp'\\]"):
        parallelize(model, ParallelDims(world_size=1), {"pp": 2})


# --------------------------------------------------------------------------- train_gpt CLI
@pytest.mark.parametrize(
    ("argv", "world", "message"),
    [
        (["--dp", "2", "--tp", "2", "--tp-mode", "2d"], "4",
         "--tp 2 --tp-mode 2d: 2D needs a square tp size"),
        (["--dp", "3", "--tp", "2"], "4", "--dp 3 × --cp 1 × --tp 2 = 6, but the world size is 4"),
        (["--tp", "3"], "4", "world size 4 is not divisible by --tp 3 × --cp 1"),
        (["--cp", "2"], "2", "--cp 2 needs --sp ring or --sp ulysses"),
        (["--batch-size", "6", "--grad-accum", "4"], "1",
         "--batch-size 6 must be divisible by dp (1) × --grad-accum (4) = 4"),
        (["--steps", "0"], "1", "argument --steps"),
        (["--tp-mode", "4d"], "1", "argument --tp-mode: invalid choice"),
    ],
)  # fmt: skip
def test_train_gpt_bad_input_is_one_line_and_exit_2(
    argv: list[str], world: str, message: str, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    monkeypatch.setenv("WORLD_SIZE", world)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1]
    if not message.startswith("argument"):
        assert len(err) == 1 and err[0].startswith("train_gpt: error: ")


def test_train_gpt_single_process_prints_losses_and_resumes(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    checkpoint = str(tmp_path / "ckpt")
    assert main(["--steps", "2", "--checkpoint", checkpoint]) == 0
    first = capsys.readouterr().out
    assert "step    1/2  loss" in first and f"saved {checkpoint} at step 2" in first
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]  # no .partial left behind
    assert main(["--steps", "3", "--checkpoint", checkpoint]) == 0
    second = capsys.readouterr().out
    assert f"resumed from {checkpoint} at step 2" in second
    assert "step    3/3  loss" in second and "step    1/3" not in second
    (tmp_path / "broken").mkdir()
    assert main(["--steps", "1", "--checkpoint", str(tmp_path / "broken")]) == 2
    assert "not a complete ptrain DCP checkpoint" in capsys.readouterr().err
