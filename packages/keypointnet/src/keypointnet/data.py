"""KeypointNet data formats: annotation JSON, splits, PCD point clouds, PLY/OBJ meshes.

Annotation schema (one JSON list per category file, one entry per model)::

    {"class_id": "03001627", "model_id": "88382b...",
     "keypoints": [{"xyz": [x, y, z], "rgb": [r, g, b], "semantic_id": 0,
                    "pcd_info": {"point_index": 1234},
                    "mesh_info": {"face_index": 56, "face_uv": [w0, w1, w2]}}, ...],
     "symmetries": {"reflection": [{"kp_indexes": [0, 1]}, ...],
                    "rotation": [{"kp_indexes": [...], "is_circle": false, "circle": {}}, ...]}}

``kp_indexes`` are positions in the model's ``keypoints`` list, not semantic ids. Coordinates are
ShapeNetCore.v2 normalised (+y up). Every parser error names the file and the field.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ptrain.core.checkpoint import atomic_write
from ptrain.core.cli import UserError

__all__ = [
    "CATEGORY_TO_SYNSET",
    "DOWNLOAD_HINT",
    "MERGED_ANNOTATIONS",
    "SPLIT_NAMES",
    "SYNSET_TO_CATEGORY",
    "DataFormatError",
    "Keypoint",
    "KeypointNetDirectory",
    "Mesh",
    "ModelAnnotation",
    "PointCloud",
    "RotationSymmetry",
    "Symmetries",
    "annotations_from_json",
    "annotations_to_json",
    "barycentric_point",
    "check_model_against_mesh",
    "check_model_against_pcd",
    "read_annotations",
    "read_obj",
    "read_pcd",
    "read_ply",
    "read_split",
    "write_annotations",
    "write_obj",
    "write_pcd",
    "write_ply",
    "write_split",
]

#: The 16 KeypointNet categories (upstream benchmark_scripts/dataset.py::ID2NAMES).
CATEGORY_TO_SYNSET: dict[str, str] = {
    "airplane": "02691156",
    "bathtub": "02808440",
    "bed": "02818832",
    "bottle": "02876657",
    "cap": "02954340",
    "car": "02958343",
    "chair": "03001627",
    "guitar": "03467517",
    "helmet": "03513137",
    "knife": "03624134",
    "laptop": "03642806",
    "motorcycle": "03790512",
    "mug": "03797390",
    "skateboard": "04225987",
    "table": "04379243",
    "vessel": "04530566",
}
SYNSET_TO_CATEGORY: dict[str, str] = {synset: name for name, synset in CATEGORY_TO_SYNSET.items()}

FACE_UV_TOLERANCE = 1e-4


class DataFormatError(UserError, ValueError):
    """A data file does not follow the expected format; the message names file and field/line."""


@dataclass(frozen=True, slots=True)
class Keypoint:
    """One annotated keypoint.

    Attributes:
        xyz: position in ShapeNetCore.v2 normalised coordinates.
        rgb: colour, 0..255 each.
        semantic_id: category-consistent semantic label.
        point_index: row in the model's 2,048-point PCD (None when absent).
        face_index: triangle of the model's mesh (None when absent).
        face_uv: barycentric weights on that triangle, summing to 1 (None when absent).
    """

    xyz: tuple[float, float, float]
    rgb: tuple[int, int, int] = (0, 0, 0)
    semantic_id: int = 0
    point_index: int | None = None
    face_index: int | None = None
    face_uv: tuple[float, float, float] | None = None


@dataclass(frozen=True, slots=True)
class RotationSymmetry:
    """A rotation-symmetry group over keypoint positions."""

    kp_indexes: tuple[int, ...]
    is_circle: bool = False
    center: tuple[float, float, float] | None = None
    radius: float | None = None
    normal: tuple[float, float, float] | None = None


@dataclass(frozen=True, slots=True)
class Symmetries:
    """Reflection pairs and rotation groups, as positions in the model's keypoint list."""

    reflection: tuple[tuple[int, ...], ...] = ()
    rotation: tuple[RotationSymmetry, ...] = ()


@dataclass(slots=True)
class ModelAnnotation:
    """The keypoints of one ShapeNet model.

    Attributes:
        class_id: ShapeNet synset, e.g. ``"03001627"`` (chair).
        model_id: ShapeNet model hash.
        keypoints: the model's keypoints, in file order (not necessarily sorted by semantic id).
        symmetries: reflection and rotation groups over positions in ``keypoints``.
    """

    class_id: str
    model_id: str
    keypoints: list[Keypoint]
    symmetries: Symmetries = field(default_factory=Symmetries)

    @property
    def key(self) -> str:
        """``<synset>-<model_id>``, the form used by the split files."""
        return f"{self.class_id}-{self.model_id}"

    @property
    def category(self) -> str | None:
        """The category name of ``class_id``, or None for an unknown synset."""
        return SYNSET_TO_CATEGORY.get(self.class_id)


# --------------------------------------------------------------------------- parsing helpers
class _Where:
    """Builds error messages that name the file and the field."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, location: str, message: str) -> DataFormatError:
        return DataFormatError(f"{self.source}: {location}: {message}")


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _decode_utf8(path: Path, raw: bytes) -> str:
    """``raw`` as UTF-8 text; a decoding error names the file, line and byte."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        raise DataFormatError(
            f"{path}:{line}: expected UTF-8 text, got byte {raw[error.start]:#04x} at offset "
            f"{error.start}"
        ) from None


