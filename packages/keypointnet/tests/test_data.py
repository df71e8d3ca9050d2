"""Readers and writers of keypointnet.data: round trips, one-line errors, real chair data."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keypointnet.data import (
    SPLIT_NAMES,
    DataFormatError,
    Keypoint,
    KeypointNetDirectory,
    Mesh,
    ModelAnnotation,
    RotationSymmetry,
    Symmetries,
    annotations_to_json,
    barycentric_point,
    check_model_against_mesh,
    check_model_against_pcd,
    read_annotations,
    read_obj,
    read_pcd,
    read_ply,
    read_split,
    write_annotations,
    write_obj,
    write_pcd,
    write_ply,
    write_split,
)

PCD_HEADER = (
    "VERSION .7\nFIELDS x y z rgb\nSIZE 4 4 4 4\nTYPE F F F U\nCOUNT 1 1 1 1\nWIDTH {n}\n"
    "HEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS {n}\nDATA ascii\n"
)  # 10 header lines: data line k (1-based) is file line 10 + k


def _shared_data_dir() -> Path:
    override = os.environ.get("KEYPOINTNET_SHARED_DATA")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "keypointnet"


def _error(function, path: Path) -> str:
    with pytest.raises(DataFormatError) as caught:
        function(path)
    message = str(caught.value)
    assert "\n" not in message, message
    assert str(path) in message, message
    return message


def _write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, str):
        text = text.encode()
    path.write_bytes(text)
    return path


def _sample_model() -> ModelAnnotation:
    keypoints = [
        Keypoint((0.1, 0.2, 0.3), (1, 2, 3), 0, 5, 1, (0.2, 0.3, 0.5)),
        Keypoint((-0.1, 0.2, 0.3), (4, 5, 6), 1, 6, 0, (1.0, 0.0, 0.0)),
        Keypoint((0.0, -0.4, 0.0), (7, 8, 9), 16),
    ]
    symmetries = Symmetries(
        reflection=((0, 1),),
        rotation=(
            RotationSymmetry((0, 1, 2)),
            RotationSymmetry((0, 1), True, (0.0, 0.1, 0.0), 0.25, (0.0, 1.0, 0.0)),
        ),
    )
    return ModelAnnotation("03001627", "abc123", keypoints, symmetries)


# --------------------------------------------------------------------------- PCD
def test_pcd_round_trip_with_rgb_writes_the_upstream_header(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    points = np.round(rng.uniform(-0.6, 0.6, (50, 3)), 6).astype(np.float32)
    rgb = rng.integers(0, 256, (50, 3)).astype(np.uint8)
    rgb[0] = (255, 255, 255)  # 0xFFFFFF: float32 could hold it, bitwise unpacking must too
    path = tmp_path / "a.pcd"
    write_pcd(path, points, rgb)
    lines = path.read_text().splitlines()
    assert lines[:10] == PCD_HEADER.format(n=50).splitlines()
    assert lines[10].count(".") == 3 and len(lines[10].split()[0].split(".")[1]) == 6
    cloud = read_pcd(path)
    assert cloud.points.dtype == np.float32 and cloud.rgb is not None
    np.testing.assert_array_equal(cloud.points, points)
    np.testing.assert_array_equal(cloud.rgb, rgb)


def test_pcd_round_trip_is_exact_for_any_float32_and_without_rgb(tmp_path: Path) -> None:
    points = np.random.default_rng(1).normal(size=(40, 3)).astype(np.float32) * 1e-3
    path = tmp_path / "b.pcd"
    write_pcd(path, points)
    assert "FIELDS x y z\n" in path.read_text()
    cloud = read_pcd(path)
    assert cloud.rgb is None
    np.testing.assert_array_equal(cloud.points, points)


def test_pcd_unpacks_packed_uint_bitwise_and_pcl_float_rgb(tmp_path: Path) -> None:
    upstream = PCD_HEADER.format(n=2) + "-0.168447 -0.180980 -0.044919 13614742\n0.1 0.2 0.3 0\n"
    cloud = read_pcd(_write(tmp_path / "u.pcd", upstream))
    assert cloud.rgb is not None
    assert cloud.rgb[0].tolist() == [0xCF, 0xBE, 0x96]  # 13614742 == 0xCFBE96
    np.testing.assert_array_equal(cloud.points[0], np.float32([-0.168447, -0.180980, -0.044919]))
    packed = np.array([0x00FF8040, 0x000102FF], dtype=np.uint32).view(np.float32)
    pcl = PCD_HEADER.format(n=2).replace("TYPE F F F U", "TYPE F F F F")
    pcl += "".join(f"0 0 0 {value:.9g}\n" for value in packed.tolist())
    cloud = read_pcd(_write(tmp_path / "f.pcd", pcl))
    assert cloud.rgb is not None
    assert cloud.rgb.tolist() == [[255, 128, 64], [1, 2, 255]]


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "0.4 0.5 0.6 7\n",
            "0.4 0.5\n",
            ":12: expected 4 values (x y z rgb) on a data line",
        ),
        ("0.4 0.5 0.6 7\n", "0.4 0.5 abc 7\n", ":12: expected a number, got 'abc'"),
        ("TYPE F F F U", "TYPE F F F X", ":4: TYPE of field 'rgb': expected F, U or I"),
        ("SIZE 4 4 4 4\n", "", "header field SIZE is missing"),
        ("DATA ascii", "DATA binary", ":10: DATA binary: only ascii PCD files are supported"),
        ("0.4 0.5 0.6 7\n", "", ":9: POINTS 2 but the file has 1 data lines"),
        ("WIDTH 2", "WIDTH two", ":6: WIDTH: expected a non-negative integer, got 'two'"),
        ("HEIGHT 1", "HIGHT 1", ":7: expected a PCD header field"),
        ("0.4 0.5 0.6 7\n", "0.4 0.5 0.6 -7\n", ":12: field rgb (TYPE U): expected a packed"),
        ("0.4 0.5 0.6 7\n", "0.4 inf 0.6 7\n", ":12: expected finite float32 coordinates"),
    ],
)
def test_pcd_errors_name_file_and_line(tmp_path: Path, old: str, new: str, expected: str) -> None:
    text = PCD_HEADER.format(n=2) + "0.1 0.2 0.3 1\n0.4 0.5 0.6 7\n"
    assert old in text
    message = _error(read_pcd, _write(tmp_path / "bad.pcd", text.replace(old, new, 1)))
    assert expected in message


# --------------------------------------------------------------------------- PLY
def _mesh(rng: np.random.Generator, colors: bool) -> Mesh:
    vertices = rng.normal(size=(12, 3)).astype(np.float32).astype(np.float64)
    faces = rng.integers(0, 12, (9, 3))
    vertex_colors = rng.integers(0, 256, (12, 3)).astype(np.uint8) if colors else None
    return Mesh(vertices, faces, vertex_colors)


@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("colors", [False, True])
def test_ply_round_trip(tmp_path: Path, binary: bool, colors: bool) -> None:
    mesh = _mesh(np.random.default_rng(2), colors)
    path = tmp_path / "m.ply"
    write_ply(path, mesh, binary=binary)
    loaded = read_ply(path)
    np.testing.assert_array_equal(loaded.vertices, mesh.vertices)
    np.testing.assert_array_equal(loaded.faces, mesh.faces)
    if colors:
        assert loaded.vertex_colors is not None
        np.testing.assert_array_equal(loaded.vertex_colors, mesh.vertex_colors)
    else:
        assert loaded.vertex_colors is None


def test_ply_keeps_float64_vertices_exact(tmp_path: Path) -> None:
    mesh = Mesh(np.array([[0.1, 0.2, 0.3], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), [[0, 1, 2]])
    for binary in (False, True):
        write_ply(tmp_path / "d.ply", mesh, binary=binary)
        np.testing.assert_array_equal(read_ply(tmp_path / "d.ply").vertices, mesh.vertices)


UPSTREAM_PLY = """ply
format ascii 1.0
comment like ShapeNetCore.v2.ply: normals before colours
element vertex 5
property float x
property float y
property float z
property float nx
property float ny
property float nz
property uchar red
property uchar green
property uchar blue
element face 3
property list uchar int vertex_indices
end_header
0 0 0 0 0 1 10 20 30
1 0 0 0 0 1 40 50 60
1 1 0 0 0 1 70 80 90
0 1 0 0 0 1 100 110 120
0.5 0.5 1 0 0 1 130 140 150
3 0 1 4
4 0 1 2 3
3 1 2 4
"""


def test_ply_ascii_skips_extra_properties_and_fan_triangulates(tmp_path: Path) -> None:
    mesh = read_ply(_write(tmp_path / "up.ply", UPSTREAM_PLY))
    assert mesh.vertices.shape == (5, 3) and mesh.vertex_colors is not None
    assert mesh.vertex_colors[4].tolist() == [130, 140, 150]
    assert mesh.faces.tolist() == [[0, 1, 4], [0, 1, 2], [0, 2, 3], [1, 2, 4]]


def test_ply_binary_with_mixed_polygon_sizes(tmp_path: Path) -> None:
    header = (
        b"ply\nformat binary_little_endian 1.0\nelement vertex 4\nproperty double x\n"
        b"property double y\nproperty double z\nelement face 2\n"
        b"property list uchar uint vertex_index\nend_header\n"
    )
    vertices = np.arange(12, dtype="<f8").tobytes()
    faces = bytes([4]) + np.array([0, 1, 2, 3], "<u4").tobytes()
    faces += bytes([3]) + np.array([3, 2, 1], "<u4").tobytes()
    mesh = read_ply(_write(tmp_path / "mixed.ply", header + vertices + faces))
    np.testing.assert_array_equal(mesh.vertices, np.arange(12.0).reshape(4, 3))
    assert mesh.faces.tolist() == [[0, 1, 2], [0, 2, 3], [3, 2, 1]]
    truncated = _write(tmp_path / "short.ply", header + vertices + faces[:-3])
    assert "file ends inside element 'face'" in _error(read_ply, truncated)


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("3 1 2 4\n", "3 1 2 5\n", ":24: vertex index 5 is out of range 0..4"),
        (
            "4 0 1 2 3\n",
            "4 0 1 2\n",
            ":23: list 'vertex_indices' declares 4 items but the line has 3",
        ),
        ("0.5 0.5 1 0", "0.5 0.5 0", ":21: element 'vertex' expects 9 values per line, got 8"),
        ("0 1 0 0 0 1 100", "0 1 0 0 0 1 1e3", ":20: colour outside 0..255"),
        ("format ascii 1.0", "format ascii", ":2: expected 'format ascii|binary_little_endian"),
        ("3 1 2 4\n", "", "element 'face' declares 3 records but the file ends after 2"),
    ],
)
def test_ply_errors_name_file_and_line(tmp_path: Path, old: str, new: str, expected: str) -> None:
    assert old in UPSTREAM_PLY
    message = _error(read_ply, _write(tmp_path / "bad.ply", UPSTREAM_PLY.replace(old, new, 1)))
    assert expected in message


# --------------------------------------------------------------------------- OBJ
OBJ_TEXT = """# exported
mtllib chair.mtl
o body
v 0 0 0
v 1 0 0
  v 1 1 0   # a comment after a vertex
