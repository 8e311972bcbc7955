"""The data layer: the common sample format, synthetic data, dataset readers, transforms and file I/O.

See ``docs/datasets.md`` (readers, layouts, transforms) and ``docs/synthetic.md`` (SynthScenes, SynthObjects).
"""

from predec.data.datasets import (
    ADE20K,
    ADE20K_CLASSES,
    CITYSCAPES_CLASSES,
    KITTI_DEPTH_SCALE,
    NYU_DEPTH_SCALE,
    VOC_CLASSES,
    Cityscapes,
    ClassificationFolder,
    KITTIEigen,
    NYUDepthV2,
    PascalVOC,
    UnlabeledFolder,
    write_synthetic,
)
from predec.data.io import DataError, read_depth, read_image, read_label
from predec.data.sample import IGNORE_INDEX, Depth, make_sample
from predec.data.synthetic import (
    LABEL_MODES,
    OBJECT_SHAPES,
    SCENE_CLASSES,
    TEXTURES,
    SceneOptions,
    SceneSample,
    SynthObjects,
    SynthScenes,
    object_classes,
    render_object,
    render_scene,
)
from predec.data.transforms import IMAGENET_MEAN, IMAGENET_STD, TwoViewCrop, eval_transform, train_transform

__all__ = [
    "ADE20K",
    "ADE20K_CLASSES",
    "CITYSCAPES_CLASSES",
    "IGNORE_INDEX",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "KITTI_DEPTH_SCALE",
    "LABEL_MODES",
    "NYU_DEPTH_SCALE",
    "OBJECT_SHAPES",
    "SCENE_CLASSES",
    "TEXTURES",
    "VOC_CLASSES",
    "Cityscapes",
    "ClassificationFolder",
    "DataError",
    "Depth",
    "KITTIEigen",
    "NYUDepthV2",
    "PascalVOC",
    "SceneOptions",
    "SceneSample",
    "SynthObjects",
    "SynthScenes",
    "TwoViewCrop",
    "UnlabeledFolder",
    "eval_transform",
    "make_sample",
    "object_classes",
    "read_depth",
    "read_image",
    "read_label",
    "render_object",
    "render_scene",
    "train_transform",
    "write_synthetic",
]
