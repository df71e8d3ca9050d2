"""Synthetic shapes with semantic keypoints, written exactly in KeypointNet's formats.

ShapeNet meshes and KeypointNet's point clouds are not redistributable, so tests, demos and CPU
training use procedurally generated shapes instead: closed boxes, cylinders, tube arcs and
lathed capsules assembled in numpy into chairs, tables, mugs and airplanes with random
proportions. ``synthesize`` writes them as a KeypointNet directory (annotation JSON, 2,048-point
ASCII PCDs, PLY meshes, split files) that ``keypointnet.data.KeypointNetDirectory`` loads.

Coordinates follow ShapeNetCore.v2: +y up, front at -z, the bounding box centred at the origin
and its diagonal scaled to a random length in [0.9, 1.1] (so |coordinates| stay below ~0.55).

Semantic ids (``SEMANTIC_NAMES`` holds the same table). "+x"/"-x" are the two sides; reflection
pairs swap them.

* chair (design reference §3.3, as upstream): 0/1 backrest top corners (+x/-x), 2/3 back seat
  corners, 4/5 front seat corners, 6/8 armrest front ends (+x/-x), 7/9 armrest back ends, 10–14
  swivel-base leg tips (counter-clockwise seen from above, starting front +x; one size-5
  rotation group), 15/16 upper/lower point on the swivel column (front side), 17/18/19/20 leg
  bottoms (+x front, +x back, -x back, -x front). A chair has either four legs (17–20) or a
  five-leg swivel base (10–16); arms (6–9) are optional. Reflection pairs: (0,1) (2,3) (4,5)
  (6,8) (7,9) (17,20) (18,19).
* table: 0/1 top corners front (+x/-x), 2/3 top corners back, 4/5 leg bottoms front, 6/7 leg
  bottoms back. Reflection pairs (0,1) (2,3) (4,5) (6,7).
* mug: 0 rim on the handle side (+x), 1 rim front (-z), 2 rim opposite the handle (-x), 3 rim
  back (+z), 4 handle top (where it meets the body), 5 handle bottom, 6 handle outermost point,
  7 base centre. Reflection pair (1,3).
* airplane: 0 nose, 1 tail end of the fuselage, 2/3 wing tips (+x/-x, leading edge), 4/5
  horizontal stabiliser tips, 6 vertical fin tip. Reflection pairs (2,3) (4,5).

Every keypoint lies on the sampled point cloud: ``point_index`` is the sample nearest to the
analytic keypoint (the nearest unused one when two keypoints would share a sample), ``xyz`` is
that sample exactly as the PCD stores it (float32), and ``face_index``/``face_uv`` are the
sampler's triangle and barycentric weights.
"""

from __future__ import annotations

import hashlib
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from keypointnet.data import (
    CATEGORY_TO_SYNSET,
    SPLIT_NAMES,
    Keypoint,
    Mesh,
    ModelAnnotation,
    RotationSymmetry,
    Symmetries,
    read_split,
    write_annotations,
    write_pcd,
    write_ply,
    write_split,
)
from ptrain.core.cli import progress

__all__ = [
    "SEMANTIC_NAMES",
    "SYNTH_CATEGORIES",
    "SynthShape",
    "make_shape",
    "sample_surface",
    "synthesize",
]

#: Categories ``make_shape`` can build (all with their real ShapeNet synsets).
SYNTH_CATEGORIES: tuple[str, ...] = ("chair", "table", "mug", "airplane")

#: What each semantic id means, per category.
SEMANTIC_NAMES: dict[str, dict[int, str]] = {
    "chair": {
        0: "backrest top corner +x",
        1: "backrest top corner -x",
        2: "back seat corner +x",
        3: "back seat corner -x",
        4: "front seat corner +x",
        5: "front seat corner -x",
        6: "armrest front end +x",
        7: "armrest back end +x",
        8: "armrest front end -x",
        9: "armrest back end -x",
        10: "swivel leg tip 1 (front +x)",
        11: "swivel leg tip 2",
        12: "swivel leg tip 3 (back)",
        13: "swivel leg tip 4",
        14: "swivel leg tip 5 (front -x)",
        15: "swivel column upper",
        16: "swivel column lower",
        17: "leg bottom +x front",
        18: "leg bottom +x back",
        19: "leg bottom -x back",
        20: "leg bottom -x front",
    },
    "table": {
        0: "top corner +x front",
        1: "top corner -x front",
        2: "top corner +x back",
        3: "top corner -x back",
        4: "leg bottom +x front",
        5: "leg bottom -x front",
        6: "leg bottom +x back",
        7: "leg bottom -x back",
    },
    "mug": {
        0: "rim, handle side (+x)",
        1: "rim front (-z)",
        2: "rim opposite the handle (-x)",
        3: "rim back (+z)",
        4: "handle top",
        5: "handle bottom",
        6: "handle outermost point",
        7: "base centre",
    },
    "airplane": {
        0: "nose",
        1: "tail end",
        2: "wing tip +x",
        3: "wing tip -x",
        4: "stabiliser tip +x",
        5: "stabiliser tip -x",
        6: "vertical fin tip",
    },
}

