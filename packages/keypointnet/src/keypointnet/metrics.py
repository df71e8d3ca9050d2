"""KeypointNet benchmark metrics: saliency mIoU and mAP, correspondence PCK, symmetry-aware.

Semantics follow upstream ``benchmark_scripts/metrics.py`` (design doc §2.1, §2.3), with the
differences listed here:

* **Thresholds** are geodesic distances 0.00, 0.01, …, 0.10 (``THRESHOLDS``); every metric
  returns ``{"0.00": value, …, "0.10": value}``.
* **A hit is ``distance <= threshold``** (upstream uses ``<``). With ``<=`` an exact hit counts at
  threshold 0.00, so a perfect prediction scores 1.0 on the whole grid. ``inf`` (disconnected
  graph parts) is never within any threshold.
* **Saliency ground truth is a set of points**: the saliency label is binary per point (upstream
  ``np.where(label == 1)``), so a point index repeated in the ground truth counts once.
* **mIoU** (``eval_det_cls_iou``): predicted set = points with probability > ``prob_threshold``;
  FP = predictions with no GT within the threshold, FN = GTs with no prediction within it;
  IoU = (npos − FN) / (npos + FP) with npos, FP and FN **summed over the models** before dividing.
* **mAP** (``eval_det_cls_map``, VOC): the detections of all models are ranked together by
  probability (ties keep model order, then point order). Each detection is assigned its nearest
  GT (a detection *on* a GT point is assigned that GT); it is a TP when that distance is within
  the threshold and that GT is not matched yet, otherwise an FP (as upstream and in VOC, a
  detection whose nearest GT is taken does not fall back to the next GT; this keeps AP
  non-decreasing in the threshold). AP uses VOC all-point interpolation. Points with
  probability exactly 0 are not detections (a network's softmax is never exactly 0, so this only
  matters for prediction files).
* **PCK** (``eval_pck``): per model, the fraction of existing GT semantic ids whose predicted
  point is within the threshold (a missing prediction is a miss); then the mean over models.
  Models without any GT keypoint are skipped.
* **Symmetry**: upstream picks, for rotation-symmetric categories (not chair), the rotated GT copy
  with the smallest cross-entropy, which needs logits. Here the candidate relabelings come from
  the annotation's symmetry groups (``symmetric_relabelings``), and per model the **one**
  relabeling with the smallest total geodesic error is chosen (fewest missing/unreachable
  predictions first, then the smallest sum of finite distances; ties keep the identity), and all
  thresholds are scored with it. Choosing one labelling per model, rather than the best per
  threshold, keeps PCK an honest assignment of ids.

Undefined values (no GT keypoint and no prediction at all) are ``nan``.

Shapes: ``N`` points, ``K`` GT keypoints of a model, ``C`` semantic ids, ``T`` thresholds,
``R`` relabelings, ``M`` models.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from scipy.spatial import cKDTree

from keypointnet.data import ModelAnnotation
from keypointnet.geodesic import DEFAULT_NEIGHBOURS, _check_points, geodesic_distances

__all__ = [
    "DEFAULT_PROB_THRESHOLD",
    "THRESHOLDS",
    "evaluate_annotations",
    "pck",
    "saliency_map",
    "saliency_miou",
    "semantic_permutations",
    "symmetric_relabelings",
    "threshold_key",
]

#: Geodesic thresholds of the KeypointNet benchmarks: 0.00, 0.01, …, 0.10 (ShapeNet units).
THRESHOLDS: tuple[float, ...] = tuple(round(0.01 * i, 2) for i in range(11))
#: Probability above which a point is a predicted keypoint for mIoU (upstream ``iou_thresh``).
DEFAULT_PROB_THRESHOLD = 0.1


def threshold_key(threshold: float) -> str:
    """The result key of a threshold: two decimals, e.g. ``"0.05"``."""
    return f"{threshold:.2f}"


# --------------------------------------------------------------------------- validation
def _check_thresholds(thresholds: Iterable[float]) -> tuple[np.ndarray, list[str]]:
    """Returns (T,) float64 thresholds and their keys."""
    threshold_T = np.asarray(list(thresholds), dtype=np.float64)
    if threshold_T.ndim != 1 or threshold_T.size == 0:
        raise ValueError(f"thresholds must be a non-empty 1-D sequence, got {thresholds!r}")
    if not np.isfinite(threshold_T).all() or (threshold_T < 0).any():
        raise ValueError(f"thresholds must be finite and >= 0, got {threshold_T.tolist()}")
    keys = [threshold_key(t) for t in threshold_T]
    if len(set(keys)) != len(keys):
        raise ValueError(
            f"thresholds must differ at two decimals (they are the result keys), got keys {keys}"
        )
    return threshold_T, keys


def _check_index_array(value: np.ndarray, name: str, count: int, allow_missing: bool) -> np.ndarray:
    array = np.asarray(value)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    if array.size == 0:
        return array.astype(np.int64)
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must hold integer point indices, got dtype {array.dtype}")
    low = -1 if allow_missing else 0
    if array.min() < low or array.max() >= count:
        raise ValueError(
            f"{name} must lie in [{low}, {count}) for {count} points, got values in "
            f"[{array.min()}, {array.max()}]"
        )
    return array.astype(np.int64)


def _check_geodesics(value: np.ndarray, name: str, rows: int) -> np.ndarray:
    array = np.asarray(value, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] != rows:
        raise ValueError(f"{name} must have shape ({rows}, N), got {array.shape}")
    if np.isnan(array).any() or (array < 0).any():
        raise ValueError(f"{name} must hold distances >= 0 (inf allowed), found NaN or negative")
    return array


def _check_lengths(**sequences: Sequence[object]) -> int:
    lengths = {name: len(sequence) for name, sequence in sequences.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"one entry per model is needed in each input, got lengths {lengths}")
    return next(iter(lengths.values()))


def _saliency_model(
    index: int, gt_indices: np.ndarray, geodesics: np.ndarray, count: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Validated unique GT points (K,) and their geodesic rows (K, N) of model ``index``."""
    geodesic_raw = np.asarray(geodesics)
    count = geodesic_raw.shape[-1] if count is None else count
    gt_K = _check_index_array(gt_indices, f"gt_indices[{index}]", count, allow_missing=False)
    geodesic_KN = _check_geodesics(geodesic_raw, f"geodesics[{index}]", gt_K.size)
    if geodesic_KN.shape[1] != count:
        raise ValueError(
            f"geodesics[{index}] must have {count} columns (one per point), got "
            f"{geodesic_KN.shape[1]}"
        )
    unique_K, first_K = np.unique(gt_K, return_index=True)
    return unique_K, geodesic_KN[first_K]


