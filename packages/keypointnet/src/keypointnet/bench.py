"""Benchmarks of the package, importable so the ``keypointnet`` CLI and scripts can run them.

``bench_geodesic`` times the evaluation path of one model — geodesics from the GT keypoints only
(``geodesic_distances``: S Dijkstra runs) plus saliency mIoU, saliency mAP and PCK — against the
upstream way of getting the same rows: the all-pairs matrix (``all_pairs_geodesic``: N runs) and
the same metrics. Both start from the raw points (the k-NN graph is built inside each call). The
cloud is a synthetic closed surface (a box, area-weighted samples), so the graph is connected as
on a ShapeNet shape.

Shapes: ``N`` points, ``K`` keypoints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from keypointnet.geodesic import (
    DEFAULT_NEIGHBOURS,
    all_pairs_geodesic,
    geodesic_distances,
    knn_graph,
)
from keypointnet.metrics import pck, saliency_map, saliency_miou
from ptrain.core.bench import BenchResult, compare

__all__ = [
    "GEODESIC_COMMAND",
    "GEODESIC_GOAL_SPEEDUP",
    "GeodesicBenchmark",
    "bench_geodesic",
    "sample_box_surface",
]

#: The minimum speedup of GT-row geodesics over the all-pairs baseline that the benchmark expects.
GEODESIC_GOAL_SPEEDUP = 20.0
#: How the standalone benchmark is run (stored in the JSON meta).
GEODESIC_COMMAND = "python packages/keypointnet/benchmarks/bench_geodesic.py"
BOX_SIZE = (0.8, 0.6, 1.0)  # ShapeNet-like extent, so the 0.00–0.10 thresholds are meaningful


def sample_box_surface(
    count: int, size: tuple[float, float, float] = BOX_SIZE, seed: int = 0
) -> np.ndarray:
    """Area-weighted uniform samples on the surface of an axis-aligned box centred at 0.

    Args:
        count: number of points N.
        size: edge lengths along x, y, z.
        seed: random seed.

    Returns:
        (N, 3) float64 points.

    Raises:
        ValueError: ``count`` < 1 or a non-positive edge length.
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"count must be an integer >= 1, got {count!r}")
    half_3 = np.asarray(size, dtype=np.float64) / 2
    if half_3.shape != (3,) or not (half_3 > 0).all():
        raise ValueError(f"size must be 3 positive edge lengths, got {size!r}")
    rng = np.random.default_rng(seed)
    # Face pair a (normal along axis a) has area 4·h_b·h_c per face.
    face_area_3 = np.array([half_3[1] * half_3[2], half_3[0] * half_3[2], half_3[0] * half_3[1]])
    axis_N = rng.choice(3, size=count, p=face_area_3 / face_area_3.sum())
    points_N3 = rng.uniform(-1.0, 1.0, size=(count, 3)) * half_3
    sign_N = rng.choice([-1.0, 1.0], size=count)
    points_N3[np.arange(count), axis_N] = sign_N * half_3[axis_N]
    return points_N3


def _box_keypoints(
    points_N3: np.ndarray, count: int, size: tuple[float, float, float]
) -> np.ndarray:
    """(K,) indices of the points nearest to the 8 corners, then the 6 face centres."""
    half_3 = np.asarray(size) / 2
    corners = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)]) * half_3
    centres = np.concatenate([np.eye(3), -np.eye(3)]) * half_3
    anchors = np.concatenate([corners, centres])
    if count > len(anchors):
        raise ValueError(f"num_keypoints must be at most {len(anchors)}, got {count}")
    _, index_K = cKDTree(points_N3).query(anchors[:count])
    return np.asarray(index_K, dtype=np.int64)


@dataclass(frozen=True, slots=True)
class GeodesicBenchmark:
    """The outcome of ``bench_geodesic``.

    Attributes:
        result: the harness result; ``result.ratio`` is candidate / baseline time.
        speedup: baseline / candidate time (``1 / result.ratio``).
        meta: the parameters and the speedup, ready for ``write_json(..., meta=...)``.
    """

    result: BenchResult
    speedup: float
    meta: dict[str, Any]

    def summary(self) -> str:
        """Two lines: the harness summary and the speedup against its goal."""
        met = self.speedup >= GEODESIC_GOAL_SPEEDUP
        return (
            f"{self.result.summary()}\n"
            f"speedup (all-pairs / GT rows): {self.speedup:.1f}x "
            f"(goal >= {GEODESIC_GOAL_SPEEDUP:.0f}x: {'met' if met else 'NOT met'})"
        )


