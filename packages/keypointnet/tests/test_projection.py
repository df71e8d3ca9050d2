"""Tests for keypointnet.projection: camera, viewpoint bins, z-buffer, visibility, PCK, plots."""

from __future__ import annotations

import math
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest

from keypointnet.projection import (
    AZIMUTH_BINS,
    ELEVATION_BINS,
    Camera,
    angle_to_bins,
    bins_to_angle,
    eye_to_azimuth_elevation,
    look_at_camera,
    pck_2d,
    plot_projection,
    project_keypoints,
    project_points,
    rasterize,
    rasterize_depth,
    render_shaded,
    visible_by_hpr,
    visible_by_mesh,
    visible_by_splatting,
)
from ptrain.core.cli import UserError

# ----------------------------------------------------------------------------- fixtures


def box_mesh(low: tuple[float, float, float], high: tuple[float, float, float]):
    """Axis-aligned box: 8 vertices, 12 triangles."""
    corners = np.array(
        [[x, y, z] for x in (low[0], high[0]) for y in (low[1], high[1]) for z in (low[2], high[2])]
    )
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    faces = [[a, b, c] for a, b, c, _ in quads] + [[a, c, d] for a, _, c, d in quads]
    return corners, np.array(faces, dtype=np.int64)


def quad_mesh(corners):
    """Two triangles over four corners given in order around the quad."""
    return np.asarray(corners, dtype=np.float64), np.array([[0, 1, 2], [0, 2, 3]])


def uv_sphere(n_lat: int, n_lon: int, radius: float = 1.0):
    """UV sphere with 2·n_lon·(n_lat − 1) triangles."""
    theta = np.linspace(0, np.pi, n_lat + 1)[1:-1]
    phi = np.linspace(0, 2 * np.pi, n_lon, endpoint=False)
    t, p = np.meshgrid(theta, phi, indexing="ij")
    ring = np.c_[
        np.sin(t).ravel() * np.sin(p).ravel(),
        np.cos(t).ravel(),
        np.sin(t).ravel() * np.cos(p).ravel(),
    ]
    vertices = radius * np.vstack([[0, 1, 0], ring, [0, -1, 0]])
    i, j = np.meshgrid(np.arange(n_lat - 2), np.arange(n_lon), indexing="ij")
    i, j = i.ravel(), j.ravel()
    a, b = 1 + i * n_lon + j, 1 + i * n_lon + (j + 1) % n_lon
    c, d = a + n_lon, b + n_lon
    top_j = np.arange(n_lon)
    bottom = len(vertices) - 1
    last = 1 + (n_lat - 2) * n_lon
    faces = np.vstack(
        [
            np.c_[np.zeros(n_lon, dtype=np.int64), 1 + top_j, 1 + (top_j + 1) % n_lon],
            np.c_[np.full(n_lon, bottom), last + (top_j + 1) % n_lon, last + top_j],
            np.c_[a, c, d],
            np.c_[a, d, b],
        ]
    )
    return vertices, faces.astype(np.int64)


def sample_surface(vertices, faces, n: int, seed: int = 0) -> np.ndarray:
    """Area-weighted uniform samples on a triangle mesh."""
    rng = np.random.default_rng(seed)
    tri = vertices[faces]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    which = rng.choice(len(faces), size=n, p=area / area.sum())
    r1, r2 = rng.random(n), rng.random(n)
    s = np.sqrt(r1)
    w = np.c_[1 - s, s * (1 - r2), s * r2]
    return np.einsum("nk,nkd->nd", w, tri[which])


def simple_camera(width: int, height: int, focal: float, *, flip: bool = False) -> Camera:
    """Eye at the origin looking along +z, principal point at the image centre."""
    intrinsics = [[focal, 0, width / 2 - 0.5], [0, focal, height / 2 - 0.5], [0, 0, 1]]
    return Camera(K=intrinsics, R=np.eye(3), t=np.zeros(3), width=width, height=height, flip=flip)


def pixel_rays(camera: Camera) -> np.ndarray:
    """(H, W, 3) camera-space ray directions with z = 1 through every pixel centre."""
    v, u = np.mgrid[0 : camera.height, 0 : camera.width].astype(np.float64)
    if camera.flip:
        u, v = camera.width - 1 - u, camera.height - 1 - v
    fx, fy, cx, cy = camera.K[0, 0], camera.K[1, 1], camera.K[0, 2], camera.K[1, 2]
    return np.stack([(u - cx) / fx, (v - cy) / fy, np.ones_like(u)], axis=-1)


