"""Depth in a unit the reader does not expect is refused before training, with the file, the median and the fix.

The per-sample check (``check_depth_range``) refuses depths mostly outside the model's range (×10, ×1000); KITTI's
metres × 256 read with NYU's millimetre scale stay inside (0, 80] at 0.256× their value, and only the median of the
dataset shows them: ``DepthSplitDataset.check_depth_unit`` reads a few depth files when training or evaluation is
set up, applies the per-sample check to each and refuses a median outside 1/12..3/4 of ``model.max_depth``. Real
statistics must pass (NYU ≈ 2.5 m of 10, KITTI ≈ 10-20 m of 80), and so must the synthetic datasets.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from predec.cli import main
from predec.data import NYUDepthV2, SynthScenes
from predec.data.datasets import write_synthetic
from predec.data.io import DataError, check_depth_median, read_depth, write_depth, write_image

SIZE = (32, 32)
N = 4


def kitti_layout(root: Path) -> tuple[list[str], list[Path]]:
    """A KITTI-layout split of N samples, LiDAR-like depths of 5-25 m (median ≈ 15 m) stored as metres × 256."""
    rng = np.random.default_rng(0)
    lines, depth_files = [], []
    for i in range(N):
        write_image(root / "raw" / "drive" / f"{i:010d}.png", rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8))
        depth = np.where(rng.random(SIZE) < 0.3, rng.uniform(5.0, 25.0, SIZE), 0.0)  # sparse, as LiDAR
        write_depth(root / "gt" / "drive" / f"{i:010d}.png", depth, 1 / 256)
        depth_files.append(root / "gt" / "drive" / f"{i:010d}.png")
        lines.append(f"drive/{i:010d}.png drive/{i:010d}.png 721.5")
    (root / "eigen_train.txt").write_text("\n".join(lines) + "\n")
    split = root / "eigen_train.txt"
    overrides = ["data.dataset=kitti", f"data.root={root / 'raw'}", f"data.train_split={split}"]
    return [*overrides, f"data.val_split={split}", "model.max_depth=80.0"], depth_files


def train(tmp_path: Path, overrides: list[str]) -> int:
    argv = ["train", "--config", "dense/synth_depth_fpn", "--run-dir", str(tmp_path / "run"), *overrides]
    argv += ["model.encoder=test_resnet", "data.crop_size=[32, 32]", "data.batch_size=2", "data.eval_batch_size=2"]
    argv += ["trainer.max_steps=2", "schedule.warmup_steps=1", "trainer.progress_bar=false"]
    return main([*argv, "trainer.precision=32-true"])


def test_kitti_depth_read_as_millimetres_is_refused_naming_a_file_the_median_and_the_scale(tmp_path, capsys):
    overrides, depth_files = kitti_layout(tmp_path / "kitti")
    gt = tmp_path / "kitti" / "gt"
    code = train(tmp_path, [*overrides, f"data.reader_kwargs={{gt_root: {gt}, depth_scale: 0.001}}"])
    assert code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("predec ")]
    assert len(lines) == 1 and lines[0].startswith("predec train: error: "), lines
    median = np.median([np.median(d[d > 0]) for d in (read_depth(f, 0.001) for f in depth_files)])
    assert 3.0 < median < 5.0  # 0.256 × 15 m: inside (0, 80], which the per-sample check lets through
    assert str(depth_files[0]) in lines[0] and f"median valid depth {median:.3g} m" in lines[0], lines[0]
    assert "metres × 256 (KITTI)" in lines[0] and "data.reader_kwargs.depth_scale=0.00390625" in lines[0], lines[0]
    assert not (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()  # refused before the first step

    # The same files with KITTI's own scale (the reader's default) train.
    assert train(tmp_path / "right", [*overrides, f"data.reader_kwargs={{gt_root: {gt}}}"]) == 0


def test_real_and_synthetic_depth_statistics_pass(tmp_path):
    rng = np.random.default_rng(0)
    nyu = [rng.lognormal(np.log(m), 0.4, (48, 64)).clip(0.5, 10.0) for m in (1.2, 2.5, 4.0)]  # close-up to hall
    check_depth_median(nyu, ["nyu.png"] * 3, 10.0, "nyu/train.txt", 1 / 1000)
    check_depth_median([*nyu, nyu[0] * 10], ["nyu.png"] * 4, 10.0, "nyu/train.txt", 1 / 1000)  # one file ×10: the
    # median of the per-file medians stays (that file is refused by the per-sample check, tests/test_reader_fuzz.py)
    kitti = [rng.lognormal(np.log(m), 0.6, (48, 64)).clip(1.0, 80.0) for m in (8.0, 12.0, 20.0)]
    check_depth_median(kitti, ["kitti.png"] * 3, 80.0, "eigen_train.txt", 1 / 256)
    # SynthScenes: every image alone (per-image medians 1.1-4.4 m of 10, measured over 64) and written as NYU.
    scenes = SynthScenes(16, size=(32, 32), seed=0)
    for i in range(len(scenes)):
        check_depth_median([np.asarray(scenes[i]["depth"])], [f"scene {i}"], 10.0, "SynthScenes", 1 / 1000)
    write_synthetic(tmp_path / "data", 10, size=(32, 32), val_fraction=0.2, progress=False)
    NYUDepthV2(tmp_path / "data" / "nyu", "train.txt").check_depth_unit(1e-3, 10.0)


@pytest.mark.parametrize(
    ("stored", "read", "max_depth", "fix"),
    [
        (1 / 256, 1 / 1000, 80.0, "data.reader_kwargs.depth_scale=0.00390625"),  # KITTI read as NYU
        (1 / 1000, 1 / 256, 10.0, "data.reader_kwargs.depth_scale=0.001"),  # NYU read as KITTI
        (1 / 10000, 1 / 1000, 10.0, "data.reader_kwargs.depth_scale=0.0001"),  # 0.1 mm read as mm: ×10 too large
    ],
)
def test_a_median_outside_the_band_names_the_scale_that_fits(tmp_path, stored, read, max_depth, fix):
    rng = np.random.default_rng(1)
    truth = max_depth / 4
    depths = [np.round(rng.uniform(0.5, 1.5, (16, 16)) * truth / stored) * read for _ in range(3)]
    files = [tmp_path / f"{i}.png" for i in range(3)]
    with pytest.raises(DataError, match="implausibly") as err:
        check_depth_median(depths, files, max_depth, tmp_path / "split.txt", read)
    message = str(err.value)
    assert message.startswith(f"{files[0]} and 2 more sampled depth files of {tmp_path / 'split.txt'}: ")
    assert fix in message and "\n" not in message, message