def _number(where: _Where, location: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise where.fail(location, f"expected a finite number, got {value!r}")
    return float(value)


def _integer(where: _Where, location: str, value: Any, low: int | None = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise where.fail(location, f"expected an integer, got {value!r}")
    if low is not None and value < low:
        raise where.fail(location, f"expected an integer >= {low}, got {value}")
    return value


def _vector(where: _Where, location: str, value: Any, length: int = 3) -> tuple[float, ...]:
    if not isinstance(value, list | tuple) or len(value) != length:
        raise where.fail(location, f"expected a list of {length} numbers, got {value!r}")
    return tuple(_number(where, f"{location}[{i}]", item) for i, item in enumerate(value))


def _mapping(where: _Where, location: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise where.fail(location, f"expected an object, got {type(value).__name__}")
    return value


def _parse_keypoint(where: _Where, location: str, raw: Any) -> Keypoint:
    raw = _mapping(where, location, raw)
    if "xyz" not in raw:
        raise where.fail(location, "missing field 'xyz'")
    xyz = _vector(where, f"{location}.xyz", raw["xyz"])
    rgb_raw = raw.get("rgb", [0, 0, 0])
    if not isinstance(rgb_raw, list | tuple) or len(rgb_raw) != 3:
        raise where.fail(f"{location}.rgb", f"expected 3 integers 0..255, got {rgb_raw!r}")
    rgb = tuple(_integer(where, f"{location}.rgb[{i}]", c) for i, c in enumerate(rgb_raw))
    if any(c > 255 for c in rgb):
        raise where.fail(f"{location}.rgb", f"expected 3 integers 0..255, got {list(rgb)}")
    if "semantic_id" not in raw:
        raise where.fail(location, "missing field 'semantic_id'")
    semantic_id = _integer(where, f"{location}.semantic_id", raw["semantic_id"])
    point_index = None
    if "pcd_info" in raw:
        pcd_info = _mapping(where, f"{location}.pcd_info", raw["pcd_info"])
        if "point_index" not in pcd_info:
            raise where.fail(f"{location}.pcd_info", "missing field 'point_index'")
        point_index = _integer(where, f"{location}.pcd_info.point_index", pcd_info["point_index"])
    face_index = None
    face_uv = None
    if "mesh_info" in raw:
        mesh_info = _mapping(where, f"{location}.mesh_info", raw["mesh_info"])
        for name in ("face_index", "face_uv"):
            if name not in mesh_info:
                raise where.fail(f"{location}.mesh_info", f"missing field '{name}'")
        face_index = _integer(where, f"{location}.mesh_info.face_index", mesh_info["face_index"])
        uv = _vector(where, f"{location}.mesh_info.face_uv", mesh_info["face_uv"])
        if abs(sum(uv) - 1.0) > FACE_UV_TOLERANCE:
            raise where.fail(
                f"{location}.mesh_info.face_uv",
                f"barycentric weights must sum to 1 (± {FACE_UV_TOLERANCE:g}), got sum "
                f"{sum(uv):.6f}",
            )
        face_uv = (uv[0], uv[1], uv[2])
    return Keypoint(
        xyz=(xyz[0], xyz[1], xyz[2]),
        rgb=(rgb[0], rgb[1], rgb[2]),
        semantic_id=semantic_id,
        point_index=point_index,
        face_index=face_index,
        face_uv=face_uv,
    )


def _parse_indexes(where: _Where, location: str, raw: Any, count: int) -> tuple[int, ...]:
    group = _mapping(where, location, raw)
    if "kp_indexes" not in group:
        raise where.fail(location, "missing field 'kp_indexes'")
    indexes = group["kp_indexes"]
    if not isinstance(indexes, list):
        raise where.fail(f"{location}.kp_indexes", f"expected a list, got {indexes!r}")
    parsed = tuple(
        _integer(where, f"{location}.kp_indexes[{i}]", value) for i, value in enumerate(indexes)
    )
    for value in parsed:
        if value >= count:
            raise where.fail(
                f"{location}.kp_indexes",
                f"index {value} is out of range for a model with {count} keypoints "
                f"(kp_indexes are positions in the keypoint list)",
            )
    return parsed


def _parse_symmetries(where: _Where, location: str, raw: Any, count: int) -> Symmetries:
    raw = _mapping(where, location, raw)
    reflection_raw = raw.get("reflection", [])
    rotation_raw = raw.get("rotation", [])
    for name, value in (("reflection", reflection_raw), ("rotation", rotation_raw)):
        if not isinstance(value, list):
            raise where.fail(f"{location}.{name}", f"expected a list, got {value!r}")
    reflection = tuple(
        _parse_indexes(where, f"{location}.reflection[{i}]", group, count)
        for i, group in enumerate(reflection_raw)
    )
    rotation = []
    for i, group in enumerate(rotation_raw):
        group_location = f"{location}.rotation[{i}]"
        indexes = _parse_indexes(where, group_location, group, count)
        is_circle = group.get("is_circle", False)
        if not isinstance(is_circle, bool):
            raise where.fail(
                f"{group_location}.is_circle", f"expected true/false, got {is_circle!r}"
            )
        circle = _mapping(where, f"{group_location}.circle", group.get("circle", {}))
        center = radius = normal = None
        if circle:
            center_v = _vector(where, f"{group_location}.circle.center", circle.get("center"))
            normal_v = _vector(where, f"{group_location}.circle.normal", circle.get("normal"))
            center = (center_v[0], center_v[1], center_v[2])
            normal = (normal_v[0], normal_v[1], normal_v[2])
            radius = _number(where, f"{group_location}.circle.radius", circle.get("radius"))
        rotation.append(RotationSymmetry(indexes, is_circle, center, radius, normal))
    return Symmetries(reflection=reflection, rotation=tuple(rotation))


def annotations_from_json(data: Any, source: str = "<annotations>") -> list[ModelAnnotation]:
    """Validate and convert parsed annotation JSON (a list of models).

    Args:
        data: the object ``json.load`` returned.
        source: the file name used in error messages.

    Returns:
        One ``ModelAnnotation`` per entry, in file order.

    Raises:
        DataFormatError: naming the file, the model and the field that is wrong.
    """
    where = _Where(source)
    if not isinstance(data, list):
        raise where.fail("top level", f"expected a list of models, got {type(data).__name__}")
    models = []
    for index, raw in enumerate(data):
        location = f"model {index}"
        raw = _mapping(where, location, raw)
        for name in ("class_id", "model_id", "keypoints"):
            if name not in raw:
                raise where.fail(location, f"missing field '{name}'")
        class_id, model_id = raw["class_id"], raw["model_id"]
        for name, value in (("class_id", class_id), ("model_id", model_id)):
            if not isinstance(value, str) or not value:
                raise where.fail(
                    f"{location}.{name}", f"expected a non-empty string, got {value!r}"
                )
        location = f"model {index} ({class_id}-{model_id})"
        if not isinstance(raw["keypoints"], list):
            raise where.fail(f"{location}.keypoints", "expected a list")
        keypoints = [
            _parse_keypoint(where, f"{location}.keypoints[{k}]", keypoint)
            for k, keypoint in enumerate(raw["keypoints"])
        ]
        symmetries = _parse_symmetries(
            where, f"{location}.symmetries", raw.get("symmetries", {}), len(keypoints)
        )
        models.append(ModelAnnotation(class_id, model_id, keypoints, symmetries))
    return models


def read_annotations(path: str | os.PathLike[str]) -> list[ModelAnnotation]:
    """Read one category's annotation file (or a merged ``all.json``).

    Raises:
        DataFormatError: invalid JSON (with line and column) or schema (with model and field).
        FileNotFoundError: the file does not exist.
    """
    path = Path(path)
    text = _decode_utf8(path, path.read_bytes())
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise DataFormatError(
            f"{path}:{error.lineno}:{error.colno}: invalid JSON: {error.msg}"
        ) from None
    except (ValueError, RecursionError) as error:  # e.g. an integer with > 4300 digits
        raise DataFormatError(f"{path}: invalid JSON: {_one_line(str(error))}") from None
    return annotations_from_json(data, str(path))


def _keypoint_to_json(keypoint: Keypoint) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "xyz": list(keypoint.xyz),
        "rgb": list(keypoint.rgb),
        "semantic_id": keypoint.semantic_id,
    }
    if keypoint.point_index is not None:
        entry["pcd_info"] = {"point_index": keypoint.point_index}
    if keypoint.face_index is not None and keypoint.face_uv is not None:
        entry["mesh_info"] = {"face_index": keypoint.face_index, "face_uv": list(keypoint.face_uv)}
    return entry


def _rotation_to_json(group: RotationSymmetry) -> dict[str, Any]:
    circle: dict[str, Any] = {}
    if group.center is not None:
        circle = {"center": list(group.center), "radius": group.radius}
        circle["normal"] = list(group.normal) if group.normal is not None else None
    return {"kp_indexes": list(group.kp_indexes), "is_circle": group.is_circle, "circle": circle}


def annotations_to_json(models: Iterable[ModelAnnotation]) -> list[dict[str, Any]]:
    """The JSON-ready list for ``models`` (the inverse of ``annotations_from_json``)."""
    return [
        {
            "class_id": model.class_id,
            "model_id": model.model_id,
            "keypoints": [_keypoint_to_json(keypoint) for keypoint in model.keypoints],
            "symmetries": {
                "reflection": [{"kp_indexes": list(g)} for g in model.symmetries.reflection],
                "rotation": [_rotation_to_json(g) for g in model.symmetries.rotation],
            },
        }
        for model in models
    ]


def write_annotations(path: str | os.PathLike[str], models: Sequence[ModelAnnotation]) -> None:
    """Write an annotation file atomically (temp file + rename) in the dataset's schema."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "w") as handle:
        json.dump(annotations_to_json(models), handle)


# =========================================================================== numeric text blocks
# Whitespace as ``bytes.split()`` sees it (space, \t, \n, \v, \f, \r): the token counter and the
# tokenizer must agree, so both work on bytes, never on decoded str (str.split also splits on
# \x1c-\x1f, \x85 and \xa0).
_IS_SPACE = np.zeros(256, dtype=bool)
_IS_SPACE[[9, 10, 11, 12, 13, 32]] = True


def _line_token_counts(block: bytes) -> np.ndarray:
    """Tokens on each line of ``block``; one entry per ``\\n``-separated line (vectorised).

    A block ending in ``\\n`` has an empty last line (count 0).
    """
    raw = np.frombuffer(block, dtype=np.uint8)
    newline = raw == 10
    line_count = int(newline.sum()) + 1
    if raw.size == 0:
        return np.zeros(1, dtype=np.int64)
    space = _IS_SPACE[raw]
    starts = ~space
    starts[1:] &= space[:-1]
    line_of_byte = np.cumsum(newline) - newline
    return np.bincount(line_of_byte[starts], minlength=line_count)


@dataclass(slots=True)
class _NumericLines:
    """The non-blank lines of a numeric text block, parsed to one flat float64 array.

    Attributes:
        counts: tokens on each non-blank line.
        starts: index in ``values`` of each line's first token.
        line_numbers: the file line number of each non-blank line (1-based).
        values: every token as float64, in file order.
    """

    counts: np.ndarray
    starts: np.ndarray
    line_numbers: np.ndarray
    values: np.ndarray


def _parse_numeric_lines(block: bytes, source: str, line_numbers: np.ndarray) -> _NumericLines:
    """Tokenise and parse a block of numbers; a bad token's error names file and line.

    Args:
        block: the bytes (ASCII numbers separated by whitespace, lines by ``\\n``).
        source: the file name for error messages.
        line_numbers: the file line number of each line of ``block`` (at least as many entries
            as ``block`` has lines).
    """
    counts_all = _line_token_counts(block)
    keep = np.flatnonzero(counts_all)
    counts = counts_all[keep]
    numbers = np.asarray(line_numbers)[keep]
    starts = np.cumsum(counts) - counts
    tokens = block.split()
    try:
        values = np.array(tokens, dtype=np.float64)
    except ValueError:
        for index, token in enumerate(tokens):  # slow path, only to name the bad token
            try:
                np.array([token], dtype=np.float64)
            except ValueError:
                line = int(numbers[np.searchsorted(starts, index, side="right") - 1])
                text = token.decode("latin-1")
                raise DataFormatError(f"{source}:{line}: expected a number, got {text!r}") from None
        raise DataFormatError(f"{source}: could not parse the numbers") from None
    return _NumericLines(counts, starts, numbers, values.reshape(-1))


def _float32_exact(values: np.ndarray) -> bool:
    """Whether every value is exactly representable as float32."""
    with np.errstate(over="ignore", invalid="ignore"):
        return bool(np.array_equal(values.astype(np.float32).astype(np.float64), values))


def _format_rows(fmt: str, rows: np.ndarray) -> bytes:
    """``fmt`` applied to each row of a 2-D array (one C-level ``%`` over the whole block)."""
    if len(rows) == 0:
        return b""
    return ((fmt * len(rows)) % tuple(rows.reshape(-1).tolist())).encode("ascii")


# =========================================================================== point clouds (PCD)
def _colors_uint8(values: Any, shape: tuple[int, ...], name: str) -> np.ndarray:
    """Validate per-point/per-vertex colours (shape ``shape``, integers 0..255) as uint8."""
    colors = np.asarray(values)
    if colors.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {colors.shape}")
    if colors.dtype != np.uint8 and (
        not np.issubdtype(colors.dtype, np.integer)
        or colors.min(initial=0) < 0
        or colors.max(initial=0) > 255
    ):
        raise ValueError(f"{name} must hold integers 0..255 (uint8)")
    return np.ascontiguousarray(colors, dtype=np.uint8)


@dataclass(slots=True)
class PointCloud:
    """A point cloud as stored in KeypointNet's ``pcds/<synset>/<model_id>.pcd``.

    Attributes:
        points: (N, 3) float32 coordinates.
        rgb: (N, 3) uint8 colours, or None for a file without an ``rgb`` field.
    """

    points: np.ndarray
    rgb: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.points = np.ascontiguousarray(self.points, dtype=np.float32)
        if self.points.ndim != 2 or self.points.shape[1] != 3:
            raise ValueError(f"PointCloud.points must have shape (N, 3), got {self.points.shape}")
        if self.rgb is not None:
            self.rgb = _colors_uint8(self.rgb, self.points.shape, "PointCloud.rgb")


_PCD_KEYS = ("VERSION", "FIELDS", "SIZE", "TYPE", "COUNT", "WIDTH", "HEIGHT", "VIEWPOINT", "POINTS")
_PCD_REQUIRED = ("FIELDS", "SIZE", "TYPE", "WIDTH", "HEIGHT", "POINTS")
_PCD_COLOR_FIELDS = ("rgb", "rgba")


def _header_int(source: str, line: int, key: str, text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise DataFormatError(
            f"{source}:{line}: {key}: expected a non-negative integer, got {text!r}"
        )
    return int(text)


def read_pcd(path: str | os.PathLike[str]) -> PointCloud:
    """Read an ASCII PCD point cloud (KeypointNet's ``pcds/<synset>/<model_id>.pcd``).

    KeypointNet writes ``FIELDS x y z rgb`` / ``SIZE 4 4 4 4`` / ``TYPE F F F U`` with the colour
    packed as an unsigned integer ``r << 16 | g << 8 | b``; it is unpacked bitwise. Also read:

    * files without colour (``FIELDS x y z``): ``rgb`` is None;
    * ``rgb``/``rgba`` declared ``TYPE F`` (PCL and Open3D style): the float's bits are the packed
      integer, so the value is cast to float32 and reinterpreted as uint32. An ASCII float with
      too few digits loses those bits, and a NaN pattern (alpha 255) cannot survive ASCII at all;
      prefer ``TYPE U``, which ``write_pcd`` writes;
    * ``TYPE I`` colours (signed packed integer) and extra fields (normals, ...), which are
      skipped.

    ``DATA binary`` and ``binary_compressed`` are refused with a one-line message. The data block
    is parsed in one vectorised pass; only a malformed file takes a slower pass to name the
    offending line.

    Args:
        path: the ``.pcd`` file.

    Returns:
        The points (float32) and colours (uint8, or None).

    Raises:
        DataFormatError: a missing or unsupported header field, a data line with the wrong number
            of values, a non-numeric or non-finite value, or a point count that differs from
            ``POINTS`` (each naming the file and line).
        FileNotFoundError: the file does not exist.
    """
    path = Path(path)
    source = str(path)
    raw = path.read_bytes()
    header: dict[str, tuple[int, list[str]]] = {}
    offset = 0
    line_number = 0
    data_line = 0
    data_kind = ""
    while True:
        if offset >= len(raw):
            raise DataFormatError(f"{source}: header has no DATA line (is this a PCD file?)")
        end = raw.find(b"\n", offset)
        if end < 0:
            end = len(raw)
        line_number += 1
        text = raw[offset:end].decode("latin-1").strip()
        offset = end + 1
        if not text or text.startswith("#"):
            continue
        key, *values = text.split()
        if key == "DATA":
            data_line = line_number
            data_kind = values[0] if values else ""
            break
        if key not in _PCD_KEYS:
            raise DataFormatError(
                f"{source}:{line_number}: expected a PCD header field "
                f"({', '.join((*_PCD_KEYS, 'DATA'))}), got {key[:40]!r}"
            )
        if key in header:
            raise DataFormatError(f"{source}:{line_number}: header field {key} appears twice")
        header[key] = (line_number, values)
    if data_kind != "ascii":
        raise DataFormatError(
            f"{source}:{data_line}: DATA {data_kind or '(empty)'}: only ascii PCD files are "
            f"supported (KeypointNet's are ascii); convert with "
            f"`pcl_convert_pcd_ascii_binary in.pcd out.pcd 0`"
        )
    for key in _PCD_REQUIRED:
        if key not in header:
            raise DataFormatError(f"{source}: header field {key} is missing (before DATA)")
    fields_line, fields = header["FIELDS"]
    if len(set(fields)) != len(fields):
        raise DataFormatError(f"{source}:{fields_line}: FIELDS lists a name twice: {fields}")
    for axis in ("x", "y", "z"):
        if axis not in fields:
            raise DataFormatError(
                f"{source}:{fields_line}: FIELDS must include x y z, got {fields}"
            )
    per_field: dict[str, list[str]] = {}
    for key in ("SIZE", "TYPE", "COUNT"):
        if key not in header:  # only COUNT may be absent (defaults to 1)
            per_field[key] = ["1"] * len(fields)
            continue
        key_line, values = header[key]
        if len(values) != len(fields):
            raise DataFormatError(
                f"{source}:{key_line}: {key} has {len(values)} entries but FIELDS has {len(fields)}"
            )
        per_field[key] = values
    count_line = header["COUNT"][0] if "COUNT" in header else 0
    counts = [_header_int(source, count_line, "COUNT", c) for c in per_field["COUNT"]]
    if 0 in counts:
        raise DataFormatError(f"{source}:{count_line}: COUNT entries must be >= 1")
    type_line = header["TYPE"][0]
    for name, kind, size, count in zip(
        fields, per_field["TYPE"], per_field["SIZE"], counts, strict=True
    ):
        if kind not in ("F", "U", "I"):
            raise DataFormatError(
                f"{source}:{type_line}: TYPE of field {name!r}: expected F, U or I, got {kind!r}"
            )
        if size not in ("1", "2", "4", "8"):
            raise DataFormatError(
                f"{source}:{header['SIZE'][0]}: SIZE of field {name!r}: expected 1, 2, 4 or 8, "
                f"got {size!r}"
            )
        if name in ("x", "y", "z", *_PCD_COLOR_FIELDS) and count != 1:
            raise DataFormatError(f"{source}: COUNT of field {name!r} must be 1, got {count}")
        if name in ("x", "y", "z") and kind != "F":
            raise DataFormatError(
                f"{source}:{type_line}: TYPE of field {name!r} must be F, got {kind!r}"
            )
    width = _header_int(source, header["WIDTH"][0], "WIDTH", _single(source, header, "WIDTH"))
    height = _header_int(source, header["HEIGHT"][0], "HEIGHT", _single(source, header, "HEIGHT"))
    points_line = header["POINTS"][0]
    num_points = _header_int(source, points_line, "POINTS", _single(source, header, "POINTS"))
    if width * height != num_points:
        raise DataFormatError(
            f"{source}:{points_line}: POINTS {num_points} differs from WIDTH × HEIGHT = "
            f"{width} × {height}"
        )

    columns = int(sum(counts))
    block = raw[offset:]
    line_count = block.count(b"\n") + 1
    numbers = np.arange(data_line + 1, data_line + 1 + line_count)
    counts_all = _line_token_counts(block)
    nonblank = np.flatnonzero(counts_all)
    wrong = nonblank[counts_all[nonblank] != columns]
    if wrong.size:
        first = int(wrong[0])
        raise DataFormatError(
            f"{source}:{int(numbers[first])}: expected {columns} values ({' '.join(fields)}) on "
            f"a data line, got {int(counts_all[first])}"
        )
    if nonblank.size != num_points:
        raise DataFormatError(
            f"{source}:{points_line}: POINTS {num_points} but the file has {nonblank.size} data "
            f"lines"
        )
    parsed = _parse_numeric_lines(block, source, numbers)
    table = parsed.values.reshape(num_points, columns)
    column_of = dict(zip(fields, np.cumsum([0, *counts[:-1]]).tolist(), strict=True))
    xyz = table[:, [column_of["x"], column_of["y"], column_of["z"]]]
    with np.errstate(over="ignore"):
        points = xyz.astype(np.float32)
    bad_rows = np.flatnonzero(~np.isfinite(points).all(axis=1))
    if bad_rows.size:
        row = int(bad_rows[0])
        raise DataFormatError(
            f"{source}:{int(parsed.line_numbers[row])}: expected finite float32 coordinates, got "
            f"{xyz[row].tolist()}"
        )
    color_field = next((name for name in _PCD_COLOR_FIELDS if name in column_of), None)
    if color_field is None:
        return PointCloud(points, None)
    kind = per_field["TYPE"][fields.index(color_field)]
    packed_values = table[:, column_of[color_field]]
    if kind == "F":
        with np.errstate(over="ignore", invalid="ignore"):
            packed = packed_values.astype(np.float32).view(np.uint32)
    else:
        low = -(2**31) if kind == "I" else 0
        high = 2**31 if kind == "I" else 2**32
        valid = (packed_values == np.floor(packed_values)) & (packed_values >= low)
        valid &= packed_values < high
        bad_rows = np.flatnonzero(~valid)
        if bad_rows.size:
            row = int(bad_rows[0])
            raise DataFormatError(
                f"{source}:{int(parsed.line_numbers[row])}: field {color_field} (TYPE {kind}): "
                f"expected a packed integer r<<16|g<<8|b, got {packed_values[row]!r}"
            )
        packed = (packed_values.astype(np.int64) & 0xFFFFFFFF).astype(np.uint32)
    rgb = np.stack([(packed >> 16) & 255, (packed >> 8) & 255, packed & 255], axis=1)
    return PointCloud(points, rgb.astype(np.uint8))


def _single(source: str, header: dict[str, tuple[int, list[str]]], key: str) -> str:
    line, values = header[key]
    if len(values) != 1:
        raise DataFormatError(f"{source}:{line}: {key}: expected one value, got {values}")
    return values[0]


def write_pcd(
    path: str | os.PathLike[str], points: np.ndarray, rgb: np.ndarray | None = None
) -> None:
    """Write an ASCII PCD in KeypointNet's layout, atomically.

    The header is ``VERSION .7`` / ``FIELDS x y z rgb`` / ``SIZE 4 4 4 4`` / ``TYPE F F F U`` /
    ``COUNT 1 1 1 1`` / ``WIDTH N`` / ``HEIGHT 1`` / ``VIEWPOINT 0 0 0 1 0 0 0`` / ``POINTS N`` /
    ``DATA ascii`` (without the rgb column when ``rgb`` is None). Coordinates are cast to float32
    and written with 6 decimals like upstream when that reads back to the same float32 values,
    else with 9 significant digits, so ``read_pcd(write_pcd(p)).points == float32(p)`` always.
    The colour is the packed unsigned integer ``r << 16 | g << 8 | b``.

    Args:
        path: the file to write (its directory must exist).
        points: (N, 3) finite coordinates.
        rgb: (N, 3) colours 0..255, or None.

    Raises:
        ValueError: wrong shapes or non-finite coordinates.
    """
    cloud = PointCloud(points, rgb)
    xyz = cloud.points
    if not np.isfinite(xyz).all():
        raise ValueError("write_pcd: points must be finite")
    count = len(xyz)
    columns_written = 4 if cloud.rgb is not None else 3
    header = (
        "VERSION .7\n"
        f"FIELDS {' '.join(['x', 'y', 'z', 'rgb'][:columns_written])}\n"
        f"SIZE {' '.join(['4'] * columns_written)}\n"
        f"TYPE {' '.join(['F', 'F', 'F', 'U'][:columns_written])}\n"
        f"COUNT {' '.join(['1'] * columns_written)}\n"
        f"WIDTH {count}\n"
        "HEIGHT 1\n"
        "VIEWPOINT 0 0 0 1 0 0 0\n"
        f"POINTS {count}\n"
        "DATA ascii\n"
    )
    columns = [xyz.astype(np.float64)]
    if cloud.rgb is not None:
        rgb32 = cloud.rgb.astype(np.uint32)
        packed = (rgb32[:, 0] << 16) | (rgb32[:, 1] << 8) | rgb32[:, 2]
        columns.append(packed.astype(np.float64).reshape(-1, 1))
    table = np.concatenate(columns, axis=1)
    color_format = " %d\n" if cloud.rgb is not None else "\n"
    body = _format_rows("%.6f %.6f %.6f" + color_format, table)
    written = np.array(body.split(), dtype=np.float64).reshape(table.shape)[:, :3]
    if not np.array_equal(written.astype(np.float32), xyz):
        body = _format_rows("%.9g %.9g %.9g" + color_format, table)
    with atomic_write(Path(path), "wb") as handle:
        handle.write(header.encode("ascii"))
        handle.write(body)


# =========================================================================== meshes (PLY, OBJ)
@dataclass(slots=True)
class Mesh:
    """A triangle mesh; ``faces`` index ``vertices`` and ``face_index`` indexes ``faces``.

    Attributes:
        vertices: (V, 3) float64 positions.
        faces: (F, 3) int64 vertex indices (triangles).
        vertex_colors: (V, 3) uint8 colours, or None.
    """

    vertices: np.ndarray
    faces: np.ndarray
    vertex_colors: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.vertices = np.ascontiguousarray(self.vertices, dtype=np.float64)
        if self.vertices.ndim != 2 or self.vertices.shape[1] != 3:
            raise ValueError(f"Mesh.vertices must have shape (V, 3), got {self.vertices.shape}")
        faces = np.asarray(self.faces)
        if faces.size == 0:
            faces = faces.reshape(0, 3)
        if faces.ndim != 2 or faces.shape[1] != 3:
            raise ValueError(f"Mesh.faces must have shape (F, 3), got {faces.shape}")
        if not np.issubdtype(faces.dtype, np.integer):
            raise ValueError(f"Mesh.faces must be integers, got dtype {faces.dtype}")
        self.faces = np.ascontiguousarray(faces, dtype=np.int64)
        if self.faces.size and (self.faces.min() < 0 or self.faces.max() >= len(self.vertices)):
            raise ValueError(
                f"Mesh.faces must index 0..{len(self.vertices) - 1}, got "
                f"{self.faces.min()}..{self.faces.max()}"
            )
        if self.vertex_colors is not None:
            self.vertex_colors = _colors_uint8(
                self.vertex_colors, self.vertices.shape, "Mesh.vertex_colors"
            )


def _fan_triangulate(flat: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fan-triangulate polygons given as a flat index list and per-polygon sizes (all >= 3).

    Polygon ``(v0, v1, ..., vk)`` becomes ``(v0, v1, v2), (v0, v2, v3), ..., (v0, vk-1, vk)``, in
    polygon order, so triangle ``face_index`` values follow the file's face order.

    Returns:
        The (T, 3) triangles and, for each triangle, the polygon it came from.
    """
    sizes = sizes.astype(np.int64)
    starts = np.cumsum(sizes) - sizes
    triangles_per_polygon = sizes - 2
    polygon = np.repeat(np.arange(len(sizes)), triangles_per_polygon)
    first_triangle = np.cumsum(triangles_per_polygon) - triangles_per_polygon
    corner = np.arange(len(polygon)) - first_triangle[polygon]  # 0 .. size-3 within the polygon
    base = starts[polygon]
    triangles = np.stack(
        [flat[base], flat[base + corner + 1], flat[base + corner + 2]], axis=1
    ).astype(np.int64)
    return triangles.reshape(-1, 3), polygon


_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}  # fmt: skip
_PLY_FORMATS = {"ascii": "", "binary_little_endian": "<", "binary_big_endian": ">"}
_PLY_FACE_LISTS = ("vertex_indices", "vertex_index")


@dataclass(slots=True)
class _PlyProperty:
    name: str
    dtype: str  # numpy type code, e.g. "f4"
    count_dtype: str | None = None  # set for a list property


@dataclass(slots=True)
class _PlyElement:
    name: str
    count: int
    line: int
    properties: list[_PlyProperty] = field(default_factory=list)


def _ply_header(source: str, raw: bytes) -> tuple[str, list[_PlyElement], int, int]:
    """Parse a PLY header: (format, elements, body byte offset, header line count)."""
    offset = 0
    line_number = 0
    elements: list[_PlyElement] = []
    fmt: str | None = None
    while True:
        end = raw.find(b"\n", offset)
        if end < 0:
            raise DataFormatError(f"{source}: header has no end_header line")
        line_number += 1
        words = raw[offset:end].decode("latin-1").split()
        offset = end + 1
        if line_number == 1:
            if words != ["ply"]:
                raise DataFormatError(f"{source}:1: expected 'ply' (not a PLY file)")
            continue
        if not words or words[0] in ("comment", "obj_info"):
            continue
        keyword = words[0]
        where = f"{source}:{line_number}"
        if keyword == "end_header":
            break
        if keyword == "format":
            if len(words) != 3 or words[1] not in _PLY_FORMATS:
                raise DataFormatError(
                    f"{where}: expected 'format ascii|binary_little_endian|binary_big_endian "
                    f"1.0', got {' '.join(words)!r}"
                )
            fmt = words[1]
        elif keyword == "element":
            if len(words) != 3 or not (words[2].isascii() and words[2].isdigit()):
                raise DataFormatError(f"{where}: expected 'element <name> <count>'")
            elements.append(_PlyElement(words[1], int(words[2]), line_number))
        elif keyword == "property":
            if not elements:
                raise DataFormatError(f"{where}: property before any element")
            if len(words) == 3 and words[1] in _PLY_TYPES:
                elements[-1].properties.append(_PlyProperty(words[2], _PLY_TYPES[words[1]]))
            elif (
                len(words) == 5
                and words[1] == "list"
                and words[2] in _PLY_TYPES
                and words[3] in _PLY_TYPES
                and _PLY_TYPES[words[2]][0] in "iu"
            ):
                elements[-1].properties.append(
                    _PlyProperty(words[4], _PLY_TYPES[words[3]], _PLY_TYPES[words[2]])
                )
            else:
                raise DataFormatError(
                    f"{where}: expected 'property <type> <name>' or 'property list <count type> "
                    f"<item type> <name>' with types {', '.join(sorted(_PLY_TYPES))}"
                )
        else:
            raise DataFormatError(f"{where}: unknown header keyword {keyword[:40]!r}")
    if fmt is None:
        raise DataFormatError(f"{source}: header has no 'format' line")
    return fmt, elements, offset, line_number


@dataclass(slots=True)
class _PlyData:
    """One element's data: scalar properties as arrays, a list property as (flat, sizes)."""

    scalars: dict[str, np.ndarray] = field(default_factory=dict)
    lists: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    line_numbers: np.ndarray | None = None  # ascii only: the file line of each record


def _ply_ascii(
    source: str, block: bytes, elements: list[_PlyElement], header_lines: int, wanted: set[str]
) -> dict[str, _PlyData]:
    """Parse an ASCII PLY body (one element record per line)."""
    line_count = block.count(b"\n") + 1
    numbers = np.arange(header_lines + 1, header_lines + 1 + line_count)
    parsed = _parse_numeric_lines(block, source, numbers)
    result: dict[str, _PlyData] = {}
    cursor = 0
    for element in elements:
        lines = slice(cursor, cursor + element.count)
        cursor += element.count
        if cursor > len(parsed.counts):
            raise DataFormatError(
                f"{source}:{element.line}: element {element.name!r} declares {element.count} "
                f"records but the file ends after {len(parsed.counts) - (cursor - element.count)}"
            )
        if element.name not in wanted:
            continue
        counts = parsed.counts[lines]
        starts = parsed.starts[lines]
        line_numbers = parsed.line_numbers[lines]
        list_positions = [i for i, p in enumerate(element.properties) if p.count_dtype]
        if len(list_positions) > 1:
            raise DataFormatError(
                f"{source}:{element.line}: element {element.name!r} has more than one list "
                f"property (not supported)"
            )
        scalar_count = len(element.properties) - len(list_positions)
        data = _PlyData(line_numbers=line_numbers)
        sizes = np.zeros(len(counts), dtype=np.int64)
        list_at = list_positions[0] if list_positions else len(element.properties)
        if not list_positions:
            wrong = np.flatnonzero(counts != scalar_count)
            if wrong.size:
                i = int(wrong[0])
                raise DataFormatError(
                    f"{source}:{int(line_numbers[i])}: element {element.name!r} expects "
                    f"{scalar_count} values per line, got {int(counts[i])}"
                )
        else:
            short = np.flatnonzero(counts < scalar_count + 1)
            if short.size:
                i = int(short[0])
                raise DataFormatError(
                    f"{source}:{int(line_numbers[i])}: element {element.name!r} expects at least "
                    f"{scalar_count + 1} values per line, got {int(counts[i])}"
                )
            sizes = counts - scalar_count - 1
            declared = parsed.values[starts + list_at]
            wrong = np.flatnonzero(declared != sizes)
            if wrong.size:
                i = int(wrong[0])
                raise DataFormatError(
                    f"{source}:{int(line_numbers[i])}: list {element.properties[list_at].name!r} "
                    f"declares {declared[i]:g} items but the line has {int(sizes[i])}"
                )
        for position, prop in enumerate(element.properties):
            if prop.count_dtype:
                # item j of record r sits at token starts[r] + list_at + 1 + j
                total = int(sizes.sum())
                within = np.arange(total) - np.repeat(np.cumsum(sizes) - sizes, sizes)
                flat_index = np.repeat(starts + list_at + 1, sizes) + within
                data.lists[prop.name] = (parsed.values[flat_index], sizes)
            else:
                # a scalar after the list is shifted by the list's length
                column = starts + position + (sizes if position > list_at else 0)
                data.scalars[prop.name] = _cast_ply(parsed.values[column], prop.dtype)
        result[element.name] = data
    return result


def _cast_ply(values: np.ndarray, dtype: str) -> np.ndarray:
    """Round ASCII values to their declared type (a ``float`` property reads as float32)."""
    if dtype[0] == "f":
        with np.errstate(over="ignore"):
            return values.astype(dtype).astype(np.float64)
    return values


def _ply_binary(
    source: str, raw: bytes, offset: int, elements: list[_PlyElement], order: str, wanted: set[str]
) -> dict[str, _PlyData]:
    """Parse a binary PLY body; lists of one length take a vectorised path."""
    result: dict[str, _PlyData] = {}
    for element in elements:
        if element.count == 0:
            result[element.name] = _PlyData(
                {p.name: np.zeros(0) for p in element.properties if not p.count_dtype},
                {
                    p.name: (np.zeros(0), np.zeros(0, dtype=np.int64))
                    for p in element.properties
                    if p.count_dtype
                },
            )
            continue
        # Probe the first record for list lengths and try them as fixed sizes for all records.
        probe = offset
        fields: list[tuple[str, Any] | tuple[str, Any, tuple[int]]] = []
        for i, prop in enumerate(element.properties):
            if prop.count_dtype:
                count_type = np.dtype(order + prop.count_dtype)
                if probe + count_type.itemsize > len(raw):
                    raise _ply_truncated(source, element)
                size = int(np.frombuffer(raw, count_type, 1, probe)[0])
                fields.append((f"n{i}", count_type))
                fields.append((f"p{i}", np.dtype(order + prop.dtype), (max(size, 0),)))
                probe += count_type.itemsize + max(size, 0) * np.dtype(prop.dtype).itemsize
            else:
                fields.append((f"p{i}", np.dtype(order + prop.dtype)))
                probe += np.dtype(prop.dtype).itemsize
        record = np.dtype(fields)
        if record.itemsize == 0:  # an element without properties holds no bytes
            result[element.name] = _PlyData()
            continue
        needed = record.itemsize * element.count
        table = None
        if offset + needed <= len(raw):
            table = np.frombuffer(raw, record, element.count, offset)
            for i, prop in enumerate(element.properties):
                if prop.count_dtype and not np.all(table[f"n{i}"] == record[f"p{i}"].shape[0]):
                    table = None
                    break
        if table is not None:
            data = _PlyData()
            for i, prop in enumerate(element.properties):
                column = table[f"p{i}"]
                if prop.count_dtype:
                    size = column.shape[1] if column.ndim == 2 else 0
                    sizes = np.full(element.count, size, dtype=np.int64)
                    data.lists[prop.name] = (column.reshape(-1).astype(np.float64), sizes)
                else:
                    data.scalars[prop.name] = column.astype(np.float64)
            offset += needed
        else:
            data, offset = _ply_binary_records(source, raw, offset, element, order)
        if element.name in wanted:
            result[element.name] = data
    return result


def _ply_truncated(source: str, element: _PlyElement) -> DataFormatError:
    return DataFormatError(
        f"{source}: file ends inside element {element.name!r} ({element.count} records declared "
        f"on line {element.line})"
    )


def _ply_binary_records(
    source: str, raw: bytes, offset: int, element: _PlyElement, order: str
) -> tuple[_PlyData, int]:
    """Record-by-record reader for binary elements whose lists vary in length (slow path)."""
    scalars: dict[str, list[float]] = {p.name: [] for p in element.properties if not p.count_dtype}
    items: dict[str, list[np.ndarray]] = {p.name: [] for p in element.properties if p.count_dtype}
    sizes: dict[str, list[int]] = {p.name: [] for p in element.properties if p.count_dtype}
    types = [
        (p, np.dtype(order + p.dtype), np.dtype(order + p.count_dtype) if p.count_dtype else None)
        for p in element.properties
    ]
    for _ in range(element.count):
        for prop, item_type, count_type in types:
            if count_type is None:
                if offset + item_type.itemsize > len(raw):
                    raise _ply_truncated(source, element)
                scalars[prop.name].append(float(np.frombuffer(raw, item_type, 1, offset)[0]))
                offset += item_type.itemsize
                continue
            if offset + count_type.itemsize > len(raw):
                raise _ply_truncated(source, element)
            size = int(np.frombuffer(raw, count_type, 1, offset)[0])
            offset += count_type.itemsize
            if size < 0 or offset + size * item_type.itemsize > len(raw):
                raise _ply_truncated(source, element)
            items[prop.name].append(np.frombuffer(raw, item_type, size, offset))
            sizes[prop.name].append(size)
            offset += size * item_type.itemsize
    data = _PlyData({name: np.array(values, dtype=np.float64) for name, values in scalars.items()})
    for name, chunks in items.items():
        flat = np.concatenate(chunks).astype(np.float64) if chunks else np.zeros(0)
        data.lists[name] = (flat, np.array(sizes[name], dtype=np.int64))
    return data, offset


def read_ply(path: str | os.PathLike[str]) -> Mesh:
    """Read a PLY mesh (``ascii``, ``binary_little_endian`` or ``binary_big_endian``).

    The ``vertex`` element needs ``x y z``; ``red green blue`` become ``vertex_colors`` (uchar, or
    float 0..1 scaled to 0..255); other properties (normals, alpha, ...) are skipped. Faces come
    from the ``face`` element's ``vertex_indices`` (or ``vertex_index``) list. Polygons with more
    than three corners are fan-triangulated in place — ``(v0, v1, ..., vk)`` becomes
    ``(v0, v1, v2), (v0, v2, v3), ...`` — so for an all-triangle file (KeypointNet's meshes) face
    ``i`` of the result is face ``i`` of the file. Other elements are skipped. ASCII files are
    expected to hold one element record per line.

    Args:
        path: the ``.ply`` file.

    Returns:
        The mesh; a file without a ``face`` element gives zero faces.

    Raises:
        DataFormatError: a malformed header or body, naming the file and line (ASCII) or element.
        FileNotFoundError: the file does not exist.
    """
    path = Path(path)
    source = str(path)
    raw = path.read_bytes()
    fmt, elements, offset, header_lines = _ply_header(source, raw)
    names = [element.name for element in elements]
    if "vertex" not in names:
        raise DataFormatError(f"{source}: header has no 'element vertex'")
    if len(set(names)) != len(names):
        raise DataFormatError(f"{source}: an element name appears twice in the header: {names}")
    vertex_element = elements[names.index("vertex")]
    vertex_props = {p.name: p for p in vertex_element.properties}
    for axis in ("x", "y", "z"):
        if axis not in vertex_props or vertex_props[axis].count_dtype:
            raise DataFormatError(
                f"{source}:{vertex_element.line}: element vertex needs scalar properties x y z"
            )
    face_list = None
    if "face" in names:
        face_element = elements[names.index("face")]
        face_props = {p.name: p for p in face_element.properties if p.count_dtype}
        face_list = next((name for name in _PLY_FACE_LISTS if name in face_props), None)
        if face_list is None:
            raise DataFormatError(
                f"{source}:{face_element.line}: element face needs a list property "
                f"vertex_indices (or vertex_index)"
            )
    wanted = {"vertex", "face"}
    if fmt == "ascii":
        data = _ply_ascii(source, raw[offset:], elements, header_lines, wanted)
    else:
        data = _ply_binary(source, raw, offset, elements, _PLY_FORMATS[fmt], wanted)
    vertex_data = data["vertex"]
    vertices = np.stack([vertex_data.scalars[axis] for axis in ("x", "y", "z")], axis=1)
    bad = np.flatnonzero(~np.isfinite(vertices).all(axis=1))
    if bad.size:
        raise DataFormatError(
            f"{_ply_record(source, vertex_data, int(bad[0]), 'vertex')}: non-finite coordinates"
        )
    colors = None
    if all(c in vertex_props and not vertex_props[c].count_dtype for c in ("red", "green", "blue")):
        color_values = np.stack([vertex_data.scalars[c] for c in ("red", "green", "blue")], axis=1)
        if vertex_props["red"].dtype[0] == "f":
            color_values = np.rint(np.clip(np.nan_to_num(color_values), 0.0, 1.0) * 255.0)
        bad = np.flatnonzero(((color_values < 0) | (color_values > 255)).any(axis=1))
        if bad.size:
            raise DataFormatError(
                f"{_ply_record(source, vertex_data, int(bad[0]), 'vertex')}: colour outside "
                f"0..255: {color_values[int(bad[0])].tolist()}"
            )
        colors = color_values.astype(np.uint8)
    faces = np.zeros((0, 3), dtype=np.int64)
    if face_list is not None:
        face_data = data["face"]
        flat, sizes = face_data.lists[face_list]
        small = np.flatnonzero(sizes < 3)
        if small.size:
            raise DataFormatError(
                f"{_ply_record(source, face_data, int(small[0]), 'face')}: a face needs at least 3 "
                f"vertex indices, got {int(sizes[int(small[0])])}"
            )
        bad_items = np.flatnonzero((flat != np.floor(flat)) | (flat < 0) | (flat >= len(vertices)))
        if bad_items.size:
            face = int(np.searchsorted(np.cumsum(sizes), bad_items[0], side="right"))
            raise DataFormatError(
                f"{_ply_record(source, face_data, face, 'face')}: vertex index "
                f"{flat[bad_items[0]]:g} is out of range 0..{len(vertices) - 1}"
            )
        faces, _ = _fan_triangulate(flat.astype(np.int64), sizes)
    return Mesh(vertices, faces, colors)


def _ply_record(source: str, data: _PlyData, index: int, element: str) -> str:
    if data.line_numbers is not None:
        return f"{source}:{int(data.line_numbers[index])}"
    return f"{source}: {element} {index}"


def write_ply(path: str | os.PathLike[str], mesh: Mesh, binary: bool = False) -> None:
    """Write a mesh as PLY (ASCII, or ``binary_little_endian`` when ``binary``), atomically.

    Vertices are written as ``float`` (like ShapeNet's PLYs) when every coordinate is exactly a
    float32, else as ``double``, so reading the file back gives the same mesh. Colours become
    ``red green blue`` uchar properties; faces a ``list uchar int vertex_indices``.

    Args:
        path: the file to write (its directory must exist).
        mesh: the mesh.
        binary: write ``binary_little_endian`` instead of ASCII.
    """
    vertices = mesh.vertices
    single = _float32_exact(vertices)
    coordinate_type = "float" if single else "double"
    header = [
        "ply",
        f"format {'binary_little_endian' if binary else 'ascii'} 1.0",
        "comment written by keypointnet",
        f"element vertex {len(vertices)}",
        *(f"property {coordinate_type} {axis}" for axis in ("x", "y", "z")),
    ]
    if mesh.vertex_colors is not None:
        header += [f"property uchar {channel}" for channel in ("red", "green", "blue")]
    header += [
        f"element face {len(mesh.faces)}",
        "property list uchar int vertex_indices",
        "end_header",
    ]
    head = ("\n".join(header) + "\n").encode("ascii")
    if binary:
        vertex_fields: list[tuple[str, str] | tuple[str, str, tuple[int]]] = [
            ("xyz", "<f4" if single else "<f8", (3,))
        ]
        if mesh.vertex_colors is not None:
            vertex_fields.append(("rgb", "u1", (3,)))
        vertex_table = np.zeros(len(vertices), dtype=np.dtype(vertex_fields))
        vertex_table["xyz"] = vertices
        if mesh.vertex_colors is not None:
            vertex_table["rgb"] = mesh.vertex_colors
        face_table = np.zeros(len(mesh.faces), dtype=np.dtype([("n", "u1"), ("v", "<i4", (3,))]))
        face_table["n"] = 3
        face_table["v"] = mesh.faces
        body = vertex_table.tobytes() + face_table.tobytes()
    else:
        number = "%.9g" if single else "%r"  # float: read back as float32; double: shortest
        if mesh.vertex_colors is not None:
            vertex_rows = np.concatenate([vertices, mesh.vertex_colors.astype(np.float64)], axis=1)
            body = _format_rows(f"{number} {number} {number} %d %d %d\n", vertex_rows)
        else:
            body = _format_rows(f"{number} {number} {number}\n", vertices)
        body += _format_rows("3 %d %d %d\n", mesh.faces)
    with atomic_write(Path(path), "wb") as handle:
        handle.write(head)
        handle.write(body)


def read_obj(path: str | os.PathLike[str]) -> Mesh:
    """Read a Wavefront OBJ mesh, keeping vertex and face order exactly.

    Only ``v`` and ``f`` statements matter; ``vt``, ``vn``, ``vp``, ``l``, ``usemtl``, ``mtllib``,
    ``g``, ``o``, ``s`` and comments are ignored. Vertices are never merged or reordered, so a
    KeypointNet ``face_index`` stays valid. ``f`` corners may be ``v``, ``v/vt``, ``v//vn`` or
    ``v/vt/vn``, with 1-based or negative (relative: ``-1`` is the latest vertex) indices.
    Polygons are fan-triangulated in place: ``(v0, v1, ..., vk)`` becomes ``(v0, v1, v2),
    (v0, v2, v3), ...``. When every ``v`` line has six values (``v x y z r g b``) the colours
    become ``vertex_colors`` (values in 0..1 are scaled by 255). Line continuations (``\\``)
    are not supported.

    Args:
        path: the ``.obj`` file.

    Returns:
        The triangle mesh.

    Raises:
        DataFormatError: a malformed ``v`` or ``f`` line (naming the file and line).
        FileNotFoundError: the file does not exist.
    """
    path = Path(path)
    source = str(path)
    raw = path.read_bytes()
    if not raw.endswith(b"\n"):
        raw += b"\n"
    content = np.frombuffer(raw, dtype=np.uint8).copy()
    newline = content == 10
    line_of_byte = np.cumsum(newline) - newline
    line_count = int(newline.sum())
    line_start = np.concatenate([[0], np.flatnonzero(newline)[:-1] + 1])
    # Blank out comments: every byte from a '#' to the end of its line.
    hashes = np.cumsum(content == 35)
    hashes_before_line = hashes[line_start] - (content[line_start] == 35)
    in_comment = ((hashes - hashes_before_line[line_of_byte]) > 0) & ~newline
    content[in_comment] = 32
    space = _IS_SPACE[content]
    # The keyword of each line: its first non-space byte, followed by whitespace.
    nonspace = np.flatnonzero(~space)
    lines_with_text, first_index = np.unique(line_of_byte[nonspace], return_index=True)
    keyword_at = nonspace[first_index]
    single_letter = space[keyword_at + 1]
    is_v = single_letter & (content[keyword_at] == ord("v"))
    is_f = single_letter & (content[keyword_at] == ord("f"))
    content[keyword_at[is_v | is_f]] = 32
    line_is_v = np.zeros(line_count, dtype=bool)
    line_is_v[lines_with_text[is_v]] = True
    line_is_f = np.zeros(line_count, dtype=bool)
    line_is_f[lines_with_text[is_f]] = True

    v_lines = np.flatnonzero(line_is_v)
    v_block = content[line_is_v[line_of_byte]].tobytes()
    v_counts = _line_token_counts(v_block)[: len(v_lines)]
    bad = np.flatnonzero((v_counts < 3) | (v_counts > 7))
    if bad.size:
        raise DataFormatError(
            f"{source}:{int(v_lines[bad[0]]) + 1}: expected 'v x y z' (optionally w or r g b), got "
            f"{int(v_counts[bad[0]])} values"
        )
    v_parsed = _parse_numeric_lines(v_block, source, np.append(v_lines + 1, 0))
    vertices = v_parsed.values[v_parsed.starts[:, None] + np.arange(3)].reshape(-1, 3)
    bad = np.flatnonzero(~np.isfinite(vertices).all(axis=1))
    if bad.size:
        raise DataFormatError(f"{source}:{int(v_lines[bad[0]]) + 1}: non-finite vertex coordinates")
    colors = None
    if len(v_counts) and np.all(v_counts == 6):
        color_values = v_parsed.values[v_parsed.starts[:, None] + np.arange(3, 6)]
        if np.nanmax(color_values) <= 1.0:
            color_values = color_values * 255.0
        colors = np.rint(np.clip(np.nan_to_num(color_values), 0, 255)).astype(np.uint8)

    f_lines = np.flatnonzero(line_is_f)
    f_numbers = np.append(f_lines + 1, 0)
    f_block = content[line_is_f[line_of_byte]].tobytes()
    empty_vertex = re.search(rb"(?:^|[ \t\r\v\f])/", f_block, re.MULTILINE)
    if empty_vertex:
        line = int(f_numbers[f_block.count(b"\n", 0, empty_vertex.start() + 1)])
        raise DataFormatError(f"{source}:{line}: a face corner must start with a vertex index")
    f_block = re.sub(rb"/\S*", b"", f_block)  # keep v of v/vt/vn
    f_counts = _line_token_counts(f_block)[: len(f_lines)]
    bad = np.flatnonzero(f_counts < 3)
    if bad.size:
        raise DataFormatError(
            f"{source}:{int(f_lines[bad[0]]) + 1}: a face needs at least 3 vertices, got "
            f"{int(f_counts[bad[0]])}"
        )
    f_parsed = _parse_numeric_lines(f_block, source, f_numbers)
    indexes = f_parsed.values
    corner_line = np.repeat(f_lines, f_counts)
    vertices_before = np.cumsum(line_is_v)[corner_line]  # for relative (negative) indexes
    resolved = np.where(indexes < 0, vertices_before + indexes, indexes - 1)
    bad = np.flatnonzero(
        (indexes != np.floor(indexes))
        | (indexes == 0)
        | (resolved < 0)
        | (resolved >= len(vertices))
    )
    if bad.size:
        raise DataFormatError(
            f"{source}:{int(corner_line[bad[0]]) + 1}: vertex index {indexes[bad[0]]:g} does not "
            f"name one of the {len(vertices)} vertices (1-based, or negative for relative)"
        )
    faces, _ = _fan_triangulate(resolved.astype(np.int64), f_counts)
    return Mesh(vertices, faces, colors)


def write_obj(path: str | os.PathLike[str], mesh: Mesh) -> None:
    """Write a mesh as Wavefront OBJ (``v`` then ``f`` lines, 1-based), atomically.

    Coordinates are written as the shortest decimal that reads back to the same float64, so
    ``read_obj`` gives the same mesh back. Colours are written as ``v x y z r g b`` with
    ``r g b`` in 0..1.

    Args:
        path: the file to write (its directory must exist).
        mesh: the mesh.
    """
    number = "%r"  # Python's shortest repr: exact float64 round trip
    if mesh.vertex_colors is not None:
        rows = np.concatenate([mesh.vertices, mesh.vertex_colors / 255.0], axis=1)
        vertex_lines = _format_rows(f"v {number} {number} {number} %.6g %.6g %.6g\n", rows)
    else:
        vertex_lines = _format_rows(f"v {number} {number} {number}\n", mesh.vertices)
    with atomic_write(Path(path), "wb") as handle:
        handle.write(b"# written by keypointnet\n")
        handle.write(vertex_lines)
        handle.write(_format_rows("f %d %d %d\n", mesh.faces + 1))


# =========================================================================== splits
#: The split files of the upstream release, ``splits/<name>.txt``.
SPLIT_NAMES: tuple[str, ...] = ("train", "val", "test")
_SPLIT_KEY = re.compile(r"[0-9]{8}-[0-9a-zA-Z]+", re.ASCII)


def read_split(path: str | os.PathLike[str]) -> list[str]:
    """Read a split file: one ``<synset>-<model_id>`` per line (blank lines are skipped).

    Returns:
        The keys in file order.

    Raises:
        DataFormatError: a line not of the form ``^\\d{8}-[0-9a-zA-Z]+$`` or a duplicate key,
            naming the file and line.
        FileNotFoundError: the file does not exist.
    """
    path = Path(path)
    text = _decode_utf8(path, path.read_bytes())
    keys: list[str] = []
    first_line: dict[str, int] = {}
    for number, line in enumerate(text.split("\n"), start=1):
        key = line.strip()
        if not key:
            continue
        if not _SPLIT_KEY.fullmatch(key):
            raise DataFormatError(
                f"{path}:{number}: expected '<8-digit synset>-<model id>' such as "
                f"'03001627-1a2b3c4d', got {key[:60]!r}"
            )
        if key in first_line:
            raise DataFormatError(
                f"{path}:{number}: duplicate entry {key} (first on line {first_line[key]})"
            )
        first_line[key] = number
        keys.append(key)
    return keys


def write_split(path: str | os.PathLike[str], keys: Iterable[str]) -> None:
    """Write a split file (one key per line, trailing newline), atomically.

    Raises:
        ValueError: a key not of the form ``<8-digit synset>-<model_id>``, or a duplicate.
    """
    keys = list(keys)
    seen: set[str] = set()
    for key in keys:
        if not isinstance(key, str) or not _SPLIT_KEY.fullmatch(key):
            raise ValueError(f"write_split: expected '<8-digit synset>-<model id>', got {key!r}")
        if key in seen:
            raise ValueError(f"write_split: duplicate key {key}")
        seen.add(key)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "w") as handle:
        handle.write("".join(f"{key}\n" for key in keys))


# =========================================================================== consistency checks
def barycentric_point(
    mesh: Mesh, face_index: int, face_uv: Sequence[float] | np.ndarray
) -> np.ndarray:
    """The surface point ``V[F[face_index]].T @ face_uv`` (KeypointNet's ``mesh_info``).

    Returns:
        (3,) float64 position.

    Raises:
        ValueError: ``face_index`` out of range or ``face_uv`` not 3 weights.
    """
    if not 0 <= face_index < len(mesh.faces):
        raise ValueError(f"face_index {face_index} is out of range for {len(mesh.faces)} faces")
    weights = np.asarray(face_uv, dtype=np.float64)
    if weights.shape != (3,):
        raise ValueError(f"face_uv must be 3 weights, got shape {weights.shape}")
    return mesh.vertices[mesh.faces[face_index]].T @ weights


def _keypoint_label(model: ModelAnnotation, position: int) -> str:
    keypoint = model.keypoints[position]
    return f"{model.key} keypoints[{position}] (semantic_id {keypoint.semantic_id})"


def check_model_against_pcd(
    model: ModelAnnotation, points: np.ndarray | PointCloud, atol: float = 1e-5
) -> list[str]:
    """Problems between a model's keypoints and its point cloud (empty when consistent).

    Checks that every ``point_index`` is a row of ``points`` and that ``xyz`` equals that row
    within ``atol`` (largest coordinate difference). Keypoints without ``point_index`` are
    skipped.

    Args:
        model: the annotation.
        points: (N, 3) coordinates or a ``PointCloud``.
        atol: allowed absolute difference per coordinate.

    Returns:
        One line per problem, naming the model, keypoint position and semantic id.
    """
    cloud = points.points if isinstance(points, PointCloud) else np.asarray(points)
    problems: list[str] = []
    positions = [k for k, kp in enumerate(model.keypoints) if kp.point_index is not None]
    if not positions:
        return problems
    index = np.array([model.keypoints[k].point_index for k in positions], dtype=np.int64)
    xyz = np.array([model.keypoints[k].xyz for k in positions], dtype=np.float64)
    in_range = index < len(cloud)
    difference = np.full(len(positions), np.inf)
    difference[in_range] = np.abs(xyz[in_range] - cloud[index[in_range]]).max(axis=1)
    for i, k in enumerate(positions):
        label = _keypoint_label(model, k)
        if not in_range[i]:
            problems.append(
                f"{label}: point_index {index[i]} is out of range for {len(cloud)} points"
            )
        elif not difference[i] <= atol:
            problems.append(
                f"{label}: xyz {xyz[i].tolist()} differs from points[{index[i]}] = "
                f"{cloud[index[i]].tolist()} by {difference[i]:.3g} (atol {atol:g})"
            )
    return problems


def check_model_against_mesh(model: ModelAnnotation, mesh: Mesh, atol: float = 1e-5) -> list[str]:
    """Problems between a model's keypoints and its mesh (empty when consistent).

    Checks that every ``face_index`` is a face of ``mesh`` and that ``xyz`` equals
    ``barycentric_point(mesh, face_index, face_uv)`` within ``atol``. Keypoints without
    ``mesh_info`` are skipped.

    Returns:
        One line per problem, naming the model, keypoint position and semantic id.
    """
    problems: list[str] = []
    positions = [
        k
        for k, kp in enumerate(model.keypoints)
        if kp.face_index is not None and kp.face_uv is not None
    ]
    if not positions:
        return problems
    face = np.array([model.keypoints[k].face_index for k in positions], dtype=np.int64)
    uv = np.array([model.keypoints[k].face_uv for k in positions], dtype=np.float64)
    xyz = np.array([model.keypoints[k].xyz for k in positions], dtype=np.float64)
    in_range = face < len(mesh.faces)
    surface = np.full_like(xyz, np.nan)
    corners = mesh.vertices[mesh.faces[face[in_range]]]  # (K, 3 corners, 3 coordinates)
    surface[in_range] = np.einsum("kcd,kc->kd", corners, uv[in_range])
    difference = np.abs(xyz - surface).max(axis=1)
    for i, k in enumerate(positions):
        label = _keypoint_label(model, k)
        if not in_range[i]:
            problems.append(
                f"{label}: face_index {face[i]} is out of range for {len(mesh.faces)} faces"
            )
        elif not difference[i] <= atol:
            problems.append(
                f"{label}: xyz {xyz[i].tolist()} differs from the face_uv point "
                f"{surface[i].tolist()} on face {face[i]} by {difference[i]:.3g} (atol {atol:g})"
            )
    return problems


# =========================================================================== dataset directory
DOWNLOAD_HINT = (
    "download KeypointNet from Hugging Face `qq456cvb/KeypointNet` "
    "(hf download qq456cvb/KeypointNet --repo-type dataset) and pass its directory; "
    "nothing is downloaded automatically"
)
MERGED_ANNOTATIONS = "all.json"


class KeypointNetDirectory:
    """A KeypointNet release on disk, laid out as upstream::

        <root>/annotations/<category>.json      (or a merged annotations/all.json)
        <root>/pcds/<synset>/<model_id>.pcd
        <root>/ShapeNetCore.v2.ply/<synset>/<model_id>.ply
        <root>/splits/{train,val,test}.txt

    Only ``annotations/`` is required; point clouds, meshes and splits are read when asked for.
    Annotation files are parsed once and cached.

    Args:
        root: the directory.

    Raises:
        DataFormatError: ``root`` or ``root/annotations`` does not exist (the message says where
            to download the dataset).
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataFormatError(f"{self.root}: KeypointNet directory not found; {DOWNLOAD_HINT}")
        if not (self.root / "annotations").is_dir():
            raise DataFormatError(
                f"{self.root}: no annotations/ folder (expected annotations/<category>.json); "
                f"{DOWNLOAD_HINT}"
            )
        self._annotations: dict[str, list[ModelAnnotation]] = {}
        self._merged: list[ModelAnnotation] | None = None
        self._splits: dict[str, list[str]] = {}
        self._split_of: dict[str, str] | None = None

    def __repr__(self) -> str:
        return f"KeypointNetDirectory({str(self.root)!r})"

    @property
    def annotations_dir(self) -> Path:
        """``<root>/annotations``."""
        return self.root / "annotations"

    def _merged_models(self) -> list[ModelAnnotation]:
        if self._merged is None:
            path = self.annotations_dir / MERGED_ANNOTATIONS
            self._merged = read_annotations(path) if path.is_file() else []
        return self._merged

    def categories(self) -> list[str]:
        """Category names with annotations: ``annotations/<name>.json`` files, plus the
        categories found in a merged ``annotations/all.json``; sorted."""
        names = {
            path.stem
            for path in self.annotations_dir.glob("*.json")
            if path.name != MERGED_ANNOTATIONS and path.is_file()
        }
        for model in self._merged_models():
            names.add(model.category or model.class_id)
        return sorted(names)

    def annotations(self, category: str) -> list[ModelAnnotation]:
        """The models of one category (a name such as ``"chair"``, or its synset id).

        Read from ``annotations/<category>.json``, else taken from ``annotations/all.json``.

        Raises:
            DataFormatError: no annotations for ``category``, or a malformed file.
        """
        category = SYNSET_TO_CATEGORY.get(category, category)
        if category not in self._annotations:
            path = self.annotations_dir / f"{category}.json"
            if path.is_file():
                models = read_annotations(path)
            else:
                synset = CATEGORY_TO_SYNSET.get(category, category)
                models = [m for m in self._merged_models() if m.class_id == synset]
                if not models:
                    raise DataFormatError(
                        f"{path}: no annotations for category {category!r} (available: "
                        f"{', '.join(self.categories()) or 'none'}); {DOWNLOAD_HINT}"
                    )
            self._annotations[category] = models
        return self._annotations[category]

    def _split_keys(self, split: str) -> list[str]:
        if split not in SPLIT_NAMES:
            raise ValueError(f"split must be one of {', '.join(SPLIT_NAMES)}, got {split!r}")
        if split not in self._splits:
            path = self.root / "splits" / f"{split}.txt"
            if not path.is_file():
                raise DataFormatError(f"{path}: split file not found; {DOWNLOAD_HINT}")
            self._splits[split] = read_split(path)
        return self._splits[split]

    def models(
        self, category: str | None = None, split: str | None = None
    ) -> list[ModelAnnotation]:
        """Annotated models, optionally of one category and one split.

        Args:
            category: a category name (or synset); None for every available category.
            split: ``"train"``, ``"val"`` or ``"test"`` (filtered by ``splits/<split>.txt``);
                None for all models.

        Returns:
            The models in file order (categories in sorted order).
        """
        categories = [category] if category is not None else self.categories()
        models = [model for name in categories for model in self.annotations(name)]
        if split is None:
            return models
        keys = set(self._split_keys(split))
        return [model for model in models if model.key in keys]

    def split_of(self, key: str) -> str | None:
        """The split (``train``/``val``/``test``) listing ``key`` (``<synset>-<model_id>``),
        or None when no split file lists it. Missing split files count as empty.

        Raises:
            DataFormatError: a key is listed in two split files.
        """
        if self._split_of is None:
            owner: dict[str, str] = {}
            for split in SPLIT_NAMES:
                if not (self.root / "splits" / f"{split}.txt").is_file():
                    continue
                for listed in self._split_keys(split):
                    if listed in owner:
                        raise DataFormatError(
                            f"{self.root / 'splits'}: {listed} is in both {owner[listed]}.txt "
                            f"and {split}.txt"
                        )
                    owner[listed] = split
            self._split_of = owner
        return self._split_of.get(key)

    def pcd_path(self, model: ModelAnnotation) -> Path:
        """``<root>/pcds/<synset>/<model_id>.pcd``."""
        return self.root / "pcds" / model.class_id / f"{model.model_id}.pcd"

    def mesh_path(self, model: ModelAnnotation) -> Path:
        """``<root>/ShapeNetCore.v2.ply/<synset>/<model_id>.ply``."""
        return self.root / "ShapeNetCore.v2.ply" / model.class_id / f"{model.model_id}.ply"

    def load_points(self, model: ModelAnnotation) -> PointCloud:
        """The model's point cloud (``pcd_path``).

        Raises:
            FileNotFoundError: the release's ``pcds/`` folder lacks the model.
        """
        path = self.pcd_path(model)
        if not path.is_file():
            raise FileNotFoundError(
                errno.ENOENT,
                f"point cloud of {model.key} not found (pcds/ folder); {DOWNLOAD_HINT}",
                str(path),
            )
        return read_pcd(path)

    def load_mesh(self, model: ModelAnnotation) -> Mesh:
        """The model's mesh (``mesh_path``).

        Raises:
            FileNotFoundError: the release's ``ShapeNetCore.v2.ply/`` folder lacks the model.
        """
        path = self.mesh_path(model)
        if not path.is_file():
            raise FileNotFoundError(
                errno.ENOENT,
                f"mesh of {model.key} not found (ShapeNetCore.v2.ply/ folder); {DOWNLOAD_HINT}",
                str(path),
            )
        return read_ply(path)

    def write_merged(
        self, path: str | os.PathLike[str], categories: Iterable[str] | None = None
    ) -> int:
        """Write the merged ``all.json`` that the upstream benchmark scripts read.

        Args:
            path: the output file (usually ``<root>/annotations/all.json``).
            categories: the categories to include; None for all available.

        Returns:
            The number of models written.
        """
        names = list(categories) if categories is not None else self.categories()
        models = [model for name in names for model in self.annotations(name)]
        write_annotations(path, models)
        return len(models)
