"""SynthScenes / SynthObjects: determinism, classes, geometry of depth, shading, dataset wrappers."""

import numpy as np
import pytest
import torch
from torchvision import tv_tensors

from predec.data import synthetic
from predec.data.sample import Depth
from predec.data.synthetic import (
    OBJECT_SHAPES,
    SCENE_CLASSES,
    TEXTURES,
    SceneSample,
    SynthObjects,
    SynthScenes,
    object_classes,
    render_object,
    render_scene,
)

SMALL = (48, 64)


def _arrays(sample: SceneSample) -> list[np.ndarray]:
    return [sample.image, sample.labels, sample.depth, sample.intrinsics, sample.camera_to_world, sample.instances]


def _rays(sample: SceneSample) -> np.ndarray:
    """(H, W, 3) world-frame ray directions with camera-z component 1, computed from the sample's own K and pose."""
    height, width = sample.labels.shape
    v, u = np.mgrid[0:height, 0:width]
    pixels = np.stack([u, v, np.ones_like(u)], axis=-1).astype(np.float64)
    camera = pixels @ np.linalg.inv(sample.intrinsics.astype(np.float64)).T
    return camera @ sample.camera_to_world[:3, :3].astype(np.float64).T


def _points(sample: SceneSample) -> np.ndarray:
    """(H, W, 3) world points of every pixel from its depth."""
    return sample.camera_to_world[:3, 3].astype(np.float64) + sample.depth[..., None] * _rays(sample)


def test_same_seed_and_index_give_identical_arrays_in_any_call_order():
    first = render_scene(3, 5, SMALL)
    render_scene(3, 6, SMALL)  # rendering something else in between changes nothing
    again = render_scene(3, 5, SMALL)
    for a, b in zip(_arrays(first), _arrays(again)):
        np.testing.assert_array_equal(a, b)
    assert first.shapes == again.shapes


def test_different_indices_and_seeds_differ():
    base = render_scene(0, 0, SMALL)
    for other in (render_scene(0, 1, SMALL), render_scene(1, 0, SMALL)):
        assert not np.array_equal(base.image, other.image)
        assert not np.array_equal(base.depth, other.depth)


def test_arrays_have_the_documented_shapes_dtypes_and_values():
    sample = render_scene(0, 2, (40, 72))
    assert sample.image.shape == (40, 72, 3) and sample.image.dtype == np.uint8
    assert sample.labels.shape == (40, 72) and sample.labels.dtype == np.uint8
    assert sample.depth.shape == (40, 72) and sample.depth.dtype == np.float32
    assert sample.intrinsics.shape == (3, 3) and sample.intrinsics.dtype == np.float32
    assert sample.camera_to_world.shape == (4, 4)
    assert set(np.unique(sample.labels)) <= {*range(len(SCENE_CLASSES)), 255}
    assert np.array_equal(sample.labels == 255, sample.depth == 0)  # ignore exactly where nothing is hit


@pytest.mark.parametrize("size", [(48, 64), (64, 48), (33, 17)])
def test_intrinsics_are_consistent_with_the_size(size):
    height, width = size
    fov = 60.0
    sample = render_scene(1, 1, size, fov_deg=fov)
    K = sample.intrinsics
    assert K[0, 0] == pytest.approx(K[1, 1])
    assert K[0, 0] == pytest.approx(max(height, width) / 2 / np.tan(np.radians(fov) / 2), rel=1e-6)
    assert (K[0, 2], K[1, 2]) == pytest.approx(((width - 1) / 2, (height - 1) / 2))
    np.testing.assert_array_equal(K[2], [0, 0, 1])
    np.testing.assert_array_equal([K[0, 1], K[1, 0]], [0, 0])


def test_every_class_appears_across_200_samples_and_depth_stays_in_range():
    counts = np.zeros(256, dtype=np.int64)
    for index in range(200):
        sample = render_scene(0, index, SMALL)
        counts += np.bincount(sample.labels.ravel(), minlength=256)
        valid = sample.depth[sample.labels != 255]
        assert valid.min() > 0.3 and valid.max() < 10.0, (index, valid.min(), valid.max())
    assert all(counts[c] > 0 for c in range(len(SCENE_CLASSES))), dict(zip(SCENE_CLASSES, counts))
    assert counts[len(SCENE_CLASSES) : 255].sum() == 0


