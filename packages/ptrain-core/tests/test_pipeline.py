"""Pipeline schedules against the serial GPT; the splitter; the bubble benchmark."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ptrain.core.models.gpt import GPT, GPTConfig, synthetic_batch
from ptrain.core.pipeline import ScheduleName, build_pipeline, partition_blocks, split_model
from ptrain.core.pipeline_bench import measure_bubble, run_pipeline_bench
from ptrain.core.testing import run_distributed

ATOL = 1e-12
BATCH = 8
MICROBATCHES = 4


SCHEDULE_NAMES: tuple[ScheduleName, ...] = ("gpipe", "1f1b", "interleaved")


def _config() -> GPTConfig:
    # 8 blocks: interleaved on 4 ranks × 2 chunks needs one block per stage
    return GPTConfig.debug(n_layers=8)


def _serial_loss_and_grads() -> tuple[float, dict[str, torch.Tensor]]:
    """The serial model's mean loss over the full batch and its gradients (fp64)."""
    config = _config()
    tokens, targets = synthetic_batch(config, batch_size=BATCH, seed=1)
    model = GPT(config).double()
    model.init_weights(seed=0)
    loss = F.cross_entropy(model(tokens).flatten(0, 1), targets.flatten())
    loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    return loss.item(), grads


def _pipeline_rank(rank: int, world_size: int) -> dict[str, tuple[float, dict, list[int]]]:
    """Every schedule on this rank (one fork for all three): loss, grads, stage indices."""
    torch.set_default_dtype(torch.float64)
    config = _config()
    tokens, targets = synthetic_batch(config, batch_size=BATCH, seed=1)
    results: dict[str, tuple[float, dict, list[int]]] = {}
    for schedule in SCHEDULE_NAMES:
        model = GPT(config, device="meta")  # no full copy: this rank materialises its stages
        pipe = build_pipeline(
            model, None, schedule=schedule, microbatches=MICROBATCHES, init_seed=0
        )
        held = sum(p.numel() for p in pipe.parameters())
        assert held < config.num_params(), "a stage holds the whole model"
        # two steps: the second must not accumulate into the first's grads
        pipe.step(tokens, target=targets)
        loss = pipe.step(tokens, target=targets)
        grads = {name: p.grad for name, p in pipe.named_parameters()}
        results[schedule] = (loss.item(), grads, [m.stage_index for m in pipe.modules])
    return results


@pytest.mark.distributed
@pytest.mark.parametrize("stages", [2, 4])
def test_each_schedule_matches_serial_loss_and_grads(stages: int) -> None:
    serial_loss, serial_grads = _serial_loss_and_grads()
    per_rank = run_distributed(_pipeline_rank, stages, timeout=120)
    for schedule in SCHEDULE_NAMES:
        merged: dict[str, torch.Tensor] = {}
        for rank, results in enumerate(per_rank):
            loss, grads, stage_ids = results[schedule]
            chunks = 2 if schedule == "interleaved" else 1
            assert stage_ids == [rank + chunk * stages for chunk in range(chunks)]
            # every rank reports the mean loss over the full batch (not the sum over micro-
            # batches), and the grads are those of that mean (torch's 1/m scaling kept)
            assert loss == pytest.approx(serial_loss, abs=ATOL), schedule
            assert not merged.keys() & grads.keys(), "a parameter lives on two stages"
            merged.update(grads)
        assert merged.keys() == serial_grads.keys()
        for name, grad in serial_grads.items():
            torch.testing.assert_close(
                merged[name], grad, atol=ATOL, rtol=0, msg=f"{schedule}: {name}"
            )


def test_partition_blocks_is_contiguous_and_balanced() -> None:
    assert partition_blocks(10, 4) == [range(0, 3), range(3, 6), range(6, 8), range(8, 10)]
    with pytest.raises(ValueError, match="cannot split 2 blocks into 4 pipeline stages"):
        partition_blocks(2, 4)


def test_split_model_keeps_serial_names_and_values() -> None:
    model = GPT(_config())
    chunks = split_model(model, 2, [0, 1])
    serial = model.state_dict()
    names = [set(chunk.state_dict()) for chunk in chunks]
    assert names[0] | names[1] == set(serial) and not names[0] & names[1]
    assert "tok_emb.weight" in names[0] and "head.weight" in names[1]
    assert "blocks.3.mlp.fc2.weight" in names[0] and "blocks.4.ln1.weight" in names[1]
    for chunk in chunks:
        for name, value in chunk.state_dict().items():
            assert torch.equal(value, serial[name])
    tokens, _ = synthetic_batch(_config(), batch_size=2, seed=0)
    torch.testing.assert_close(chunks[1](chunks[0](tokens)), model(tokens), atol=0, rtol=0)


