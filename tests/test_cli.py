"""The ``predec`` argument parser: overrides before and after flags."""

from __future__ import annotations

import pytest

from predec.cli import build_parser, parse_args


def test_overrides_may_follow_flags():
    parser = build_parser()
    args = parse_args(
        parser, ["train", "--config", "dense/synth_seg_fpn", "a.b=1", "--overwrite", "trainer.max_steps=20"]
    )
    assert args.overrides == ["a.b=1", "trainer.max_steps=20"] and args.overwrite
    args = parse_args(parser, ["zoo", "build", "synth-resnet18h-slotcon", "--out", "d", "trainer.max_steps=3"])
    assert args.names == ["synth-resnet18h-slotcon", "trainer.max_steps=3"] and str(args.out) == "d"
    args = parse_args(parser, ["demo", "--quick", "--out", "d", "finetune.seeds=[0]"])
    assert args.overrides == ["finetune.seeds=[0]"]
    args = parse_args(parser, ["train", "--config", "c", "--trainer.max_steps=20", "--overwrite", "--optim.lr=0.1"])
    assert args.overrides == ["trainer.max_steps=20", "optim.lr=0.1"] and args.overwrite


def test_unknown_flags_and_words_are_still_refused(capsys):
    parser = build_parser()
    for argv in (["train", "--config", "c", "--bogus"], ["train", "--config", "c", "a=1", "--overwrite", "stray"]):
        with pytest.raises(SystemExit) as exit_info:
            parse_args(parser, argv)
        assert exit_info.value.code == 2
        assert "unrecognized arguments: " + argv[-1] in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(parser, ["export", "--checkpoint", "c", "x=1"])  # export takes no overrides


def test_file_system_failures_are_one_line_with_exit_2(capsys):
    """A full or read-only disk (OSError) ends a run command with one line naming the path, not a traceback."""
    import errno

    from predec.commands import os_error_message, start_run

    def full_disk():
        raise OSError(errno.ENOSPC, "No space left on device", "/runs/x/checkpoints/last.ckpt")

    assert start_run("train", full_disk) == 2
    err = capsys.readouterr().err
    assert err == "predec train: error: No space left on device: '/runs/x/checkpoints/last.ckpt'\n"
    moved = OSError(errno.EXDEV, "Invalid cross-device link", "/a", None, "/b")
    assert os_error_message(moved) == "Invalid cross-device link: '/a' → '/b'"


def test_lightning_tips_are_dropped_and_its_other_messages_kept(caplog):
    import logging

    from lightning.pytorch.utilities.rank_zero import rank_zero_info

    import predec.engine.trainer  # noqa: F401 (installs the filter)

    with caplog.at_level(logging.INFO, logger="lightning.pytorch.utilities.rank_zero"):
        rank_zero_info("💡 Tip: For seamless cloud logging and experiment tracking, try installing litlogger")
        rank_zero_info("GPU available: False, used: False")
    assert "Tip" not in caplog.text and "GPU available" in caplog.text


def test_the_cli_shows_which_weights_it_loaded(capsys, monkeypatch):
    import logging

    from predec.cli import show_predec_info

    log = logging.getLogger("predec")
    monkeypatch.setattr(log, "handlers", [h for h in log.handlers if type(h).__name__ != "_CurrentStderrHandler"])
    monkeypatch.setattr(log, "level", log.level)
    show_predec_info()
    show_predec_info()  # once per process
    logging.getLogger("predec.models.weights").info("encoder.model <- predec:x: loaded 126 tensors")
    assert capsys.readouterr().err == "encoder.model <- predec:x: loaded 126 tensors\n"