def bench_geodesic(
    num_points: int = 2048,
    num_keypoints: int = 12,
    k: int = DEFAULT_NEIGHBOURS,
    repeats: int = 7,
    warmup: int = 1,
    noise: float = 0.02,
    seed: int = 0,
) -> GeodesicBenchmark:
    """Time GT-row geodesics + metrics against all-pairs geodesics + the same metrics.

    One synthetic model: ``num_points`` samples on a box surface, GT keypoints at the samples
    nearest to the box corners (then face centres), predictions at the GT positions moved by
    Gaussian noise and snapped back to the cloud, a saliency map that is 0.9 at the predicted
    points and below the 0.1 cut elsewhere. Both callables produce the same metric values
    (checked before timing).

    Args:
        num_points: points N of the cloud.
        num_keypoints: GT keypoints K (at most 14).
        k: neighbours per point of the geodesic graph.
        repeats: timed blocks per callable.
        warmup: untimed calls of each callable first.
        noise: standard deviation of the prediction noise (ShapeNet units).
        seed: random seed of the cloud and the noise.

    Returns:
        The harness result (name ``geodesic_gt_rows_vs_all_pairs``, goal ratio
        ``1 / GEODESIC_GOAL_SPEEDUP``), the speedup and the JSON meta.

    Raises:
        ValueError: bad sizes, or the two paths disagree on a metric.
    """
    points_N3 = sample_box_surface(num_points, seed=seed)
    gt_K = _box_keypoints(points_N3, num_keypoints, BOX_SIZE)
    rng = np.random.default_rng(seed + 1)
    noisy_K3 = points_N3[gt_K] + rng.normal(scale=noise, size=(num_keypoints, 3))
    _, pred_K = cKDTree(points_N3).query(noisy_K3)
    probability_N = rng.uniform(0.0, 0.09, size=num_points)
    probability_N[pred_K] = 0.9

    def metrics(rows_KN: np.ndarray) -> dict[str, dict[str, float]]:
        return {
            "saliency_miou": saliency_miou([probability_N], [gt_K], [rows_KN]),
            "saliency_map": saliency_map([probability_N], [gt_K], [rows_KN]),
            "pck": pck([pred_K], [gt_K], [rows_KN]),
        }

    def gt_rows() -> dict[str, dict[str, float]]:
        return metrics(geodesic_distances(points_N3, gt_K, k))

    def all_pairs() -> dict[str, dict[str, float]]:
        return metrics(all_pairs_geodesic(points_N3, k)[gt_K])

    expected = all_pairs()
    if gt_rows() != expected:
        raise ValueError("bench_geodesic: GT-row and all-pairs geodesics give different metrics")
    components, _ = connected_components(knn_graph(points_N3, k), directed=False)

    result = compare(
        gt_rows,
        all_pairs,
        name="geodesic_gt_rows_vs_all_pairs",
        repeats=repeats,
        warmup=warmup,
        threads=1,
        goal=1.0 / GEODESIC_GOAL_SPEEDUP,
    )
    speedup = 1.0 / result.ratio if result.ratio > 0 else float("inf")
    meta = {
        "command": GEODESIC_COMMAND,
        "speedup": speedup,
        "goal_speedup": GEODESIC_GOAL_SPEEDUP,
        "met_goal": bool(speedup >= GEODESIC_GOAL_SPEEDUP),
        "num_points": num_points,
        "num_keypoints": num_keypoints,
        "k": k,
        "noise": noise,
        "seed": seed,
        "surface": f"box {BOX_SIZE[0]} x {BOX_SIZE[1]} x {BOX_SIZE[2]}, area-weighted samples",
        "graph_components": int(components),
        "candidate": "knn_graph + dijkstra(indices=GT) + saliency mIoU/mAP + PCK",
        "baseline": "knn_graph + all-pairs dijkstra + the same metrics on the GT rows",
        "pck_at_0.05": expected["pck"]["0.05"],
    }
    return GeodesicBenchmark(result=result, speedup=speedup, meta=meta)