def ray_cast_depth(camera: Camera, vertices, faces) -> np.ndarray:
    """Reference z-buffer by Möller–Trumbore ray casting from the eye through pixel centres."""
    tri = (np.asarray(vertices) @ camera.R.T + camera.t)[faces]  # camera space
    d = pixel_rays(camera).reshape(-1, 1, 3)
    e1, e2 = tri[None, :, 1] - tri[None, :, 0], tri[None, :, 2] - tri[None, :, 0]
    pvec = np.cross(d, e2)
    det = np.sum(e1 * pvec, axis=-1)
    ok = np.abs(det) > 1e-15
    inv = np.where(ok, 1 / np.where(ok, det, 1), 0)
    tvec = -tri[None, :, 0]
    b1 = np.sum(tvec * pvec, axis=-1) * inv
    qvec = np.cross(tvec, e1)
    b2 = np.sum(d * qvec, axis=-1) * inv
    t = np.sum(e2 * qvec, axis=-1) * inv
    hit = ok & (b1 >= 0) & (b2 >= 0) & (b1 + b2 <= 1) & (t > 0)
    return np.where(hit, t, np.inf).min(axis=1).reshape(camera.height, camera.width)


# ----------------------------------------------------------------------------- camera


@pytest.mark.parametrize("flip", [True, False])
@pytest.mark.parametrize(
    ("azimuth", "elevation", "width", "height"),
    [
        (0.0, math.pi / 2, 480, None),
        (2.5, 0.7, 480, 360),
        (5.9, 2.8, 101, 77),
        (1.0, 0.0, 64, 64),
        (0.5, math.pi, 50, 40),
    ],
)
def test_look_at_target_projects_to_image_centre(azimuth, elevation, width, height, flip):
    target = (0.1, -0.2, 0.3)
    camera = look_at_camera(
        azimuth, elevation, 1.04, width=width, height=height, target=target, flip=flip
    )
    uv, depth = project_points(camera, [target])
    h = width if height is None else height
    np.testing.assert_allclose(uv[0], [(width - 1) / 2, (h - 1) / 2], atol=1e-9)
    np.testing.assert_allclose(depth, [1.04])
    offset = np.array(camera.eye) - target
    np.testing.assert_allclose(
        offset,
        1.04
        * np.array(
            [
                math.sin(elevation) * math.sin(azimuth),
                math.cos(elevation),
                math.sin(elevation) * math.cos(azimuth),
            ]
        ),
        atol=1e-12,
    )


def test_ninety_degree_fov_puts_45_degree_points_on_the_border():
    camera = look_at_camera(0.0, math.pi / 2, 2.0, width=480)  # eye (0, 0, 2), looking along −z
    assert camera.K[0, 0] == pytest.approx(240.0) and camera.K[1, 1] == pytest.approx(240.0)
    left, up, forward = camera.R  # world directions of the (pre-flip) camera axes
    points = camera.eye + np.array([forward + left, forward - left, forward + up, forward - up])
    uv, _ = project_points(camera, points)
    # 45° off-axis lands on the pixel edge of the border: −0.5 or W − 0.5 (after the flip).
    np.testing.assert_allclose(uv[:, 0], [-0.5, 479.5, 239.5, 239.5], atol=1e-9)
    np.testing.assert_allclose(uv[:, 1], [239.5, 239.5, -0.5, 479.5], atol=1e-9)
    narrow = look_at_camera(0.0, math.pi / 2, 2.0, width=480, fov_degrees=60.0)
    assert narrow.K[0, 0] == pytest.approx(240.0 / math.tan(math.radians(30.0)))


def test_flipped_image_is_upright_and_not_mirrored():
    camera = look_at_camera(0.0, math.pi / 2, 3.0, width=64)  # viewer at +z: +x right, +y up
    uv, _ = project_points(camera, [[0.5, 0, 0], [0, 0.5, 0]])
    assert uv[0, 0] > 31.5 and uv[0, 1] == pytest.approx(31.5)
    assert uv[1, 1] < 31.5 and uv[1, 0] == pytest.approx(31.5)
    raw = look_at_camera(0.0, math.pi / 2, 3.0, width=64, flip=False)
    uv_raw, _ = project_points(raw, [[0.5, 0, 0], [0, 0.5, 0]])
    np.testing.assert_allclose(uv_raw, 63 - uv)


