"""Procedural 3-D scenes (SynthScenes) and object images (SynthObjects) rendered by analytic ray casting.

Geometry (see ``docs/synthetic.md``):

- World frame in metres, z up, the floor is the plane z = ``floor_height`` = 0. A scene is a box room without a
  ceiling: floor ``[-X, X] x [-Y, Y]`` and four walls of height ``wall_height``.
- Camera: pinhole, OpenCV axes (x right, y down, z forward), pixel centres at integer coordinates, square pixels,
  ``fx = fy = (max(H, W) / 2) / tan(fov_deg / 2)``, principal point at the image centre ``((W-1)/2, (H-1)/2)``.
  ``camera_to_world`` (4x4) maps camera to world coordinates.
- Primitives stand on the floor: spheres, boxes (rotated about the vertical axis), vertical cylinders and cones.
  Every surface (floor, walls, objects) gets a random material: a texture (solid, checker, stripes, value noise) mixing
  two random colours, so that a class is decided by shape alone.
- Shading: Lambert with one directional light plus ambient; hard cast shadows from shadow rays against the
  primitives; optional Gaussian sensor noise.

Everything is vectorised in NumPy over pixels (no Python loop over pixels; loops run over the few surfaces), and every
sample depends only on ``(seed, index)`` through ``np.random.default_rng([seed, index])``.
"""

from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors

from predec.data.sample import IGNORE_INDEX, make_sample, transform_sample

SCENE_CLASSES: tuple[str, ...] = ("floor", "wall", "sphere", "box", "cylinder", "cone")
OBJECT_SHAPES: tuple[str, ...] = ("sphere", "box", "cylinder", "cone")
TEXTURES: tuple[str, ...] = ("solid", "checker", "stripes", "noise")
LABEL_MODES: tuple[str, ...] = ("shape", "shape_texture")

_FLOOR, _FIRST_OBJECT = 0, 5  # surface ids: 0 floor, 1..4 walls (x = -X, +X, y = -Y, +Y), 5+k primitive k
_NOISE_LATTICE = 16  # value-noise lattice period (cells)
_SHADOW_EPS = 1e-3  # metres; shadow rays start this far along the light to avoid self-hits
_OBJECT_STREAM = 1  # extra seed word that keeps SynthObjects' random streams apart from SynthScenes'
SHARED_CACHE_DATASETS = 8
"""Rendered samples are shared by the data sets of one process with equal settings; this many settings are kept."""
_SHARED_CACHES: OrderedDict[Hashable, dict[int, Any]] = OrderedDict()


def _shared_cache(key: Hashable) -> dict[int, Any]:
    """The sample cache of the data-set settings ``key``, shared by every instance of this process with them.

    Sample i depends only on (seed, i, size, options), not on the data set's length, so a new instance with the same
    settings (another training run in the same process, say) reuses what an earlier one rendered. The caches of the
    ``SHARED_CACHE_DATASETS`` most recently used settings are kept; older ones are dropped.
    """
    cache = _SHARED_CACHES.pop(key, None)
    _SHARED_CACHES[key] = cache = {} if cache is None else cache
    while len(_SHARED_CACHES) > SHARED_CACHE_DATASETS:
        _SHARED_CACHES.popitem(last=False)
    return cache


@dataclass(frozen=True)
class SceneOptions:
    """Options of :func:`render_scene` (pass them as keyword arguments). Ranges are ``(low, high)``, uniform.

    Attributes:
        fov_deg: field of view across the larger image side, degrees.
        num_objects: inclusive range of the number of primitives (fewer if they cannot be placed without overlap).
        shapes: primitive shapes to draw from (subset of ``OBJECT_SHAPES``).
        textures: textures to draw from (subset of ``TEXTURES``).
        shadows: cast shadows with shadow rays.
        ambient: ambient light fraction.
        room_size: side lengths of the room, metres (keeps every z-depth below 10 m with the default ranges).
        wall_height: metres.
        camera_height: metres above the floor.
        camera_pitch_deg: downward pitch, degrees.
        camera_wall_margin: minimal horizontal distance between camera and walls, metres.
        light_elevation_deg: elevation of the directional light above the horizon, degrees.
    """

    fov_deg: float = 60.0
    num_objects: tuple[int, int] = (3, 8)
    shapes: tuple[str, ...] = OBJECT_SHAPES
    textures: tuple[str, ...] = TEXTURES
    shadows: bool = True
    ambient: tuple[float, float] = (0.25, 0.45)
    room_size: tuple[float, float] = (4.0, 8.0)
    wall_height: tuple[float, float] = (2.4, 3.2)
    camera_height: tuple[float, float] = (0.9, 1.7)
    camera_pitch_deg: tuple[float, float] = (5.0, 30.0)
    camera_wall_margin: float = 0.8
    light_elevation_deg: tuple[float, float] = (30.0, 75.0)

    def __post_init__(self) -> None:
        unknown = set(self.shapes) - set(OBJECT_SHAPES)
        if unknown or not self.shapes:
            raise ValueError(f"shapes={self.shapes!r}: each must be one of {OBJECT_SHAPES} (at least one)")
        unknown = set(self.textures) - set(TEXTURES)
        if unknown or not self.textures:
            raise ValueError(f"textures={self.textures!r}: each must be one of {TEXTURES} (at least one)")
        low, high = self.num_objects
        if not 0 <= low <= high:
            raise ValueError(f"num_objects={self.num_objects!r}: expected (low, high) with 0 <= low <= high")
        if not 1.0 <= self.fov_deg <= 150.0:
            raise ValueError(f"fov_deg={self.fov_deg!r}: expected degrees in [1, 150]")
        bounds = {
            "ambient": (0.0, 1.0),
            "room_size": (0.0, math.inf),
            "wall_height": (0.0, math.inf),
            "camera_height": (0.0, math.inf),
            "camera_pitch_deg": (-60.0, 89.0),
            "light_elevation_deg": (1.0, 90.0),  # the light comes from above
        }
        for name, (lowest, highest) in bounds.items():
            value = tuple(getattr(self, name))
            if len(value) != 2 or not lowest <= value[0] <= value[1] <= highest:
                raise ValueError(f"{name}={value!r}: expected (low, high), {lowest:g} <= low <= high <= {highest:g}")
        if self.camera_height[1] >= self.wall_height[0]:
            raise ValueError(
                f"camera_height={self.camera_height!r} must stay below wall_height={self.wall_height!r} (low end)"
            )
        if self.room_size[0] <= 2 * self.camera_wall_margin:
            raise ValueError(
                f"room_size={self.room_size!r}: the smallest room must exceed 2 * camera_wall_margin "
                f"= {2 * self.camera_wall_margin:g} m"
            )

    @classmethod
    def from_kwargs(cls, options: dict[str, Any]) -> SceneOptions:
        """Build options from keyword arguments, rejecting unknown names with the valid ones listed."""
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise TypeError(f"unknown render option(s) {unknown}; valid options: {valid}")
        return cls(**options)


