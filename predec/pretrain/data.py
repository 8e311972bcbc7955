"""The data of a pre-training run: two-view crops (self-supervised) and classification crops with a held-out split
(supervised); the engine's step-indexed DataModules load them (:mod:`predec.engine.datamodule`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from predec.config import ConfigError, check_options
from predec.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from predec.pretrain.config import PretrainDataConfig

READER_FIXED: tuple[str, ...] = ("num", "root", "size", "seed", "transform", "classes")
"""Reader parameters a recipe sets through its own keys, not through ``data.reader_kwargs``."""


class ImagesOnly(Dataset):
    """A view of an ``(image, label)`` dataset that yields only ``transform(image)``."""

    def __init__(self, dataset: Dataset, transform: Callable[[Any], Any]) -> None:
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        image, _ = self.dataset[index]
        return self.transform(image)


def ssl_dataset(config: PretrainDataConfig) -> Dataset:
    """The two-view training set of a self-supervised recipe (items: :class:`predec.data.TwoViewCrop` dicts)."""
    from predec.data import SynthObjects, SynthScenes, TwoViewCrop, UnlabeledFolder

    views = TwoViewCrop(
        size=config.view_size, scale=tuple(config.crop_scale), min_overlap=config.min_overlap, photometric=True
    )
    size = tuple(config.image_size)
    if config.dataset == "synth_scenes":  # SynthScenes checks its render options itself
        return SynthScenes(config.num_train, size=size, seed=config.synth_seed, transform=views, **config.reader_kwargs)
    if config.dataset == "synth_objects":
        check_options(SynthObjects, config.reader_kwargs, "data.reader_kwargs", fixed=READER_FIXED)
        objects = SynthObjects(config.num_train, size=size, seed=config.synth_seed, **config.reader_kwargs)
        return ImagesOnly(objects, views)
    assert config.root is not None
    check_options(UnlabeledFolder, config.reader_kwargs, "data.reader_kwargs", fixed=READER_FIXED)
    return UnlabeledFolder(config.root, transform=views, **config.reader_kwargs)


def classification_classes(config: PretrainDataConfig) -> list[str]:
    """Class names in label order: SynthObjects' classes of ``reader_kwargs.label_mode``, or the sorted
    sub-folder names of ``data.root``."""
    if config.dataset == "synth_objects":
        from predec.data import object_classes

        return object_classes(config.reader_kwargs.get("label_mode", "shape"))
    if config.dataset == "folder":
        from predec.data.datasets.base import require_dir

        root = require_dir(Path(str(config.root)), "one sub-folder per class")
        classes = sorted(path.name for path in root.iterdir() if path.is_dir())
        if not classes:
            raise ConfigError(f"data.root={config.root!r} has no class sub-folders (root/<class>/<images>).")
        return classes
    raise ConfigError(f"method=supervised needs data.dataset=synth_objects or folder, not {config.dataset!r}.")


def classification_transform(config: PretrainDataConfig, train: bool) -> v2.Compose:
    """Training (random resized crop + flip) or evaluation (resize + centre crop) transform, then normalisation."""
    size = config.view_size
    if train:
        steps: list[Any] = [
            v2.RandomResizedCrop(size, scale=tuple(config.crop_scale), antialias=True),
            v2.RandomHorizontalFlip(),
        ]
    else:
        steps = [v2.Resize(size, antialias=True), v2.CenterCrop(size)]
    return v2.Compose([*steps, v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def classification_datasets(config: PretrainDataConfig, train: bool) -> Dataset:
    """The training (``train=True``) or held-out ``(image, label)`` set of a supervised recipe.

    SynthObjects: ``num_train`` images of seed ``synth_seed`` / ``num_val`` images of seed ``synth_seed + 1``.
    Folders: ``root`` / ``val_root``, labels pinned to the training folder's classes.
    """
    transform = classification_transform(config, train)
    if config.dataset == "synth_objects":
        from predec.data import SynthObjects

        check_options(SynthObjects, config.reader_kwargs, "data.reader_kwargs", fixed=READER_FIXED)
        return SynthObjects(
            config.num_train if train else config.num_val,
            size=tuple(config.image_size),
            seed=config.synth_seed if train else config.synth_seed + 1,
            transform=transform,
            **config.reader_kwargs,
        )
    from predec.data import ClassificationFolder

    root = config.root if train else config.val_root
    check_options(ClassificationFolder, config.reader_kwargs, "data.reader_kwargs", fixed=READER_FIXED)
    return ClassificationFolder(
        str(root), classes=classification_classes(config), transform=transform, **config.reader_kwargs
    )
