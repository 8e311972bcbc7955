"""The data of a pre-training run: two-view crops (self-supervised), classification crops with a held-out split
(supervised), and the step-indexed, resumable loaders of both (:class:`StepDataModule`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, default_collate
from torchvision.transforms import v2

from predec.config import ConfigError, check_options
from predec.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from predec.engine.datamodule import SeededSamples, ShardSampler, StepBatchSampler
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


class StepDataModule(L.LightningDataModule):
    """Step-indexed training loader: deterministic in (seed, step) and resumable.

    The sampling of :mod:`predec.engine.datamodule` (``StepBatchSampler`` + ``SeededSamples``): a resumed run sees
    exactly the batches an uninterrupted one would have seen.

    Args:
        train_set: factory of the training set (called in ``setup``).
        batch_size: training images per process.
        seed: run seed.
        max_steps: optimiser steps of the run.
        accumulate_grad_batches: batches per optimiser step.
        num_workers: loader workers.
    """

    def __init__(
        self,
        train_set: Callable[[], Dataset],
        batch_size: int,
        seed: int,
        max_steps: int,
        accumulate_grad_batches: int = 1,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self._train_factory = train_set
        self.batch_size, self.seed, self.max_steps = batch_size, seed, max_steps
        self.accumulate, self.num_workers = accumulate_grad_batches, num_workers
        self.train_set: Dataset | None = None

    def _rank_world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        return (0, 1) if trainer is None else (trainer.global_rank, trainer.world_size)

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.train_set is None:
            self.train_set = self._train_factory()

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None
        rank, world = self._rank_world()
        trainer = getattr(self, "trainer", None)
        sampler = StepBatchSampler(
            len(self.train_set),  # type: ignore[arg-type]
            self.batch_size,
            self.seed,
            total_batches=self.max_steps * self.accumulate,
            start_batch=trainer.global_step * self.accumulate if trainer is not None else 0,
            rank=rank,
            world_size=world,
        )
        return DataLoader(
            SeededSamples(self.train_set),
            batch_sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=default_collate,
            persistent_workers=self.num_workers > 0,
        )


class EvalStepDataModule(StepDataModule):
    """:class:`StepDataModule` plus an evaluation loader sharded without repetition over the processes.

    Args:
        train_set: factory of the training set.
        val_set: factory of the evaluation set.
        eval_batch_size: evaluation images per process.
        **kwargs: the other :class:`StepDataModule` arguments.
    """

    def __init__(
        self, train_set: Callable[[], Dataset], val_set: Callable[[], Dataset], eval_batch_size: int, **kwargs: Any
    ) -> None:
        super().__init__(train_set, **kwargs)
        self._val_factory, self.eval_batch_size = val_set, eval_batch_size
        self.val_set: Dataset | None = None

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage in ("fit", "validate") and self.val_set is None:
            self.val_set = self._val_factory()

    def val_dataloader(self) -> DataLoader:
        assert self.val_set is not None
        rank, world = self._rank_world()
        return DataLoader(
            self.val_set,
            batch_size=self.eval_batch_size,
            sampler=ShardSampler(len(self.val_set), rank, world),  # type: ignore[arg-type]
            num_workers=self.num_workers,
            collate_fn=default_collate,
        )
