"""Training on KeypointNet's tasks: losses, samples, resume, data parallelism, evaluation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from keypointnet.data import (
    Keypoint,
    KeypointNetDirectory,
    ModelAnnotation,
    read_annotations,
    write_annotations,
)
from keypointnet.metrics import evaluate_annotations
from keypointnet.synth import synthesize
from keypointnet.train import (
    MAX_TRANSLATION,
    NOISE_CLIP,
    KeypointSamples,
    TrainConfig,
    TrainingError,
    augment_points,
    correspondence_loss,
    epoch_batches,
    evaluate,
    load_trained,
    predict_annotations,
    prior_baseline_pck,
    saliency_loss,
    train,
)
from ptrain.core.testing import run_distributed


# ------------------------------------------------------------------------------------ fixtures
def _toy_items(
    count: int, num_points: int = 48, seed: int = 0
) -> list[tuple[np.ndarray, ModelAnnotation]]:
    """Jittered boxes whose keypoints (ids 0..3, some missing) sit at the points nearest corners."""
    rng = np.random.default_rng(seed)
    corners = np.array([[1, 1, 1], [-1, 1, 1], [1, -1, -1], [-1, -1, 1]], dtype=float) * 0.5
    items = []
    for index in range(count):
        points = rng.uniform(-0.5, 0.5, (num_points, 3)) * rng.uniform(0.8, 1.2, 3)
        keypoints = []
        for semantic_id, corner in enumerate(corners):
            if index % 3 == 0 and semantic_id == 3:
                continue  # id 3 is absent from every third shape
            row = int(np.argmin(((points - corner) ** 2).sum(axis=1)))
            keypoints.append(
                Keypoint(xyz=tuple(points[row]), semantic_id=semantic_id, point_index=row)
            )
        items.append(
            (points.astype(np.float32), ModelAnnotation("03001627", f"toy{index}", keypoints))
        )
    return items


# --------------------------------------------------------------------------------------- losses
def test_correspondence_loss_is_minus_log_probability_of_the_target_point() -> None:
    logits = torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(0))  # (B, N, C)
    targets = torch.tensor([[4, -1, 0], [-1, -1, -1]])
    log_p = logits.log_softmax(dim=1)  # softmax over the POINTS of each id
    expected_first = -(log_p[0, 4, 0] + log_p[0, 0, 2]) / 2  # id 1 is absent: ignored
    per_shape = correspondence_loss(logits, targets, reduction="none")
    torch.testing.assert_close(per_shape, torch.stack([expected_first, torch.tensor(0.0)]))
    torch.testing.assert_close(correspondence_loss(logits, targets), expected_first / 2)
    # Upstream's form for one shape: F.cross_entropy(outputs[b][None], target[None]).
    upstream = F.cross_entropy(logits[0][None], targets[0][None], ignore_index=-1)
    torch.testing.assert_close(per_shape[0], upstream)


def test_saliency_loss_is_per_point_cross_entropy() -> None:
    logits = torch.randn(2, 6, 2, generator=torch.Generator().manual_seed(1))
    labels = torch.zeros(2, 6, dtype=torch.int64)
    labels[0, 2] = labels[1, 5] = 1
    expected = -logits.log_softmax(dim=2).gather(2, labels[..., None]).squeeze(2).mean()
    torch.testing.assert_close(saliency_loss(logits, labels), expected)


# ----------------------------------------------------------------------------------------- data
def test_samples_hold_both_targets() -> None:
    items = _toy_items(3)
    samples = KeypointSamples(items)
    assert samples.num_classes == 4 and len(samples) == 3
    sample = samples[0]
    assert sample["points"].dtype == torch.float32 and sample["points"].shape == (48, 3)
    rows = [kp.point_index for kp in items[0][1].keypoints]
    assert sample["saliency"].dtype == torch.int64
    assert set(torch.nonzero(sample["saliency"]).flatten().tolist()) == set(rows)
    assert sample["correspondence"].tolist() == [*rows, -1]  # id 3 absent in shape 0
    assert samples[1]["correspondence"].tolist() == [kp.point_index for kp in items[1][1].keypoints]


def test_subsampling_keeps_the_keypoints_and_remembers_pcd_rows() -> None:
    items = _toy_items(2, num_points=48)
    samples = KeypointSamples(items, num_points=20, seed=3)
    again = KeypointSamples(items, num_points=20, seed=3)
    np.testing.assert_array_equal(samples.point_rows[1], again.point_rows[1])
    for index, (points, annotation) in enumerate(items):
        targets = samples.correspondence_targets[index]
        assert samples.points[index].shape == (20, 3)
        for keypoint in annotation.keypoints:
            row = targets[keypoint.semantic_id]
            assert samples.point_rows[index][row] == keypoint.point_index
            np.testing.assert_array_equal(samples.points[index][row], points[keypoint.point_index])
    assert KeypointSamples(items, num_points=60).points[0].shape == (48, 3)  # at most 60
    with pytest.raises(ValueError, match="toy0: num_points=2 is fewer than its 3 keypoint"):
        KeypointSamples(items, num_points=2)


def test_ids_beyond_num_classes_are_dropped_and_bad_rows_named() -> None:
    items = _toy_items(1)
    assert KeypointSamples(items, num_classes=2).correspondence_targets.shape == (1, 2)
    points = items[0][0]
    bad = ModelAnnotation("03001627", "bad", [Keypoint(xyz=(0, 0, 0), point_index=99)])
    with pytest.raises(ValueError, match="03001627-bad: keypoint point_index 99"):
        KeypointSamples([(points, bad)])


def test_augmentation_is_bounded_and_seeded() -> None:
    points = np.zeros((500, 3), dtype=np.float32)
    moved = augment_points(points, np.random.default_rng(0))
    bound = NOISE_CLIP * math.sqrt(3) + MAX_TRANSLATION
    assert 0 < np.linalg.norm(moved, axis=1).max() <= bound + 1e-6
    np.testing.assert_array_equal(moved, augment_points(points, np.random.default_rng(0)))
    samples = KeypointSamples(_toy_items(2), augment=True, seed=5)
    first = samples[1]["points"]
    samples.set_epoch(1)
    assert not torch.equal(first, samples[1]["points"])  # a new draw each epoch ...
    samples.set_epoch(0)
    assert torch.equal(first, samples[1]["points"])  # ... reproducible from (seed, epoch, index)
    assert np.abs(first.numpy() - samples.points[1]).max() <= bound + 1e-6


def test_epoch_batches_cover_every_shape_once() -> None:
    batches = epoch_batches(17, 8, seed=0, epoch=0)
    assert [len(b) for b in batches] == [8, 9]  # a trailing batch of one joins the previous
    assert sorted(np.concatenate(batches).tolist()) == list(range(17))
    other = epoch_batches(17, 8, seed=0, epoch=1)
    assert not np.array_equal(np.concatenate(batches), np.concatenate(other))


# --------------------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    ("field", "value"),
    [("task", "segmentation"), ("model", "pointnet2"), ("epochs", 0), ("lr", -1.0),
     ("num_points", 0), ("norm", "layer"), ("eval_split", "dev"), ("lr_gamma", 0.0)],
)  # fmt: skip
def test_config_names_the_bad_field(field: str, value: object, tmp_path: Path) -> None:
    kwargs = {"data_dir": tmp_path, "category": "chair", "task": "saliency", "out_dir": tmp_path}
    kwargs[field] = value
    with pytest.raises(ValueError, match=f"{field} .*{value!r}"):
        TrainConfig(**kwargs)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------- evaluation
class _Oracle(torch.nn.Module):
    """Logits peaked at the ground truth (correspondence) or at the keypoints (saliency)."""

    def __init__(self, samples: KeypointSamples, task: str) -> None:
        super().__init__()
        self.samples, self.task = samples, task
        self.num_outputs = samples.num_classes if task == "correspondence" else 2

    def forward(self, points_BN3: torch.Tensor) -> torch.Tensor:
        rows = [
            next(i for i, p in enumerate(self.samples.points) if np.array_equal(p, cloud))
            for cloud in points_BN3.numpy()
        ]
        logits = torch.zeros(*points_BN3.shape[:2], self.num_outputs)
        for b, index in enumerate(rows):
            if self.task == "saliency":
                logits[b, :, 1] = torch.from_numpy(self.samples.saliency_targets[index] * 20.0 - 10)
            else:
                for c, row in enumerate(self.samples.correspondence_targets[index]):
                    if row >= 0:
                        logits[b, row, c] = 10.0
        return logits


def test_evaluate_scores_an_oracle_perfectly_and_the_prior_lower() -> None:
    samples = KeypointSamples(_toy_items(6))
    pck = evaluate(_Oracle(samples, "correspondence"), samples, "correspondence", k=8)["pck"]
    assert list(pck) == [f"{0.01 * i:.2f}" for i in range(11)]
    assert all(value == 1.0 for value in pck.values())
    saliency = evaluate(_Oracle(samples, "saliency"), samples, "saliency", k=8)
    assert saliency["saliency_miou"]["0.00"] == 1.0 and saliency["saliency_map"]["0.00"] == 1.0
    prior = prior_baseline_pck(samples, samples, k=8)
    assert 0.0 <= prior["0.00"] < 1.0 and prior["0.10"] >= prior["0.00"]


# ------------------------------------------------------------------------------------- training
TINY_POINTNET = {"channels": (16, 32, 64), "head_channels": (32,)}
NUM_POINTS = 128


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 synthetic chairs in KeypointNet's layout: 10 train, 2 val, no test."""
    root = tmp_path_factory.mktemp("keypointnet")
    synthesize("chair", 12, 0, root, num_points=NUM_POINTS, splits=(10 / 12, 2 / 12, 0.0))
    return root


