"""Geodesic distances: k-NN graph structure, path lengths, and GT-row Dijkstra vs references."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse

from keypointnet.geodesic import all_pairs_geodesic, geodesic_distances, knn_graph


def _sphere(count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    points = rng.normal(size=(count, 3))
    return 0.5 * points / np.linalg.norm(points, axis=1, keepdims=True)


def _floyd_warshall(points: np.ndarray, k: int) -> np.ndarray:
    """Brute force: dense k-NN adjacency from a full distance matrix, then Floyd–Warshall."""
    count = points.shape[0]
    euclidean = np.linalg.norm(points[:, None, :] - points[None, :, :], axis=-1)
    neighbours = np.argsort(euclidean + np.diag(np.full(count, np.inf)), axis=1)[:, :k]
    adjacency = np.full((count, count), np.inf)
    rows = np.repeat(np.arange(count), k)
    adjacency[rows, neighbours.ravel()] = euclidean[rows, neighbours.ravel()]
    adjacency = np.minimum(adjacency, adjacency.T)
    np.fill_diagonal(adjacency, 0.0)
    for middle in range(count):
        adjacency = np.minimum(adjacency, adjacency[:, middle, None] + adjacency[None, middle, :])
    return adjacency


def test_knn_graph_is_symmetric_without_self_loops_and_holds_euclidean_lengths() -> None:
    points = _sphere(120, seed=0)
    graph = knn_graph(points, k=6)
    assert (graph != graph.T).nnz == 0
    assert graph.has_sorted_indices
    coo = graph.tocoo()
    assert not np.any(coo.row == coo.col)
    np.testing.assert_allclose(
        coo.data, np.linalg.norm(points[coo.row] - points[coo.col], axis=1), rtol=1e-12
    )
    # Every point keeps at least its own k neighbours after symmetrisation.
    assert np.diff(graph.indptr).min() >= 6


def test_line_geodesic_equals_path_length() -> None:
    rng = np.random.default_rng(1)
    x = np.sort(rng.uniform(0.0, 1.0, size=40))
    points = np.stack([x, 2 * x, -x], axis=1)  # a straight line in 3D
    sources = np.array([0, 17, 39])
    expected = np.abs(x[sources, None] - x[None, :]) * np.sqrt(6.0)
    np.testing.assert_allclose(geodesic_distances(points, sources, k=20), expected, atol=1e-12)
    # With k = 2 on an evenly spaced line the graph is a chain: distance = hops × spacing.
    chain = np.linspace(0.0, 0.9, 10)[:, None] * np.array([[1.0, 0.0, 0.0]])
    np.testing.assert_allclose(
        geodesic_distances(chain, np.array([0]), k=2)[0], np.arange(10) * 0.1, atol=1e-12
    )


def test_grid_geodesic_follows_rows_and_lies_between_euclidean_and_manhattan() -> None:
    spacing = 0.05
    ii, jj = np.meshgrid(np.arange(8), np.arange(8), indexing="ij")
    cells = np.stack([ii.ravel(), jj.ravel()], axis=1)
    points = np.concatenate([cells * spacing, np.zeros((64, 1))], axis=1)
    distances = all_pairs_geodesic(points, k=4)
    same_row = cells[:, None, 0] == cells[None, :, 0]
    row_length = np.abs(cells[:, None, 1] - cells[None, :, 1]) * spacing
    np.testing.assert_allclose(distances[same_row], row_length[same_row], atol=1e-12)
    euclidean = np.linalg.norm(points[:, None] - points[None, :], axis=-1)
    manhattan = np.abs(cells[:, None] - cells[None, :]).sum(-1) * spacing
    assert np.all(distances >= euclidean - 1e-12)
    assert np.all(distances <= manhattan + 1e-12)


def test_gt_rows_equal_all_pairs_and_floyd_warshall() -> None:
    points = _sphere(90, seed=2)
    sources = np.array([3, 0, 88, 41, 3])  # a repeated source is allowed
    rows = geodesic_distances(points, sources, k=5)
    full = all_pairs_geodesic(points, k=5)
    np.testing.assert_array_equal(rows, full[sources])
    np.testing.assert_allclose(full, _floyd_warshall(points, k=5), rtol=1e-12, atol=1e-12)
    # A precomputed graph gives the same rows.
    np.testing.assert_array_equal(
        geodesic_distances(points, sources, graph=knn_graph(points, k=5)), rows
    )


def test_disconnected_clusters_are_infinitely_far() -> None:
    points = np.concatenate([_sphere(30, seed=3), _sphere(30, seed=4) + 10.0])
    distances = geodesic_distances(points, np.array([0, 45]), k=5)
    assert np.isinf(distances[0, 30:]).all() and np.isfinite(distances[0, :30]).all()
    assert np.isinf(distances[1, :30]).all() and np.isfinite(distances[1, 30:]).all()


def test_duplicate_points_are_zero_length_edges() -> None:
    base = _sphere(40, seed=5)
    points = np.concatenate([base, base[:3], np.repeat(base[7:8], 30, axis=0)])
    graph = knn_graph(points, k=4)
    coo = graph.tocoo()
    assert not np.any(coo.row == coo.col)
    assert np.any(coo.data == 0.0)  # explicit zeros are stored
    distances = geodesic_distances(points, np.array([0, 7]), k=4)
    assert distances[0, 40] == 0.0  # duplicate of point 0
    assert np.all(distances[1, 43:] == 0.0)  # 30 copies of point 7, more than k + 1
    assert np.isfinite(distances).all()


def test_small_clouds_and_single_point() -> None:
    points = _sphere(5, seed=6)
    np.testing.assert_allclose(
        all_pairs_geodesic(points, k=20),
        np.linalg.norm(points[:, None] - points[None, :], axis=-1),
        atol=1e-12,
    )
    assert geodesic_distances(np.zeros((1, 3)), np.array([0])).tolist() == [[0.0]]
    assert geodesic_distances(points, np.array([], dtype=np.int64)).shape == (0, 5)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: knn_graph(np.zeros((4, 3)), k=0), "k must"),
        (lambda: knn_graph(np.zeros((4,)), k=2), "points must have shape"),
        (lambda: knn_graph(np.array([[0.0, np.nan, 0.0]]), k=2), "points must be finite"),
        (lambda: geodesic_distances(np.zeros((4, 3)), np.array([4])), "sources must lie"),
        (lambda: geodesic_distances(np.zeros((4, 3)), np.array([0.5])), "sources must hold"),
        (
            lambda: geodesic_distances(
                np.zeros((4, 3)), np.array([0]), graph=scipy.sparse.csr_matrix((3, 3))
            ),
            "graph must have shape",
        ),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_bench_geodesic_smoke() -> None:
    from keypointnet.bench import GEODESIC_COMMAND, bench_geodesic

    benchmark = bench_geodesic(num_points=256, num_keypoints=12, repeats=1, warmup=0)
    assert benchmark.result.name == "geodesic_gt_rows_vs_all_pairs"
    assert benchmark.speedup == pytest.approx(1.0 / benchmark.result.ratio)
    assert benchmark.meta["command"] == GEODESIC_COMMAND
    assert benchmark.meta["graph_components"] == 1
    assert "speedup" in benchmark.summary()