def test_hand_made_camera_projects_to_hand_computed_pixels():
    rotation = [[0, -1, 0], [1, 0, 0], [0, 0, 1]]  # 90° about z
    intrinsics = [[100, 0, 50], [0, 120, 40], [0, 0, 1]]
    kwargs = {"K": intrinsics, "R": rotation, "t": [0.5, -0.25, 2.0], "width": 100, "height": 80}
    # R·X + t = (−2, 1, 3) + t = (−1.5, 0.75, 5) → u = 100·(−0.3) + 50 = 20, v = 120·0.15 + 40 = 58.
    raw = Camera(**kwargs, flip=False)
    uv, depth = project_points(raw, [[1.0, 2.0, 3.0]])
    np.testing.assert_allclose(uv, [[20.0, 58.0]])
    np.testing.assert_allclose(depth, [5.0])
    flipped = Camera(**kwargs)
    np.testing.assert_allclose(project_points(flipped, [[1.0, 2.0, 3.0]])[0], [[79.0, 21.0]])
    np.testing.assert_allclose(flipped.eye, [0.25, 0.5, -2.0])  # −Rᵀ·t


def test_matches_semantic_transfer_demo_projection():
    """Our camera reproduces demo.py's R (columns), extrinsic [Rᵀ|−Rᵀ·eye], K and flip."""
    rng = np.random.default_rng(0)
    points = rng.uniform(-0.5, 0.5, size=(20, 3))
    imgsize, dist = 480, 1.04
    for azimuth, elevation in [(0.3, 1.2), (3.5, 0.4), (5.0, 2.6)]:
        eye = dist * np.array(
            [
                np.sin(elevation) * np.sin(azimuth),
                np.cos(elevation),
                np.sin(elevation) * np.cos(azimuth),
            ]
        )
        rot = np.zeros((3, 3))
        rot[:, 1] = [0, 1, 0]
        rot[:, 2] = -eye / np.linalg.norm(eye)
        rot[:, 0] = np.cross(rot[:, 1], rot[:, 2])
        rot[:, 0] /= np.linalg.norm(rot[:, 0])
        rot[:, 1] = np.cross(rot[:, 2], rot[:, 0])
        extrinsic = np.concatenate([rot.T, -rot.T @ eye[:, None]], axis=1)
        intrinsics = np.array(
            [[imgsize / 2, 0, imgsize / 2 - 0.5], [0, imgsize / 2, imgsize / 2 - 0.5], [0, 0, 1]]
        )
        proj = (intrinsics @ extrinsic @ np.c_[points, np.ones(len(points))].T).T
        expected = imgsize - 1 - proj[:, :2] / proj[:, 2:]
        uv, depth = project_points(look_at_camera(azimuth, elevation, dist), points)
        np.testing.assert_allclose(uv, expected, atol=1e-9)
        np.testing.assert_allclose(depth, proj[:, 2], atol=1e-12)


def test_eye_to_azimuth_elevation_inverts_look_at():
    for azimuth, elevation in [(0.0, 0.3), (1.0, math.pi / 2), (4.0, 2.9), (6.2, 1.0)]:
        camera = look_at_camera(azimuth, elevation, 2.2, target=(0.1, 0.2, 0.3))
        got = eye_to_azimuth_elevation(camera.eye, target=(0.1, 0.2, 0.3))
        np.testing.assert_allclose(got, (azimuth, elevation, 2.2), atol=1e-12)


