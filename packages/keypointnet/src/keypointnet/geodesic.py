"""Geodesic distances on point clouds: shortest paths in a Euclidean k-nearest-neighbour graph.

Upstream KeypointNet builds ``sklearn.neighbors.kneighbors_graph(pc, 20, mode='distance')`` and
runs all-pairs shortest paths (``sklearn.utils.graph.graph_shortest_path``, removed from newer
scikit-learn), caching an N × N matrix per shape. The benchmark metrics only ever read distances
from ground-truth keypoints, and the graph is undirected, so ``geodesic_distances`` runs
``scipy.sparse.csgraph.dijkstra`` from the ground-truth rows alone (S ≪ N sources).
``all_pairs_geodesic`` keeps the upstream-style full matrix as the reference for tests and the
benchmark baseline.

Shapes: ``N`` points, ``D`` coordinates per point (3 for KeypointNet), ``S`` source points.

Disconnected parts of the graph are ``inf`` apart; the metrics treat ``inf`` as beyond every
threshold.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse
from scipy.sparse.csgraph import dijkstra
from scipy.spatial import cKDTree

__all__ = ["DEFAULT_NEIGHBOURS", "all_pairs_geodesic", "geodesic_distances", "knn_graph"]

#: Neighbours per point in the geodesic graph (upstream's ``kneighbors_graph(pc, 20)``).
DEFAULT_NEIGHBOURS = 20


def _check_points(points: np.ndarray, name: str = "points") -> np.ndarray:
    """Returns ``points`` as a finite float64 array of shape (N, D), N ≥ 1."""
    array = np.asarray(points)
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{name} must have shape (N, D) with N, D >= 1, got {array.shape}")
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise ValueError(f"{name} must hold real numbers, got dtype {array.dtype}")
    array = array.astype(np.float64, copy=False)
    if not np.isfinite(array).all():
        raise ValueError(f"{name} must be finite; found NaN or inf")
    return array


def _check_neighbours(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    return int(k)


def knn_graph(points: np.ndarray, k: int = DEFAULT_NEIGHBOURS) -> scipy.sparse.csr_matrix:
    """The symmetric Euclidean k-nearest-neighbour graph of a point cloud.

    Each point is joined to its ``k`` nearest other points (``min(k, N - 1)`` when the cloud is
    small); the graph is then symmetrised, so ``i`` and ``j`` share an edge when either is among
    the other's neighbours. A point never counts as its own neighbour, even among exact
    duplicates: as in scikit-learn's ``kneighbors_graph``, ``k + 1`` neighbours are queried and
    the point itself (or, when more than ``k`` duplicates hide it, the farthest neighbour) is
    dropped.

    Zero-length edges (duplicate points) are stored as **explicit zeros** in the CSR structure.
    ``scipy.sparse.csgraph`` treats explicit zeros of a sparse matrix as edges, so duplicates
    stay connected at distance exactly 0 (no epsilon, so threshold 0.00 still matches them).
    Do not call ``eliminate_zeros()`` or arithmetic that drops explicit zeros on the result.

    Args:
        points: (N, D) coordinates.
        k: neighbours per point before symmetrisation.

    Returns:
        (N, N) float64 CSR matrix, symmetric, sorted indices, no diagonal; ``data`` holds the
        Euclidean edge lengths.

    Raises:
        ValueError: ``points`` is not a non-empty finite (N, D) array, or ``k`` < 1.
    """
    points = _check_points(points)
    k = _check_neighbours(k)
    count = points.shape[0]
    neighbours = min(k, count - 1)
    if neighbours == 0:
        return scipy.sparse.csr_matrix((count, count), dtype=np.float64)

    _, index_NK = cKDTree(points).query(points, k=neighbours + 1)  # (N, k + 1), nearest first
    rows_N = np.arange(count)
    is_self_NK = index_NK == rows_N[:, None]
    # Duplicates can push the point itself out of its own k + 1 results: drop the farthest.
    is_self_NK[~is_self_NK.any(axis=1), -1] = True
    keep_NK = ~is_self_NK
    sources = np.broadcast_to(rows_N[:, None], index_NK.shape)[keep_NK]
    targets = index_NK[keep_NK]

    # Union of both directions, deduplicated through the linear key i·N + j (sorted by row, then
    # column), so the CSR arrays can be written directly and explicit zeros survive.
    keys = np.concatenate([sources * count + targets, targets * count + sources]).astype(np.int64)
    keys.sort()  # sort + neighbour mask: several times faster than np.unique here
    keys = keys[np.concatenate(([True], keys[1:] != keys[:-1]))]
    edge_rows, edge_cols = np.divmod(keys, count)
    lengths = np.linalg.norm(points[edge_rows] - points[edge_cols], axis=1)
    indptr = np.zeros(count + 1, dtype=np.int64)
    np.cumsum(np.bincount(edge_rows, minlength=count), out=indptr[1:])
    return scipy.sparse.csr_matrix(
        (lengths, edge_cols.astype(np.int32), indptr.astype(np.int32)), shape=(count, count)
    )


def _check_graph(graph: scipy.sparse.spmatrix | scipy.sparse.sparray, count: int) -> None:
    if not scipy.sparse.issparse(graph):
        raise ValueError(f"graph must be a scipy sparse matrix, got {type(graph).__name__}")
    if graph.shape != (count, count):
        raise ValueError(
            f"graph must have shape ({count}, {count}) for {count} points, got {graph.shape}"
        )


def geodesic_distances(
    points: np.ndarray,
    sources: np.ndarray,
    k: int = DEFAULT_NEIGHBOURS,
    graph: scipy.sparse.spmatrix | scipy.sparse.sparray | None = None,
) -> np.ndarray:
    """Graph-geodesic distances from a few source points to every point.

    One Dijkstra run per source over the symmetric k-NN graph. Because the graph is undirected,
    row ``s`` is also the column of distances *to* ``sources[s]``, which is all the benchmark
    metrics need.

    Args:
        points: (N, D) coordinates.
        sources: (S,) integer point indices (repeats allowed).
        k: neighbours per point, used when ``graph`` is None.
        graph: a precomputed (N, N) graph (e.g. ``knn_graph(points, k)``); it is treated as
            undirected, and its explicit zeros are zero-length edges.

    Returns:
        (S, N) float64 distances; ``inf`` where a point is not connected to the source.

    Raises:
        ValueError: bad ``points``/``k``, ``sources`` not integer or out of range, or a
            ``graph`` of the wrong shape.
    """
    points = _check_points(points)
    count = points.shape[0]
    source_S = np.asarray(sources)
    if source_S.ndim != 1:
        raise ValueError(
            f"sources must be a 1-D array of point indices, got shape {source_S.shape}"
        )
    if source_S.size == 0:
        return np.zeros((0, count), dtype=np.float64)
    if not np.issubdtype(source_S.dtype, np.integer):
        raise ValueError(f"sources must hold integers, got dtype {source_S.dtype}")
    if source_S.min() < 0 or source_S.max() >= count:
        raise ValueError(
            f"sources must lie in [0, {count}) for {count} points, got values in "
            f"[{source_S.min()}, {source_S.max()}]"
        )
    if graph is None:
        graph = knn_graph(points, k)
        directed = True  # knn_graph is symmetric already; skips scipy's undirected bookkeeping
    else:
        _check_graph(graph, count)
        directed = False
    distances_SN = dijkstra(graph, directed=directed, indices=source_S.astype(np.int32))
    return np.asarray(distances_SN, dtype=np.float64).reshape(source_S.size, count)


def all_pairs_geodesic(points: np.ndarray, k: int = DEFAULT_NEIGHBOURS) -> np.ndarray:
    """The full geodesic matrix, as upstream caches it (reference and benchmark baseline).

    Costs N Dijkstra runs and N² floats (33.5 MB for a 2,048-point cloud); prefer
    ``geodesic_distances`` with the ground-truth rows.

    Args:
        points: (N, D) coordinates.
        k: neighbours per point.

    Returns:
        (N, N) float64 symmetric distances; ``inf`` between disconnected parts.

    Raises:
        ValueError: bad ``points`` or ``k``.
    """
    graph = knn_graph(points, k)
    return np.asarray(dijkstra(graph, directed=True), dtype=np.float64)  # graph is symmetric
