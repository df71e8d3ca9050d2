"""KeypointNet data formats: annotation JSON (this part), splits, PCD, PLY and OBJ.

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

import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ptrain.core.checkpoint import atomic_write
from ptrain.core.cli import UserError

__all__ = [
    "CATEGORY_TO_SYNSET",
    "SYNSET_TO_CATEGORY",
    "DataFormatError",
    "Keypoint",
    "ModelAnnotation",
    "RotationSymmetry",
    "Symmetries",
    "annotations_from_json",
    "annotations_to_json",
    "read_annotations",
    "write_annotations",
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
            raise where.fail(f"{group_location}.is_circle", f"expected true/false, got {is_circle!r}")
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
                raise where.fail(f"{location}.{name}", f"expected a non-empty string, got {value!r}")
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
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise DataFormatError(
            f"{path}:{error.lineno}:{error.colno}: invalid JSON: {error.msg}"
        ) from None
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