def test_floor_depth_equals_the_analytic_depth_of_the_floor_plane():
    for index in range(4):
        sample = render_scene(2, index, SMALL)
        floor = sample.labels == SCENE_CLASSES.index("floor")
        assert floor.sum() > 50
        rays = _rays(sample)
        camera_height = sample.camera_to_world[2, 3] - sample.floor_height
        analytic = -camera_height / rays[..., 2]  # the ray parameter is the z-depth (camera-z component 1)
        np.testing.assert_allclose(sample.depth[floor], analytic[floor], rtol=1e-4)
        assert np.all(rays[..., 2][floor] < 0)  # floor pixels look down


def test_walls_are_vertical_planes_and_objects_stand_on_the_floor():
    sample = render_scene(4, 1, SMALL)
    points = _points(sample)
    wall = sample.labels == SCENE_CLASSES.index("wall")
    for instance in range(1, 5):  # each wall is one plane x = const or y = const
        on_wall = sample.instances == instance
        if on_wall.sum() < 3:
            continue
        axis = 0 if instance <= 2 else 1
        coords = points[..., axis][on_wall]
        assert np.ptp(coords) < 1e-3 * max(1.0, abs(coords.mean()))
    assert wall.any()
    objects = (sample.labels >= 2) & (sample.labels != 255)
    assert points[..., 2][objects].min() > -1e-3


@pytest.mark.parametrize("index", range(3))
def test_object_depth_lies_on_the_primitive_surfaces(index):
    """Back-project object pixels and check each primitive's implicit surface equation."""
    seed, size = 5, (64, 80)
    sample = render_scene(seed, index, size)
    scene = synthetic._sample_scene(seed, index, size, synthetic.SceneOptions())
    points = _points(sample)
    checked = 0
    for k, prim in enumerate(scene.primitives):
        mask = sample.instances == 5 + k
        if not mask.any():
            continue
        assert SCENE_CLASSES[sample.labels[mask][0]] == prim.shape
        x, y, z = (points[..., i][mask] for i in range(3))
        qx, qy = x - prim.x, y - prim.y
        radial = np.hypot(qx, qy)
        if prim.shape == "sphere":
            residual = np.abs(np.sqrt(qx**2 + qy**2 + (z - prim.radius) ** 2) - prim.radius)
        elif prim.shape == "cylinder":
            residual = np.minimum(np.abs(radial - prim.radius), np.abs(z - prim.height))
        elif prim.shape == "cone":
            residual = np.abs(radial - prim.radius * (prim.height - z) / prim.height)
        else:
            c, s = np.cos(prim.yaw), np.sin(prim.yaw)
            lx, ly = c * qx + s * qy, c * qy - s * qx
            halves = (prim.radius, prim.half_y, prim.height / 2)
            local = (np.abs(lx), np.abs(ly), np.abs(z - prim.height / 2))
            inside = np.all([lc <= h + 1e-3 for lc, h in zip(local, halves)], axis=0)
            residual = np.where(inside, np.min([np.abs(lc - h) for lc, h in zip(local, halves)], axis=0), 1.0)
        assert residual.max() < 2e-3, (prim.shape, residual.max())
        checked += 1
    assert checked >= 2


def test_colours_come_from_the_labelled_surface():
    """Solid materials, no shadows, no noise: every flat surface (floor, each wall) has exactly one colour."""
    for index in range(3):
        sample = render_scene(6, index, SMALL, noise_std=0.0, textures=("solid",), shadows=False)
        for instance in range(5):
            colours = sample.image[sample.instances == instance]
            if len(colours):
                assert len(np.unique(colours, axis=0)) == 1, (index, instance)