@dataclass
class SceneSample:
    """One rendered scene as raw arrays.

    Attributes:
        image: (H, W, 3) uint8 RGB.
        labels: (H, W) uint8 index into ``SCENE_CLASSES``, 255 where the ray hits nothing.
        depth: (H, W) float32 z-depth in metres, 0 where the ray hits nothing.
        intrinsics: (3, 3) float32 pinhole matrix ``[[fx, 0, cx], [0, fy, cy], [0, 0, 1]]`` in pixels.
        camera_to_world: (4, 4) float32 pose (OpenCV camera axes -> world, z up).
        floor_height: world z of the floor plane, metres.
        instances: (H, W) uint8 surface index: 0 floor, 1-4 walls, 5+k the k-th primitive, 255 nothing.
        shapes: shape name of each primitive (primitive k is instance 5+k).
    """

    image: np.ndarray
    labels: np.ndarray
    depth: np.ndarray
    intrinsics: np.ndarray
    camera_to_world: np.ndarray = field(default_factory=lambda: np.eye(4, dtype=np.float32))
    floor_height: float = 0.0
    instances: np.ndarray | None = None
    shapes: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Material:
    texture: str
    color_a: np.ndarray  # (3,) float32 in [0, 1]
    color_b: np.ndarray
    frequency: float  # cycles per metre
    angle: float  # stripe direction, radians
    lattice: np.ndarray | None  # (L, L) float32 value-noise lattice


@dataclass(frozen=True)
class _Primitive:
    shape: str
    x: float  # centre of the footprint on the floor
    y: float
    radius: float  # sphere/cylinder/cone radius; box: half-extent along its local x
    half_y: float  # box half-extent along its local y (= radius for the others)
    height: float  # sphere: 2 * radius
    yaw: float  # rotation about z (boxes; texture phase for the others)
    material: _Material

    @property
    def bounding_radius(self) -> float:
        """Horizontal radius of the footprint's bounding circle."""
        return math.hypot(self.radius, self.half_y) if self.shape == "box" else self.radius

    def bounding_sphere(self) -> tuple[np.ndarray, float]:
        """Centre and radius of a sphere containing the primitive."""
        centre = np.array([self.x, self.y, self.height / 2], dtype=np.float32)
        return centre, math.hypot(self.bounding_radius, self.height / 2)

    def box_corners(self) -> list[list[float]]:
        """The 8 corners of an axis-aligned box containing the primitive."""
        r = self.bounding_radius
        xs, ys, zs = (self.x - r, self.x + r), (self.y - r, self.y + r), (0.0, self.height)
        return [[a, b, c] for a in xs for b in ys for c in zs]


def _pose(position: np.ndarray, yaw: float, pitch: float) -> np.ndarray:
    """(4, 4) camera-to-world for a camera at ``position`` heading ``yaw`` (about z) and pitched down by ``pitch``."""
    cy, sy, cp, sp = math.cos(yaw), math.sin(yaw), math.cos(pitch), math.sin(pitch)
    right, down, forward = (sy, -cy, 0.0), (-sp * cy, -sp * sy, -cp), (cp * cy, cp * sy, -sp)  # down = forward x right
    pose = np.eye(4, dtype=np.float32)
    pose[:3, :3] = np.array([right, down, forward]).T
    pose[:3, 3] = position
    return pose


def _intrinsics(size: tuple[int, int], fov_deg: float) -> np.ndarray:
    height, width = size
    focal = (max(height, width) / 2) / math.tan(math.radians(fov_deg) / 2)
    return np.array([[focal, 0, (width - 1) / 2], [0, focal, (height - 1) / 2], [0, 0, 1]], dtype=np.float32)


def _random_colors(rng: np.random.Generator, count: int) -> np.ndarray:
    """(count, 3) float32 random colours: uniform hue, saturation in [0, 1], value in [0.25, 1] (HSV -> RGB)."""
    hue, sat, val = rng.random((3, count, 1))
    val = 0.25 + 0.75 * val
    k = (np.array([5.0, 3.0, 1.0]) + hue * 6) % 6
    return (val - val * sat * np.clip(np.minimum(k, 4 - k), 0, 1)).astype(np.float32)


def _random_materials(rng: np.random.Generator, textures: list[str], frequency: tuple[float, float]) -> list[_Material]:
    """One random material per entry of ``textures`` (texture names), frequencies uniform in ``frequency``."""
    count = len(textures)
    colors = _random_colors(rng, 2 * count).reshape(count, 2, 3)
    similar = ((colors[:, 0] - colors[:, 1]) ** 2).sum(axis=1) < 0.3**2  # keep patterns visible: complement
    colors[similar, 1] = 1 - colors[similar, 1]
    freqs = (frequency[0] + (frequency[1] - frequency[0]) * rng.random(count)).tolist()
    angles = (math.pi * rng.random(count)).tolist()
    lattices = rng.random((count, _NOISE_LATTICE, _NOISE_LATTICE), dtype=np.float32)
    return [
        _Material(texture, colors[i, 0], colors[i, 1], freqs[i], angles[i], lattices[i] if texture == "noise" else None)
        for i, texture in enumerate(textures)
    ]


def _choose(rng: np.random.Generator, names: tuple[str, ...], count: int) -> list[str]:
    return [names[i] for i in rng.integers(len(names), size=count).tolist()]


