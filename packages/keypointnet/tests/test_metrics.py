"""Benchmark metrics: hand-computed toys, upstream loop references, monotonicity, symmetry."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keypointnet.data import Keypoint, ModelAnnotation, RotationSymmetry, Symmetries
from keypointnet.geodesic import geodesic_distances
from keypointnet.metrics import (
    THRESHOLDS,
    evaluate_annotations,
    pck,
    saliency_map,
    saliency_miou,
    semantic_permutations,
    symmetric_relabelings,
)

KEYS = [f"{t:.2f}" for t in THRESHOLDS]


def _sphere(count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    points = rng.normal(size=(count, 3))
    return 0.5 * points / np.linalg.norm(points, axis=1, keepdims=True)


def _values(result: dict[str, float]) -> np.ndarray:
    return np.array(list(result.values()))


# --------------------------------------------------------------------------- loop references
def _reference_map(scores, gts, geodesics, threshold):
    """Upstream ``eval_det_cls_map`` as a loop (``<=`` instead of ``<``; score 0 = no detection)."""
    detections = [
        (score[p], m, p)
        for m, score in enumerate(scores)
        for p in range(score.size)
        if score[p] > 0
    ]
    detections.sort(key=lambda item: -item[0])
    matched = [np.zeros(gt.size, dtype=bool) for gt in gts]
    npos = sum(gt.size for gt in gts)
    tp, fp = [], []
    for _, m, p in detections:
        dmin, jmin = np.inf, -1
        for j in range(gts[m].size):
            if geodesics[m][j, p] < dmin:
                dmin, jmin = geodesics[m][j, p], j
        hit = dmin <= threshold and not matched[m][jmin]
        if hit:
            matched[m][jmin] = True
        tp.append(float(hit))
        fp.append(float(not hit))
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    recall = tp / npos
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = max(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def _reference_miou(probabilities, gts, geodesics, threshold, prob_threshold=0.1):
    """Upstream ``eval_det_cls_iou`` as a loop (``<=`` instead of ``<``)."""
    npos = fp = fn = 0
    for probability, gt, rows in zip(probabilities, gts, geodesics, strict=True):
        predicted = np.flatnonzero(probability > prob_threshold)
        npos += gt.size
        fp += sum(all(rows[j, p] > threshold for j in range(gt.size)) for p in predicted)
        fn += sum(all(rows[j, p] > threshold for p in predicted) for j in range(gt.size))
    return (npos - fn) / (npos + fp)


# --------------------------------------------------------------------------- saliency
def _toy():
    """5 points on a line; GT at points 0 and 3; predictions 1, 2, 4 (0 is below 0.1)."""
    x = np.array([0.0, 0.02, 0.05, 0.3, 0.5])
    gt = np.array([0, 3])
    rows = np.abs(x[gt, None] - x[None, :])
    probability = np.array([0.05, 0.9, 0.5, 0.0, 0.3])
    return probability, gt, rows


def test_hand_computed_toy_counts() -> None:
    probability, gt, rows = _toy()
    thresholds = (0.0, 0.02, 0.05, 0.1, 0.2)
    # t=0: FP 3, FN 2 -> 0/5; t=.02: FP 2, FN 1 -> 1/4; t=.05, .1: FP 1, FN 1 -> 1/3;
    # t=.2: FP 0, FN 0 -> 2/2.
    iou = saliency_miou([probability], [gt], [rows], thresholds)
    assert iou == pytest.approx(
        {"0.00": 0.0, "0.02": 0.25, "0.05": 1 / 3, "0.10": 1 / 3, "0.20": 1.0}
    )
    # Ranked detections 1 (.9), 2 (.5), 4 (.3), 0 (.05); point 3 (score 0) is not a detection.
    # t=0: only point 0 (on GT 0) hits, at rank 4 -> AP = (1/4)/2. t=.02 to .1: point 1 takes
    # GT 0; point 2's nearest GT is taken, so it is an FP (no fall-back) -> AP = 1/2.
    # t=.2: point 4 takes GT 3 at rank 3 -> AP = (1 + 2/3)/2.
    ap = saliency_map([probability], [gt], [rows], thresholds)
    assert ap == pytest.approx(
        {"0.00": 0.125, "0.02": 0.5, "0.05": 0.5, "0.10": 0.5, "0.20": 5 / 6}
    )


def test_exact_predictions_score_one_at_threshold_zero() -> None:
    points = _sphere(200, seed=0)
    gt = np.array([5, 17, 100, 150])
    rows = geodesic_distances(points, gt, k=8)
    probability = np.zeros(200)
    probability[gt] = 0.9
    assert _values(saliency_miou([probability], [gt], [rows])).tolist() == [1.0] * 11
    assert _values(saliency_map([probability], [gt], [rows])).tolist() == [1.0] * 11
    assert _values(pck([gt], [gt], [rows])).tolist() == [1.0] * 11


def test_miou_pools_counts_over_models() -> None:
    # Model A: one GT, one exact prediction (IoU 1). Model B: one GT missed, 3 far predictions
    # (IoU 0). Mean of per-model IoUs = 0.5; pooled = (2 - 1) / (2 + 3) = 0.2.
    rows_a = np.array([[0.0, 1.0, 1.0, 1.0]])
    rows_b = np.array([[0.0, 1.0, 1.0, 1.0]])
    probability_a = np.array([1.0, 0.0, 0.0, 0.0])
    probability_b = np.array([0.0, 1.0, 1.0, 1.0])
    result = saliency_miou(
        [probability_a, probability_b], [np.array([0]), np.array([0])], [rows_a, rows_b]
    )
    assert _values(result) == pytest.approx([0.2] * 11)


def test_infinite_distances_never_match() -> None:
    rows = np.array([[0.0, np.inf, np.inf]])
    probability = np.array([0.0, 1.0, 1.0])
    gt = np.array([0])
    assert _values(saliency_miou([probability], [gt], [rows])).tolist() == [0.0] * 11
    assert _values(saliency_map([probability], [gt], [rows])).tolist() == [0.0] * 11
    assert _values(pck([np.array([1])], [gt], [rows])).tolist() == [0.0] * 11


def test_disconnected_cloud_end_to_end() -> None:
    points = np.concatenate([_sphere(40, seed=1), _sphere(40, seed=2) + 5.0])
    gt = np.array([3])
    rows = geodesic_distances(points, gt, k=5)
    probability = np.zeros(80)
    probability[43] = 1.0  # same position in the other, unreachable cluster
    assert _values(saliency_map([probability], [gt], [rows])).max() == 0.0
    assert _values(pck([np.array([43])], [gt], [rows])).max() == 0.0


def test_repeated_gt_points_count_once() -> None:
    rows = np.array([[0.0, 0.5], [0.0, 0.5]])
    probability = np.array([1.0, 0.0])
    gt = np.array([0, 0])
    assert _values(saliency_map([probability], [gt], [rows])).tolist() == [1.0] * 11
    assert _values(saliency_miou([probability], [gt], [rows])).tolist() == [1.0] * 11


def _random_models(seed: int, models: int, points: int, gts: int, inf_fraction: float):
    rng = np.random.default_rng(seed)
    probabilities, gt_list, rows_list = [], [], []
    for _ in range(models):
        gt = rng.choice(points, size=gts, replace=False)
        rows = rng.uniform(0.0, 0.12, size=(gts, points))
        rows[rng.random(rows.shape) < inf_fraction] = np.inf
        rows[np.arange(gts), gt] = 0.0
        probability = rng.random(points) * (rng.random(points) < 0.6)
        probabilities.append(probability)
        gt_list.append(gt)
        rows_list.append(rows)
    return probabilities, gt_list, rows_list


@pytest.mark.parametrize("seed", range(6))
def test_saliency_matches_upstream_loops(seed: int) -> None:
    probabilities, gts, rows = _random_models(seed, models=3, points=25, gts=4, inf_fraction=0.1)
    ap = saliency_map(probabilities, gts, rows)
    iou = saliency_miou(probabilities, gts, rows)
    for key, threshold in zip(KEYS, THRESHOLDS, strict=True):
        assert ap[key] == pytest.approx(_reference_map(probabilities, gts, rows, threshold))
        assert iou[key] == pytest.approx(_reference_miou(probabilities, gts, rows, threshold))


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    models=st.integers(1, 3),
    gts=st.integers(1, 4),
    inf_fraction=st.sampled_from([0.0, 0.3]),
)
def test_all_metrics_are_non_decreasing_in_the_threshold(
    seed: int, models: int, gts: int, inf_fraction: float
) -> None:
    probabilities, gt_list, rows = _random_models(seed, models, 12, gts, inf_fraction)
    rng = np.random.default_rng(seed)
    for values in (
        _values(saliency_map(probabilities, gt_list, rows)),
        _values(saliency_miou(probabilities, gt_list, rows)),
    ):
        assert np.all(np.diff(values) >= -1e-12)
    pred = [np.where(rng.random(gts) < 0.2, -1, rng.integers(0, 12, size=gts)) for _ in gt_list]
    values = _values(pck(pred, gt_list, rows))
    assert np.all(np.diff(values) >= -1e-12)


# --------------------------------------------------------------------------- PCK
def test_pck_missing_ids_and_model_mean() -> None:
    rows = np.array([[0.0, 0.05, 0.2], [0.05, 0.0, 0.2], [9.0, 9.0, 9.0]])
    gt_a, pred_a = np.array([0, 1, -1]), np.array([0, -1, 2])  # id 1 missing: a miss
    gt_b, pred_b = np.array([0, -1, -1]), np.array([1, 1, 1])  # ids 1, 2 absent: skipped
    result = pck([pred_a, pred_b], [gt_a, gt_b], [rows, rows], thresholds=(0.0, 0.05))
    # Model A: 1/2 at both; model B: 0 then 1.
    assert result == pytest.approx({"0.00": 0.25, "0.05": 0.75})


def test_pck_decreases_as_noise_grows() -> None:
    points = _sphere(512, seed=3)
    rng = np.random.default_rng(4)
    gts = [rng.choice(512, size=12, replace=False) for _ in range(4)]
    rows = [geodesic_distances(points, gt, k=10) for gt in gts]
    directions = [rng.normal(size=(12, 3)) for _ in gts]
    means = []
    for sigma in (0.0, 0.01, 0.03, 0.06, 0.12):
        preds = []
        for gt, direction in zip(gts, directions, strict=True):
            noisy = points[gt] + sigma * direction
            preds.append(np.argmin(np.linalg.norm(noisy[:, None] - points[None], axis=-1), 1))
        means.append(_values(pck(preds, gts, rows)).mean())
    assert means[0] == 1.0
    assert np.all(np.diff(means) < 0), means


def _chair(reflection=((0, 1), (2, 3)), rotation=()) -> ModelAnnotation:
    keypoints = [
        Keypoint(xyz=(0.0, 0.0, 0.0), semantic_id=semantic, point_index=index)
        for semantic, index in ((0, 10), (1, 20), (2, 30), (3, 40), (4, 50))
    ]
    return ModelAnnotation(
        "03001627", "toy", keypoints, Symmetries(reflection=reflection, rotation=rotation)
    )


def test_symmetric_relabelings_enumerate_the_groups() -> None:
    rotation = (RotationSymmetry(kp_indexes=(0, 1, 2, 3, 4)),)
    relabelings = symmetric_relabelings(_chair(reflection=((0, 4), (1, 3)), rotation=rotation))
    assert len(relabelings) == 10  # dihedral group of the pentagon
    assert relabelings[0].tolist() == [0, 1, 2, 3, 4]
    assert all(sorted(p.tolist()) == [0, 1, 2, 3, 4] for p in relabelings)
    assert [1, 0, 3, 2, 4] in [p.tolist() for p in symmetric_relabelings(_chair())]
    assert len(symmetric_relabelings(_chair(reflection=()))) == 1
    with pytest.raises(ValueError, match="out of range"):
        symmetric_relabelings(_chair(reflection=((0, 7),)))


def test_left_right_swap_scores_one_only_with_symmetry() -> None:
    points = _sphere(64, seed=5)
    model = _chair()
    gt_c = np.array([kp.point_index for kp in model.keypoints])
    rows = geodesic_distances(points, gt_c, k=8)
    pred_c = gt_c[[1, 0, 3, 2, 4]]  # left and right swapped
    with_symmetry = pck([pred_c], [gt_c], [rows], relabelings=[semantic_permutations(model, 5)])
    without = pck([pred_c], [gt_c], [rows])
    assert _values(with_symmetry).tolist() == [1.0] * 11
    assert _values(without).max() <= 0.2 + 1e-12  # only the unswapped id 4 can hit


# --------------------------------------------------------------------------- annotations
def _annotation_set():
    clouds = {}
    gt = []
    for number, (synset, seed) in enumerate((("03001627", 6), ("03001627", 7), ("02691156", 8))):
        points = _sphere(128, seed=seed)
        rng = np.random.default_rng(seed)
        indexes = rng.choice(128, size=6, replace=False)
        indexes[5] = indexes[4]  # two keypoints on one point (as in 6 upstream chairs)
        keypoints = [
            Keypoint(xyz=tuple(points[i]), semantic_id=semantic, point_index=int(i))
            for semantic, i in enumerate(indexes)
        ]
        keypoints[2] = dataclasses.replace(keypoints[2], point_index=None)  # snapped from xyz
        model = ModelAnnotation(
            synset,
            f"model{number}",
            keypoints,
            Symmetries(reflection=((0, 1),), rotation=(RotationSymmetry((2, 3, 4)),)),
        )
        gt.append(model)
        clouds[model.key] = points
    return gt, clouds


def test_gt_against_itself_is_exactly_one() -> None:
    gt, clouds = _annotation_set()
    result = evaluate_annotations(gt, gt, clouds, k=8)
    assert set(result) == {"saliency_miou", "saliency_map", "pck"}
    for values in result.values():
        assert list(values) == KEYS
        assert list(values.values()) == [1.0] * 11


def test_evaluate_annotations_handles_swaps_missing_models_and_order() -> None:
    gt, clouds = _annotation_set()
    swapped = []
    for model in gt[:2]:  # the airplane has no prediction: all misses in its category
        keypoints = list(model.keypoints)
        keypoints[0], keypoints[1] = (
            dataclasses.replace(keypoints[0], semantic_id=1),
            dataclasses.replace(keypoints[1], semantic_id=0),
        )
        swapped.append(dataclasses.replace(model, keypoints=keypoints))
    result = evaluate_annotations(gt, swapped, clouds, k=8)
    # Chairs: perfect (the reflection absorbs the swap); airplane: 0 -> category mean 0.5.
    for values in result.values():
        assert list(values.values()) == [0.5] * 11
    no_symmetry = [dataclasses.replace(model, symmetries=Symmetries()) for model in gt]
    result = evaluate_annotations(no_symmetry, swapped, clouds, k=8)
    assert result["pck"]["0.00"] < 0.5
    assert result["saliency_miou"]["0.00"] == 0.5  # saliency ignores semantic ids


def test_prediction_order_is_confidence() -> None:
    gt, clouds = _annotation_set()
    model = gt[0]
    points = clouds[model.key]
    used = [int(np.argmin(np.linalg.norm(points - kp.xyz, axis=1))) for kp in model.keypoints]
    unused = int(np.setdiff1d(np.arange(points.shape[0]), used)[0])
    wrong = Keypoint(xyz=(0.0, 0.0, 0.0), semantic_id=9, point_index=unused)
    first = dataclasses.replace(model, keypoints=[wrong, *model.keypoints])
    last = dataclasses.replace(model, keypoints=[*model.keypoints, wrong])
    ap_first = evaluate_annotations([model], [first], clouds, k=8)["saliency_map"]["0.00"]
    ap_last = evaluate_annotations([model], [last], clouds, k=8)["saliency_map"]["0.00"]
    assert ap_last == 1.0 and ap_first < 1.0


def test_evaluate_annotations_rejects_bad_input() -> None:
    gt, clouds = _annotation_set()
    stranger = dataclasses.replace(gt[0], model_id="unknown")
    with pytest.raises(ValueError, match="03001627-unknown"):
        evaluate_annotations(gt, [stranger], clouds)
    with pytest.raises(ValueError, match="no point cloud for model 02691156-model2"):
        evaluate_annotations(gt, [], {key: clouds[key] for key in list(clouds)[:2]})
    with pytest.raises(ValueError, match="more than once"):
        evaluate_annotations(gt, [gt[0], gt[0]], clouds)
    far = dataclasses.replace(gt[0].keypoints[0], point_index=500)
    with pytest.raises(ValueError, match="point_index 500"):
        evaluate_annotations(gt, [dataclasses.replace(gt[0], keypoints=[far])], clouds)
    with pytest.raises(ValueError, match="thresholds"):
        evaluate_annotations(gt, gt, clouds, thresholds=(0.001, 0.002))


def test_array_api_rejects_bad_input() -> None:
    probability, gt, rows = _toy()
    with pytest.raises(ValueError, match="one entry per model"):
        saliency_map([probability], [gt, gt], [rows])
    with pytest.raises(ValueError, match=r"geodesics\[0\] must have shape"):
        saliency_miou([probability], [gt], [rows[:1]])
    with pytest.raises(ValueError, match=r"gt_indices\[0\] must lie"):
        saliency_map([probability], [np.array([0, 9])], [rows])
    with pytest.raises(ValueError, match="permutation"):
        pck([gt], [gt], [rows], relabelings=[np.array([[0, 0]])])
