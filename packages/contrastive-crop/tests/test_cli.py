"""The contrastive-crop command: contracts, end-to-end runs, one-line errors."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from contrastive_crop.cli import main

HAS_SKLEARN = importlib.util.find_spec("sklearn") is not None
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


def test_bench_crop_contract(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "crop.json"
    assert (
        main(["bench", "crop", "--size", "32", "--n", "50", "--repeats", "1", "--json", str(out)])
        == 0
    )
    data = json.loads(out.read_text())
    assert isinstance(data["rrc_us"], float) and isinstance(data["contrastive_us"], float)
    assert data["rrc_us"] > 0 and data["contrastive_us"] > 0
    assert "ContrastiveCrop" in capsys.readouterr().out


def _write_cifar10(root: Path) -> None:
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        records = rng.integers(0, 256, (8, 3073), dtype=np.uint8)
        records[:, 0] %= 10
        records.tofile(root / name)


def test_pretrain_eval_boxes_on_cifar_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write_cifar10(tmp_path)
    run = tmp_path / "run"
    args = ["pretrain", "--data", "cifar10", "--root", str(tmp_path), "--backbone", "tiny",
            "--epochs", "2", "--batch-size", "16", "--box-warmup", "1", "--loc-interval", "1",
            "--out", str(run), "--json", str(tmp_path / "pre.json")]  # fmt: skip
    assert main(args) == 0
    summary = json.loads((tmp_path / "pre.json").read_text())
    assert len(summary["losses"]) == 2 and summary["box_updates"][0]["epoch"] == 1
    assert (
        main(["eval", "--checkpoint", str(run / "model.pt"), "--json", str(tmp_path / "e.json")])
        == 0
    )
    scores = json.loads((tmp_path / "e.json").read_text())
    assert set(scores) == {"knn@20", "knn@200", "linear"}
    assert main(["boxes", "--checkpoint", str(run / "model.pt"), "--threshold", "0.3",
                 "--json", str(tmp_path / "b.json")]) == 0  # fmt: skip
    boxes = json.loads((tmp_path / "b.json").read_text())
    assert boxes["count"] == 40 and len(boxes["boxes"]) == 40


@pytest.mark.skipif(not (HAS_SKLEARN and HAS_MATPLOTLIB), reason="needs scikit-learn, matplotlib")
def test_boxes_plot_on_clutter_digits(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert main(["pretrain", "--backbone", "tiny", "--num-images", "64", "--epochs", "1",
                 "--batch-size", "32", "--crop", "rrc", "--out", str(run)]) == 0  # fmt: skip
    plot = tmp_path / "boxes.png"
    assert main(["boxes", "--checkpoint", str(run / "model.pt"), "--plot", str(plot),
                 "--plot-count", "4", "--json", str(tmp_path / "b.json")]) == 0  # fmt: skip
    assert plot.stat().st_size > 1000
    assert "mean_iou" in json.loads((tmp_path / "b.json").read_text())


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["pretrain", "--data", "cifar10"], "needs root"),
        (["pretrain", "--data", "cifar10", "--root", "/nonexistent"], "/nonexistent"),
        (["pretrain", "--threshold", "1.5"], "threshold"),
        (["eval", "--checkpoint", "/nonexistent/model.pt"], "model.pt"),
    ],
)
def test_user_errors_are_one_line(argv, expected, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("contrastive-crop: error:") and expected in err
    assert len(err.splitlines()) == 1


def test_corrupt_checkpoint_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"not a checkpoint")
    assert main(["boxes", "--checkpoint", str(bad)]) == 2
    assert str(bad) in capsys.readouterr().err