def _check_probabilities(index: int, probabilities: np.ndarray) -> np.ndarray:
    probability_N = np.asarray(probabilities, dtype=np.float64)
    if probability_N.ndim != 1 or probability_N.size == 0:
        raise ValueError(
            f"probabilities[{index}] must be a non-empty 1-D array, got shape {probability_N.shape}"
        )
    if not np.isfinite(probability_N).all():
        raise ValueError(f"probabilities[{index}] must be finite")
    return probability_N


def _ratio(numerator_T: np.ndarray, denominator_T: np.ndarray) -> np.ndarray:
    """Elementwise ratio with ``nan`` where the denominator is 0 (no numpy warning)."""
    result_T = np.full(numerator_T.shape, np.nan)
    np.divide(numerator_T, denominator_T, out=result_T, where=denominator_T != 0)
    return result_T


def _as_dict(keys: list[str], values_T: np.ndarray) -> dict[str, float]:
    return {key: float(value) for key, value in zip(keys, values_T, strict=True)}


# --------------------------------------------------------------------------- saliency
def _iou_counts(
    predicted_P: np.ndarray, gt_K: np.ndarray, geodesic_KN: np.ndarray, threshold_T: np.ndarray
) -> tuple[int, np.ndarray, np.ndarray]:
    """npos, FP (T,) and FN (T,) of one model."""
    geodesic_KP = geodesic_KN[:, predicted_P]
    pred_nearest_P = geodesic_KP.min(axis=0) if gt_K.size else np.full(predicted_P.size, np.inf)
    gt_nearest_K = geodesic_KP.min(axis=1) if predicted_P.size else np.full(gt_K.size, np.inf)
    false_pos_T = (pred_nearest_P[None, :] > threshold_T[:, None]).sum(axis=1)
    false_neg_T = (gt_nearest_K[None, :] > threshold_T[:, None]).sum(axis=1)
    return gt_K.size, false_pos_T, false_neg_T