def _config(dataset: Path, out_dir: Path, **overrides: object) -> TrainConfig:
    kwargs: dict = {
        "data_dir": dataset,
        "category": "chair",
        "task": "correspondence",
        "out_dir": out_dir,
        "epochs": 4,
        "batch_size": 4,
        "lr": 1e-2,
        "num_points": NUM_POINTS,
        "model_kwargs": dict(TINY_POINTNET),
    }
    kwargs.update(overrides)
    return TrainConfig(**kwargs)


def _state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model"]


def test_training_learns_correspondence_better_than_the_prior(
    dataset: Path, tmp_path: Path
) -> None:
    result = train(_config(dataset, tmp_path, epochs=30, eval_split="train"), progress=False)
    losses = result["losses"]
    assert len(losses) == 30 and losses[-1] < 0.3 * losses[0]
    # On the shapes it was trained on, the network places ids far better than "the point
    # nearest the id's mean position" (~0.9 vs ~0.7 at threshold 0.05 on these chairs).
    assert result["pck"]["0.05"] > result["prior_pck"]["0.05"] + 0.1
    assert result["num_train_models"] == 10 and result["eval_split"] == "train"
    ids = [
        kp.semantic_id for m in KeypointNetDirectory(dataset).models("chair") for kp in m.keypoints
    ]
    assert result["num_classes"] == max(ids) + 1
    assert set(result["pck"]) == set(result["prior_pck"]) == {f"{0.01 * i:.2f}" for i in range(11)}
    assert json.loads((tmp_path / "metrics.json").read_text()) == result
    assert len(list((tmp_path / "checkpoints").glob("step-*.pt"))) == 2  # the newest two kept

    model, task, meta = load_trained(tmp_path / "model.pt")
    assert task == "correspondence" and meta["category"] == "chair" and not model.training
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, _state(tmp_path / "model.pt")[name])


