"""The ptrain-moe command: bench layer contract, pretrain/probe end to end, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ptrain.moe.cli import main
from ptrain.moe.data import image_folder_dataset, load_dataset

CONTRACT_KEYS = {
    "moe_dropless_s",
    "moe_capacity_s",
    "dense_equal_flops_s",
    "naive_loop_s",
    "einsum_dispatch_s",
}


def test_bench_layer_writes_exactly_the_contract_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, report = tmp_path / "bench.json", tmp_path / "report.json"
    code = main(
        [
            "bench", "layer", "--tokens", "128", "--dim", "16", "--experts", "4", "--top-k", "2",
            "--expert-hidden", "32", "--repeats", "2", "--json", str(out), "--report", str(report),
        ]
    )  # fmt: skip
    assert code == 0
    data = json.loads(out.read_text())
    assert set(data) == CONTRACT_KEYS
    assert all(isinstance(value, float) and value > 0 for value in data.values())
    assert "naive_loop/dropless" in capsys.readouterr().out
    results = json.loads(report.read_text())["results"]
    assert [r["name"] for r in results] == [
        "moe_dropless_vs_moe_capacity",
        "moe_dropless_vs_dense_equal_flops",
        "moe_dropless_vs_naive_loop",
        "moe_dropless_vs_einsum_dispatch",
    ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--top-k", "2", "--experts", "1"], "top_k=2 is larger than num_experts=1"),
        (["--top-k", "3"], "top_k must be 1 or 2, got 3"),
        (["--tokens", "0"], "expected a positive integer, got '0'"),
        (["--capacity-factor", "-1"], "expected a positive number, got '-1'"),
    ],
)
def test_bench_layer_bad_input_is_one_line_and_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["bench", "layer", *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert message in err[-1]
    assert "Traceback" not in "\n".join(err)


def _tensor_file(path: Path) -> Path:
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (96,), generator=generator)
    images = 0.1 * torch.rand(96, 1, 8, 8, generator=generator)
    images[labels == 0, 0, 3, :] = 1.0
    images[labels == 1, 0, :, 3] = 1.0
    torch.save({"images": images, "labels": labels}, path)
    return path


def test_pretrain_then_probe_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _tensor_file(tmp_path / "bars.pt")
    summary = tmp_path / "pretrain.json"
    code = main(
        [
            "pretrain", "--data", str(data), "--set", "patch_size=2", "--set", "dim=16",
            "--steps", "3", "--batch-size", "16", "--out", str(tmp_path / "run"),
            "--json", str(summary),
        ]
    )  # fmt: skip
    assert code == 0
    result = json.loads(summary.read_text())
    assert result["steps"] == 3 and Path(result["backbone"]).is_file()
    assert "pretrained Sparse-MLP" in capsys.readouterr().out
    probe = tmp_path / "probe.json"
    code = main(
        ["probe", result["backbone"], "--epochs", "50", "--json", str(probe)]  # data as stored
    )
    assert code == 0
    accuracy = json.loads(probe.read_text())
    assert 0.0 <= accuracy["test_accuracy"] <= 1.0 and accuracy["sparse"] is True
    assert accuracy["test_size"] == round(0.2 * 96)  # the split pre-training held out
    # running pretrain again resumes from the finished checkpoint: no new steps
    again = ["pretrain", "--data", str(data), "--set", "patch_size=2", "--set", "dim=16"]
    assert main([*again, "--steps", "3", "--batch-size", "16", "--out", str(tmp_path / "run")]) == 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--data", "nowhere.pt"], "nowhere.pt: no such tensor file"),
        (["--data", "mnist"], "unknown data 'mnist'"),
        (["--set", "patch_size=3"], "image_size=8 is not divisible by patch_size=3"),
        (["--set", "nonsense"], "--set expects KEY=VALUE, got 'nonsense'"),
        (["--model", "XL"], "unknown Sparse-MLP preset 'XL'"),
    ],
)
def test_pretrain_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _tensor_file(tmp_path / "bars.pt")
    base = ["pretrain", "--data", str(data), "--steps", "1", "--out", str(tmp_path / "o")]
    code = main([*base, *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert message in err[-1]


def test_probe_of_a_missing_checkpoint_names_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["probe", str(tmp_path / "none.pt")]) == 2
    assert "none.pt: no such model file" in capsys.readouterr().err


def test_image_folder_loader(tmp_path: Path) -> None:
    image_module = pytest.importorskip("PIL.Image")
    for name, value in (("cat", 30), ("dog", 200)):
        (tmp_path / name).mkdir()
        for i in range(2):
            image_module.new("RGB", (12, 10), (value, value, value)).save(
                tmp_path / name / f"{i}.png"
            )
    data = image_folder_dataset(tmp_path, image_size=8, channels=3)
    assert data.images.shape == (4, 3, 8, 8) and data.labels.tolist() == [0, 0, 1, 1]
    assert data.classes == ("cat", "dog")
    assert float(data.images[0].mean()) == pytest.approx(30 / 255, abs=1e-3)
    (tmp_path / "dog" / "broken.png").write_bytes(b"nope")
    with pytest.raises(ValueError, match=r"broken\.png: cannot read image"):
        load_dataset(str(tmp_path), image_size=8)


def test_digits_extra() -> None:
    pytest.importorskip("sklearn", reason="the digits data set needs the [data] extra")
    data = load_dataset("digits")
    assert data.images.shape == (1797, 1, 8, 8) and int(data.labels.max()) == 9
    train, test = data.split(0.2, seed=0)
    assert len(train) + len(test) == 1797 and len(test) == 359


@pytest.mark.parametrize("argv", [[], ["bench"]])
def test_missing_command_is_a_usage_error(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert "error:" in capsys.readouterr().err