def _pooled_iou(
    predicted: Sequence[np.ndarray],
    gts: Sequence[np.ndarray],
    geodesics: Sequence[np.ndarray],
    threshold_T: np.ndarray,
) -> np.ndarray:
    npos = 0
    false_pos_T = np.zeros(threshold_T.size, dtype=np.int64)
    false_neg_T = np.zeros(threshold_T.size, dtype=np.int64)
    for predicted_P, gt_K, geodesic_KN in zip(predicted, gts, geodesics, strict=True):
        positives, model_fp_T, model_fn_T = _iou_counts(predicted_P, gt_K, geodesic_KN, threshold_T)
        npos += positives
        false_pos_T += model_fp_T
        false_neg_T += model_fn_T
    return _ratio((npos - false_neg_T).astype(np.float64), (npos + false_pos_T).astype(np.float64))


def saliency_miou(
    probabilities: Sequence[np.ndarray],
    gt_indices: Sequence[np.ndarray],
    geodesics: Sequence[np.ndarray],
    thresholds: Iterable[float] = THRESHOLDS,
    prob_threshold: float = DEFAULT_PROB_THRESHOLD,
) -> dict[str, float]:
    """Keypoint-saliency IoU of one category, counts pooled over its models.

    Args:
        probabilities: per model, (N,) keypoint probability of every point.
        gt_indices: per model, (K,) GT keypoint point indices (repeats count once).
        geodesics: per model, (K, N) geodesic distances from ``gt_indices[m][j]`` to every point
            (e.g. ``geodesic_distances(points, gt_indices[m])``).
        thresholds: geodesic thresholds.
        prob_threshold: a point is predicted when its probability is strictly above this.

    Returns:
        ``{threshold_key: (npos − FN) / (npos + FP)}``, with npos, FN and FP summed over the
        models; ``nan`` when there is neither a GT keypoint nor a prediction.

    Raises:
        ValueError: inputs of different lengths, wrong shapes, indices out of range, or bad
            thresholds.
    """
    threshold_T, keys = _check_thresholds(thresholds)
    if not isinstance(prob_threshold, int | float) or not np.isfinite(prob_threshold):
        raise ValueError(f"prob_threshold must be a finite number, got {prob_threshold!r}")
    _check_lengths(probabilities=probabilities, gt_indices=gt_indices, geodesics=geodesics)
    predicted, gts, rows = [], [], []
    for index, probability in enumerate(probabilities):
        probability_N = _check_probabilities(index, probability)
        gt_K, geodesic_KN = _saliency_model(
            index, gt_indices[index], geodesics[index], probability_N.size
        )
        predicted.append(np.flatnonzero(probability_N > prob_threshold))
        gts.append(gt_K)
        rows.append(geodesic_KN)
    return _as_dict(keys, _pooled_iou(predicted, gts, rows, threshold_T))


