"""Readers of the standard dense-prediction datasets; each returns the common sample dict (:mod:`predec.data.sample`).

See ``docs/datasets.md`` for the layouts, label conversions and depth scales.
"""

from predec.data.datasets.ade20k import ADE20K, ADE20K_CLASSES, reduce_zero_label
from predec.data.datasets.base import DepthSplitDataset, SampleDataset, SegmentationDataset
from predec.data.datasets.cityscapes import CITYSCAPES_CLASSES, CITYSCAPES_ID_TO_TRAIN_ID, Cityscapes
from predec.data.datasets.folder import ClassificationFolder, UnlabeledFolder, find_images
from predec.data.datasets.kitti import KB_CROP_SIZE, KITTI_DEPTH_SCALE, KITTIEigen
from predec.data.datasets.nyu import NYU_DEPTH_SCALE, NYUDepthV2
from predec.data.datasets.synth_layout import write_synthetic
from predec.data.datasets.voc import VOC_CLASSES, PascalVOC

__all__ = [
    "ADE20K",
    "ADE20K_CLASSES",
    "CITYSCAPES_CLASSES",
    "CITYSCAPES_ID_TO_TRAIN_ID",
    "KB_CROP_SIZE",
    "KITTI_DEPTH_SCALE",
    "NYU_DEPTH_SCALE",
    "VOC_CLASSES",
    "Cityscapes",
    "ClassificationFolder",
    "DepthSplitDataset",
    "KITTIEigen",
    "NYUDepthV2",
    "PascalVOC",
    "SampleDataset",
    "SegmentationDataset",
    "UnlabeledFolder",
    "find_images",
    "reduce_zero_label",
    "write_synthetic",
]