_REFLECTION_IDS: dict[str, tuple[tuple[int, int], ...]] = {
    "chair": ((0, 1), (2, 3), (4, 5), (6, 8), (7, 9), (17, 20), (18, 19)),
    "table": ((0, 1), (2, 3), (4, 5), (6, 7)),
    "mug": ((1, 3),),
    "airplane": ((2, 3), (4, 5)),
}
_ROTATION_IDS: dict[str, tuple[tuple[int, ...], ...]] = {"chair": ((10, 11, 12, 13, 14),)}


@dataclass(slots=True)
class SynthShape:
    """A synthetic shape before sampling.

    Attributes:
        mesh: the closed triangle mesh (float32-exact vertices, a colour per part).
        keypoints: ``(semantic_id, xyz)`` on the mesh surface, sorted by semantic id.
        reflection: reflection pairs as positions in ``keypoints``.
        rotation: rotation groups as positions in ``keypoints``.
    """

    mesh: Mesh
    keypoints: list[tuple[int, np.ndarray]]
    reflection: list[tuple[int, int]]
    rotation: list[tuple[int, ...]]


# --------------------------------------------------------------------------- primitives
def _orient_outward(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Flip a consistently wound closed mesh whose signed volume is negative."""
    corners = vertices[faces]
    volume = np.einsum("fd,fd->f", corners[:, 0], np.cross(corners[:, 1], corners[:, 2])).sum()
    return faces[:, ::-1].copy() if volume < 0 else faces


def _hexahedron(corners: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A closed six-sided solid; corner ``i`` has bits (x, y, z) = (i & 1, i >> 1 & 1, i >> 2)."""
    quads = np.array(
        [[0, 4, 6, 2], [1, 3, 7, 5], [0, 1, 5, 4], [2, 6, 7, 3], [0, 2, 3, 1], [4, 5, 7, 6]]
    )
    faces = np.concatenate([quads[:, [0, 1, 2]], quads[:, [0, 2, 3]]])
    return np.asarray(corners, dtype=np.float64), faces


def _box(low: Sequence[float], high: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """An axis-aligned box from its low and high corners."""
    bits = (np.arange(8)[:, None] >> np.arange(3)) & 1  # (8, 3)
    return _hexahedron(np.where(bits == 1, np.asarray(high, float), np.asarray(low, float)))


def _sweep(
    centers: np.ndarray,
    axis_a: np.ndarray,
    axis_b: np.ndarray,
    radii: np.ndarray,
    segments: int,
    cap_ends: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Rings ``center_j + r_j (cos ψ a_j + sin ψ b_j)`` joined into a tube.

    A ring of radius 0 is a single pole vertex; with ``cap_ends`` the first and last rings get a
    centre vertex and a triangle fan. Ring vertex ``k`` sits at ψ = 2πk / segments, so ψ = 0 is a
    vertex on every ring (keypoints placed there are exactly on the surface).
    """
    psi = 2.0 * np.pi * np.arange(segments) / segments
    rings: list[np.ndarray] = []
    pieces: list[np.ndarray] = []
    count = 0
    if cap_ends:
        pieces.append(centers[:1])
        rings.append(np.zeros(segments, dtype=np.int64))
        count = 1
    for j in range(len(centers)):
        if radii[j] == 0:
            pieces.append(centers[j : j + 1])
            rings.append(np.full(segments, count, dtype=np.int64))
            count += 1
            continue
        ring = centers[j] + radii[j] * (
            np.cos(psi)[:, None] * axis_a[j] + np.sin(psi)[:, None] * axis_b[j]
        )
        pieces.append(ring)
        rings.append(count + np.arange(segments))
        count += segments
    if cap_ends:
        pieces.append(centers[-1:])
        rings.append(np.full(segments, count, dtype=np.int64))
    vertices = np.concatenate(pieces)
    lower = np.stack(rings[:-1])  # (J-1, S)
    upper = np.stack(rings[1:])
    lower_next = np.roll(lower, -1, axis=1)
    upper_next = np.roll(upper, -1, axis=1)
    triangles = np.concatenate(
        [
            np.stack([lower, lower_next, upper_next], axis=-1).reshape(-1, 3),
            np.stack([lower, upper_next, upper], axis=-1).reshape(-1, 3),
        ]
    )
    degenerate = (
        (triangles[:, 0] == triangles[:, 1])
        | (triangles[:, 1] == triangles[:, 2])
        | (triangles[:, 0] == triangles[:, 2])
    )
    return vertices, triangles[~degenerate]


def _frame(axis: np.ndarray, toward: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors (u, v) perpendicular to ``axis`` with u along ``toward`` where possible."""
    axis = axis / np.linalg.norm(axis)
    if toward is None or abs(np.dot(toward, axis)) > 0.99 * np.linalg.norm(toward):
        toward = np.array([1.0, 0.0, 0.0]) if abs(axis[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    u = toward - np.dot(toward, axis) * axis
    u /= np.linalg.norm(u)
    return u, np.cross(axis, u)


def _lathe(
    base: Sequence[float] | np.ndarray,
    axis: Sequence[float] | np.ndarray,
    profile: Sequence[tuple[float, float]],
    segments: int = 16,
    toward: Sequence[float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A solid of revolution: profile ``(height along axis, radius)``; radius 0 ends are poles.

    ``toward`` picks the direction of the ψ = 0 vertex line.
    """
    axis_unit = np.asarray(axis, dtype=np.float64)
    axis_unit = axis_unit / np.linalg.norm(axis_unit)
    u, v = _frame(axis_unit, None if toward is None else np.asarray(toward, dtype=np.float64))
    heights = np.array([h for h, _ in profile])
    radii = np.array([r for _, r in profile])
    centers = np.asarray(base, dtype=np.float64) + heights[:, None] * axis_unit
    count = len(profile)
    return _sweep(centers, np.tile(u, (count, 1)), np.tile(v, (count, 1)), radii, segments)


def _cylinder(
    start: Sequence[float],
    end: Sequence[float],
    radius: float,
    segments: int = 12,
    toward: Sequence[float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A closed cylinder; the cap centres ``start`` and ``end`` are vertices."""
    start_v = np.asarray(start, dtype=np.float64)
    direction = np.asarray(end, dtype=np.float64) - start_v
    length = float(np.linalg.norm(direction))
    profile = [(0.0, 0.0), (0.0, radius), (length, radius), (length, 0.0)]
    return _lathe(start_v, direction, profile, segments, toward)


def _tube_arc(
    center: Sequence[float],
    plane_x: Sequence[float],
    plane_y: Sequence[float],
    major: float,
    minor: float,
    angles: tuple[float, float],
    arc_segments: int = 12,
    segments: int = 10,
) -> tuple[np.ndarray, np.ndarray]:
    """A capped section of a torus in the plane (plane_x, plane_y) over ``angles`` (radians).

    Ring ``j`` is at φ_j = angles[0] + j (angles[1] - angles[0]) / arc_segments; ψ = 0 points
    away from the torus centre.
    """
    e1 = np.asarray(plane_x, dtype=np.float64)
    e2 = np.asarray(plane_y, dtype=np.float64)
    normal = np.cross(e1, e2)
    phi = np.linspace(angles[0], angles[1], arc_segments + 1)
    radial = np.cos(phi)[:, None] * e1 + np.sin(phi)[:, None] * e2
    centers = np.asarray(center, dtype=np.float64) + major * radial
    return _sweep(
        centers,
        radial,
        np.tile(normal, (len(phi), 1)),
        np.full(len(phi), minor),
        segments,
        cap_ends=True,
    )


class _ShapeBuilder:
    """Collects closed parts (each with one colour) and analytic keypoints."""

    def __init__(self, category: str, rng: np.random.Generator) -> None:
        self.category = category
        self.rng = rng
        self.tint = rng.integers(-30, 31, size=3)
        self.vertices: list[np.ndarray] = []
        self.faces: list[np.ndarray] = []
        self.colors: list[np.ndarray] = []
        self.count = 0
        self.keypoints: dict[int, np.ndarray] = {}

    def add(self, part: tuple[np.ndarray, np.ndarray], color: Sequence[int]) -> None:
        vertices, faces = part
        faces = _orient_outward(vertices, faces)
        rgb = np.clip(np.asarray(color) + self.tint, 0, 255).astype(np.uint8)
        self.vertices.append(vertices)
        self.faces.append(faces + self.count)
        self.colors.append(np.tile(rgb, (len(vertices), 1)))
        self.count += len(vertices)

    def keypoint(self, semantic_id: int, xyz: Sequence[float]) -> None:
        self.keypoints[semantic_id] = np.asarray(xyz, dtype=np.float64)

    def build(self) -> SynthShape:
        """Normalise (bbox centred, random diagonal in [0.9, 1.1]) and list the symmetries."""
        vertices = np.concatenate(self.vertices)
        low, high = vertices.min(axis=0), vertices.max(axis=0)
        center = (low + high) / 2.0
        scale = self.rng.uniform(0.9, 1.1) / np.linalg.norm(high - low)
        # float32-exact vertices: the PLY stores float, so the file holds this mesh exactly.
        vertices = ((vertices - center) * scale).astype(np.float32).astype(np.float64)
        mesh = Mesh(vertices, np.concatenate(self.faces), np.concatenate(self.colors))
        ids = sorted(self.keypoints)
        position = {semantic_id: i for i, semantic_id in enumerate(ids)}
        keypoints = [(i, (self.keypoints[i] - center) * scale) for i in ids]
        reflection = [
            (position[a], position[b])
            for a, b in _REFLECTION_IDS.get(self.category, ())
            if a in position and b in position
        ]
        rotation = [
            tuple(position[i] for i in group)
            for group in _ROTATION_IDS.get(self.category, ())
            if all(i in position for i in group)
        ]
        return SynthShape(mesh, keypoints, reflection, rotation)


# --------------------------------------------------------------------------- categories
def _chair(rng: np.random.Generator) -> SynthShape:
    shape = _ShapeBuilder("chair", rng)
    width, depth = rng.uniform(0.40, 0.55), rng.uniform(0.38, 0.50)
    seat_thickness, seat_top = rng.uniform(0.03, 0.07), rng.uniform(0.40, 0.50)
    back_height, back_thickness = rng.uniform(0.35, 0.60), rng.uniform(0.03, 0.07)
    back_width, tilt = width * rng.uniform(0.85, 1.0), rng.uniform(0.0, 0.12)
    swivel, arms = rng.random() < 0.3, rng.random() < 0.45
    seat_bottom = seat_top - seat_thickness
    back_front = depth / 2 - back_thickness

    shape.add(
        _box((-width / 2, seat_bottom, -depth / 2), (width / 2, seat_top, depth / 2)), (150, 90, 50)
    )
    bits = (np.arange(8)[:, None] >> np.arange(3)) & 1
    back = np.stack(
        [
            np.where(bits[:, 0] == 1, back_width / 2, -back_width / 2),
            np.where(bits[:, 1] == 1, seat_top + back_height, seat_top),
            np.where(bits[:, 2] == 1, depth / 2, back_front) + bits[:, 1] * tilt,
        ],
        axis=1,
    )
    shape.add(_hexahedron(back), (170, 110, 60))
    for side, (top_id, seat_id, front_id) in ((1, (0, 2, 4)), (-1, (1, 3, 5))):
        shape.keypoint(top_id, (side * back_width / 2, seat_top + back_height, back_front + tilt))
        shape.keypoint(seat_id, (side * width / 2, seat_top, back_front))
        shape.keypoint(front_id, (side * width / 2, seat_top, -depth / 2))

    if arms:
        arm_width, arm_height = rng.uniform(0.04, 0.07), rng.uniform(0.18, 0.28)
        arm_thickness, front_offset = rng.uniform(0.025, 0.045), rng.uniform(0.0, 0.08)
        support = rng.uniform(0.03, 0.05)
        arm_top = seat_top + arm_height
        arm_front = -depth / 2 + front_offset
        for side, (front_id, back_id) in ((1, (6, 7)), (-1, (8, 9))):
            inner, outer = side * width / 2, side * (width / 2 + arm_width)
            x_low, x_high = min(inner, outer), max(inner, outer)
            shape.add(
                _box((x_low, arm_top - arm_thickness, arm_front), (x_high, arm_top, back_front)),
                (120, 80, 40),
            )
            for z_low in (arm_front, back_front - support):
                shape.add(
                    _box(
                        (x_low, seat_bottom, z_low),
                        (x_high, arm_top - arm_thickness, z_low + support),
                    ),
                    (120, 80, 40),
                )
            middle = (inner + outer) / 2
            shape.keypoint(front_id, (middle, arm_top, arm_front))
            shape.keypoint(back_id, (middle, arm_top, back_front))

    if swivel:
        column_radius, leg_level = rng.uniform(0.02, 0.035), rng.uniform(0.06, 0.10)
        leg_radius, reach = rng.uniform(0.012, 0.02), rng.uniform(0.25, 0.32)
        foot_radius = rng.uniform(0.015, 0.025)
        column_bottom = leg_level - leg_radius
        front = (0.0, 0.0, -1.0)  # the column's ψ = 0 vertex line faces the front
        shape.add(
            _cylinder((0, column_bottom, 0), (0, seat_bottom, 0), column_radius, 16, front),
            (40, 40, 40),
        )
        shape.keypoint(15, (0.0, seat_bottom - 0.03, -column_radius))
        shape.keypoint(16, (0.0, leg_level + leg_radius + 0.02, -column_radius))
        start = np.deg2rad(-54.0 + rng.uniform(-10.0, 10.0))
        for k in range(5):
            theta = start + 2.0 * np.pi * k / 5
            tip = (reach * np.cos(theta), leg_level, reach * np.sin(theta))
            shape.add(_cylinder((0, leg_level, 0), tip, leg_radius, 10), (40, 40, 40))
            foot = (tip[0], 0.0, tip[2])
            shape.add(_cylinder(foot, tip, foot_radius, 10), (25, 25, 25))
            shape.keypoint(10 + k, foot)
    else:
        leg_radius, inset = rng.uniform(0.015, 0.03), rng.uniform(0.0, 0.03)
        square = rng.random() < 0.5
        leg_x, leg_z = width / 2 - leg_radius - inset, depth / 2 - leg_radius - inset
        for semantic_id, sx, sz in ((17, 1, -1), (18, 1, 1), (19, -1, 1), (20, -1, -1)):
            x, z = sx * leg_x, sz * leg_z
            if square:
                part = _box(
                    (x - leg_radius, 0, z - leg_radius),
                    (x + leg_radius, seat_bottom, z + leg_radius),
                )
            else:
                part = _cylinder((x, 0, z), (x, seat_bottom, z), leg_radius)
            shape.add(part, (60, 60, 60))
            shape.keypoint(semantic_id, (x, 0.0, z))
    return shape.build()


def _table(rng: np.random.Generator) -> SynthShape:
    shape = _ShapeBuilder("table", rng)
    width = rng.uniform(0.8, 1.6)
    depth = min(rng.uniform(0.5, 0.9), width)
    height, thickness = rng.uniform(0.6, 0.8), rng.uniform(0.03, 0.06)
    leg_radius, inset = rng.uniform(0.02, 0.045), rng.uniform(0.0, 0.08)
    square = rng.random() < 0.5
    shape.add(
        _box((-width / 2, height - thickness, -depth / 2), (width / 2, height, depth / 2)),
        (160, 120, 80),
    )
    leg_x, leg_z = width / 2 - leg_radius - inset, depth / 2 - leg_radius - inset
    corners = ((1, -1), (-1, -1), (1, 1), (-1, 1))  # front +x, front -x, back +x, back -x
    for k, (sx, sz) in enumerate(corners):
        shape.keypoint(k, (sx * width / 2, height, sz * depth / 2))
        x, z = sx * leg_x, sz * leg_z
        if square:
            part = _box(
                (x - leg_radius, 0, z - leg_radius),
                (x + leg_radius, height - thickness, z + leg_radius),
            )
        else:
            part = _cylinder((x, 0, z), (x, height - thickness, z), leg_radius)
        shape.add(part, (90, 70, 50))
        shape.keypoint(4 + k, (x, 0.0, z))
    if rng.random() < 0.4:  # a lower shelf between the legs, without keypoints
        level = rng.uniform(0.1, 0.25)
        shape.add(
            _box((-leg_x, level, -leg_z), (leg_x, level + thickness / 2, leg_z)), (140, 100, 60)
        )
    return shape.build()


def _mug(rng: np.random.Generator) -> SynthShape:
    shape = _ShapeBuilder("mug", rng)
    radius, height = rng.uniform(0.035, 0.05), rng.uniform(0.08, 0.12)
    # ψ = 0 faces +x; with 24 segments the rim has vertices at +x, -z, -x and +z.
    profile = [(0.0, 0.0), (0.0, radius), (height, radius), (height, 0.0)]
    shape.add(_lathe((0, 0, 0), (0, 1, 0), profile, 24, toward=(1, 0, 0)), (220, 220, 210))
    for semantic_id, (x, z) in enumerate(
        ((radius, 0.0), (0.0, -radius), (-radius, 0.0), (0.0, radius))
    ):
        shape.keypoint(semantic_id, (x, height, z))
    major = height * rng.uniform(0.3, 0.4)
    minor = rng.uniform(0.005, 0.009)
    middle = height * rng.uniform(0.45, 0.55)
    shape.add(
        _tube_arc((radius, middle, 0), (1, 0, 0), (0, 1, 0), major, minor, (-np.pi / 2, np.pi / 2)),
        (200, 60, 60),
    )
    shape.keypoint(4, (radius, middle + major, 0.0))
    shape.keypoint(5, (radius, middle - major, 0.0))
    shape.keypoint(6, (radius + major + minor, middle, 0.0))
    shape.keypoint(7, (0.0, 0.0, 0.0))
    return shape.build()


def _wing(
    root: tuple[float, float, float],
    tip_offset: tuple[float, float, float],
    chords: tuple[float, float],
    thicknesses: tuple[float, float],
    spread_axis: int,
) -> np.ndarray:
    """Corners of a tapered, swept plate from ``root`` (leading edge, mid-thickness) to its tip.

    ``spread_axis`` is the axis across the thickness (1 for wings: y; 0 for the fin: x). Corner
    bits: (root/tip, -/+ thickness, leading/trailing edge).
    """
    corners = np.zeros((8, 3))
    for i in range(8):
        at_tip, upper, trailing = i & 1, (i >> 1) & 1, (i >> 2) & 1
        point = np.array(root, dtype=np.float64) + at_tip * np.array(tip_offset)
        point[spread_axis] += (upper - 0.5) * thicknesses[at_tip]
        point[2] += trailing * chords[at_tip]
        corners[i] = point
    return corners


def _airplane(rng: np.random.Generator) -> SynthShape:
    shape = _ShapeBuilder("airplane", rng)
    length = rng.uniform(0.9, 1.2)
    radius = rng.uniform(0.045, 0.07) * length
    fractions = [0.0, 0.03, 0.08, 0.16, 0.3, 0.7, 0.85, 0.95, 1.0]
    widths = [0.0, 0.45, 0.75, 0.95, 1.0, 1.0, 0.7, 0.35, 0.0]
    profile = [(f * length, w * radius) for f, w in zip(fractions, widths, strict=True)]
    shape.add(
        _lathe((0, 0, -length / 2), (0, 0, 1), profile, 16, toward=(0, 1, 0)), (200, 200, 210)
    )
    shape.keypoint(0, (0.0, 0.0, -length / 2))
    shape.keypoint(1, (0.0, 0.0, length / 2))

    span, root_chord = rng.uniform(0.9, 1.3) * length, rng.uniform(0.15, 0.25) * length
    tip_chord, sweep = root_chord * rng.uniform(0.3, 0.6), rng.uniform(0.0, 0.25) * length
    wing_z, wing_y = rng.uniform(-0.1, 0.05) * length, rng.uniform(-0.5, 0.2) * radius
    thickness = rng.uniform(0.02, 0.04) * length
    engines = rng.random() < 0.6
    for side, tip_id in ((1, 2), (-1, 3)):
        corners = _wing(
            (0.0, wing_y, wing_z), (side * span / 2, 0.0, sweep), (root_chord, tip_chord),
            (thickness, thickness * 0.5), spread_axis=1,
        )  # fmt: skip
        shape.add(_hexahedron(corners), (180, 180, 190))
        shape.keypoint(tip_id, (side * span / 2, wing_y, wing_z + sweep))
        if engines:
            along = rng.uniform(0.25, 0.4)
            engine_radius = 0.35 * radius
            x = side * along * span / 2
            z = wing_z + along * sweep - 0.3 * root_chord
            y = wing_y - thickness / 2 - 1.2 * engine_radius
            shape.add(
                _cylinder((x, y, z), (x, y, z + 0.6 * root_chord), engine_radius), (90, 90, 100)
            )

    stabiliser_span = rng.uniform(0.3, 0.45) * length
    stabiliser_chord = rng.uniform(0.1, 0.15) * length
    stabiliser_sweep = rng.uniform(0.0, 0.1) * length
    stabiliser_z = length / 2 - rng.uniform(0.14, 0.2) * length
    stabiliser_y = rng.uniform(0.0, 0.3) * radius
    for side, tip_id in ((1, 4), (-1, 5)):
        corners = _wing(
            (0.0, stabiliser_y, stabiliser_z), (side * stabiliser_span / 2, 0.0, stabiliser_sweep),
            (stabiliser_chord, stabiliser_chord * 0.6), (0.015 * length, 0.008 * length), 1,
        )  # fmt: skip
        shape.add(_hexahedron(corners), (180, 180, 190))
        shape.keypoint(
            tip_id, (side * stabiliser_span / 2, stabiliser_y, stabiliser_z + stabiliser_sweep)
        )

    fin_height = rng.uniform(0.12, 0.2) * length
    fin_chord = rng.uniform(0.12, 0.18) * length
    fin_sweep = rng.uniform(0.03, 0.1) * length
    fin_z = length / 2 - fin_chord - rng.uniform(0.0, 0.05) * length
    fin_root = 0.5 * radius
    corners = _wing(
        (0.0, fin_root, fin_z), (0.0, fin_height, fin_sweep), (fin_chord, fin_chord * 0.5),
        (0.015 * length, 0.008 * length), spread_axis=0,
    )  # fmt: skip
    shape.add(_hexahedron(corners), (150, 40, 40))
    shape.keypoint(6, (0.0, fin_root + fin_height, fin_z + fin_sweep))
    return shape.build()


_BUILDERS = {"chair": _chair, "table": _table, "mug": _mug, "airplane": _airplane}


def _check_category(category: str) -> None:
    if category not in _BUILDERS:
        raise ValueError(
            f"unknown synthetic category {category!r}; expected one of "
            f"{', '.join(SYNTH_CATEGORIES)}"
        )


def make_shape(category: str, rng: np.random.Generator) -> SynthShape:
    """Build one random shape of ``category`` (see the module docstring for the semantic ids).

    Args:
        category: one of ``SYNTH_CATEGORIES``.
        rng: the random generator (proportions, leg type, arms, colours, scale).

    Returns:
        The mesh and its analytic keypoints with symmetry groups.

    Raises:
        ValueError: an unknown category.
    """
    _check_category(category)
    return _BUILDERS[category](rng)


# --------------------------------------------------------------------------- sampling
def sample_surface(
    mesh: Mesh, num_points: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Area-weighted uniform samples on a triangle mesh.

    Args:
        mesh: the mesh (zero-area faces are never chosen).
        num_points: N, the number of samples.
        rng: the random generator.

    Returns:
        ``(points, face_index, face_uv)``: (N, 3) float64 positions, (N,) int64 triangle indices
        and (N, 3) barycentric weights with ``points[i] == V[F[face_index[i]]].T @ face_uv[i]``.

    Raises:
        ValueError: ``num_points`` < 1 or a mesh without area.
    """
    if num_points < 1:
        raise ValueError(f"num_points must be >= 1, got {num_points}")
    corners = mesh.vertices[mesh.faces]  # (F, 3 corners, 3)
    areas = 0.5 * np.linalg.norm(
        np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]), axis=1
    )
    cumulative = np.cumsum(areas)
    if len(cumulative) == 0 or cumulative[-1] <= 0:
        raise ValueError("sample_surface: the mesh has no area")
    face_index = np.searchsorted(cumulative, rng.random(num_points) * cumulative[-1], side="right")
    face_index = np.minimum(face_index, len(areas) - 1).astype(np.int64)
    first, second = rng.random((2, num_points))
    root = np.sqrt(first)
    face_uv = np.stack([1.0 - root, root * (1.0 - second), root * second], axis=1)
    points = np.einsum("nc,ncd->nd", face_uv, corners[face_index])
    return points, face_index, face_uv


def _nearest_unused(targets: np.ndarray, points: np.ndarray) -> np.ndarray:
    """For each target in order, the nearest point not already taken by an earlier target."""
    distances = ((targets[:, None, :] - points[None, :, :].astype(np.float64)) ** 2).sum(axis=-1)
    candidates = np.argsort(distances, axis=1, kind="stable")[:, : len(targets)]
    chosen: list[int] = []
    for row in candidates:  # K <= 21 keypoints: a short loop
        chosen.append(int(next(c for c in row if c not in chosen)))
    return np.array(chosen, dtype=np.int64)


# --------------------------------------------------------------------------- dataset writer
def _model_id(category: str, seed: int, index: int) -> str:
    """A ShapeNet-like 32-hex id, fixed by (category, seed, index)."""
    return hashlib.blake2b(f"{category}/{seed}/{index}".encode(), digest_size=16).hexdigest()


def _seed_words(category: str, seed: int) -> list[int]:
    return [abs(seed), int(seed < 0), zlib.crc32(category.encode())]


def _split_counts(n: int, fractions: Sequence[float]) -> tuple[int, int, int]:
    train = round(fractions[0] * n)
    val = min(round(fractions[1] * n), n - train)
    return train, val, n - train - val


def synthesize(
    category: str,
    n: int,
    seed: int,
    out_dir: str | os.PathLike[str],
    num_points: int = 2048,
    splits: Sequence[float] = (0.7, 0.1, 0.2),
) -> list[ModelAnnotation]:
    """Write ``n`` synthetic models of ``category`` as a KeypointNet directory.

    Files (``<synset>`` is the real ShapeNet synset of ``category``)::

        out_dir/annotations/<category>.json
        out_dir/pcds/<synset>/<model_id>.pcd           (num_points points, rgb = part colour)
        out_dir/ShapeNetCore.v2.ply/<synset>/<model_id>.ply
        out_dir/splits/{train,val,test}.txt

    Model ids are 32 hex digits fixed by (category, seed, index); the same arguments write
    byte-identical files. The split files are merged: lines of other synsets are kept in order,
    lines of this synset are replaced by the new models' keys, so several categories can share
    one ``out_dir``. Point clouds and meshes of earlier runs with other ids are left in place.

    Args:
        category: one of ``SYNTH_CATEGORIES``.
        n: number of models (>= 1).
        seed: random seed (any integer).
        out_dir: the dataset directory (created if needed).
        num_points: points per PCD (>= the number of keypoints per model).
        splits: train/val/test fractions (non-negative, summing to 1); models are assigned by a
            seeded shuffle, ``round(fraction * n)`` to train and val and the rest to test.

    Returns:
        The annotations, in index order.

    Raises:
        ValueError: an unknown category, ``n`` < 1, too few points or bad split fractions.
    """
    _check_category(category)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    fractions = [float(f) for f in splits]
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"splits must be 3 non-negative fractions summing to 1, got {splits}")
    synset = CATEGORY_TO_SYNSET[category]
    root = Path(out_dir)
    pcd_dir = root / "pcds" / synset
    mesh_dir = root / "ShapeNetCore.v2.ply" / synset
    for directory in (root / "annotations", pcd_dir, mesh_dir, root / "splits"):
        directory.mkdir(parents=True, exist_ok=True)

    words = _seed_words(category, seed)
    models: list[ModelAnnotation] = []
    for index in progress(range(n), desc=f"synth {category}", unit="model"):
        rng = np.random.default_rng([*words, 0, index])
        shape = make_shape(category, rng)
        if num_points < len(shape.keypoints):
            raise ValueError(
                f"num_points ({num_points}) must be at least the number of keypoints "
                f"({len(shape.keypoints)})"
            )
        sampled, face_index, face_uv = sample_surface(shape.mesh, num_points, rng)
        # The PCD holds 6-decimal float32 values; keypoints take exactly those values.
        points = np.round(sampled, 6).astype(np.float32)
        vertex_colors = shape.mesh.vertex_colors
        if vertex_colors is None:  # every synthetic part is coloured; guard for custom meshes
            vertex_colors = np.full((len(shape.mesh.vertices), 3), 128, dtype=np.uint8)
        colors = vertex_colors[shape.mesh.faces[face_index, 0]]
        targets = np.stack([xyz for _, xyz in shape.keypoints])
        chosen = _nearest_unused(targets, points)
        keypoints = [
            Keypoint(
                xyz=tuple(points[i].astype(np.float64).tolist()),
                rgb=(int(colors[i, 0]), int(colors[i, 1]), int(colors[i, 2])),
                semantic_id=semantic_id,
                point_index=int(i),
                face_index=int(face_index[i]),
                face_uv=tuple(face_uv[i].tolist()),
            )
            for (semantic_id, _), i in zip(shape.keypoints, chosen, strict=True)
        ]
        model = ModelAnnotation(
            class_id=synset,
            model_id=_model_id(category, seed, index),
            keypoints=keypoints,
            symmetries=Symmetries(
                reflection=tuple(shape.reflection),
                rotation=tuple(RotationSymmetry(group) for group in shape.rotation),
            ),
        )
        write_pcd(pcd_dir / f"{model.model_id}.pcd", points, colors)
        write_ply(mesh_dir / f"{model.model_id}.ply", shape.mesh)
        models.append(model)
    write_annotations(root / "annotations" / f"{category}.json", models)

    order = np.random.default_rng([*words, 1]).permutation(n)
    train, val, _ = _split_counts(n, fractions)
    assignment = dict.fromkeys(order[:train].tolist(), "train")
    assignment.update(dict.fromkeys(order[train : train + val].tolist(), "val"))
    for split in SPLIT_NAMES:
        path = root / "splits" / f"{split}.txt"
        kept = (
            [k for k in read_split(path) if not k.startswith(f"{synset}-")]
            if path.is_file()
            else []
        )
        new = [m.key for i, m in enumerate(models) if assignment.get(i, "test") == split]
        write_split(path, kept + new)
    return models