def _bad_microbatches(rank: int, world_size: int) -> str:
    with pytest.raises(ValueError, match="multiple of the pipeline size") as info:
        build_pipeline(GPT(_config()), None, schedule="interleaved", microbatches=3)
    return str(info.value)


@pytest.mark.distributed
def test_interleaved_needs_microbatches_multiple_of_stages() -> None:
    run_distributed(_bad_microbatches, 2, timeout=60)


def test_measure_bubble_on_a_hand_made_gpipe_timeline() -> None:
    # 2 stages, 2 micro-batches, forward 1, backward 2 (unit time): makespan 9, busy 6 each
    stage0: list[tuple[str, float, float]] = [("f", 0, 1), ("f", 1, 2), ("b", 5, 7), ("b", 7, 9)]
    stage1: list[tuple[str, float, float]] = [("f", 1, 2), ("f", 2, 3), ("b", 3, 5), ("b", 5, 7)]
    assert measure_bubble([[stage0], [stage1]]) == pytest.approx(0.5)  # (p − 1)/m = 1/2


@pytest.mark.distributed
def test_pipeline_bench_bubble_is_close_to_formula() -> None:
    rows = run_pipeline_bench(stages=2, microbatches=4, forward_s=0.05, steps=2, timeout=90)
    assert [row["schedule"] for row in rows] == ["gpipe", "1f1b"]
    for row in rows:
        assert list(row) == [
            "schedule",
            "stages",
            "microbatches",
            "measured_bubble",
            "formula_bubble",
        ]
        assert row["formula_bubble"] == 0.25
        # a loose bound (not a timing test): overheads only ever add bubble, and a wrong
        # measurement is far off (no pipelining: p − 1 = 1; counting forwards only: ≈ 2.75)
        assert 0.2 <= row["measured_bubble"] <= 0.75, row


@pytest.mark.distributed
def test_cli_bench_pipeline_writes_the_contract_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ptrain.core.__main__ import main

    path = tmp_path / "bubble.json"
    argv = ["bench", "pipeline", "--stages", "2", "--microbatches", "2", "--json", str(path)]
    assert main(argv) == 0
    rows = json.loads(path.read_text())
    assert [(row["schedule"], row["stages"], row["microbatches"]) for row in rows] == [
        ("gpipe", 2, 2),
        ("1f1b", 2, 2),
    ]
    for row in rows:
        assert list(row) == [
            "schedule",
            "stages",
            "microbatches",
            "measured_bubble",
            "formula_bubble",
        ]
        assert row["formula_bubble"] == 0.5
        assert isinstance(row["measured_bubble"], float)
    assert "measured_bubble" in capsys.readouterr().out  # the printed table


def _pipeline_with_fsdp(rank: int, world_size: int) -> tuple[float, dict]:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    torch.set_default_dtype(torch.float64)
    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("pp", "dp"))
    config = _config()
    tokens, targets = synthetic_batch(config, batch_size=BATCH, seed=1)
    half = BATCH // 2  # each data-parallel rank takes half of the batch
    index = mesh["dp"].get_local_rank()
    pipe = build_pipeline(
        GPT(config, device="meta"),
        mesh["pp"],
        schedule="1f1b",
        microbatches=2,
        init_seed=0,
        prepare=lambda chunk: fully_shard(chunk, mesh=mesh["dp"]),
    )
    rows = slice(index * half, (index + 1) * half)
    loss = pipe.step(tokens[rows], target=targets[rows])
    grads = {}
    for name, parameter in pipe.named_parameters():
        assert isinstance(parameter.grad, DTensor)
        grads[name] = parameter.grad.full_tensor()
    return loss.item(), grads


@pytest.mark.distributed
def test_pipeline_with_fully_sharded_stages_matches_serial() -> None:
    """pp=2 × dp=2 (ZeRO-3 via fully_shard inside each stage, through ``prepare``)."""
    serial_loss, serial_grads = _serial_loss_and_grads()
    results = run_distributed(_pipeline_with_fsdp, 4, timeout=120)
    # each dp rank's loss is its half-batch mean; their average is the full-batch mean
    dp_losses = {round(loss, 12) for loss, _ in results}
    assert len(dp_losses) == 2 and sum(dp_losses) / 2 == pytest.approx(serial_loss, abs=ATOL)
    merged: dict[str, torch.Tensor] = {}
    for _, grads in results:
        merged.update(grads)
    assert merged.keys() == serial_grads.keys()
    for name, grad in serial_grads.items():
        torch.testing.assert_close(merged[name], grad, atol=ATOL, rtol=0, msg=name)


def test_cli_bench_pipeline_bad_arguments_is_a_one_line_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from ptrain.core.__main__ import main

    assert main(["bench", "pipeline", "--stages", "4", "--microbatches", "2"]) == 2
    error = capsys.readouterr().err.strip()
    assert "--microbatches 2 < --stages 4" in error and "\n" not in error