def test_camera_and_look_at_validate_their_input():
    good = {"K": np.eye(3), "R": np.eye(3), "t": np.zeros(3), "width": 4, "height": 4}
    with pytest.raises(ValueError, match="K must have shape"):
        Camera(**{**good, "K": np.eye(2)})
    with pytest.raises(ValueError, match="R must be orthonormal"):
        Camera(**{**good, "R": 2 * np.eye(3)})
    with pytest.raises(ValueError, match="width must be a positive integer"):
        Camera(**{**good, "width": 0})
    with pytest.raises(ValueError, match="eye"):
        Camera(**good, eye=[1.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="elevation"):
        look_at_camera(0.0, 4.0, 1.0)
    with pytest.raises(ValueError, match="distance"):
        look_at_camera(0.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="fov_degrees"):
        look_at_camera(0.0, 1.0, 1.0, fov_degrees=180.0)
    camera = look_at_camera(0.0, 1.0, 1.0)
    with pytest.raises(AttributeError):
        camera.width = 3  # frozen


# ----------------------------------------------------------------------------- viewpoint bins


def upstream_real2prob(val: float, max_val: float, num_bins: int, circular: bool) -> np.ndarray:
    """SemanticTransfer demo.py real2prob, transcribed as the reference."""
    res = np.zeros((num_bins,))
    if not circular:
        interval = max_val / (num_bins - 1)
        low = math.floor(val / interval)
        res[low] = 1.0 - (val / interval - low)
        res[low + 1] = 1.0 - res[low]
        return res
    interval = max_val / num_bins
    if val < interval / 2:
        val += max_val
    res = upstream_real2prob(val - interval / 2, max_val, num_bins + 1, False)
    res[0] += res[-1]
    return res[:-1]


def test_bins_match_upstream_real2prob():
    rng = np.random.default_rng(1)
    azimuths = rng.uniform(0, 2 * np.pi, 200)
    elevations = rng.uniform(0, np.pi * (1 - 1e-9), 200)
    np.testing.assert_allclose(
        angle_to_bins(azimuths, AZIMUTH_BINS, True),
        [upstream_real2prob(a, 2 * np.pi, AZIMUTH_BINS, True) for a in azimuths],
        atol=1e-12,
    )
    np.testing.assert_allclose(
        angle_to_bins(elevations, ELEVATION_BINS, False),
        [upstream_real2prob(e, np.pi, ELEVATION_BINS, False) for e in elevations],
        atol=1e-12,
    )


def test_bins_round_trip_within_half_a_bin_including_the_wrap():
    half_bin = np.pi / AZIMUTH_BINS
    azimuths = np.r_[np.linspace(0, 2 * np.pi, 997, endpoint=False), 2 * np.pi - 1e-12, 1e-12]
    prob = angle_to_bins(azimuths, AZIMUTH_BINS, True)
    assert prob.shape == (len(azimuths), AZIMUTH_BINS)
    np.testing.assert_allclose(prob.sum(axis=1), 1.0)
    assert np.all((prob > 0).sum(axis=1) <= 2)
    decoded = bins_to_angle(prob, True)
    assert np.all((decoded >= 0) & (decoded < 2 * np.pi))
    error = np.abs((decoded - azimuths + np.pi) % (2 * np.pi) - np.pi)
    assert error.max() <= half_bin
    # Values just below 2π and just above 0 share the last/first bins across the wrap.
    wrap = angle_to_bins([2 * np.pi - 1e-3, 1e-3, 2 * np.pi, -1e-3], AZIMUTH_BINS, True)
    assert wrap[0, 0] > 0 and wrap[0, -1] > 0 and wrap[1, 0] > 0 and wrap[1, -1] > 0
    np.testing.assert_allclose(wrap[2], angle_to_bins(0.0, AZIMUTH_BINS, True))
    np.testing.assert_allclose(wrap[3], wrap[0])
    # One-hot at a centre decodes to that centre.
    assert bins_to_angle(np.eye(AZIMUTH_BINS)[5], True) == pytest.approx(5.5 * 2 * half_bin)

    elevations = np.r_[np.linspace(0, np.pi, 501), np.pi]
    decoded = bins_to_angle(angle_to_bins(elevations, ELEVATION_BINS, False), False)
    np.testing.assert_allclose(decoded, elevations, atol=1e-12)  # linear: exact
    assert angle_to_bins(np.zeros((3, 4)), ELEVATION_BINS, False).shape == (3, 4, ELEVATION_BINS)


def test_bins_validate_their_input():
    with pytest.raises(ValueError, match="value must lie in"):
        angle_to_bins(4.0, ELEVATION_BINS, False)
    with pytest.raises(ValueError, match="n_bins"):
        angle_to_bins(1.0, 1, False)
    with pytest.raises(ValueError, match="non-negative"):
        bins_to_angle([-1.0, 2.0], True)


# ----------------------------------------------------------------------------- z-buffer


@pytest.mark.parametrize("flip", [False, True])
def test_zbuffer_square_fills_the_expected_pixels(flip):
    camera = simple_camera(20, 20, 10.0, flip=flip)
    # x ∈ [0, 1], y ∈ [−1, 0] at z = 2 → raw u ∈ [9.5, 14.5] (cols 10..14), v ∈ [4.5, 9.5]
    # (rows 5..9); the flip mirrors both to cols 5..9, rows 10..14.
    vertices, faces = quad_mesh([[0, -1, 2], [1, -1, 2], [1, 0, 2], [0, 0, 2]])
    depth = rasterize_depth(camera, vertices, faces)
    expected = np.full((20, 20), np.inf)
    if flip:
        expected[10:15, 5:10] = 2.0
    else:
        expected[5:10, 10:15] = 2.0
    np.testing.assert_array_equal(np.isfinite(depth), np.isfinite(expected))
    np.testing.assert_allclose(depth[np.isfinite(depth)], 2.0, rtol=1e-12)


def test_zbuffer_depth_is_perspective_correct_on_a_slanted_triangle():
    camera = look_at_camera(0.4, 1.2, 2.0, width=64)
    triangle = np.array([[-1.5, -0.5, -1.0], [1.2, -0.3, 1.0], [0.0, 1.4, -0.2]])
    depth = rasterize_depth(camera, triangle, [[0, 1, 2]])
    covered = np.argwhere(np.isfinite(depth))
    assert len(covered) > 200
    rows, cols = covered[:: len(covered) // 12].T
    # Ray–plane intersection in camera space through each pixel centre.
    tri_cam = camera.world_to_camera(triangle)
    normal = np.cross(tri_cam[1] - tri_cam[0], tri_cam[2] - tri_cam[0])
    rays = pixel_rays(camera)[rows, cols]
    expected = (normal @ tri_cam[0]) / (rays @ normal)  # z, since each ray has z = 1
    np.testing.assert_allclose(depth[rows, cols], expected, rtol=1e-10)
    # Screen-affine z interpolation (the non-perspective-correct bug) would be visibly off.
    uv, z = project_points(camera, triangle)
    a = np.c_[uv, np.ones(3)]
    affine = np.c_[cols, rows, np.ones(len(rows))] @ np.linalg.solve(a, z)
    assert np.max(np.abs(affine - expected)) > 1e-3


def test_rasterizer_matches_ray_casting_including_near_plane_clipping():
    rng = np.random.default_rng(3)
    camera = look_at_camera(0.9, 1.3, 2.5, width=32, height=24)
    centres = rng.uniform(-1.0, 1.0, size=(40, 1, 3))
    soup = centres + rng.normal(scale=0.4, size=(40, 3, 3))
    # A big triangle reaching behind the camera: only its front part may be drawn.
    behind = camera.eye - 1.0 * camera.forward
    big = np.array([behind + 0.3 * camera.R[0], [0.5, 0.2, 0.1], [-0.6, -0.4, 0.3]])
    vertices = np.vstack([soup.reshape(-1, 3), big])
    faces = np.arange(len(vertices)).reshape(-1, 3)
    depth, face_index = rasterize(camera, vertices, faces)
    reference = ray_cast_depth(camera, vertices, faces)
    np.testing.assert_array_equal(np.isfinite(depth), np.isfinite(reference))
    np.testing.assert_allclose(depth[np.isfinite(depth)], reference[np.isfinite(reference)])
    assert np.any(face_index == len(faces) - 1)  # the clipped triangle is drawn
    assert np.all((face_index >= 0) == np.isfinite(depth))


def test_rasterizer_is_fast_on_five_thousand_faces():
    vertices, faces = uv_sphere(50, 51)  # 4998 faces
    camera = look_at_camera(0.3, 1.1, 1.6, width=256)
    timings = []
    for _ in range(3):
        start = time.perf_counter()
        depth = rasterize_depth(camera, vertices, faces)
        timings.append(time.perf_counter() - start)
    print(f"\nrasterize_depth: {len(faces)} faces at 256² in {min(timings) * 1e3:.1f} ms")
    assert np.isfinite(depth).mean() > 0.4
    assert min(timings) < 1.0


def test_render_shaded_draws_lit_faces_on_white():
    vertices, faces = box_mesh((-0.5, -0.5, -0.5), (0.5, 0.5, 0.5))
    camera = look_at_camera(0.6, 1.0, 3.0, width=64)
    image = render_shaded(camera, vertices, faces)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    empty = ~np.isfinite(rasterize_depth(camera, vertices, faces))
    assert np.all(image[empty] == 255)
    assert not np.any(np.all(image[~empty] == 255, axis=1))
    assert len(np.unique(image[~empty], axis=0)) == 3  # three visible faces, three shades


# ----------------------------------------------------------------------------- visibility


def test_box_behind_a_wall_is_hidden():
    wall_v, wall_f = quad_mesh([[-1, -1, 0.5], [1, -1, 0.5], [1, 1, 0.5], [-1, 1, 0.5]])
    box_v, box_f = box_mesh((-0.3, -0.3, -0.8), (0.3, 0.3, -0.2))
    vertices = np.vstack([wall_v, box_v])
    faces = np.vstack([wall_f, box_f + len(wall_v)])
    camera = look_at_camera(0.0, math.pi / 2, 3.0, width=64)
    keypoints = np.array(
        [
            [0.0, 0.0, -0.2],  # box front face centre, behind the wall
            [0.3, 0.3, -0.2],  # box corner, behind the wall
            [0.9, 0.9, 0.5],  # on the wall
            [-0.5, 0.2, 0.5],  # on the wall
            [2.0, 0.0, -0.5],  # beside the wall, nothing in front
            [0.0, 0.0, 5.0],  # behind the camera
            [30.0, 0.0, 0.0],  # outside the image
        ]
    )
    result = project_keypoints(camera, keypoints, mesh=(vertices, faces))
    np.testing.assert_array_equal(result.visible, [0, 0, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(result.in_image, [1, 1, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(result.occluded, [1, 1, 0, 0, 0, 0, 0])
    assert np.all(np.isnan(result.uv[5]))
    # The same scene without the wall: the box's front keypoints appear.
    no_wall = visible_by_mesh(camera, box_v, box_f, keypoints[:2])
    np.testing.assert_array_equal(no_wall, [True, True])


def cube_scene():
    vertices, faces = box_mesh((-0.5, -0.5, -0.5), (0.5, 0.5, 0.5))
    corners = vertices.copy()
    face_centres = np.array(
        [[s * (axis == k) * 0.5 for k in range(3)] for axis in range(3) for s in (1, -1)]
    )
    # The eye direction has positive x, y, z: faces +x, +y, +z face the camera.
    camera = look_at_camera(0.6, 1.0, 3.0, width=256)
    keypoints = np.vstack([corners, face_centres])
    expected = np.r_[np.any(corners > 0, axis=1), face_centres.sum(axis=1) > 0]
    return vertices, faces, camera, keypoints, expected


def test_cube_back_corner_and_back_faces_are_hidden():
    vertices, faces, camera, keypoints, expected = cube_scene()
    assert expected.sum() == 7 + 3  # one hidden corner, three hidden face centres
    visible = visible_by_mesh(camera, vertices, faces, keypoints)
    np.testing.assert_array_equal(visible, expected)
    # An object with .vertices and .faces (keypointnet.data.Mesh) works as well.
    mesh = SimpleNamespace(vertices=vertices, faces=faces, vertex_colors=None)
    np.testing.assert_array_equal(project_keypoints(camera, keypoints, mesh=mesh).visible, expected)


def test_point_methods_agree_with_the_mesh_reference_on_the_cube():
    vertices, faces, camera, keypoints, expected = cube_scene()
    cloud = sample_surface(vertices, faces, 2048, seed=0)
    reference = project_keypoints(camera, keypoints, mesh=(vertices, faces))
    np.testing.assert_array_equal(reference.visible, expected)
    report = []
    for method in ("hpr", "splat"):
        start = time.perf_counter()
        result = project_keypoints(camera, keypoints, cloud=cloud, method=method)
        elapsed = time.perf_counter() - start
        assert result.visible.dtype == bool and result.visible.shape == (len(keypoints),)
        assert not np.any(result.visible & ~result.in_image)
        agree = int((result.visible == reference.visible).sum())
        report.append(f"{method}: {agree}/{len(keypoints)} agree ({elapsed * 1e3:.1f} ms)")
    print(
        "\nagreement with the mesh reference on the cube (256 px, 2048 samples):", "; ".join(report)
    )


def test_hpr_separates_the_front_and_back_of_a_sphere():
    vertices, _ = uv_sphere(24, 32)
    eye = np.array([0.0, 0.5, 3.0])
    visible = visible_by_hpr(vertices, eye)
    to_eye = eye - vertices
    view_cos = np.sum(vertices * to_eye, axis=1) / np.linalg.norm(to_eye, axis=1)
    assert np.all(visible[view_cos > 0.3]) and not np.any(visible[view_cos < -0.3])
    np.testing.assert_array_equal(
        visible_by_hpr(vertices, eye, query_indices=[0, 5]), visible[[0, 5]]
    )


def test_mesh_visibility_on_a_sphere_with_default_eps():
    vertices, faces = uv_sphere(24, 36)
    camera = look_at_camera(0.3, 1.1, 3.0, width=128)
    visible = visible_by_mesh(camera, vertices, faces, vertices)
    to_eye = camera.eye - vertices
    view_cos = np.sum(vertices * to_eye, axis=1) / np.linalg.norm(to_eye, axis=1)
    assert np.all(visible[view_cos > 0.5])  # up to 60° from facing the camera
    assert not np.any(visible[view_cos < -0.2])
    splat = visible_by_splatting(camera, sample_surface(vertices, faces, 4000), vertices)
    agree = (splat == visible).mean()
    print(f"\nsplatting vs mesh on {len(vertices)} sphere vertices: {agree:.1%} agree")


def test_sampling_modes_window_and_eps():
    camera = simple_camera(21, 21, 10.0)
    wall_v, wall_f = quad_mesh([[-5, -5, 2], [-0.1, -5, 2], [-0.1, 5, 2], [-5, 5, 2]])
    back_v, back_f = quad_mesh([[-20, -20, 4], [20, -20, 4], [20, 20, 4], [-20, 20, 4]])
    vertices, faces = np.vstack([wall_v, back_v]), np.vstack([wall_f, back_f + 4])
    depth = rasterize_depth(camera, vertices, faces)
    np.testing.assert_allclose(depth[:, :10], 2.0)  # the wall's edge is at u = 9.5
    np.testing.assert_allclose(depth[:, 10:], 4.0)
    # On the back plane one pixel right of the wall edge / a fifth of a pixel behind it.
    beside, behind = [[0.0, 0.0, 4.0]], [[-0.22, 0.0, 4.0]]
    for sample in ("ray", "pixel"):
        assert visible_by_mesh(camera, vertices, faces, beside, sample=sample)[0]
        assert not visible_by_mesh(camera, vertices, faces, behind, sample=sample)[0]
    # A 3×3 minimum of pixel centres hides anything beside a nearer silhouette.
    assert not visible_by_mesh(camera, vertices, faces, beside, sample="pixel", window=3)[0]
    # 0.5 % of the depth below the surface: hidden with the ray default (0.1 %), visible with
    # the pixel default (1 %) or an explicit eps.
    below = [[0.4, 0.0, 4.02]]
    assert not visible_by_mesh(camera, vertices, faces, below)[0]
    assert visible_by_mesh(camera, vertices, faces, below, eps=0.05)[0]
    assert visible_by_mesh(camera, vertices, faces, below, sample="pixel")[0]
    assert not visible_by_mesh(camera, vertices, faces, below, sample="pixel", eps=0.0)[0]
    with pytest.raises(ValueError, match="window"):
        visible_by_mesh(camera, vertices, faces, below, sample="pixel", window=2)
    with pytest.raises(ValueError, match="window applies"):
        visible_by_mesh(camera, vertices, faces, below, window=3)
    with pytest.raises(ValueError, match="sample"):
        visible_by_mesh(camera, vertices, faces, below, sample="nearest")


def box_chair():
    """Seat, backrest and four thin legs as boxes; returns vertices, faces, box corners."""
    parts = [((-0.4, 0.0, -0.4), (0.4, 0.06, 0.4)), ((-0.4, 0.06, -0.4), (0.4, 0.8, -0.34))]
    parts += [
        ((x - 0.03, -0.6, z - 0.03), (x + 0.03, 0.0, z + 0.03))
        for x in (-0.35, 0.35)
        for z in (-0.35, 0.35)
    ]
    boxes = [box_mesh(low, high) for low, high in parts]
    vertices = np.vstack([v for v, _ in boxes])
    faces = np.vstack([f + 8 * i for i, (_, f) in enumerate(boxes)])
    return vertices, faces


def exact_visibility(eye, vertices, faces, points, relative_eps):
    """Ray-cast every point against every face: hidden iff a face interior is hit in front."""
    tri = vertices[faces][None]  # (1, F, 3, 3)
    direction = points[:, None] - eye  # (N, 1, 3), s = 1 at the point
    e1, e2 = tri[..., 1, :] - tri[..., 0, :], tri[..., 2, :] - tri[..., 0, :]
    pvec = np.cross(direction, e2)
    det = np.sum(e1 * pvec, axis=-1)
    ok = np.abs(det) > 1e-12
    inv = np.divide(1.0, det, out=np.zeros_like(det), where=ok)
    tvec = eye - tri[..., 0, :]
    b1 = np.sum(tvec * pvec, axis=-1) * inv
    qvec = np.cross(tvec, e1)
    b2 = np.sum(direction * qvec, axis=-1) * inv
    s = np.sum(e2 * qvec, axis=-1) * inv
    inner = ok & (b1 > 1e-9) & (b2 > 1e-9) & (b1 + b2 < 1 - 1e-9)
    return ~np.any(inner & (s > 0) & (s < 1 - relative_eps), axis=1)


def test_ray_sampling_matches_exact_ray_casting_on_a_chair():
    vertices, faces = box_chair()
    points = np.vstack([vertices, sample_surface(vertices, faces, 300, seed=1)])
    rng = np.random.default_rng(0)
    agreement = {"ray": [], "pixel": []}
    for _ in range(5):
        camera = look_at_camera(rng.uniform(0, 2 * np.pi), rng.uniform(0.3, 2.0), 2.2, width=256)
        for sample, relative_eps in (("ray", 1e-3), ("pixel", 1e-2)):
            reference = exact_visibility(camera.eye, vertices, faces, points, relative_eps)
            reference &= project_keypoints(camera, points, mesh=(vertices, faces)).in_image
            visible = visible_by_mesh(camera, vertices, faces, points, sample=sample)
            agreement[sample].append((visible == reference).mean())
    ray, pixel = np.mean(agreement["ray"]), np.mean(agreement["pixel"])
    print(f"\nagreement with exact ray casting: ray {ray:.1%}, pixel {pixel:.1%}")
    assert ray >= 0.995 and ray > pixel


def test_project_keypoints_validates_its_input():
    vertices, faces, camera, keypoints, _ = cube_scene()
    with pytest.raises(ValueError, match="needs mesh"):
        project_keypoints(camera, keypoints)
    with pytest.raises(ValueError, match="needs cloud"):
        project_keypoints(camera, keypoints, method="hpr")
    with pytest.raises(ValueError, match="method must be"):
        project_keypoints(camera, keypoints, mesh=(vertices, faces), method="ray")
    with pytest.raises(ValueError, match="faces index vertices outside"):
        project_keypoints(camera, keypoints, mesh=(vertices, faces + 8))
    with pytest.raises(ValueError, match="keypoints_xyz must have shape"):
        project_keypoints(camera, keypoints[:, :2], mesh=(vertices, faces))


# ----------------------------------------------------------------------------- PCK and plots


def test_pck_2d_on_hand_made_predictions():
    gt = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [5.0, 5.0]])
    pred = gt + np.array([[3.0, 0.0], [0.0, 5.0], [12.0, 16.0], [100.0, 0.0]])  # errors 3, 5, 20
    visible = np.array([True, True, True, False])  # the 100-px miss is not scored
    assert pck_2d(pred, gt, visible, image_shape=(100, 80)) == pytest.approx(2 / 3)  # thr 10
    assert pck_2d(pred, gt, visible, size=50.0) == pytest.approx(2 / 3)  # thr 5, inclusive
    assert pck_2d(pred, gt, visible, size=40.0) == pytest.approx(1 / 3)  # thr 4
    assert pck_2d(pred, gt, visible, alpha=0.25, size=80.0) == 1.0  # thr 20
    assert math.isnan(pck_2d(pred, gt, np.zeros(4, dtype=bool), size=10.0))
    nan_pred = pred.copy()
    nan_pred[0] = np.nan
    assert pck_2d(nan_pred, gt, visible, size=50.0) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="size"):
        pck_2d(pred, gt, visible)
    with pytest.raises(ValueError, match="visible must be a bool"):
        pck_2d(pred, gt, [1, 1, 1, 0], size=10.0)


def test_plot_projection_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    vertices, faces, camera, keypoints, _ = cube_scene()
    result = project_keypoints(camera, keypoints, mesh=(vertices, faces))
    image = render_shaded(camera, vertices, faces)
    path = tmp_path / "kp.png"
    labels = [str(i) for i in range(len(keypoints))]
    plot_projection(path, image, result.uv, result.visible, labels=labels, title="cube")
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000
    assert [p.name for p in tmp_path.iterdir()] == ["kp.png"]  # no temporary file left


def test_plot_projection_without_matplotlib_is_a_user_error(tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(UserError, match=r"keypointnet\[plot\]"):
        plot_projection(tmp_path / "x.png", np.zeros((4, 4, 3)), np.zeros((1, 2)), [True])
    assert not (tmp_path / "x.png").exists()