v 0 1 0
vt 0 0
vt 1 0
vn 0 0 1
usemtl wood
s off
g seat
f 1/1/1 2/2/1 3/2/1
f 1//1 3//1 4//1
f -4/1 -3/2 -1/1
v 0.5 0.5 1
f 1 2 3 4
f -1 1 2
"""


def test_obj_reads_corner_forms_negative_indices_and_quads(tmp_path: Path) -> None:
    mesh = read_obj(_write(tmp_path / "a.obj", OBJ_TEXT))
    np.testing.assert_array_equal(
        mesh.vertices, [[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [0.5, 0.5, 1]]
    )
    # -4/-3/-1 are relative to the 4 vertices before that line; -1 later means vertex 5.
    assert mesh.faces.tolist() == [[0, 1, 2], [0, 2, 3], [0, 1, 3], [0, 1, 2], [0, 2, 3], [4, 0, 1]]
    assert mesh.vertex_colors is None


@pytest.mark.parametrize("colors", [False, True])
def test_obj_round_trip_keeps_order(tmp_path: Path, colors: bool) -> None:
    mesh = _mesh(np.random.default_rng(3), colors)
    write_obj(tmp_path / "m.obj", mesh)
    loaded = read_obj(tmp_path / "m.obj")
    np.testing.assert_array_equal(loaded.vertices, mesh.vertices)
    np.testing.assert_array_equal(loaded.faces, mesh.faces)
    if colors:
        assert loaded.vertex_colors is not None
        np.testing.assert_array_equal(loaded.vertex_colors, mesh.vertex_colors)


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("f 1 2 3 4", "f 1 2 0 4", ":18: vertex index 0 does not name one of the 5 vertices"),
        ("f -1 1 2", "f -6 1 2", ":19: vertex index -6 does not name one of the 5 vertices"),
        ("f 1 2 3 4", "f 1 2", ":18: a face needs at least 3 vertices, got 2"),
        ("v 0 1 0", "v 0 one 0", ":7: expected a number, got 'one'"),
        ("v 1 0 0", "v 1 0", ":5: expected 'v x y z'"),
        ("f 1//1 3//1", "f /1 3//1", ":15: a face corner must start with a vertex index"),
    ],
)
def test_obj_errors_name_file_and_line(tmp_path: Path, old: str, new: str, expected: str) -> None:
    assert old in OBJ_TEXT
    assert expected in _error(read_obj, _write(tmp_path / "bad.obj", OBJ_TEXT.replace(old, new, 1)))


# --------------------------------------------------------------------------- splits
def test_split_round_trip_and_errors(tmp_path: Path) -> None:
    keys = ["03001627-88382b877be91b2a572f8e1c1caad99e", "02691156-1a2b"]
    write_split(tmp_path / "train.txt", keys)
    assert (tmp_path / "train.txt").read_text() == "".join(f"{k}\n" for k in keys)
    assert read_split(tmp_path / "train.txt") == keys
    bad = _write(tmp_path / "bad.txt", f"{keys[0]}\n0300162-abc\n")
    assert ":2: expected '<8-digit synset>-<model id>'" in _error(read_split, bad)
    duplicate = _write(tmp_path / "dup.txt", f"{keys[0]}\n{keys[1]}\n{keys[0]}\n")
    assert f":3: duplicate entry {keys[0]} (first on line 1)" in _error(read_split, duplicate)
    with pytest.raises(ValueError, match="8-digit synset"):
        write_split(tmp_path / "x.txt", ["chair-abc"])


# --------------------------------------------------------------------------- annotations
def test_annotation_round_trip(tmp_path: Path) -> None:
    model = _sample_model()
    write_annotations(tmp_path / "chair.json", [model])
    assert read_annotations(tmp_path / "chair.json") == [model]


def _annotation_json() -> list[dict]:
    return annotations_to_json([_sample_model()])


def test_annotation_invalid_json_and_bytes_name_line(tmp_path: Path) -> None:
    text = json.dumps(_annotation_json(), indent=1)
    line = text[: text.index('"semantic_id": 1')].count("\n") + 1
    broken = text.replace('"semantic_id": 1', '"semantic_id": 1,,', 1)
    message = _error(read_annotations, _write(tmp_path / "a.json", broken))
    assert f":{line}:" in message and "invalid JSON" in message
    latin = _write(tmp_path / "b.json", text.replace("abc123", "abc\xff123").encode("latin-1"))
    assert f":{text[: text.index('abc123')].count(chr(10)) + 1}: expected UTF-8" in _error(
        read_annotations, latin
    )


def _drop_model_id(data: list[dict]) -> None:
    del data[0]["model_id"]


def _skew_face_uv(data: list[dict]) -> None:
    data[0]["keypoints"][0]["mesh_info"]["face_uv"] = [0.2, 0.3, 0.6]


def _reflect_missing_keypoint(data: list[dict]) -> None:
    data[0]["symmetries"]["reflection"][0]["kp_indexes"] = [0, 3]


def _drop_semantic_id(data: list[dict]) -> None:
    del data[0]["keypoints"][2]["semantic_id"]


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (_drop_model_id, ": model 0: missing field 'model_id'"),
        (_skew_face_uv, "keypoints[0].mesh_info.face_uv: barycentric weights must sum to 1"),
        (
            _reflect_missing_keypoint,
            "symmetries.reflection[0].kp_indexes: index 3 is out of range for a model with 3",
        ),
        (_drop_semantic_id, "keypoints[2]: missing field 'semantic_id'"),
    ],
)
def test_annotation_schema_errors_name_file_and_field(
    tmp_path: Path, mutate, expected: str
) -> None:
    data = _annotation_json()
    mutate(data)
    path = _write(tmp_path / "bad.json", json.dumps(data))
    assert expected in _error(read_annotations, path)


# --------------------------------------------------------------------------- fuzzing
_CORRUPTION = st.lists(
    st.tuples(st.floats(0, 1, exclude_max=True), st.booleans(), st.integers(0, 255)),
    min_size=1,
    max_size=6,
)


def _corrupt(data: bytes, edits: list[tuple[float, bool, int]]) -> bytes:
    buffer = bytearray(data)
    for where, delete, value in edits:
        if not buffer:
            break
        index = int(where * len(buffer))
        if delete:
            del buffer[index]
        else:
            buffer[index] = value
    return bytes(buffer)


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edits=_CORRUPTION)
def test_corrupted_pcd_raises_only_data_format_error(fuzz_dir: Path, edits) -> None:
    valid = (PCD_HEADER.format(n=3) + "0.1 0.2 0.3 1\n-0.4 0.5 0.6 16777215\n1 2 3 0\n").encode()
    path = _write(fuzz_dir / "fuzz.pcd", _corrupt(valid, edits))
    try:
        cloud = read_pcd(path)
    except DataFormatError as error:
        assert "\n" not in str(error)
    else:
        assert cloud.points.shape[1] == 3


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edits=_CORRUPTION)
def test_corrupted_annotations_raise_only_data_format_error(fuzz_dir: Path, edits) -> None:
    path = _write(fuzz_dir / "fuzz.json", _corrupt(json.dumps(_annotation_json()).encode(), edits))
    try:
        read_annotations(path)
    except DataFormatError as error:
        assert "\n" not in str(error)


# --------------------------------------------------------------------------- consistency checks
def test_checks_against_pcd_and_mesh_report_problems() -> None:
    mesh = Mesh(np.array([[0.0, 0, 0], [1, 0, 0], [0, 1, 0]]), [[0, 1, 2], [0, 2, 1]])
    np.testing.assert_allclose(barycentric_point(mesh, 1, (0.2, 0.3, 0.5)), [0.5, 0.3, 0.0])
    points = np.zeros((8, 3), dtype=np.float32)
    points[5] = (0.1, 0.2, 0.3)
    good = Keypoint((0.1, 0.2, 0.3), point_index=5, face_index=0, face_uv=(0.6, 0.1, 0.2))
    model = ModelAnnotation("03001627", "m", [good])
    assert check_model_against_pcd(model, points) == []
    assert check_model_against_mesh(model, mesh) != []  # (0.1, 0.2, 0) is not xyz
    fixed = Keypoint((0.1, 0.2, 0.0), point_index=9, face_index=0, face_uv=(0.7, 0.1, 0.2))
    far = Keypoint((0.1, 0.2, 0.0), point_index=5, face_index=7, face_uv=(1.0, 0.0, 0.0))
    model = ModelAnnotation("03001627", "m", [fixed, far])
    assert check_model_against_mesh(model, mesh) == [
        "03001627-m keypoints[1] (semantic_id 0): face_index 7 is out of range for 2 faces"
    ]
    problems = check_model_against_pcd(model, points)
    assert len(problems) == 2
    assert "keypoints[0] (semantic_id 0): point_index 9 is out of range for 8 points" in problems[0]
    assert "keypoints[1] (semantic_id 0): xyz" in problems[1] and "differs" in problems[1]


# --------------------------------------------------------------------------- directory
def test_directory_missing_gives_download_instructions(tmp_path: Path) -> None:
    for root in (tmp_path / "absent", tmp_path):
        with pytest.raises(DataFormatError, match="hf download qq456cvb/KeypointNet"):
            KeypointNetDirectory(root)


def test_directory_merged_all_json_and_split_overlap(tmp_path: Path) -> None:
    model = _sample_model()
    mug = ModelAnnotation("03797390", "m1", [Keypoint((0.0, 0.0, 0.0))])
    write_annotations(tmp_path / "annotations" / "chair.json", [model])
    write_annotations(tmp_path / "annotations" / "mug.json", [mug])
    directory = KeypointNetDirectory(tmp_path)
    assert directory.write_merged(tmp_path / "merged" / "all.json") == 2
    (tmp_path / "annotations" / "chair.json").unlink()
    (tmp_path / "annotations" / "mug.json").unlink()
    (tmp_path / "merged" / "all.json").rename(tmp_path / "annotations" / "all.json")
    merged = KeypointNetDirectory(tmp_path)
    assert merged.categories() == ["chair", "mug"]
    assert merged.annotations("03797390") == [mug]
    assert merged.models() == [model, mug]
    write_split(tmp_path / "splits" / "train.txt", [model.key])
    write_split(tmp_path / "splits" / "val.txt", [mug.key])
    assert merged.models(split="val") == [mug]
    assert merged.split_of(model.key) == "train" and merged.split_of("03001627-zzz") is None
    with pytest.raises(DataFormatError, match=r"splits/test.txt: split file not found"):
        merged.models(split="test")
    write_split(tmp_path / "splits" / "test.txt", [mug.key])
    with pytest.raises(DataFormatError, match=r"is in both val\.txt and test\.txt"):
        KeypointNetDirectory(tmp_path).split_of(mug.key)
    with pytest.raises(FileNotFoundError, match="point cloud of 03001627-abc123 not found"):
        merged.load_points(model)


# --------------------------------------------------------------------------- shared real data
@pytest.fixture(scope="module")
def shared() -> KeypointNetDirectory:
    root = _shared_data_dir()
    if not (root / "annotations" / "chair.json").is_file():
        pytest.skip(
            f"KeypointNet chair annotations not found at {root} (set KEYPOINTNET_SHARED_DATA)"
        )
    return KeypointNetDirectory(root)


def test_shared_chair_annotations_match_the_documented_counts(
    shared: KeypointNetDirectory,
) -> None:
    chairs = shared.annotations("chair")
    assert len(chairs) == 799
    assert sum(len(m.keypoints) for m in chairs) == 9665
    assert {m.class_id for m in chairs} == {"03001627"}
    assert {k.semantic_id for m in chairs for k in m.keypoints} == set(range(21))
    for model in chairs:
        count = len(model.keypoints)
        assert all(k.point_index is not None and 0 <= k.point_index < 2048 for k in model.keypoints)
        assert all(len(group) == 2 for group in model.symmetries.reflection)
        groups = [*model.symmetries.reflection, *(g.kp_indexes for g in model.symmetries.rotation)]
        assert all(0 <= i < count for group in groups for i in group)
    assert {shared.split_of(m.key) for m in chairs} == {"train", "val"}
    assert len(shared.models("chair", "train")) == 699
    assert len(shared.models("chair", "val")) == 100
    assert shared.models("chair", "test") == []


def test_shared_splits_have_documented_sizes_without_overlap(shared: KeypointNetDirectory) -> None:
    splits = {name: read_split(shared.root / "splits" / f"{name}.txt") for name in SPLIT_NAMES}
    assert {name: len(keys) for name, keys in splits.items()} == {
        "train": 5757,
        "val": 824,
        "test": 1653,
    }
    assert len(set().union(*splits.values())) == 5757 + 824 + 1653