def _pooled_average_precision(
    scores: Sequence[np.ndarray],
    tiebreaks: Sequence[np.ndarray],
    gts: Sequence[np.ndarray],
    geodesics: Sequence[np.ndarray],
    threshold_T: np.ndarray,
) -> np.ndarray:
    """VOC AP (T,) over the detections (score > 0) of all models ranked together."""
    all_scores, all_tiebreaks, all_nearest, all_assigned = [], [], [], []
    npos = 0
    for score_N, tiebreak_N, gt_K, geodesic_KN in zip(
        scores, tiebreaks, gts, geodesics, strict=True
    ):
        detected_P = np.flatnonzero(score_N > 0)
        if gt_K.size:
            assigned_P = geodesic_KN[:, detected_P].argmin(axis=0)
            # A detection on a GT point is assigned that GT even if another GT is also at 0.
            gt_of_point_N = np.full(score_N.size, -1)
            gt_of_point_N[gt_K] = np.arange(gt_K.size)
            own_P = gt_of_point_N[detected_P]
            assigned_P = np.where(own_P >= 0, own_P, assigned_P)
            nearest_P = geodesic_KN[assigned_P, detected_P]
        else:
            assigned_P = np.zeros(detected_P.size, dtype=np.int64)
            nearest_P = np.full(detected_P.size, np.inf)
        all_scores.append(score_N[detected_P])
        all_tiebreaks.append(tiebreak_N[detected_P])
        all_nearest.append(nearest_P)
        all_assigned.append(assigned_P + npos)  # GT ids made unique across models
        npos += gt_K.size
    if npos == 0:
        return np.full(threshold_T.size, np.nan)
    score_D = np.concatenate(all_scores)
    if score_D.size == 0:
        return np.zeros(threshold_T.size)
    # Rank: higher score first, then smaller tiebreak; lexsort is stable (model, point order).
    order_D = np.lexsort((np.concatenate(all_tiebreaks), -score_D))
    nearest_D = np.concatenate(all_nearest)[order_D]
    assigned_D = np.concatenate(all_assigned)[order_D]
    rank_D = np.arange(1, score_D.size + 1, dtype=np.float64)

    average_precision_T = np.empty(threshold_T.size)
    for t, threshold in enumerate(threshold_T):
        within_W = np.flatnonzero(nearest_D <= threshold)
        _, first_match = np.unique(assigned_D[within_W], return_index=True)
        true_pos_D = np.zeros(score_D.size, dtype=bool)
        true_pos_D[within_W[first_match]] = True
        precision_D = np.cumsum(true_pos_D) / rank_D
        envelope_D = np.maximum.accumulate(precision_D[::-1])[::-1]
        # voc_ap's Σ Δrecall · envelope: recall rises by 1/npos exactly at each TP.
        average_precision_T[t] = envelope_D[true_pos_D].sum() / npos
    return average_precision_T


def saliency_map(
    probabilities: Sequence[np.ndarray],
    gt_indices: Sequence[np.ndarray],
    geodesics: Sequence[np.ndarray],
    thresholds: Iterable[float] = THRESHOLDS,
) -> dict[str, float]:
    """Keypoint-saliency average precision of one category (VOC, detections pooled).

    Every point with probability > 0 is a detection scored by its probability; the detections of
    all models are ranked together (ties: model order, then point order). A detection is a TP
    when its nearest GT is within the threshold (``<=``) and not yet matched; see the module
    docstring for the exact rule.

    Args:
        probabilities: per model, (N,) keypoint probability of every point.
        gt_indices: per model, (K,) GT keypoint point indices (repeats count once).
        geodesics: per model, (K, N) geodesic distances from each GT point to every point.
        thresholds: geodesic thresholds.

    Returns:
        ``{threshold_key: AP}``; 0 without detections, ``nan`` without GT keypoints.

    Raises:
        ValueError: inputs of different lengths, wrong shapes, indices out of range, or bad
            thresholds.
    """
    threshold_T, keys = _check_thresholds(thresholds)
    _check_lengths(probabilities=probabilities, gt_indices=gt_indices, geodesics=geodesics)
    scores, gts, rows = [], [], []
    for index, probability in enumerate(probabilities):
        probability_N = _check_probabilities(index, probability)
        gt_K, geodesic_KN = _saliency_model(
            index, gt_indices[index], geodesics[index], probability_N.size
        )
        scores.append(probability_N)
        gts.append(gt_K)
        rows.append(geodesic_KN)
    tiebreaks = [np.zeros(score.size) for score in scores]
    return _as_dict(keys, _pooled_average_precision(scores, tiebreaks, gts, rows, threshold_T))


# --------------------------------------------------------------------------- correspondence
def _model_pck(
    index: int,
    pred_C: np.ndarray,
    gt_C: np.ndarray,
    geodesic_CN: np.ndarray,
    permutation_RC: np.ndarray,
    threshold_T: np.ndarray,
) -> np.ndarray | None:
    """PCK (T,) of one model under its best relabeling; None without GT keypoints."""
    valid_V = np.flatnonzero(gt_C >= 0)
    if valid_V.size == 0:
        return None
    pred_V = pred_C[valid_V]
    missing_V = pred_V < 0
    rows_RV = permutation_RC[:, valid_V]
    if (gt_C[rows_RV] < 0).any():
        raise ValueError(f"relabelings[{index}] maps an existing GT id onto an absent one")
    distance_RV = geodesic_CN[rows_RV, np.where(missing_V, 0, pred_V)[None, :]]
    distance_RV[:, missing_V] = np.inf
    finite_RV = np.isfinite(distance_RV)
    unreachable_R = (~finite_RV).sum(axis=1)
    total_R = np.where(finite_RV, distance_RV, 0.0).sum(axis=1)
    best = np.lexsort((total_R, unreachable_R))[0]  # stable: ties keep the earliest (identity)
    return (distance_RV[best][None, :] <= threshold_T[:, None]).mean(axis=1)