def test_shadows_only_darken():
    darkened = 0
    for index in range(3):
        lit = render_scene(7, index, SMALL, noise_std=0.0, shadows=False)
        shadowed = render_scene(7, index, SMALL, noise_std=0.0, shadows=True)
        np.testing.assert_array_equal(lit.labels, shadowed.labels)
        assert np.all(shadowed.image <= lit.image)
        darkened += int((shadowed.image < lit.image).any(axis=-1).sum())
    assert darkened > 0


def test_noise_is_gaussian_with_the_requested_std():
    clean = render_scene(8, 0, (64, 64), noise_std=0.0).image.astype(np.float64)
    noisy = render_scene(8, 0, (64, 64), noise_std=0.02).image.astype(np.float64)
    interior = (clean > 10) & (clean < 245)  # away from clipping
    difference = (noisy - clean)[interior]
    assert abs(difference.mean()) < 0.2
    assert difference.std() == pytest.approx(0.02 * 255, rel=0.1)


def test_options_restrict_shapes_and_bad_options_are_rejected():
    sample = render_scene(0, 0, SMALL, shapes=("cone",), num_objects=(2, 2))
    assert sample.shapes == ("cone", "cone")
    assert set(np.unique(sample.labels)) <= {0, 1, SCENE_CLASSES.index("cone"), 255}
    with pytest.raises(TypeError, match=r"unknown render option.*'colour'.*valid options"):
        render_scene(0, 0, SMALL, colour=True)
    with pytest.raises(ValueError, match=r"shapes=.*torus"):
        render_scene(0, 0, SMALL, shapes=("torus",))
    with pytest.raises(ValueError, match=r"ambient=\(0.5, 0.2\): expected \(low, high\)"):
        render_scene(0, 0, SMALL, ambient=(0.5, 0.2))
    with pytest.raises(ValueError, match=r"camera_height=.*below wall_height"):
        render_scene(0, 0, SMALL, camera_height=(1.0, 3.0))
    with pytest.raises(ValueError, match="size="):
        render_scene(0, 0, (0, 10))
    with pytest.raises(ValueError, match="noise_std"):
        render_scene(0, 0, SMALL, noise_std=-1.0)


def test_synthscenes_returns_common_samples_and_caches():
    seen = []
    data = SynthScenes(3, size=SMALL, seed=4, transform=lambda s: seen.append(s["meta"]["index"]) or s)
    assert len(data) == 3 and data.classes == SCENE_CLASSES
    sample = data[1]
    raw = render_scene(4, 1, SMALL)
    assert isinstance(sample["image"], tv_tensors.Image) and sample["image"].shape == (3, *SMALL)
    assert sample["image"].dtype == torch.uint8
    assert isinstance(sample["labels"], tv_tensors.Mask) and sample["labels"].dtype == torch.int64
    assert isinstance(sample["depth"], Depth) and sample["depth"].shape == (1, *SMALL)
    np.testing.assert_array_equal(sample["image"].permute(1, 2, 0).numpy(), raw.image)
    np.testing.assert_array_equal(sample["labels"].numpy(), raw.labels)
    np.testing.assert_array_equal(sample["depth"][0].numpy(), raw.depth)
    meta = sample["meta"]
    assert meta["dataset"] == "synthscenes" and meta["index"] == 1 and meta["seed"] == 4
    assert meta["focal"] == pytest.approx(float(raw.intrinsics[0, 0]))
    np.testing.assert_allclose(meta["intrinsics"], raw.intrinsics)
    assert data.raw(1) is data.raw(1)  # cached
    sample["image"].zero_()  # a caller writing into its sample leaves the cache intact
    np.testing.assert_array_equal(data.raw(1).image, raw.image)
    assert seen == [1]
    assert data[-1]["meta"]["index"] == 2
    with pytest.raises(IndexError, match="out of range"):
        data[3]
    uncached = SynthScenes(2, size=SMALL, cache=False)
    assert uncached.raw(0) is not uncached.raw(0)
    with pytest.raises(TypeError, match="unknown render option"):
        SynthScenes(2, size=SMALL, bogus=1)


