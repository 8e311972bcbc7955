"""Write SynthScenes and SynthObjects to disk in the standard layouts (what ``predec data synth`` does).

``out_dir`` receives (``<i>`` = 6-digit sample index, train = the first ``num - num_val`` indices, val the rest)::

    synth.json                                   parameters, class lists, split sizes
    nyu/train.txt, nyu/test.txt                  lines "train/rgb_<i>.png train/sync_depth_<i>.png <fx>"
    nyu/{train,test}/rgb_<i>.png                 RGB (lossless PNG)
    nyu/{train,test}/sync_depth_<i>.png          16-bit depth, millimetres (0 = no surface)
    voc/VOCdevkit/VOC2012/JPEGImages/<i>.png     RGB (lossless PNG)
    voc/VOCdevkit/VOC2012/SegmentationClass/<i>.png   palette PNG of SCENE_CLASSES ids, 255 = ignore
    voc/VOCdevkit/VOC2012/ImageSets/Segmentation/{train,val,trainval}.txt
    objects/{train,val}/<class>/<i>.png          SynthObjects images (every class folder exists in both splits)

Read back with ``NYUDepthV2(out_dir / "nyu", "train.txt")``,
``PascalVOC(out_dir / "voc", "train", classes=SCENE_CLASSES)`` and
``ClassificationFolder(out_dir / "objects" / "train", classes=object_classes(label_mode))``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

import predec
from predec.data.datasets.nyu import NYU_DEPTH_SCALE
from predec.data.io import write_depth, write_image, write_label
from predec.data.synthetic import SCENE_CLASSES, object_classes, render_object, render_scene

LAYOUT_DIRS = ("nyu", "voc", "objects")
"""Sub-directories of ``out_dir`` written (and, with ``overwrite``, replaced) by :func:`write_synthetic`."""


def split_sizes(num: int, val_fraction: float) -> tuple[int, int]:
    """(train, val) sizes: ``round(num * val_fraction)`` validation samples, at least 1 in each split.

    Raises:
        ValueError: ``num < 2`` or ``val_fraction`` outside (0, 1).
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction={val_fraction!r}: expected a fraction strictly between 0 and 1")
    if num < 2:
        raise ValueError(f"num={num!r}: need at least 2 samples (one train, one val)")
    num_val = min(max(round(num * val_fraction), 1), num - 1)
    return num - num_val, num_val


def _write_scenes(out: Path, num: int, size: tuple[int, int], seed: int, num_train: int, progress: bool) -> None:
    nyu, voc = out / "nyu", out / "voc" / "VOCdevkit" / "VOC2012"
    nyu_lines: dict[str, list[str]] = {"train": [], "test": []}
    voc_ids: dict[str, list[str]] = {"train": [], "val": []}
    for index in tqdm(range(num), desc="SynthScenes", unit="img", disable=not progress):
        scene = render_scene(seed, index, size)
        is_train = index < num_train
        name = f"{index:06d}"
        nyu_split = "train" if is_train else "test"
        rgb, depth = f"{nyu_split}/rgb_{name}.png", f"{nyu_split}/sync_depth_{name}.png"
        write_image(nyu / rgb, scene.image)
        write_depth(nyu / depth, scene.depth, NYU_DEPTH_SCALE)
        nyu_lines[nyu_split].append(f"{rgb} {depth} {float(scene.intrinsics[0, 0]):.9g}")
        write_image(voc / "JPEGImages" / f"{name}.png", scene.image)
        write_label(voc / "SegmentationClass" / f"{name}.png", scene.labels)
        voc_ids["train" if is_train else "val"].append(name)
    for split, lines in nyu_lines.items():
        (nyu / f"{split}.txt").write_text("\n".join(lines) + "\n")
    sets = voc / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True, exist_ok=True)
    for split, ids in {**voc_ids, "trainval": voc_ids["train"] + voc_ids["val"]}.items():
        (sets / f"{split}.txt").write_text("\n".join(ids) + "\n")


def _write_objects(
    out: Path, num: int, size: int, seed: int, label_mode: str, num_train: int, progress: bool
) -> list[str]:
    classes = object_classes(label_mode)
    for split in ("train", "val"):
        for name in classes:
            (out / "objects" / split / name).mkdir(parents=True, exist_ok=True)
    for index in tqdm(range(num), desc="SynthObjects", unit="img", disable=not progress):
        image, label = render_object(seed, index, size, label_mode)
        split = "train" if index < num_train else "val"
        write_image(out / "objects" / split / classes[label] / f"{index:06d}.png", image)
    return classes


def write_synthetic(
    out_dir: str | Path,
    num: int,
    size: tuple[int, int] = (128, 128),
    seed: int = 0,
    *,
    num_objects: int = 0,
    object_size: int = 64,
    object_labels: str = "shape",
    val_fraction: float = 0.2,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Render SynthScenes (and SynthObjects) into ``out_dir`` in the NYU, VOC and image-folder layouts.

    Args:
        out_dir: output directory (created).
        num: number of scenes; scene ``i`` is ``render_scene(seed, i, size)``.
        size: scene (H, W) in pixels.
        seed: data-set seed (scenes and objects).
        num_objects: number of SynthObjects images (0 = none); image ``i`` is
            ``render_object(seed, i, object_size, object_labels)``.
        object_size: side of the object images in pixels.
        object_labels: ``"shape"`` or ``"shape_texture"``.
        val_fraction: fraction of each set held out (the last indices) as ``test``/``val``.
        overwrite: replace existing ``nyu``/``voc``/``objects`` sub-directories instead of refusing.
        progress: show tqdm progress bars.

    Returns:
        The record also written to ``out_dir/synth.json`` (parameters, classes, split sizes).

    Raises:
        FileExistsError: a layout directory already exists and ``overwrite`` is false.
    """
    out = Path(out_dir)
    num_train, num_val = split_sizes(num, val_fraction)
    object_split = split_sizes(num_objects, val_fraction) if num_objects else (0, 0)
    existing = [out / name for name in LAYOUT_DIRS if (out / name).exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{existing[0]} already exists; use another output directory or replace it (overwrite=True, --overwrite)"
        )
    for path in existing:
        shutil.rmtree(path)
    out.mkdir(parents=True, exist_ok=True)
    _write_scenes(out, num, size, seed, num_train, progress)
    record: dict[str, Any] = {
        "generator": f"predec {predec.__version__} data synth",
        "seed": seed,
        "num": num,
        "size": list(size),
        "val_fraction": val_fraction,
        "scene_classes": list(SCENE_CLASSES),
        "splits": {"train": num_train, "val": num_val},
        "nyu": {"root": "nyu", "split_files": ["train.txt", "test.txt"], "depth_scale": NYU_DEPTH_SCALE},
        "voc": {"root": "voc", "splits": ["train", "val", "trainval"]},
    }
    if num_objects:
        classes = _write_objects(out, num_objects, object_size, seed, object_labels, object_split[0], progress)
        record["objects"] = {
            "root": "objects",
            "num": num_objects,
            "size": object_size,
            "labels": object_labels,
            "classes": classes,
            "splits": {"train": object_split[0], "val": object_split[1]},
        }
    (out / "synth.json").write_text(json.dumps(record, indent=2) + "\n")
    return record
