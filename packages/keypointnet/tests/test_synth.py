"""Synthetic shapes: keypoints on the cloud and the mesh, closed meshes, determinism, layout."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from keypointnet.data import (
    CATEGORY_TO_SYNSET,
    SPLIT_NAMES,
    KeypointNetDirectory,
    Mesh,
    barycentric_point,
    check_model_against_mesh,
    check_model_against_pcd,
    read_split,
)
from keypointnet.synth import (
    SEMANTIC_NAMES,
    SYNTH_CATEGORIES,
    make_shape,
    sample_surface,
    synthesize,
)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> KeypointNetDirectory:
    root = tmp_path_factory.mktemp("synth")
    synthesize("chair", 10, 7, root)
    synthesize("mug", 4, 7, root, num_points=512)
    return KeypointNetDirectory(root)


def _on_surface(mesh: Mesh, point: np.ndarray, tolerance: float = 1e-6) -> bool:
    """Whether ``point`` lies inside some triangle of ``mesh`` (reference check, brute force)."""
    a, b, c = np.moveaxis(mesh.vertices[mesh.faces], 1, 0)
    normal = np.cross(b - a, c - a)
    double_area = np.linalg.norm(normal, axis=1)
    valid = double_area > 1e-12
    normal = normal / np.where(valid, double_area, 1.0)[:, None]
    height = ((point - a) * normal).sum(axis=1)
    projected = point - height[:, None] * normal

    def weight(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        return (np.cross(u, v) * normal).sum(axis=1) / np.where(valid, double_area, 1.0)

    w0, w1 = weight(b - projected, c - projected), weight(c - projected, a - projected)
    inside = (w0 >= -tolerance) & (w1 >= -tolerance) & (1.0 - w0 - w1 >= -tolerance)
    return bool((valid & inside & (np.abs(height) < tolerance)).any())


def test_keypoint_xyz_is_exactly_the_pcd_point(dataset: KeypointNetDirectory) -> None:
    models = dataset.models()
    assert len(models) == 14
    for model in models:
        cloud = dataset.load_points(model)
        assert cloud.rgb is not None
        indexes = [k.point_index for k in model.keypoints]
        assert len(set(indexes)) == len(indexes), "keypoints must be distinct points"
        for keypoint in model.keypoints:
            assert keypoint.xyz == tuple(cloud.points[keypoint.point_index].astype(float).tolist())
            assert keypoint.rgb == tuple(cloud.rgb[keypoint.point_index].tolist())
        assert check_model_against_pcd(model, cloud, atol=0.0) == []


def test_keypoint_is_the_barycentric_point_of_its_face(dataset: KeypointNetDirectory) -> None:
    for model in dataset.models():
        mesh = dataset.load_mesh(model)
        for keypoint in model.keypoints:
            assert keypoint.face_index is not None and keypoint.face_uv is not None
            assert abs(sum(keypoint.face_uv) - 1.0) < 1e-12
            assert min(keypoint.face_uv) >= 0.0
            surface = barycentric_point(mesh, keypoint.face_index, keypoint.face_uv)
            np.testing.assert_allclose(surface, keypoint.xyz, rtol=0, atol=1e-5)
        assert check_model_against_mesh(model, mesh) == []


@pytest.mark.parametrize("category", SYNTH_CATEGORIES)
def test_shapes_are_closed_normalised_and_keypoints_on_the_surface(category: str) -> None:
    rng = np.random.default_rng(3)
    for _ in range(4):
        shape = make_shape(category, rng)
        mesh = shape.mesh
        # Closed and consistently wound: every directed edge appears once, reversed once.
        edges = np.concatenate(
            [mesh.faces[:, [0, 1]], mesh.faces[:, [1, 2]], mesh.faces[:, [2, 0]]]
        )
        directed = {tuple(e) for e in edges.tolist()}
        assert len(directed) == len(edges)
        assert all((b, a) in directed for a, b in directed)
        low, high = mesh.vertices.min(axis=0), mesh.vertices.max(axis=0)
        np.testing.assert_allclose((low + high) / 2, 0.0, atol=1e-6)
        assert 0.9 - 1e-6 <= np.linalg.norm(high - low) <= 1.1 + 1e-6
        ids = [semantic_id for semantic_id, _ in shape.keypoints]
        assert ids == sorted(ids) and set(ids) <= set(SEMANTIC_NAMES[category])
        for _, xyz in shape.keypoints:
            assert _on_surface(mesh, xyz)
        for a, b in shape.reflection:  # pairs swap the two sides (x), keep the height (y)
            xa, xb = shape.keypoints[a][1], shape.keypoints[b][1]
            assert xa[0] * xb[0] < 0 or category == "mug"
            assert abs(xa[1] - xb[1]) < 1e-9


def test_chairs_follow_the_keypointnet_id_convention() -> None:
    rng = np.random.default_rng(0)
    seen_swivel = seen_four_legs = seen_arms = False
    for _ in range(30):
        shape = make_shape("chair", rng)
        position = {semantic_id: xyz for semantic_id, xyz in shape.keypoints}
        assert {0, 1, 2, 3, 4, 5} <= set(position)
        assert position[0][1] > position[2][1]  # backrest top above the seat
        assert position[4][2] < position[2][2]  # front (-z) before back
        if 10 in position:
            seen_swivel = True
            assert not {17, 18, 19, 20} & set(position)
            ids = [semantic_id for semantic_id, _ in shape.keypoints]
            assert shape.rotation == [tuple(ids.index(i) for i in range(10, 15))]
            assert position[15][1] > position[16][1] > position[10][1]
        else:
            seen_four_legs = True
            assert {17, 18, 19, 20} <= set(position) and shape.rotation == []
            assert position[17][2] < 0 < position[18][2] and position[17][0] > 0 > position[20][0]
        if 6 in position:
            seen_arms = True
            assert position[6][2] < position[7][2] and position[6][0] > 0 > position[8][0]
    assert seen_swivel and seen_four_legs and seen_arms


def test_sample_surface_is_area_weighted_and_barycentric() -> None:
    vertices = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [3, 0, 1], [0, 2, 1]], float)
    mesh = Mesh(vertices, [[0, 1, 2], [3, 4, 5]])  # areas 0.5 and 3
    points, face_index, face_uv = sample_surface(mesh, 7000, np.random.default_rng(0))
    assert abs(np.mean(face_index == 1) - 3 / 3.5) < 0.02
    np.testing.assert_allclose(face_uv.sum(axis=1), 1.0, atol=1e-12)
    expected = np.einsum("nc,ncd->nd", face_uv, vertices[mesh.faces[face_index]])
    np.testing.assert_allclose(points, expected, atol=1e-12)


def test_same_seed_gives_byte_identical_files(tmp_path: Path) -> None:
    def files(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}

    for name in ("a", "b"):
        synthesize("airplane", 3, 5, tmp_path / name, num_points=256)
    synthesize("airplane", 3, 6, tmp_path / "c", num_points=256)
    first, second, other = files(tmp_path / "a"), files(tmp_path / "b"), files(tmp_path / "c")
    assert len(first) == 3 + 3 + 1 + 3  # pcds, plys, annotations, splits
    assert first == second
    assert first["annotations/airplane.json"] != other["annotations/airplane.json"]


def test_two_categories_load_with_splits(dataset: KeypointNetDirectory) -> None:
    assert dataset.categories() == ["chair", "mug"]
    chairs, mugs = dataset.models("chair"), dataset.models("mug")
    assert len(chairs) == 10 and len(mugs) == 4
    assert {m.class_id for m in chairs} == {CATEGORY_TO_SYNSET["chair"]}
    assert {m.class_id for m in mugs} == {CATEGORY_TO_SYNSET["mug"]}
    assert [len(dataset.models("chair", split)) for split in SPLIT_NAMES] == [7, 1, 2]
    assert [len(dataset.models("mug", split)) for split in SPLIT_NAMES] == [3, 0, 1]
    assert all(dataset.split_of(m.key) in SPLIT_NAMES for m in chairs + mugs)
    assert len(dataset.load_points(mugs[0]).points) == 512
    assert len(dataset.load_points(chairs[0]).points) == 2048


def test_resynthesizing_one_category_keeps_the_other(tmp_path: Path) -> None:
    synthesize("table", 5, 0, tmp_path, num_points=128)
    synthesize("mug", 3, 0, tmp_path, num_points=128)
    synthesize("table", 2, 1, tmp_path, num_points=128)
    directory = KeypointNetDirectory(tmp_path)
    keys = [k for split in SPLIT_NAMES for k in read_split(tmp_path / "splits" / f"{split}.txt")]
    assert sorted(keys) == sorted(m.key for m in directory.models())
    assert len(directory.models("table")) == 2 and len(directory.models("mug")) == 3


def test_fifty_chairs_take_seconds(tmp_path: Path) -> None:
    start = time.perf_counter()
    synthesize("chair", 20, 0, tmp_path)
    assert time.perf_counter() - start < 5.0 * 20 / 50 * 2  # budget: 50 chairs in 5 s, 2x slack


def test_bad_arguments_raise_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown synthetic category 'car'"):
        synthesize("car", 1, 0, tmp_path)
    with pytest.raises(ValueError, match="splits must be 3 non-negative fractions"):
        synthesize("mug", 1, 0, tmp_path, splits=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="num_points"):
        synthesize("chair", 1, 0, tmp_path, num_points=4)
