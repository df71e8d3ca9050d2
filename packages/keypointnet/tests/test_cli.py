"""The `keypointnet` command: the contracts checked from outside, end to end."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from keypointnet.cli import main
from keypointnet.data import CATEGORY_TO_SYNSET, read_annotations, read_pcd

THRESHOLD_KEYS = [f"{t / 100:.2f}" for t in range(11)]


def _shared_chair() -> Path:
    base = os.environ.get("KEYPOINTNET_SHARED_DATA")
    root = (
        Path(base)
        if base
        else Path(__file__).resolve().parents[3].parent / "shared" / "data" / "keypointnet"
    )
    return root / "annotations" / "chair.json"


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    assert main(["synth", "--category", "chair", "--n", "6", "--seed", "0", "--out", str(out)]) == 0
    return out


def test_synth_writes_the_dataset_layout(synth_dir: Path) -> None:
    annotations = synth_dir / "annotations" / "chair.json"
    models = read_annotations(annotations)
    assert len(models) == 6
    synset = CATEGORY_TO_SYNSET["chair"]
    for model in models:
        cloud = read_pcd(synth_dir / "pcds" / synset / f"{model.model_id}.pcd")
        assert cloud.points.shape == (2048, 3)
        for keypoint in model.keypoints:
            assert tuple(cloud.points[keypoint.point_index]) == pytest.approx(keypoint.xyz)


def test_stats_contract(synth_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "stats.json"
    assert main(["stats", str(synth_dir / "annotations" / "chair.json"), "--json", str(out)]) == 0
    stats = json.loads(out.read_text())
    assert set(stats) == {"models", "keypoints", "semantic_ids", "categories"}
    models = read_annotations(synth_dir / "annotations" / "chair.json")
    assert stats["models"] == 6
    assert stats["keypoints"] == sum(len(m.keypoints) for m in models)
    assert sum(stats["semantic_ids"].values()) == stats["keypoints"]
    assert stats["categories"] == {"03001627": 6}
    assert "6 models" in capsys.readouterr().out


def test_stats_on_the_shared_chairs(tmp_path: Path) -> None:
    path = _shared_chair()
    if not path.is_file():
        pytest.skip(f"shared KeypointNet data not found at {path}")
    out = tmp_path / "stats.json"
    assert main(["stats", str(path), "--json", str(out)]) == 0
    stats = json.loads(out.read_text())
    assert stats["models"] == 799 and stats["keypoints"] == 9665
    assert stats["categories"] == {"03001627": 799}
    assert sorted(map(int, stats["semantic_ids"])) == list(range(21))


def test_eval_of_ground_truth_against_itself_is_one_everywhere(
    synth_dir: Path, tmp_path: Path
) -> None:
    gt = synth_dir / "annotations" / "chair.json"
    out = tmp_path / "eval.json"
    code = main(
        ["eval", "--gt", str(gt), "--pred", str(gt), "--pcd-dir", str(synth_dir / "pcds")]
        + ["--json", str(out)]
    )
    assert code == 0
    result = json.loads(out.read_text())
    assert set(result) == {"saliency_miou", "saliency_map", "pck"}
    for values in result.values():
        assert list(values) == THRESHOLD_KEYS
        assert all(value == 1.0 for value in values.values())


def test_malformed_input_is_one_line_naming_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    bad = tmp_path / "broken.json"
    bad.write_text('[{"class_id": "03001627",\n "model_id": "x", "keypoints": [}]\n')
    assert main(["stats", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert re.search(r"broken\.json:2:\d+: invalid JSON", err)
    assert "Traceback" not in err


def test_missing_point_cloud_is_a_user_error(
    synth_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    gt = synth_dir / "annotations" / "chair.json"
    assert main(["eval", "--gt", str(gt), "--pred", str(gt), "--pcd-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no point cloud for model 03001627-" in err and len(err.strip().splitlines()) == 1


def test_project_reports_visibility_and_plots(synth_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out, png = tmp_path / "view.json", tmp_path / "view.png"
    code = main(
        ["project", "--data", str(synth_dir), "--category", "chair", "--size", "128"]
        + ["--json", str(out), "--plot", str(png)]
    )
    assert code == 0
    result = json.loads(out.read_text())
    (view,) = result["views"]
    flags = [keypoint["visible"] for keypoint in view["keypoints"]]
    assert any(flags) and not all(flags)  # a chair seen from one side hides some keypoints
    for keypoint in view["keypoints"]:
        if keypoint["visible"]:
            u, v = keypoint["uv"]
            assert 0 <= u < 128 and 0 <= v < 128
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_project_predictions_on_several_views_scores_2d_pck(
    synth_dir: Path, tmp_path: Path
) -> None:
    gt = synth_dir / "annotations" / "chair.json"
    out = tmp_path / "views.json"
    common = ["project", "--data", str(synth_dir), "--category", "chair", "--size", "96"]
    # the ground truth as its own prediction: every visible keypoint lands exactly
    assert main([*common, "--views", "4", "--pred", str(gt), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert len(result["views"]) == 4
    assert [view["azimuth_degrees"] for view in result["views"]] == [210.0, 300.0, 390.0, 480.0]
    assert result["pck_2d_mean"] == 1.0
    visible_counts = {view["visible"] for view in result["views"]}
    assert len(visible_counts) > 1  # different views hide different keypoints


def test_train_predict_eval_end_to_end(synth_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    common = ["--data", str(synth_dir), "--category", "chair"]
    code = main(
        ["train", *common, "--epochs", "2", "--num-points", "128", "--batch-size", "2"]
        + ["--out", str(run), "--json", str(tmp_path / "train.json")]
    )
    assert code == 0
    trained = json.loads((tmp_path / "train.json").read_text())
    assert len(trained["losses"]) == 2
    # a second run into the same folder without --resume is refused, not silently overwritten
    assert main(["train", *common, "--epochs", "2", "--num-points", "128", "--out", str(run)]) == 2
    pred = tmp_path / "pred.json"
    code = main(
        ["predict", "--checkpoint", str(run / "model.pt"), *common[:2], "--split", "train"]
        + ["--out", str(pred)]
    )
    assert code == 0
    predictions = read_annotations(pred)
    assert predictions and all(model.keypoints for model in predictions)
    scores = tmp_path / "scores.json"
    code = main(
        ["eval", "--gt", str(synth_dir / "annotations" / "chair.json"), "--pred", str(pred)]
        + ["--pcd-dir", str(synth_dir / "pcds"), "--json", str(scores)]
    )
    assert code == 0
    pck = json.loads(scores.read_text())["pck"]
    assert all(0.0 <= value <= 1.0 for value in pck.values())
    assert list(pck.values()) == sorted(pck.values())  # non-decreasing in the threshold


def test_version_and_help(capsys: pytest.CaptureFixture) -> None:
    assert main(["--version"]) == 0
    assert "keypointnet 0.1.0" in capsys.readouterr().out
    assert main([]) == 2
