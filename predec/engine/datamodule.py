"""Data for training and evaluation: deterministic step-indexed sampling, the step-indexed DataModules of every
run (:class:`StepDataModule`, :class:`EvalStepDataModule`) and a recipe's dense datasets
(:class:`DenseDataModule`).

Training data order is a pure function of (seed, step): the global sample stream is the concatenation of seeded
permutations of the dataset (one per pass), optimiser step ``s`` reads stream positions
``[s·G, (s+1)·G)`` with ``G`` the global batch (per-device batch × processes), and rank ``r`` takes its slice. Each
sample's augmentation is drawn from an RNG seeded by (seed, stream position) inside the loader, whatever the number
of workers. A resumed run therefore restarts the stream at its checkpoint's step and sees exactly the batches an
uninterrupted run would have seen; no sampler state needs saving.

Evaluation shards the set without repetition (rank ``r`` takes items ``r, r + world, ...``), so metrics summed
over processes equal the single-process metrics.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from predec.config import ConfigError, DataConfig, check_options

SEGMENTATION_READERS = ("voc", "cityscapes", "ade20k")
DEPTH_READERS = ("nyu", "kitti")
DATASETS = ("synth", *DEPTH_READERS, *SEGMENTATION_READERS)


_SAMPLE_STREAM, _ORDER_STREAM = 0, 1


def _derive_seed(*words: int) -> int:
    """A 63-bit seed derived from non-negative integers (NumPy's SeedSequence hashing)."""
    state = np.random.SeedSequence([w & 0xFFFFFFFFFFFFFFFF for w in words]).generate_state(1, dtype=np.uint64)
    return int(state[0] >> 1)


def sample_seed(seed: int, position: int) -> int:
    """Seed of the augmentation of the sample at stream ``position`` of a run seeded with ``seed``."""
    return _derive_seed(seed, _SAMPLE_STREAM, position)


class StepBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of ``(dataset index, augmentation seed)`` for optimiser steps ``start_batch .. total_batches - 1``.

    ``len()`` is ``total_batches`` (the whole run) so that Lightning's loop counters, restored from a checkpoint,
    stay consistent with the batches still to come.

    Args:
        num_samples: dataset length.
        batch_size: per-process batch size.
        seed: run seed (permutations and augmentation seeds).
        total_batches: batches of the whole run per process (``max_steps × accumulate_grad_batches``).
        start_batch: first batch to produce (batches already consumed before a resume).
        rank: this process' rank.
        world_size: number of processes.
        shuffle: permute each pass over the data (else sequential order).
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        seed: int,
        total_batches: int,
        start_batch: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
    ) -> None:
        if num_samples <= 0:
            raise ValueError("The training set is empty: nothing to sample.")
        if batch_size <= 0 or not 0 <= rank < world_size or not 0 <= start_batch <= total_batches:
            raise ValueError(
                f"StepBatchSampler: invalid batch_size={batch_size}, rank={rank}/{world_size}, "
                f"start_batch={start_batch}/{total_batches}."
            )
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.total_batches, self.start_batch = total_batches, start_batch
        self.rank, self.world_size, self.shuffle = rank, world_size, shuffle
        self._perm_pass = -1
        self._perm: list[int] = []

    def __len__(self) -> int:
        return self.total_batches

    def _index(self, position: int) -> int:
        data_pass, offset = divmod(position, self.num_samples)
        if not self.shuffle:
            return offset
        if data_pass != self._perm_pass:
            generator = torch.Generator().manual_seed(_derive_seed(self.seed, _ORDER_STREAM, data_pass))
            self._perm = torch.randperm(self.num_samples, generator=generator).tolist()
            self._perm_pass = data_pass
        return self._perm[offset]

    def batch(self, batch_index: int) -> list[tuple[int, int]]:
        """The ``(index, seed)`` pairs of this rank for batch ``batch_index``."""
        global_batch = self.batch_size * self.world_size
        first = batch_index * global_batch + self.rank * self.batch_size
        positions = range(first, first + self.batch_size)
        return [(self._index(p), sample_seed(self.seed, p)) for p in positions]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for batch_index in range(self.start_batch, self.total_batches):
            yield self.batch(batch_index)