def test_render_object_is_deterministic_balanced_and_labelled():
    image, label = render_object(0, 7, size=(40, 56))
    again, label_again = render_object(0, 7, size=(40, 56))
    assert image.shape == (40, 56, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image, again)
    assert label == label_again
    assert not np.array_equal(render_object(0, 8, 32)[0], render_object(0, 9, 32)[0])
    shape_labels = [render_object(1, i, 16)[1] for i in range(16)]
    combined = [render_object(1, i, 16, label_mode="shape_texture")[1] for i in range(16)]
    assert sorted(combined) == list(range(len(OBJECT_SHAPES) * len(TEXTURES)))
    assert shape_labels == [c // len(TEXTURES) for c in combined]
    with pytest.raises(ValueError, match="label_mode"):
        render_object(0, 0, label_mode="colour")


def test_object_is_dominant_and_roughly_centred():
    scene, _, _ = synthetic._sample_object_scene(2, 3, (48, 48))
    _, surface, _ = synthetic._trace(scene)
    for index in range(16):
        scene, _, _ = synthetic._sample_object_scene(2, index, (48, 48))
        _, surface, _ = synthetic._trace(scene)
        mask = surface == 5
        assert 0.05 < mask.mean() < 0.9, index
        rows, cols = np.nonzero(mask)
        assert abs(rows.mean() - 23.5) < 14 and abs(cols.mean() - 23.5) < 14, index


def test_synthobjects_labels_match_classes():
    data = SynthObjects(8, size=24, seed=2, label_mode="shape_texture")
    assert data.classes == object_classes("shape_texture") and len(data.classes) == 16
    for index in range(len(data)):
        image, label = data[index]
        assert isinstance(image, tv_tensors.Image) and image.shape == (3, 24, 24) and image.dtype == torch.uint8
        shape, texture = data.classes[label].split("-")
        assert shape == OBJECT_SHAPES[index % 4] and texture == TEXTURES[(index // 4) % 4]
        np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), render_object(2, index, 24, "shape_texture")[0])
    shapes = SynthObjects(4, size=24, seed=2, transform=lambda img: img.float() / 255)
    assert shapes.classes == list(OBJECT_SHAPES)
    image, label = shapes[2]
    assert image.dtype == torch.float32 and label == 2
    with pytest.raises(IndexError):
        shapes[4]


def test_instances_with_equal_settings_share_rendered_samples(monkeypatch):
    calls = []
    real_render = synthetic.render_scene
    monkeypatch.setattr(synthetic, "render_scene", lambda *a, **k: calls.append(a[:2]) or real_render(*a, **k))
    monkeypatch.setattr(synthetic, "_SHARED_CACHES", type(synthetic._SHARED_CACHES)())
    first = SynthScenes(3, size=(16, 16), seed=5)
    first[0], first[1]
    second = SynthScenes(10, size=(16, 16), seed=5)  # another length, same settings: same samples
    np.testing.assert_array_equal(second[1]["image"].numpy(), first[1]["image"].numpy())
    assert calls == [(5, 0), (5, 1)]
    SynthScenes(3, size=(16, 16), seed=5, noise_std=0.0)[0]  # other settings render their own
    SynthScenes(3, size=(16, 16), seed=5, cache=False)[0]
    SynthScenes(3, size=(16, 16), seed=5, cache=False)[0]
    assert calls == [(5, 0), (5, 1), (5, 0), (5, 0), (5, 0)]


def test_the_shared_cache_keeps_only_the_most_recent_settings(monkeypatch):
    monkeypatch.setattr(synthetic, "_SHARED_CACHES", type(synthetic._SHARED_CACHES)())
    for seed in range(synthetic.SHARED_CACHE_DATASETS + 2):
        SynthObjects(2, size=8, seed=seed)[0]
    assert len(synthetic._SHARED_CACHES) == synthetic.SHARED_CACHE_DATASETS
    assert ("objects", 0, (8, 8), "shape", 0.01) not in synthetic._SHARED_CACHES