def _check_permutations(index: int, relabeling: np.ndarray | None, classes: int) -> np.ndarray:
    identity_C = np.arange(classes)
    if relabeling is None:
        return identity_C[None, :]
    permutation_RC = np.asarray(relabeling)
    if permutation_RC.ndim != 2 or permutation_RC.shape[1] != classes:
        raise ValueError(
            f"relabelings[{index}] must have shape (R, {classes}), got {permutation_RC.shape}"
        )
    if permutation_RC.size and not np.issubdtype(permutation_RC.dtype, np.integer):
        raise ValueError(f"relabelings[{index}] must hold integers, got {permutation_RC.dtype}")
    if not (np.sort(permutation_RC, axis=1) == identity_C[None, :]).all():
        raise ValueError(
            f"relabelings[{index}]: every row must be a permutation of 0..{classes - 1}"
        )
    return np.concatenate([identity_C[None, :], permutation_RC.astype(np.int64)])


def pck(
    pred_indices: Sequence[np.ndarray],
    gt_indices: Sequence[np.ndarray],
    geodesics: Sequence[np.ndarray],
    thresholds: Iterable[float] = THRESHOLDS,
    relabelings: Sequence[np.ndarray | None] | None = None,
) -> dict[str, float]:
    """Percentage of correct keypoints: mean over models of per-model hit fractions.

    Args:
        pred_indices: per model, (C,) predicted point index per semantic id, −1 when absent.
        gt_indices: per model, (C,) GT point index per semantic id, −1 when absent (skipped).
        geodesics: per model, (C, N); row ``c`` holds the distances from the GT point of id ``c``
            to every point (rows of absent ids are ignored).
        thresholds: geodesic thresholds.
        relabelings: per model, None or an (R, C) array of semantic-id permutations ``π``
            (e.g. ``semantic_permutations(model, C)``): under ``π`` the GT of id ``c`` is the GT
            point of id ``π[c]``. The identity is always a candidate; per model, the candidate
            with the smallest total geodesic error is scored at every threshold.

    Returns:
        ``{threshold_key: PCK}``; ``nan`` when no model has a GT keypoint.

    Raises:
        ValueError: inputs of different lengths or shapes, indices out of range, a relabeling
            that is not a permutation or maps an existing id to an absent one, bad thresholds.
    """
    threshold_T, keys = _check_thresholds(thresholds)
    models = _check_lengths(pred_indices=pred_indices, gt_indices=gt_indices, geodesics=geodesics)
    if relabelings is not None:
        _check_lengths(gt_indices=gt_indices, relabelings=relabelings)
    per_model = []
    for index in range(models):
        geodesic_raw = np.asarray(geodesics[index])
        if geodesic_raw.ndim != 2:
            raise ValueError(f"geodesics[{index}] must have shape (C, N), got {geodesic_raw.shape}")
        count = geodesic_raw.shape[1]
        gt_C = _check_index_array(gt_indices[index], f"gt_indices[{index}]", count, True)
        pred_C = _check_index_array(pred_indices[index], f"pred_indices[{index}]", count, True)
        if pred_C.size != gt_C.size:
            raise ValueError(
                f"pred_indices[{index}] and gt_indices[{index}] must both have one "
                f"entry per semantic id, got {pred_C.size} and {gt_C.size}"
            )
        geodesic_CN = np.asarray(geodesic_raw, dtype=np.float64)
        if geodesic_CN.shape[0] != gt_C.size:
            raise ValueError(
                f"geodesics[{index}] must have shape ({gt_C.size}, N), got {geodesic_CN.shape}"
            )
        if np.isnan(geodesic_CN[gt_C >= 0]).any():
            raise ValueError(f"geodesics[{index}] holds NaN in a row of an existing GT id")
        permutation_RC = _check_permutations(
            index, None if relabelings is None else relabelings[index], gt_C.size
        )
        result_T = _model_pck(index, pred_C, gt_C, geodesic_CN, permutation_RC, threshold_T)
        if result_T is not None:
            per_model.append(result_T)
    if not per_model:
        return _as_dict(keys, np.full(threshold_T.size, np.nan))
    return _as_dict(keys, np.mean(per_model, axis=0))