def _pattern(material: _Material, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Blend weight in [0, 1] of ``color_b`` at texture coordinates (u, v) in metres (textures other than solid)."""
    f = material.frequency
    if material.texture == "checker":
        return ((np.floor(u * f) + np.floor(v * f)) % 2).astype(np.float32)
    if material.texture == "stripes":
        s = u * (2 * f * math.cos(material.angle)) + v * (2 * f * math.sin(material.angle))
        return (np.floor(s) % 2).astype(np.float32)
    # value noise: two octaves of smoothstep-interpolated random values on a periodic lattice
    lattice, mask = material.lattice.ravel(), _NOISE_LATTICE - 1
    result = None
    for octave, weight in ((1.0, 0.65), (2.5, 0.35)):
        su, sv = u * (f * octave), v * (f * octave)
        iu, iv = np.floor(su), np.floor(sv)
        fu, fv = su - iu, sv - iv
        fu, fv = fu * fu * (3 - 2 * fu), fv * fv * (3 - 2 * fv)
        i0, j0 = iu.astype(np.int32) & mask, iv.astype(np.int32) & mask
        i1, j1 = (i0 + 1) & mask, ((j0 + 1) & mask) * _NOISE_LATTICE
        j0 *= _NOISE_LATTICE
        top, top_right = lattice[j0 + i0], lattice[j0 + i1]
        bottom, bottom_right = lattice[j1 + i0], lattice[j1 + i1]
        top += fu * (top_right - top)
        bottom += fu * (bottom_right - bottom)
        octave_value = weight * (top + fv * (bottom - top))
        result = octave_value if result is None else result + octave_value
    return np.clip(result * 1.6 - 0.3, 0, 1)  # stretch the contrast around 0.5


def _albedo(material: _Material, u: np.ndarray | None, v: np.ndarray | None) -> list[Any]:
    """Surface colour per channel (three scalars for solid, else three arrays) at texture coordinates (u, v)."""
    if material.texture == "solid":
        return material.color_a.tolist()
    weight = _pattern(material, u, v)
    return [a + weight * (b - a) for a, b in zip(material.color_a.tolist(), material.color_b.tolist())]


# Ray-primitive intersections. Origins and directions are given per component; each argument is a scalar or an array
# and they broadcast. Directions need not be unit length: ``t`` is measured in units of the direction vector. Each
# function returns the smallest t > t_min at which the ray enters the primitive, inf where it misses.


def _quadratic_roots(a: Any, b: Any, c: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Roots of a t^2 + 2 b t + c = 0 (near, far when a > 0) and the mask of real roots."""
    disc = b * b - a * c
    real = disc >= 0
    sq = np.sqrt(np.maximum(disc, 0))
    a = np.where(np.abs(a) < 1e-12, 1e-12, a)
    return (-b - sq) / a, (-b + sq) / a, real


def _hit_sphere(p: _Primitive, ox, oy, oz, dx, dy, dz, t_min: float) -> np.ndarray:
    qx, qy, qz = ox - p.x, oy - p.y, oz - p.radius
    a = dx * dx + dy * dy + dz * dz
    b = qx * dx + qy * dy + qz * dz
    c = qx * qx + qy * qy + qz * qz - p.radius * p.radius
    near, _, real = _quadratic_roots(a, b, c)
    return np.where(real & (near > t_min), near, np.inf)


def _hit_box(p: _Primitive, ox, oy, oz, dx, dy, dz, t_min: float) -> np.ndarray:
    cos, sin = math.cos(p.yaw), math.sin(p.yaw)
    qx, qy, qz = ox - p.x, oy - p.y, oz - p.height / 2
    local = ((cos * qx + sin * qy, cos * dx + sin * dy, p.radius), (cos * qy - sin * qx, cos * dy - sin * dx, p.half_y))
    t_near, t_far = None, None
    for origin, direction, half in (*local, (qz, dz, p.height / 2)):
        inv = 1.0 / np.where(direction == 0, 1e-12, direction)
        t1, t2 = (-half - origin) * inv, (half - origin) * inv
        lo, hi = np.minimum(t1, t2), np.maximum(t1, t2)
        t_near = lo if t_near is None else np.maximum(t_near, lo)
        t_far = hi if t_far is None else np.minimum(t_far, hi)
    return np.where((t_near <= t_far) & (t_near > t_min), t_near, np.inf)


def _hit_cylinder(p: _Primitive, ox, oy, oz, dx, dy, dz, t_min: float) -> np.ndarray:
    qx, qy = ox - p.x, oy - p.y
    near, _, real = _quadratic_roots(dx * dx + dy * dy, qx * dx + qy * dy, qx * qx + qy * qy - p.radius**2)
    z = oz + near * dz
    side = np.where(real & (near > t_min) & (z >= 0) & (z <= p.height), near, np.inf)
    t_cap = (p.height - oz) / np.where(dz == 0, 1e-12, dz)
    cx, cy = qx + t_cap * dx, qy + t_cap * dy
    cap = np.where((t_cap > t_min) & (cx * cx + cy * cy <= p.radius**2), t_cap, np.inf)
    return np.minimum(side, cap)


def _hit_cone(p: _Primitive, ox, oy, oz, dx, dy, dz, t_min: float) -> np.ndarray:
    k2 = (p.radius / p.height) ** 2
    qx, qy, qz = ox - p.x, oy - p.y, p.height - oz  # z measured down from the apex
    a = dx * dx + dy * dy - k2 * dz * dz
    b = qx * dx + qy * dy + k2 * qz * dz
    c = qx * qx + qy * qy - k2 * qz * qz
    r1, r2, real = _quadratic_roots(a, b, c)
    best = np.full(np.broadcast(r1, real).shape, np.inf, dtype=np.float32)
    for root in (r1, r2):
        below_apex = qz - root * dz
        valid = real & (root > t_min) & (below_apex >= 0) & (below_apex <= p.height)
        best = np.where(valid, np.minimum(best, root), best)
    return best


_HIT: dict[str, Callable[..., np.ndarray]] = {
    "sphere": _hit_sphere,
    "box": _hit_box,
    "cylinder": _hit_cylinder,
    "cone": _hit_cone,
}


def _object_surface(p: _Primitive, px: np.ndarray, py: np.ndarray, pz: np.ndarray, need_uv: bool = True):
    """Unit normal (nx, ny, nz) and texture coordinates (u, v) in metres (None unless ``need_uv``) at points on the
    primitive's surface."""
    qx, qy = px - p.x, py - p.y
    cos, sin = math.cos(p.yaw), math.sin(p.yaw)
    lx, ly = (cos * qx + sin * qy, cos * qy - sin * qx) if need_uv or p.shape == "box" else (None, None)
    u = v = None
    if p.shape == "sphere":
        inv = 1.0 / p.radius
        nx, ny, nz = qx * inv, qy * inv, (pz - p.radius) * inv
        if need_uv:
            u, v = p.radius * np.arctan2(ly, lx), p.radius * np.arcsin(np.clip(nz, -1, 1))
        return nx, ny, nz, u, v
    if p.shape == "box":
        rz = pz - p.height / 2
        ax, ay, az = np.abs(lx) * (1 / p.radius), np.abs(ly) * (1 / p.half_y), np.abs(rz) * (2 / p.height)
        on_x, on_y = (ax >= ay) & (ax >= az), (ay > ax) & (ay >= az)
        on_z = ~(on_x | on_y)
        lnx, lny = np.where(on_x, np.sign(lx), 0), np.where(on_y, np.sign(ly), 0)
        nx, ny, nz = cos * lnx - sin * lny, sin * lnx + cos * lny, np.where(on_z, np.sign(rz), 0)
        if need_uv:  # x faces (y, z), y faces (x, z), top (x, y)
            u, v = np.where(on_x, ly, lx), np.where(on_z, ly, pz)
        return nx, ny, nz, u, v
    radial = np.sqrt(qx * qx + qy * qy)
    inv_radial = 1.0 / np.maximum(radial, 1e-6)
    angle_u = p.radius * np.arctan2(ly, lx) if need_uv else None
    if p.shape == "cylinder":
        on_cap = (p.height - pz) < (p.radius - radial)
        nx, ny = np.where(on_cap, 0, qx * inv_radial), np.where(on_cap, 0, qy * inv_radial)
        if need_uv:
            u, v = np.where(on_cap, lx, angle_u), np.where(on_cap, ly, pz)
        return nx, ny, on_cap.astype(np.float32), u, v
    slope = p.radius / p.height  # cone side: radial = slope * (height - z), normal ~ (x / radial, y / radial, slope)
    norm = 1 / math.sqrt(1 + slope * slope)
    return qx * (inv_radial * norm), qy * (inv_radial * norm), slope * norm, angle_u, pz


def _pixel_boxes(points: np.ndarray, pose: np.ndarray, intrinsics: np.ndarray, size: tuple[int, int]) -> list:
    """Per group of world points (G, N, 3): the pixel rectangle (v0, v1, u0, u1) containing the projection of the
    group's convex hull (the whole image if part of the group is behind the camera)."""
    height, width = size
    cam = (points - pose[:3, 3]) @ pose[:3, :3]  # world -> camera
    z = np.maximum(cam[..., 2], 1e-3)
    u = intrinsics[0, 0] * cam[..., 0] / z + intrinsics[0, 2]
    v = intrinsics[1, 1] * cam[..., 1] / z + intrinsics[1, 2]
    boxes = np.stack([v.min(-1) - 1, v.max(-1) + 2, u.min(-1) - 1, u.max(-1) + 2], axis=1)
    boxes = np.clip(np.floor(boxes), 0, [height, height, width, width]).astype(int)
    boxes[cam[..., 2].min(-1) < 1e-3] = (0, height, 0, width)
    return boxes.tolist()


@dataclass
class _Scene:
    """Everything a render needs: room, camera, light, primitives, materials."""

    size: tuple[int, int]
    intrinsics: np.ndarray
    pose: np.ndarray
    half_x: float
    half_y: float
    wall_height: float
    floor_material: _Material
    wall_material: _Material
    primitives: list[_Primitive]
    light: np.ndarray  # (3,) unit vector towards the light
    light_intensity: float
    ambient: float
    background: np.ndarray  # (3,) colour where rays hit nothing


_OBJECT_FREQUENCY = (1.5, 7.0)  # texture cycles per metre on objects
_ROOM_FREQUENCY = (0.6, 3.0)  # on floor and walls


# primitive sizes in metres, per shape of OBJECT_SHAPES: radius (boxes: half-extents along their local x and y) and
# height, each low + span * U(0, 1); a sphere's height is its diameter
_RADIUS_LOW, _RADIUS_SPAN = np.array([0.2, 0.12, 0.12, 0.15]), np.array([0.35, 0.38, 0.33, 0.35])
_HEIGHT_LOW, _HEIGHT_SPAN = np.array([0.0, 0.2, 0.2, 0.3]), np.array([0.0, 1.0, 1.1, 1.0])
_SPHERE, _BOX = OBJECT_SHAPES.index("sphere"), OBJECT_SHAPES.index("box")


def _primitive_sizes(shape_ids: np.ndarray, units: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(radius, half_y, height) of primitives with ``OBJECT_SHAPES`` indices ``shape_ids`` (N,) from uniform numbers
    ``units`` (N, 3)."""
    is_box = shape_ids == _BOX
    radius = _RADIUS_LOW[shape_ids] + _RADIUS_SPAN[shape_ids] * units[:, 0]
    half_y = np.where(is_box, _RADIUS_LOW[shape_ids] + _RADIUS_SPAN[shape_ids] * units[:, 1], radius)
    height = np.where(shape_ids == _SPHERE, 2 * radius, _HEIGHT_LOW[shape_ids] + _HEIGHT_SPAN[shape_ids] * units[:, 2])
    return radius, half_y, height


def _light(rng: np.random.Generator, elevation_deg: tuple[float, float]) -> np.ndarray:
    elevation, azimuth = math.radians(rng.uniform(*elevation_deg)), rng.uniform(0, 2 * math.pi)
    return np.array(
        [math.cos(elevation) * math.cos(azimuth), math.cos(elevation) * math.sin(azimuth), math.sin(elevation)],
        dtype=np.float32,
    )


def _sample_scene(seed: int, index: int, size: tuple[int, int], opts: SceneOptions) -> _Scene:
    rng = np.random.default_rng([seed, index])
    half_x, half_y = rng.uniform(*opts.room_size, size=2) / 2
    wall_height = rng.uniform(*opts.wall_height)
    margin = opts.camera_wall_margin
    cam_x = rng.uniform(-half_x + margin, half_x - margin) if half_x > margin else 0.0
    cam_y = rng.uniform(-half_y + margin, half_y - margin) if half_y > margin else 0.0
    cam_z = rng.uniform(*opts.camera_height)
    # look towards a random point of the room's central region, so the camera sees into the room
    target_x, target_y = rng.uniform(-0.5, 0.5) * half_x, rng.uniform(-0.5, 0.5) * half_y
    yaw = math.atan2(target_y - cam_y, target_x - cam_x) + rng.uniform(-0.35, 0.35)
    pitch = math.radians(rng.uniform(*opts.camera_pitch_deg))
    pose = _pose(np.array([cam_x, cam_y, cam_z]), yaw, pitch)
    intrinsics = _intrinsics(size, opts.fov_deg)
    half_fov_x = math.atan(((size[1] - 1) / 2) / intrinsics[0, 0])
    half_fov_y = math.atan(((size[0] - 1) / 2) / intrinsics[1, 1])

    floor_material, wall_material = _random_materials(rng, _choose(rng, opts.textures, 2), _ROOM_FREQUENCY)
    light = _light(rng, opts.light_elevation_deg)
    light_intensity = rng.uniform(0.85, 1.15)
    ambient = rng.uniform(*opts.ambient)
    background = _random_colors(rng, 1)[0] * 0.5

    # primitives: standing on the floor inside the horizontal field of view, in the room, not overlapping.
    # Candidates are drawn in one batch and accepted greedily; fewer than wanted remain if the room is too full.
    wanted = int(rng.integers(opts.num_objects[0], opts.num_objects[1] + 1))
    tries = 25 * wanted
    allowed = np.array([OBJECT_SHAPES.index(shape) for shape in opts.shapes])
    shape_ids = allowed[rng.integers(len(allowed), size=tries)]
    units, yaws = rng.random((tries, 3)), 2 * math.pi * rng.random(tries)
    azimuth, fraction = yaw + (1.8 * rng.random(tries) - 0.9) * half_fov_x, rng.random(tries)
    radius, half_width, height = _primitive_sizes(shape_ids, units)
    reach = np.where(shape_ids == _BOX, np.hypot(radius, half_width), radius)
    cos_a, sin_a = np.cos(azimuth), np.sin(azimuth)
    to_wall = np.minimum((np.copysign(half_x, cos_a) - cam_x) / cos_a, (np.copysign(half_y, sin_a) - cam_y) / sin_a)
    # distance along the azimuth: from close to the camera (top still in view) up to the wall minus the reach
    near = np.maximum(reach + 0.8, (cam_z - height) / math.tan(pitch + half_fov_y) + reach)
    far = to_wall - reach - 0.05
    distance = near + fraction * (far - near)
    limit_x, limit_y = half_x - reach - 0.05, half_y - reach - 0.05  # keep the footprint inside the room
    xs = np.clip(cam_x + distance * cos_a, -limit_x, limit_x).tolist()
    ys = np.clip(cam_y + distance * sin_a, -limit_y, limit_y).tolist()
    reach = reach.tolist()
    accepted: list[int] = []
    for k in np.flatnonzero((far >= near) & (limit_x > 0) & (limit_y > 0)).tolist():
        if all((xs[k] - xs[j]) ** 2 + (ys[k] - ys[j]) ** 2 > (reach[k] + reach[j] + 0.05) ** 2 for j in accepted):
            accepted.append(k)
            if len(accepted) == wanted:
                break
    materials = _random_materials(rng, _choose(rng, opts.textures, len(accepted)), _OBJECT_FREQUENCY)
    sizes = [values[accepted].tolist() for values in (shape_ids, radius, half_width, height, yaws)]
    primitives = [
        _Primitive(OBJECT_SHAPES[shape], xs[k], ys[k], r, half, h, yaw, material)
        for k, shape, r, half, h, yaw, material in zip(accepted, *sizes, materials)
    ]
    return _Scene(
        size, intrinsics, pose, float(half_x), float(half_y), float(wall_height), floor_material, wall_material,
        primitives, light, float(light_intensity), float(ambient), background,
    )  # fmt: skip


def _trace(scene: _Scene) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Cast the primary rays.

    Returns:
        z-depth (H, W) float32 (0 where nothing is hit), surface ids (H, W) uint8 (255 where nothing is hit), and the
        ray directions (dx, dy, dz), each (H, W), scaled so that their camera-z component is 1 (so t = z-depth).
    """
    height, width = scene.size
    K, pose = scene.intrinsics, scene.pose
    xn = ((np.arange(width, dtype=np.float32) - K[0, 2]) / K[0, 0])[None, :]
    yn = ((np.arange(height, dtype=np.float32) - K[1, 2]) / K[1, 1])[:, None]
    R = pose[:3, :3]
    dx, dy, dz = (R[i, 0] * xn + R[i, 1] * yn + R[i, 2] for i in range(3))
    ox, oy, oz = (float(c) for c in pose[:3, 3])

    # the room: floor z = 0 and the walls x = +-half_x, y = +-half_y (the camera is inside); no ceiling
    # (divisions by zero give +inf, as wanted: render_scene and render_object silence the warnings)
    t_floor = np.where(dz < 0, -oz / dz, np.inf)
    t_wall_x = (np.copysign(scene.half_x, dx) - ox) / dx  # > 0 since the camera is inside the room
    t_wall_y = (np.copysign(scene.half_y, dy) - oy) / dy
    use_x = t_wall_x < t_wall_y
    t_wall = np.where(use_x, t_wall_x, t_wall_y)
    t_wall[oz + t_wall * dz > scene.wall_height] = np.inf  # the ray passes above the wall
    wall_id = np.where(use_x, np.where(dx > 0, 2, 1), np.where(dy > 0, 4, 3)).astype(np.uint8)
    on_floor = t_floor <= t_wall
    depth = np.where(on_floor, t_floor, t_wall).astype(np.float32)
    surface = np.where(on_floor, np.uint8(_FLOOR), wall_id)

    corners = np.array([prim.box_corners() for prim in scene.primitives]).reshape(-1, 8, 3)
    boxes = _pixel_boxes(corners, pose, K, scene.size)
    for k, (prim, (v0, v1, u0, u1)) in enumerate(zip(scene.primitives, boxes)):
        if v0 >= v1 or u0 >= u1:
            continue
        window = (slice(v0, v1), slice(u0, u1))
        t = _HIT[prim.shape](prim, ox, oy, oz, dx[window], dy[window], dz[window], 1e-4)
        closer = t < depth[window]
        depth[window][closer] = t[closer]
        surface[window][closer] = _FIRST_OBJECT + k
    missed = np.isinf(depth)
    depth[missed], surface[missed] = 0, 255
    return depth, surface, (dx, dy, dz)


def _shadow_mask(scene: _Scene, points: tuple[np.ndarray, ...], surface: np.ndarray) -> np.ndarray:
    """(H, W) bool: True where the ray from the surface point towards the light hits a primitive.

    Each primitive is tested only in the pixel rectangle of its shadow volume (its bounding box extruded away from
    the light down to the floor), and never against its own surface (a convex solid does not shadow itself).
    """
    width = scene.size[1]
    shadowed = np.zeros(scene.size, dtype=bool)
    light = scene.light
    lx, ly, lz = (float(c) for c in light)
    flat_points = [p.ravel() for p in points]
    corners = np.array([prim.box_corners() for prim in scene.primitives]).reshape(-1, 8, 3)
    dropped = corners - (corners[..., 2:3] / lz) * light  # onto the floor, away from the light
    volumes = np.concatenate([corners, dropped], axis=1)
    boxes = _pixel_boxes(volumes, scene.pose, scene.intrinsics, scene.size)
    for k, (prim, (v0, v1, u0, u1)) in enumerate(zip(scene.primitives, boxes)):
        if v0 >= v1 or u0 >= u1:
            continue
        window = surface[v0:v1, u0:u1]
        rows, cols = np.nonzero((window != 255) & (window != _FIRST_OBJECT + k) & ~shadowed[v0:v1, u0:u1])
        if rows.size == 0:
            continue
        index = (rows + v0) * width + (cols + u0)
        px, py, pz = (p[index] for p in flat_points)
        blocked = np.isfinite(_HIT[prim.shape](prim, px, py, pz, lx, ly, lz, _SHADOW_EPS))
        shadowed.ravel()[index[blocked]] = True
    return shadowed


def _surface_attributes(scene: _Scene, sid: int, px: np.ndarray, py: np.ndarray, pz: np.ndarray):
    """Normal (three scalars or arrays), texture coordinates (u, v) and material of surface ``sid`` at points."""
    if sid == _FLOOR:
        return (0.0, 0.0, 1.0), px, py, scene.floor_material
    if sid < _FIRST_OBJECT:  # walls 1, 2 (x = -half_x, +half_x), 3, 4 (y = -half_y, +half_y), normals inwards
        inward = 1.0 if sid in (1, 3) else -1.0
        if sid <= 2:
            return (inward, 0.0, 0.0), py, pz, scene.wall_material
        return (0.0, inward, 0.0), px, pz, scene.wall_material
    prim = scene.primitives[sid - _FIRST_OBJECT]
    *normal, u, v = _object_surface(prim, px, py, pz, need_uv=prim.material.texture != "solid")
    return normal, u, v, prim.material


def _shade(
    scene: _Scene, depth: np.ndarray, surface: np.ndarray, rays: tuple[np.ndarray, ...], shadows: bool
) -> np.ndarray:
    """Shade the traced surfaces: (3, H, W) float32 RGB in [0, 255] (before noise), background where nothing was hit.

    Lambert: albedo * (ambient + (1 - ambient) * intensity * max(n . l, 0) * unshadowed).
    """
    height, width = scene.size
    origin = [float(c) for c in scene.pose[:3, 3]]
    points = tuple(o + depth * d for o, d in zip(origin, rays))
    shadowed = _shadow_mask(scene, points, surface).ravel() if shadows else None
    flat_points = [p.ravel() for p in points]
    flat_surface = surface.ravel()
    image = np.empty((3, height * width), dtype=np.float32)
    image[:] = scene.background[:, None] * 255.0
    order = np.argsort(flat_surface, kind="stable")  # pixels grouped by surface id
    counts = np.bincount(flat_surface, minlength=256)
    starts = np.cumsum(counts) - counts
    lx, ly, lz = (float(c) for c in scene.light)
    diffuse = (1 - scene.ambient) * scene.light_intensity
    for sid in np.flatnonzero(counts[:255]).tolist():
        sel = order[starts[sid] : starts[sid] + counts[sid]]
        normal, u, v, material = _surface_attributes(scene, sid, *(p[sel] for p in flat_points))
        lambert = np.maximum(normal[0] * lx + normal[1] * ly + normal[2] * lz, 0.0)
        if shadowed is not None and np.any(lambert > 0):
            lambert = np.where(shadowed[sel], 0.0, lambert)
        shading = 255.0 * (scene.ambient + diffuse * lambert)
        for channel, albedo in enumerate(_albedo(material, u, v)):
            image[channel, sel] = albedo * shading
    return image.reshape(3, height, width)


def _check_size(size: int | tuple[int, int]) -> tuple[int, int]:
    pair = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
    if len(pair) != 2 or not all(isinstance(s, (int, np.integer)) and s > 0 for s in pair):
        raise ValueError(f"size={size!r}: expected a positive int or a pair (height, width) of positive ints")
    return int(pair[0]), int(pair[1])


_GAUSSIAN_TABLE: np.ndarray | None = None


def _gaussian_noise(rng: np.random.Generator, count: int) -> np.ndarray:
    """``count`` standard-normal float32 samples, drawn from a fixed table of 65536 samples by random uint16 indices.

    Three to four times cheaper than ``rng.standard_normal``; the marginal distribution is the (sampled) normal one.
    """
    global _GAUSSIAN_TABLE
    if _GAUSSIAN_TABLE is None:
        _GAUSSIAN_TABLE = np.random.default_rng(0).standard_normal(65536, dtype=np.float32)
    return _GAUSSIAN_TABLE[np.frombuffer(rng.bytes(2 * count), dtype="<u2")]


def _to_uint8(image: np.ndarray, noise_std: float, rng: np.random.Generator) -> np.ndarray:
    """Add Gaussian noise (std ``noise_std`` x 255) to a (3, H, W) image in [0, 255]; round, clip -> (H, W, 3) uint8."""
    if not noise_std >= 0:
        raise ValueError(f"noise_std={noise_std!r}: expected a standard deviation >= 0 (fraction of full scale)")
    image += 0.5
    if noise_std > 0:
        image += (noise_std * 255.0) * _gaussian_noise(rng, image.size).reshape(image.shape)
    np.clip(image, 0, 255, out=image)
    result = np.empty((*image.shape[1:], 3), dtype=np.uint8)
    np.copyto(result, image.transpose(1, 2, 0), casting="unsafe")  # truncation of x + 0.5 rounds
    return result


def render_scene(
    seed: int, index: int, size: tuple[int, int] = (128, 128), noise_std: float = 0.01, **options: Any
) -> SceneSample:
    """Render one SynthScenes sample.

    Args:
        seed: data-set seed.
        index: sample index; the sample depends only on (seed, index).
        size: (H, W) in pixels.
        noise_std: standard deviation of the Gaussian sensor noise as a fraction of full scale (0 = none).
        **options: fields of :class:`SceneOptions`.

    Returns:
        The rendered :class:`SceneSample`.
    """
    opts = SceneOptions.from_kwargs(options)
    size = _check_size(size)
    with np.errstate(divide="ignore", invalid="ignore"):
        scene = _sample_scene(seed, index, size, opts)
        depth, surface, rays = _trace(scene)
        shaded = _shade(scene, depth, surface, rays, opts.shadows)
    image = _to_uint8(shaded, noise_std, np.random.default_rng([seed, index, 2]))
    classes = [SCENE_CLASSES.index("floor")] + [SCENE_CLASSES.index("wall")] * 4
    classes += [SCENE_CLASSES.index(p.shape) for p in scene.primitives]
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    lut[: len(classes)] = classes
    return SceneSample(
        image=image,
        labels=lut[surface],
        depth=depth,
        intrinsics=scene.intrinsics,
        camera_to_world=scene.pose,
        floor_height=0.0,
        instances=surface,
        shapes=tuple(p.shape for p in scene.primitives),
    )


class SynthScenes(torch.utils.data.Dataset):
    """Procedural scenes with RGB, semantic labels (``SCENE_CLASSES``) and metric depth, as common sample dicts.

    Args:
        num: number of samples.
        size: (H, W) in pixels.
        seed: data-set seed; sample i is ``render_scene(seed, i, ...)``.
        transform: callable applied to the sample dict.
        cache: keep rendered samples in memory, shared by the instances of this process with the same seed, size
            and options (each sample is rendered once per process; DataLoader workers each keep their own).
        **render_options: ``noise_std`` and the fields of :class:`SceneOptions`.
    """

    classes = SCENE_CLASSES

    def __init__(
        self,
        num: int,
        size: tuple[int, int] = (128, 128),
        seed: int = 0,
        transform: Callable[[dict[str, Any]], Any] | None = None,
        cache: bool = True,
        **render_options: Any,
    ) -> None:
        if num < 0:
            raise ValueError(f"num={num!r}: expected a number of samples >= 0")
        self.num, self.size, self.seed = int(num), _check_size(size), int(seed)
        self.transform, self.cache = transform, cache
        self.noise_std = float(render_options.pop("noise_std", 0.01))
        SceneOptions.from_kwargs(render_options)  # fail now on bad options, not in a worker later
        self.render_options = render_options
        key = ("scenes", self.seed, self.size, self.noise_std, repr(sorted(render_options.items())))
        self._cache: dict[int, SceneSample] = _shared_cache(key) if cache else {}

    def __len__(self) -> int:
        return self.num

    def raw(self, index: int) -> SceneSample:
        """The raw arrays of sample ``index`` (rendered, or taken from the cache)."""
        if not -self.num <= index < self.num:
            raise IndexError(f"index {index} out of range for SynthScenes of length {self.num}")
        index = int(index) % self.num
        if index in self._cache:
            return self._cache[index]
        sample = render_scene(self.seed, index, self.size, self.noise_std, **self.render_options)
        if self.cache:
            self._cache[index] = sample
        return sample

    def __getitem__(self, index: int) -> Any:
        raw = self.raw(index)
        index = int(index) % self.num
        meta = {
            "dataset": "synthscenes",
            "index": index,
            "seed": self.seed,
            "focal": float(raw.intrinsics[0, 0]),
            "intrinsics": raw.intrinsics.tolist(),
        }
        sample = make_sample(raw.image.copy(), raw.labels, raw.depth.copy(), meta)  # copies: keep the cache intact
        return transform_sample(self.transform, sample)


def object_classes(label_mode: str = "shape") -> list[str]:
    """Class names of SynthObjects: shapes, or ``"<shape>-<texture>"`` for ``label_mode="shape_texture"``."""
    if label_mode == "shape":
        return list(OBJECT_SHAPES)
    if label_mode == "shape_texture":
        return [f"{shape}-{texture}" for shape in OBJECT_SHAPES for texture in TEXTURES]
    raise ValueError(f"label_mode={label_mode!r}: expected one of {LABEL_MODES}")


def _sample_object_scene(seed: int, index: int, size: tuple[int, int]) -> tuple[_Scene, int, int]:
    """A scene with one dominant primitive near the image centre; returns it with shape and texture indices."""
    rng = np.random.default_rng([seed, index, _OBJECT_STREAM])
    # every run of 16 consecutive indices covers all shape x texture pairs once: balanced classes
    shape_id, texture_id = index % len(OBJECT_SHAPES), (index // len(OBJECT_SHAPES)) % len(TEXTURES)
    shape = OBJECT_SHAPES[shape_id]
    (material,) = _random_materials(rng, [TEXTURES[texture_id]], (2.5, 7.0))
    radius, half_y, height = (float(v[0]) for v in _primitive_sizes(np.array([shape_id]), rng.random((1, 3))))
    prim = _Primitive(shape, 0.0, 0.0, radius, half_y, height, rng.uniform(0, 2 * math.pi), material)
    scale = rng.uniform(0.35, 0.6) / max(prim.bounding_radius, prim.height / 2)  # normalise the size, then vary it
    prim = dataclasses.replace(prim, radius=radius * scale, half_y=half_y * scale, height=height * scale)
    fov_deg = rng.uniform(40.0, 60.0)
    intrinsics = _intrinsics(size, fov_deg)
    centre, radius = prim.bounding_sphere()
    # camera distance so that the bounding sphere spans a random fraction of the field of view
    fill = rng.uniform(0.5, 0.95)
    distance = radius / math.sin(fill * math.radians(fov_deg) / 2)
    yaw, elevation = rng.uniform(0, 2 * math.pi), math.radians(rng.uniform(5.0, 50.0))
    target = centre + rng.uniform(-0.25, 0.25, size=3).astype(np.float32) * radius
    position = target - distance * np.array(
        [math.cos(elevation) * math.cos(yaw), math.cos(elevation) * math.sin(yaw), -math.sin(elevation)]
    )
    position[2] = max(position[2], 0.05)
    pitch = math.atan2(position[2] - target[2], math.hypot(*(target[:2] - position[:2])))
    look = math.atan2(target[1] - position[1], target[0] - position[0])
    pose = _pose(position, look, pitch)
    half_room = np.maximum(np.abs(position[:2]), radius) + rng.uniform(0.3, 3.0, size=2)
    scene = _Scene(
        size, intrinsics, pose, float(half_room[0]), float(half_room[1]), float(rng.uniform(1.0, 4.0)),
        *_random_materials(rng, _choose(rng, TEXTURES, 2), _ROOM_FREQUENCY),
        [prim], _light(rng, (25.0, 75.0)), float(rng.uniform(0.85, 1.15)), float(rng.uniform(0.2, 0.45)),
        _random_colors(rng, 1)[0] * 0.5,
    )  # fmt: skip
    return scene, shape_id, texture_id


def render_object(
    seed: int, index: int, size: int | tuple[int, int] = 64, label_mode: str = "shape", noise_std: float = 0.01
) -> tuple[np.ndarray, int]:
    """Render one SynthObjects image: one dominant primitive, roughly centred, on a random floor/wall background.

    Shape ``index % 4`` and texture ``(index // 4) % 4``, so classes are balanced; size, proportions, pose, colours,
    background, light and camera are random.

    Args:
        seed: data-set seed.
        index: sample index; the image depends only on (seed, index).
        size: side, or (H, W), in pixels.
        label_mode: ``"shape"`` (label indexes ``OBJECT_SHAPES``) or ``"shape_texture"`` (indexes
            ``object_classes("shape_texture")``).
        noise_std: Gaussian sensor noise, fraction of full scale.

    Returns:
        (image (H, W, 3) uint8, label).
    """
    object_classes(label_mode)  # validates label_mode
    scene, shape_id, texture_id = _sample_object_scene(seed, index, _check_size(size))
    with np.errstate(divide="ignore", invalid="ignore"):
        depth, surface, rays = _trace(scene)
        shaded = _shade(scene, depth, surface, rays, shadows=True)
    image = _to_uint8(shaded, noise_std, np.random.default_rng([seed, index, _OBJECT_STREAM, 2]))
    label = shape_id if label_mode == "shape" else shape_id * len(TEXTURES) + texture_id
    return image, label


class SynthObjects(torch.utils.data.Dataset):
    """Object-centric classification images (an offline stand-in for ImageNet-style pre-training).

    Args:
        num: number of samples.
        size: side, or (H, W), in pixels.
        seed: data-set seed; sample i is ``render_object(seed, i, ...)``.
        label_mode: ``"shape"`` (4 classes) or ``"shape_texture"`` (16 classes).
        transform: callable applied to the image (a ``tv_tensors.Image`` uint8 (3, H, W)).
        cache: keep rendered images in memory, shared by the instances of this process with the same seed, size,
            label mode and noise (as :class:`SynthScenes`).
        noise_std: Gaussian sensor noise, fraction of full scale.

    ``__getitem__`` returns ``(image, label)``.
    """

    def __init__(
        self,
        num: int,
        size: int | tuple[int, int] = 64,
        seed: int = 0,
        label_mode: str = "shape",
        transform: Callable[[Any], Any] | None = None,
        cache: bool = True,
        noise_std: float = 0.01,
    ) -> None:
        if num < 0:
            raise ValueError(f"num={num!r}: expected a number of samples >= 0")
        self.classes: list[str] = object_classes(label_mode)
        self.num, self.size, self.seed, self.label_mode = int(num), _check_size(size), int(seed), label_mode
        self.transform, self.cache, self.noise_std = transform, cache, float(noise_std)
        key = ("objects", self.seed, self.size, self.label_mode, self.noise_std)
        self._cache: dict[int, tuple[np.ndarray, int]] = _shared_cache(key) if cache else {}

    def __len__(self) -> int:
        return self.num

    def raw(self, index: int) -> tuple[np.ndarray, int]:
        """(image (H, W, 3) uint8, label) of sample ``index`` (rendered, or taken from the cache)."""
        if not -self.num <= index < self.num:
            raise IndexError(f"index {index} out of range for SynthObjects of length {self.num}")
        index = int(index) % self.num
        if index in self._cache:
            return self._cache[index]
        item = render_object(self.seed, index, self.size, self.label_mode, self.noise_std)
        if self.cache:
            self._cache[index] = item
        return item

    def __getitem__(self, index: int) -> tuple[Any, int]:
        array, label = self.raw(index)
        image = tv_tensors.Image(torch.from_numpy(array.copy()).permute(2, 0, 1))  # a copy: keep the cache intact
        return (self.transform(image) if self.transform is not None else image), label