class SeededSamples(Dataset):
    """Wrap a dataset so that item ``(index, seed)`` is produced with the torch and Python RNGs seeded by ``seed``.

    torchvision's transforms draw from torch's RNG (and some code from Python's ``random``); NumPy's global RNG is
    not seeded per sample (augmentations should not use it). The caller's RNG states are restored afterwards.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, item: tuple[int, int]) -> Any:
        index, seed = item
        generator = torch.default_generator  # seeding only the CPU generator is ~500x cheaper than torch.manual_seed
        torch_state, python_state = generator.get_state(), random.getstate()
        try:
            generator.manual_seed(seed)
            random.seed(seed)
            return self.dataset[index]
        finally:
            generator.set_state(torch_state)
            random.setstate(python_state)


class ShardSampler(Sampler[int]):
    """Items ``rank, rank + world_size, ...`` in order: every item evaluated exactly once over all processes."""

    def __init__(self, num_samples: int, rank: int = 0, world_size: int = 1) -> None:
        self.num_samples, self.rank, self.world_size = num_samples, rank, world_size

    def __len__(self) -> int:
        return len(range(self.rank, self.num_samples, self.world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.num_samples, self.world_size))


def collate_samples(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack ``image``/``labels``/``depth`` of sample dicts into plain tensors; ``meta`` stays a list of dicts.

    Raises:
        ValueError: samples of one batch differ in size (name the files; use batch size 1 or a crop).
    """
    batch: dict[str, Any] = {"meta": [dict(s.get("meta", {})) for s in samples]}
    for key in ("image", "labels", "depth"):
        if key not in samples[0]:
            continue
        tensors = [torch.as_tensor(s[key]).as_subclass(torch.Tensor) for s in samples]
        shapes = {tuple(t.shape) for t in tensors}
        if len(shapes) > 1:
            paths = [m.get("path", m.get("index")) for m in batch["meta"]]
            raise ValueError(
                f"Cannot batch samples of different {key} sizes {sorted(shapes)} ({paths}); use batch size 1 for "
                "evaluation at native resolution, or a training crop (data.crop_size)."
            )
        batch[key] = torch.stack(tensors)
    return batch


def dataset_classes(config: DataConfig) -> tuple[str, ...] | None:
    """Class names of the configured segmentation dataset (None for depth-only sets)."""
    if config.dataset == "synth":
        from predec.data.synthetic import SCENE_CLASSES

        return tuple(SCENE_CLASSES)
    if config.dataset in DEPTH_READERS:
        return None
    from predec.data import datasets

    names = {"voc": datasets.VOC_CLASSES, "cityscapes": datasets.CITYSCAPES_CLASSES, "ade20k": datasets.ADE20K_CLASSES}
    return tuple(config.reader_kwargs.get("classes", names[config.dataset]))


def check_task(config: DataConfig, task: str, num_classes: int | None) -> None:
    """Raise a ``ValueError`` if the dataset cannot serve ``task`` or has another number of classes."""
    if config.dataset not in DATASETS:
        raise ValueError(f"data.dataset={config.dataset!r} is not one of {', '.join(DATASETS)}.")
    if task == "depth" and config.dataset in SEGMENTATION_READERS:
        raise ValueError(f"data.dataset={config.dataset!r} has no depth; depth sets: synth, nyu, kitti.")
    if task == "segmentation":
        if config.dataset in DEPTH_READERS:
            raise ValueError(f"data.dataset={config.dataset!r} has no labels; segmentation sets: synth, voc, ...")
        classes = dataset_classes(config)
        if classes is not None and num_classes != len(classes):
            raise ValueError(
                f"model.num_classes={num_classes} but data.dataset={config.dataset!r} has {len(classes)} classes; "
                f"set model.num_classes={len(classes)}."
            )