# --------------------------------------------------------------------------- symmetry
def _check_positions(model: ModelAnnotation, group: Sequence[int], kind: str) -> np.ndarray:
    positions = np.asarray(group, dtype=np.int64)
    count = len(model.keypoints)
    if positions.size and (positions.min() < 0 or positions.max() >= count):
        raise ValueError(
            f"model {model.key}: {kind} kp_indexes {list(group)} out of range for {count} keypoints"
        )
    if np.unique(positions).size != positions.size:
        raise ValueError(f"model {model.key}: {kind} kp_indexes {list(group)} repeat a position")
    return positions


def symmetric_relabelings(model: ModelAnnotation) -> list[np.ndarray]:
    """Keypoint relabelings allowed by the model's symmetry annotation.

    A relabeling ``p`` is a permutation of keypoint positions: under it, the keypoint at position
    ``p[i]`` plays the role of position ``i``. The candidates are every combination of
    (a) the identity or the reflection that swaps all reflection groups together (a group is
    reversed; for the usual pairs that is a swap) and (b) one cyclic shift of each rotation group
    (``is_circle`` groups included: only their annotated keypoints are shifted, no continuous
    rotation is sampled). Their number is 2 · Π(group sizes), at most.

    Args:
        model: the annotation.

    Returns:
        Distinct (K,) int64 permutations, the identity first.

    Raises:
        ValueError: a group names a position out of range or repeats one.
    """
    count = len(model.keypoints)
    identity_K = np.arange(count)
    reflection_K = identity_K.copy()
    for group in model.symmetries.reflection:
        positions = _check_positions(model, group, "reflection")
        reflection_K[positions] = positions[::-1]
    reflections = [identity_K]
    if np.unique(reflection_K).size == count and not (reflection_K == identity_K).all():
        reflections.append(reflection_K)
    shift_choices = []
    for rotation in model.symmetries.rotation:
        positions = _check_positions(model, rotation.kp_indexes, "rotation")
        size = positions.size
        shifts = []
        for shift in range(size):
            shifted_K = identity_K.copy()
            shifted_K[positions] = positions[(np.arange(size) + shift) % size]
            shifts.append(shifted_K)
        shift_choices.append(shifts or [identity_K])

    relabelings: list[np.ndarray] = []
    seen: set[bytes] = set()
    for reflection in reflections:
        for combination in itertools.product(*shift_choices):
            permutation_K = identity_K
            for shifted_K in combination:
                permutation_K = shifted_K[permutation_K]
            permutation_K = reflection[permutation_K]
            if np.unique(permutation_K).size != count:
                continue  # overlapping groups that do not compose into a permutation
            signature = permutation_K.tobytes()
            if signature not in seen:
                seen.add(signature)
                relabelings.append(permutation_K)
    return relabelings


def semantic_permutations(model: ModelAnnotation, num_classes: int) -> np.ndarray:
    """``symmetric_relabelings`` as permutations of semantic ids, the form ``pck`` takes.

    Under a position relabeling ``p``, id ``s[i]`` (the id of position ``i``) takes the GT of id
    ``s[p[i]]``; ids absent from the model map to themselves. When a model repeats a semantic
    id, its first keypoint represents it (as in ``evaluate_annotations``); relabelings that do
    not give a permutation of ids are dropped.

    Args:
        model: the annotation.
        num_classes: C, larger than every semantic id of the model.

    Returns:
        (R, C) int64 distinct id permutations, the identity first.

    Raises:
        ValueError: ``num_classes`` is not above every semantic id, or bad symmetry groups.
    """
    semantic_K = np.array([keypoint.semantic_id for keypoint in model.keypoints], dtype=np.int64)
    if semantic_K.size and semantic_K.max() >= num_classes:
        raise ValueError(
            f"num_classes must exceed every semantic id of model {model.key} "
            f"(max {semantic_K.max()}), got {num_classes}"
        )
    identity_C = np.arange(num_classes)
    ids_U, first_U = np.unique(semantic_K, return_index=True)
    permutations = []
    for positions_K in symmetric_relabelings(model):
        permutation_C = identity_C.copy()
        permutation_C[ids_U] = semantic_K[positions_K[first_U]]
        if np.unique(permutation_C).size == num_classes:
            permutations.append(permutation_C)
    rows, seen = [identity_C], {identity_C.tobytes()}
    for permutation_C in permutations:
        if permutation_C.tobytes() not in seen:
            seen.add(permutation_C.tobytes())
            rows.append(permutation_C)
    return np.stack(rows)