@pytest.mark.parametrize("model", ["pointnet", "dgcnn"])
def test_resumed_run_ends_like_an_uninterrupted_one(
    model: str, dataset: Path, tmp_path: Path
) -> None:
    # Dropout and batch norm on: the resumed run must restore the RNG and the running stats.
    kwargs = (
        {**TINY_POINTNET, "dropout": 0.3}
        if model == "pointnet"
        else {"k": 6, "edge_channels": ((8,), (8,)), "emb_dims": 16, "head_channels": (16,)}
    )
    options = {"model": model, "model_kwargs": kwargs, "task": "saliency", "lr_step_epochs": 2}
    whole = train(_config(dataset, tmp_path / "whole", **options), progress=False)
    train(_config(dataset, tmp_path / "parts", epochs=2, **options), progress=False)
    with pytest.raises(TrainingError, match="resume"):
        train(_config(dataset, tmp_path / "parts", **options), progress=False)
    resumed = train(_config(dataset, tmp_path / "parts", resume=True, **options), progress=False)
    assert resumed == whole and whole["eval_split"] == "val" and whole["num_eval_models"] == 2
    expected = _state(tmp_path / "whole" / "model.pt")
    for name, tensor in _state(tmp_path / "parts" / "model.pt").items():
        assert torch.equal(tensor, expected[name]), name