ROLES: tuple[str, ...] = ("train", "val", "test")
"""What a data set is for: training, validation (evaluation during and after training) or the final test."""


def build_dataset(config: DataConfig, role: str, transform: Any) -> Dataset:
    """The ``role`` set of ``config`` (``train``, ``val`` or ``test``), with ``transform`` applied to samples.

    ``synth``: ``num_train`` / ``num_val`` / ``num_test`` scenes of seeds ``synth_seed`` / ``+ 1`` / ``+ 2``.
    Readers: ``train_split`` / ``val_split`` / ``test_split`` (evaluation splits under ``val_root`` if given).

    Raises:
        ConfigError: a reader option (``data.reader_kwargs`` / ``data.train_reader_kwargs``) the reader does not take.
        ValueError: an unknown dataset or role, a test set without ``data.test_split``, or a reader dataset without
            ``data.root``.
    """
    if role not in ROLES:
        raise ValueError(f"Unknown data set role {role!r}; valid: {', '.join(ROLES)}.")
    train = role == "train"
    if role == "test" and config.test_split is None:
        raise ValueError("There is no test set: data.test_split is not set (e.g. data.test_split=test).")
    split = {"train": config.train_split, "val": config.val_split, "test": config.test_split}[role]
    kwargs = {**config.reader_kwargs, **(config.train_reader_kwargs if train else {})}
    key = "data.train_reader_kwargs" if train and config.train_reader_kwargs else "data.reader_kwargs"
    if config.dataset == "synth":
        from predec.data.synthetic import SynthScenes

        num = {"train": config.num_train, "val": config.num_val, "test": config.num_test}[role]
        seed = config.synth_seed + ROLES.index(role)
        try:
            return SynthScenes(num, size=tuple(config.image_size), seed=seed, transform=transform, **kwargs)
        except TypeError as err:  # SynthScenes takes **render_options and names an unknown one itself
            raise ConfigError(f"{key}: {err}") from err
    from predec.data import datasets

    readers = {"nyu": datasets.NYUDepthV2, "kitti": datasets.KITTIEigen, "voc": datasets.PascalVOC}
    readers |= {"cityscapes": datasets.Cityscapes, "ade20k": datasets.ADE20K}
    if config.dataset not in readers:
        raise ValueError(f"data.dataset={config.dataset!r} is not one of {', '.join(DATASETS)}.")
    root = config.root if train else (config.val_root or config.root)
    if root is None:
        raise ValueError(f"data.dataset={config.dataset!r} needs data.root (the dataset directory).")
    check_options(readers[config.dataset], kwargs, key, fixed=("root", "split", "split_file", "transform"))
    return readers[config.dataset](root, split, transform=transform, **kwargs)


class StepDataModule(L.LightningDataModule):
    """Step-indexed training loader: deterministic in (seed, step) and resumable.

    ``StepBatchSampler`` + ``SeededSamples``: a resumed run sees exactly the batches an uninterrupted one would have
    seen, and each process of a DDP run its own shard of every step.

    Args:
        train_set: factory of the training set (called in ``setup``).
        batch_size: training images per process.
        seed: run seed.
        max_steps: optimiser steps of the run.
        accumulate_grad_batches: batches per optimiser step.
        num_workers: loader workers.
        collate_fn: batches samples (default: torch's ``default_collate``).
    """

    def __init__(
        self,
        train_set: Callable[[], Dataset],
        batch_size: int,
        seed: int,
        max_steps: int,
        accumulate_grad_batches: int = 1,
        num_workers: int = 0,
        collate_fn: Callable[[list[Any]], Any] = default_collate,
    ) -> None:
        super().__init__()
        self._train_factory = train_set
        self.batch_size, self.seed, self.max_steps = batch_size, seed, max_steps
        self.accumulate, self.num_workers, self.collate_fn = accumulate_grad_batches, num_workers, collate_fn
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
            collate_fn=self.collate_fn,
            persistent_workers=self.num_workers > 0,
        )