# --------------------------------------------------------------------------- annotations
def _point_indices(
    model: ModelAnnotation, points_N3: np.ndarray, role: str, tree: list[cKDTree]
) -> np.ndarray:
    """(K,) point index of every keypoint: ``point_index``, or the point nearest to ``xyz``."""
    count = points_N3.shape[0]
    index_K = np.array(
        [-1 if kp.point_index is None else kp.point_index for kp in model.keypoints],
        dtype=np.int64,
    )
    bad = np.flatnonzero(index_K >= count)
    if bad.size:
        raise ValueError(
            f"{role}: model {model.key} keypoint {bad[0]} has point_index "
            f"{index_K[bad[0]]}, but its point cloud has {count} points"
        )
    snap = np.flatnonzero(index_K < 0)
    if snap.size:
        if not tree:
            tree.append(cKDTree(points_N3))
        xyz_S3 = np.array([model.keypoints[i].xyz for i in snap], dtype=np.float64)
        _, index_K[snap] = tree[0].query(xyz_S3)
    return index_K


def _by_key(models: Sequence[ModelAnnotation], role: str) -> dict[str, ModelAnnotation]:
    result: dict[str, ModelAnnotation] = {}
    for model in models:
        if model.key in result:
            raise ValueError(f"{role}: model {model.key} appears more than once")
        result[model.key] = model
    return result