def _train_rank(rank: int, world_size: int, config: TrainConfig) -> dict[str, object]:
    result = train(config, rank=rank, world_size=world_size, progress=False)
    state = _state(Path(config.out_dir) / "model.pt") if rank == 0 else None  # rank 0 writes
    return {"losses": result["losses"], "state": state}


@pytest.mark.distributed
@pytest.mark.parametrize("model", ["pointnet", "dgcnn"])
def test_two_rank_data_parallel_equals_one_process(
    model: str, dataset: Path, tmp_path: Path
) -> None:
    # Group norm and no dropout: a shape's gradient does not depend on which rank computes it.
    # Batch 3 gives uneven shards (2 + 1) and a merged trailing batch of 4 (2 + 2).
    # Saliency, because the correspondence loss (a softmax over the points) is invariant to the
    # last layer's bias: that exactly-zero gradient is rounding noise, which Adam scales up to
    # lr-sized steps that differ with the shard layout (the losses still agree to ~1e-5).
    kwargs = (
        {"k": 6, "edge_channels": ((8,), (8,)), "emb_dims": 16, "head_channels": (16,),
         "dropout": 0.0}
        if model == "dgcnn"
        else TINY_POINTNET
    )  # fmt: skip
    options = {"model": model, "model_kwargs": kwargs, "task": "saliency", "norm": "group",
               "batch_size": 3, "epochs": 3, "eval_split": None}  # fmt: skip
    single = train(_config(dataset, tmp_path / "single", **options), progress=False)
    ranks = run_distributed(_train_rank, 2, _config(dataset, tmp_path / "dp", **options))
    np.testing.assert_allclose(ranks[0]["losses"], single["losses"], rtol=1e-5)
    assert ranks[0]["losses"] == ranks[1]["losses"]
    expected = _state(tmp_path / "single" / "model.pt")
    for name, tensor in ranks[0]["state"].items():
        torch.testing.assert_close(tensor, expected[name], rtol=1e-5, atol=1e-5)


def test_predictions_score_the_same_through_keypointnet_eval(dataset: Path, tmp_path: Path) -> None:
    result = train(_config(dataset, tmp_path, epochs=3, eval_split="test"), progress=False)
    assert result["eval_split"] == "train"  # the test split is empty: evaluated on train
    model, task, _ = load_trained(tmp_path / "model.pt")
    predictions = predict_annotations(model, dataset, task, category="chair", split="train")
    samples = KeypointSamples.from_directory(dataset, "chair", "train", num_points=None)
    assert [p.key for p in predictions] == [a.key for a in samples.annotations]
    for prediction, points in zip(predictions, samples.points, strict=True):
        assert [kp.semantic_id for kp in prediction.keypoints] == list(range(model.num_outputs))
        for keypoint in prediction.keypoints:
            np.testing.assert_allclose(keypoint.xyz, points[keypoint.point_index], rtol=1e-6)
    written = tmp_path / "pred.json"
    write_annotations(written, predictions)
    points = dict(zip([a.key for a in samples.annotations], samples.points, strict=True))
    via_files = evaluate_annotations(samples.annotations, read_annotations(written), points, k=20)
    assert via_files["pck"] == evaluate(model, samples, "correspondence", k=20)["pck"]

    saliency = predict_annotations(model, samples, "saliency", threshold=0.0)
    assert all(len(p.keypoints) == NUM_POINTS for p in saliency)  # every point, most likely first
