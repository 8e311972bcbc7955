"""The dense DataModule over the dataset readers (on ``predec data synth`` layouts) and its samplers."""

from __future__ import annotations

import pytest
import torch

from predec.config import load_config
from predec.data.datasets import write_synthetic
from predec.data.synthetic import SCENE_CLASSES
from predec.engine.datamodule import DenseDataModule, ShardSampler, check_task, collate_samples


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth_layout")
    write_synthetic(root, 6, size=(40, 48), progress=False)
    return root


def batches(config, stage: str = "fit"):
    module = DenseDataModule(config.data, config.model.task, seed=0, max_steps=3)
    module.setup(stage)
    return module


def test_nyu_reader_feeds_depth_batches(layout):
    cfg = load_config(
        "dense/synth_depth_fpn",
        [
            "data.dataset=nyu",
            f"data.root={layout / 'nyu'}",
            "data.train_split=train.txt",
            "data.val_split=test.txt",
            "data.crop_size=[32, 32]",
            "data.batch_size=2",
        ],
    )
    module = batches(cfg)
    train = list(module.train_dataloader())
    assert len(train) == 3
    assert train[0]["image"].shape == (2, 3, 32, 32) and train[0]["image"].dtype == torch.float32
    assert train[0]["depth"].shape == (2, 1, 32, 32) and float(train[0]["depth"].max()) < 10.5
    val = next(iter(module.val_dataloader()))
    assert val["depth"].shape == (1, 1, 40, 48)  # evaluation at native resolution


def test_voc_reader_feeds_segmentation_batches(layout):
    classes = "[" + ", ".join(SCENE_CLASSES) + "]"
    cfg = load_config(
        "dense/synth_seg_fpn",
        [
            "data.dataset=voc",
            f"data.root={layout / 'voc'}",
            f"data.reader_kwargs={{classes: {classes}}}",
            "data.crop_size=[32, 32]",
            "data.batch_size=2",
        ],
    )
    check_task(cfg.data, "segmentation", 6)
    batch = next(iter(batches(cfg).train_dataloader()))
    assert batch["labels"].shape == (2, 32, 32) and batch["labels"].dtype == torch.int64
    values = set(batch["labels"].unique().tolist())
    assert values <= set(range(6)) | {255}


def test_dataset_and_task_mismatches_are_errors():
    cfg = load_config("dense/synth_seg_fpn", ["data.dataset=voc", "data.root=/nowhere"])
    with pytest.raises(ValueError, match=r"model\.num_classes=6 but data\.dataset='voc' has 21 classes"):
        check_task(cfg.data, "segmentation", 6)
    with pytest.raises(ValueError, match="has no depth"):
        check_task(cfg.data, "depth", None)
    with pytest.raises(ValueError, match="not one of synth, nyu"):
        check_task(load_config(None, ["data.dataset=coco"]).data, "segmentation", 6)


def test_shards_cover_each_item_once_and_collate_names_mixed_sizes():
    shards = [list(ShardSampler(7, rank, 3)) for rank in range(3)]
    assert sorted(i for shard in shards for i in shard) == list(range(7))
    samples = [
        {"image": torch.zeros(3, 4, 4), "meta": {"path": "a.png"}},
        {"image": torch.zeros(3, 4, 6), "meta": {"path": "b.png"}},
    ]
    with pytest.raises(ValueError, match=r"different image sizes.*a\.png.*b\.png"):
        collate_samples(samples)


def test_depth_in_the_wrong_unit_is_refused_naming_the_file_and_the_fix(tmp_path, capsys):
    """16-bit depth stored ×10 (every pixel beyond max_depth) must not train silently: exit 2, the file, the fix."""
    import numpy as np

    from predec.cli import main
    from predec.data.io import read_depth, write_depth

    write_synthetic(tmp_path, 4, size=(32, 32), progress=False)
    for path in (tmp_path / "nyu").rglob("*depth*.png"):
        write_depth(path, np.minimum(read_depth(path, 1e-3) * 10, 65.0), 1e-3)  # millimetres ×10
    argv = ["train", "--config", "dense/synth_depth_fpn", "--run-dir", str(tmp_path / "run")]
    argv += ["data.dataset=nyu", f"data.root={tmp_path / 'nyu'}", "data.train_split=train.txt"]
    argv += ["data.val_split=test.txt", "data.crop_size=[32, 32]", "data.batch_size=2", "model.encoder=test_resnet"]
    argv += ["trainer.max_steps=2", "schedule.warmup_steps=1", "trainer.progress_bar=false"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "predec train: error: " in err and "/nyu/train/sync_depth_0000" in err and ".png: 100% of the valid" in err
    assert "lie outside the model's range (0, 10] m" in err and "set data.reader_kwargs.depth_scale=0.0001" in err
    assert main([*argv[:5], "--overwrite", *argv[5:], "data.reader_kwargs={depth_scale: 1.0e-4}"]) == 0


@pytest.mark.parametrize("workers", [0, 1])
def test_a_torn_image_is_the_same_one_line_with_and_without_loader_workers(tmp_path, capsys, workers):
    """A DataError raised in a DataLoader worker process reaches the user as the worker's own line, not torch's
    'Caught DataError in DataLoader worker process 0' with the worker's traceback."""
    from predec.cli import main

    write_synthetic(tmp_path, 4, size=(32, 32), progress=False)
    for image in (tmp_path / "nyu" / "train").glob("rgb_*.png"):
        image.write_bytes(image.read_bytes()[:100])
    argv = ["train", "--config", "dense/synth_depth_fpn", "--run-dir", str(tmp_path / "run")]
    argv += ["data.dataset=nyu", f"data.root={tmp_path / 'nyu'}", "data.train_split=train.txt"]
    argv += ["data.val_split=test.txt", "data.crop_size=[32, 32]", "data.batch_size=2", "model.encoder=test_resnet"]
    argv += ["trainer.max_steps=2", "schedule.warmup_steps=1", "trainer.progress_bar=false"]
    assert main([*argv, f"data.num_workers={workers}"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip() and not line.startswith("INFO")]
    assert len(lines) == 1, lines
    assert lines[0].startswith("predec train: error: ") and "/nyu/train/rgb_0000" in lines[0]
    assert "unreadable or truncated image" in lines[0]