class EvalStepDataModule(StepDataModule):
    """:class:`StepDataModule` plus evaluation loaders (validation, and optionally test) sharded without repetition
    over the processes.

    Args:
        train_set: factory of the training set.
        val_set: factory of the evaluation (validation) set.
        eval_batch_size: evaluation images per process.
        test_set: factory of the test set (None: the module has no test set).
        **kwargs: the other :class:`StepDataModule` arguments.
    """

    def __init__(
        self,
        train_set: Callable[[], Dataset],
        val_set: Callable[[], Dataset],
        eval_batch_size: int,
        test_set: Callable[[], Dataset] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(train_set, **kwargs)
        self._val_factory, self._test_factory, self.eval_batch_size = val_set, test_set, eval_batch_size
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    def _checked(self, dataset: Dataset, what: str) -> Dataset:
        size, (_, world) = len(dataset), self._rank_world()  # type: ignore[arg-type]
        if size == 0:
            raise ValueError(f"The {what} set {dataset!r} is empty: there is nothing to evaluate.")
        if size < world:
            raise ValueError(f"The {what} set has {size} images, fewer than the {world} processes.")
        return dataset

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage in ("fit", "validate") and self.val_set is None:
            self.val_set = self._checked(self._val_factory(), "evaluation")
        if stage == "test" and self.test_set is None:
            if self._test_factory is None:
                raise ValueError("This data module has no test set (data.test_split is not set).")
            self.test_set = self._checked(self._test_factory(), "test")

    def _eval_loader(self, dataset: Dataset | None) -> DataLoader:
        assert dataset is not None
        rank, world = self._rank_world()
        return DataLoader(
            dataset,
            batch_size=self.eval_batch_size,
            sampler=ShardSampler(len(dataset), rank, world),  # type: ignore[arg-type]
            num_workers=self.num_workers,
            collate_fn=self.collate_fn,
        )

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self.val_set)

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.test_set)


class DenseDataModule(EvalStepDataModule):
    """Training and evaluation loaders of a dense task (:class:`EvalStepDataModule` over the recipe's datasets;
    a test loader when ``data.test_split`` is set).

    Args:
        config: data settings.
        task: ``depth`` or ``segmentation``.
        seed: run seed (data order and augmentation).
        max_steps: optimiser steps of the run.
        accumulate_grad_batches: batches per optimiser step.
    """

    def __init__(
        self, config: DataConfig, task: str, seed: int = 0, max_steps: int = 1, accumulate_grad_batches: int = 1
    ) -> None:
        self.config, self.task = config, task
        super().__init__(
            self._build_train_set,
            val_set=lambda: self._build_eval_set("val"),
            test_set=(lambda: self._build_eval_set("test")) if config.test_split is not None else None,
            eval_batch_size=config.eval_batch_size,
            batch_size=config.batch_size,
            seed=seed,
            max_steps=max_steps,
            accumulate_grad_batches=accumulate_grad_batches,
            num_workers=config.num_workers,
            collate_fn=collate_samples,
        )

    def _build_train_set(self) -> Dataset:
        from predec.data.transforms import train_transform

        crop = self.config.crop_size or (self.config.image_size if self.config.dataset == "synth" else None)
        if crop is None:
            raise ValueError(f"data.crop_size is needed to train on {self.config.dataset!r} (e.g. [480, 640]).")
        transform = train_transform(self.task, tuple(crop), **self.config.train_transform_kwargs)
        return build_dataset(self.config, "train", transform=transform)

    def _build_eval_set(self, role: str) -> Dataset:
        from predec.data.transforms import eval_transform

        dataset = build_dataset(self.config, role, transform=eval_transform())
        if len(dataset) == 0:  # type: ignore[arg-type]
            split = self.config.val_split if role == "val" else self.config.test_split
            raise ValueError(
                f"The {'evaluation' if role == 'val' else 'test'} set of data.dataset={self.config.dataset!r} "
                f"(split {split!r}) is empty: there is nothing to evaluate."
            )
        return dataset