def _first_per_id(semantic_K: np.ndarray, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(C,) position of the first keypoint of each id (−1 when absent), and the present ids."""
    ids_U, first_U = np.unique(semantic_K, return_index=True)
    position_C = np.full(classes, -1, dtype=np.int64)
    position_C[ids_U] = first_U
    return position_C, ids_U


def _mean_over_categories(values: list[np.ndarray], size: int) -> np.ndarray:
    """Mean of (T,) rows skipping nan entries; nan where every category is nan."""
    if not values:
        return np.full(size, np.nan)
    stacked = np.stack(values)
    finite = ~np.isnan(stacked)
    return _ratio(np.where(finite, stacked, 0.0).sum(axis=0), finite.sum(axis=0).astype(float))


def evaluate_annotations(
    gt: Sequence[ModelAnnotation],
    pred: Sequence[ModelAnnotation],
    points: Mapping[str, np.ndarray],
    k: int = DEFAULT_NEIGHBOURS,
    thresholds: Iterable[float] = THRESHOLDS,
) -> dict[str, dict[str, float]]:
    """Score predicted keypoint annotations against GT annotations (``keypointnet eval``).

    Predictions use the annotation schema. Each predicted keypoint names its point by
    ``point_index`` (or, when absent, its ``xyz`` is snapped to the nearest point of the cloud)
    and its ``semantic_id``. Its **position in the model's keypoint list is its confidence**:
    earlier is more confident. GT keypoints without ``point_index`` are snapped the same way.

    * Saliency: the predicted points have probability 1 and the rest 0; for mAP the list order
      breaks the ties (all first keypoints of every model, then all second keypoints, …).
    * PCK: the first predicted keypoint of each semantic id against the first GT keypoint of
      that id, with the GT relabeled by the model's symmetries (``semantic_permutations``).
    * Geodesics: one ``dijkstra`` per model, from its GT points only.

    Models are matched by ``ModelAnnotation.key``; a GT model without a prediction scores all
    misses. Metrics are computed per category (``class_id``) — saliency counts are pooled over a
    category's models, PCK averages them — and then averaged over categories (skipping a
    category whose value is ``nan``); for a single category that is the category's value.

    Args:
        gt: ground-truth models.
        pred: predicted models (a subset of the GT keys).
        points: ``{model key: (N, 3) point cloud}`` for every GT model.
        k: neighbours per point of the geodesic graph.
        thresholds: geodesic thresholds.

    Returns:
        ``{"saliency_miou": {...}, "saliency_map": {...}, "pck": {...}}``, each keyed by
        ``threshold_key``. GT evaluated against itself gives 1.0 everywhere.

    Raises:
        ValueError: a prediction for a model without GT, a model key repeated, a GT model
            without a point cloud, a ``point_index`` out of range, bad ``k`` or thresholds.
    """
    threshold_T, keys = _check_thresholds(thresholds)
    gt_by_key = _by_key(gt, "gt")
    pred_by_key = _by_key(pred, "pred")
    unknown = [key for key in pred_by_key if key not in gt_by_key]
    if unknown:
        raise ValueError(
            f"pred: model {unknown[0]} has no ground truth "
            f"({len(unknown)} unknown model(s) in total)"
        )
    missing_points = [key for key in gt_by_key if key not in points]
    if missing_points:
        raise ValueError(
            f"points: no point cloud for model {missing_points[0]} "
            f"({len(missing_points)} missing in total)"
        )

    categories: dict[str, list[ModelAnnotation]] = {}
    for model in gt:
        categories.setdefault(model.class_id, []).append(model)

    results: dict[str, list[np.ndarray]] = {"saliency_miou": [], "saliency_map": [], "pck": []}
    for models in categories.values():
        semantic_ids = [
            kp.semantic_id
            for model in models
            for annotation in (model, pred_by_key.get(model.key))
            if annotation is not None
            for kp in annotation.keypoints
        ]
        classes = max(semantic_ids, default=-1) + 1
        predicted, scores, tiebreaks, gts, gt_rows = [], [], [], [], []
        pck_pred, pck_gt, pck_rows, pck_permutations = [], [], [], []
        for model in models:
            points_N3 = _check_points(points[model.key], f"points[{model.key!r}]")
            count = points_N3.shape[0]
            tree: list[cKDTree] = []
            gt_points_K = _point_indices(model, points_N3, "gt", tree)
            unique_U, inverse_K = np.unique(gt_points_K, return_inverse=True)
            geodesic_UN = geodesic_distances(points_N3, unique_U, k)

            score_N = np.zeros(count)
            tiebreak_N = np.zeros(count)
            pred_C = np.full(classes, -1, dtype=np.int64)
            prediction = pred_by_key.get(model.key)
            if prediction is not None and prediction.keypoints:
                pred_points_P = _point_indices(prediction, points_N3, "pred", tree)
                first_points, first_rank = np.unique(pred_points_P, return_index=True)
                score_N[first_points] = 1.0
                tiebreak_N[first_points] = first_rank
                pred_semantic = np.array([kp.semantic_id for kp in prediction.keypoints])
                position_C, present = _first_per_id(pred_semantic, classes)
                pred_C[present] = pred_points_P[position_C[present]]
            predicted.append(np.flatnonzero(score_N > 0))
            scores.append(score_N)
            tiebreaks.append(tiebreak_N)
            gts.append(unique_U)
            gt_rows.append(geodesic_UN)

            gt_semantic = np.array([kp.semantic_id for kp in model.keypoints], dtype=np.int64)
            position_C, present = _first_per_id(gt_semantic, classes)
            gt_C = np.full(classes, -1, dtype=np.int64)
            gt_C[present] = gt_points_K[position_C[present]]
            geodesic_CN = np.full((classes, count), np.inf)
            geodesic_CN[present] = geodesic_UN[inverse_K[position_C[present]]]
            pck_pred.append(pred_C)
            pck_gt.append(gt_C)
            pck_rows.append(geodesic_CN)
            pck_permutations.append(semantic_permutations(model, classes))

        results["saliency_miou"].append(_pooled_iou(predicted, gts, gt_rows, threshold_T))
        results["saliency_map"].append(
            _pooled_average_precision(scores, tiebreaks, gts, gt_rows, threshold_T)
        )
        category_pck = pck(pck_pred, pck_gt, pck_rows, threshold_T, pck_permutations)
        results["pck"].append(np.array([category_pck[key] for key in keys]))
    return {
        name: _as_dict(keys, _mean_over_categories(values, threshold_T.size))
        for name, values in results.items()
    }
