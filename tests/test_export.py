"""ONNX export (dynamic batch/height/width, checked with onnxruntime) and torch.compile on every architecture."""

import pytest
import torch

import predec
from predec.cli import main
from predec.models.export import check_onnx, export_onnx

ARCHS = ["deeplabv3plus", "fcn", "fpn", "unet", "xnet"]


def tiny(arch: str, task: str = "depth") -> predec.DenseModel:
    torch.manual_seed(0)
    options = {"decoder": "test_convnext"} if arch == "xnet" else {}
    if task == "segmentation":
        options["num_classes"] = 3
    model = predec.create_model(arch, encoder="test_resnet", task=task, **options)
    model.train()(torch.randn(2, 3, 64, 64))  # non-trivial BatchNorm statistics
    return model


def test_export_fpn_matches_at_another_size(tmp_path):
    import onnx

    model = tiny("fpn", "segmentation")
    path = export_onnx(model, tmp_path / "fpn.onnx", size=(64, 96))
    assert model.training  # restored
    graph = onnx.load(str(path)).graph
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    assert check_onnx(model, path, size=(96, 160), batch_size=2) <= 1e-4
    with pytest.raises(ValueError, match=r"multiples of the model's output stride 32"):
        export_onnx(model, tmp_path / "bad.onnx", size=(60, 96))


@pytest.mark.parametrize("arch", ["fpn", "xnet"])
def test_exported_graph_pads_any_size_like_predict(tmp_path, arch):
    """A 400×600 image (not a multiple of 32) runs in onnxruntime and matches model.predict within 1e-4."""
    import onnxruntime

    model = tiny(arch, "segmentation").eval()
    path = export_onnx(model, tmp_path / "m.onnx", size=(64, 64))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for size in ((400, 600), (33, 47)):
        x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(1))
        (got,) = session.run(None, {"image": x.numpy()})
        want = model.predict(x).numpy()
        assert got.shape == want.shape == (1, 3, *size)
        assert abs(got - want).max() <= 1e-4, size


def test_export_cli_xnet_from_save_pretrained_dir(tmp_path, capsys):
    model = tiny("xnet").eval()
    model.save_pretrained(tmp_path / "model")
    onnx_file = tmp_path / "out" / "xnet.onnx"
    code = main(["export", "--checkpoint", str(tmp_path / "model"), "--onnx", str(onnx_file), "--size", "64", "96"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "onnxruntime vs PyTorch at 2×103×173" in out and " ok" in out
    assert check_onnx(model, onnx_file, size=(128, 64), batch_size=3) <= 1e-4
    assert main(["export", "--checkpoint", str(tmp_path / "nowhere"), "--onnx", str(onnx_file)]) == 2
    assert "nowhere' is not a local directory or file (no such path)" in capsys.readouterr().err


def test_export_cli_from_train_checkpoint(tmp_path, capsys):
    """A ``predec train`` .ckpt exports the model of the recipe it records, with the run's trained weights."""
    run_dir = tmp_path / "run"
    overrides = [
        "model.encoder=test_resnet",
        "model.decoder_kwargs={channels: 16}",
        "data.num_train=2",
        "data.num_val=2",
        "data.image_size=[32, 32]",
        "data.batch_size=2",
        "data.eval_batch_size=2",
        "trainer.max_steps=2",
        "trainer.val_every_n_steps=null",
        "trainer.log_every_n_steps=1",
        "trainer.progress_bar=false",
        "trainer.precision=32-true",
        "schedule.warmup_steps=1",
    ]
    assert main(["train", "--config", "dense/synth_seg_fpn", "--run-dir", str(run_dir), *overrides]) == 0
    capsys.readouterr()
    onnx_file = tmp_path / "fpn.onnx"
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    code = main(["export", "--checkpoint", str(checkpoint), "--onnx", str(onnx_file), "--size", "64", "64"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert " ok" in out
    trained = predec.from_pretrained(run_dir / "model").eval()  # the same run's save_pretrained model
    assert trained.config["num_classes"] == 6 and trained.config["channels"] == 16
    assert check_onnx(trained, onnx_file, size=(64, 96), batch_size=1) <= 1e-4


def test_export_cli_refuses_pretraining_checkpoint(tmp_path, capsys):
    """A ``predec pretrain`` checkpoint (teacher/student weights) is not a dense model: exit 2, say what to do."""
    path = tmp_path / "last.ckpt"
    state = {f"{role}.encoder.conv1.weight": torch.zeros(4, 3, 3, 3) for role in ("student", "teacher")}
    torch.save({"state_dict": state, "global_step": 1}, path)
    assert main(["export", "--checkpoint", str(path), "--onnx", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err
    assert "pre-training checkpoint" in err and "fine-tune" in err and "save_pretrained" in err
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize("arch", ARCHS)
def test_compile_captures_every_arch_as_one_graph(arch):
    """Dynamo captures the whole model without graph breaks (the architecture-dependent part of torch.compile)."""
    model = tiny(arch, "segmentation").eval()
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))


@pytest.mark.heavy
@pytest.mark.parametrize("arch", ARCHS)
def test_compile_inductor(arch):
    """Inductor compiles every arch and matches eager mode (20-50 s of CPU each: opt-in, ``-m heavy``)."""
    torch._dynamo.reset()
    model = tiny(arch, "segmentation").eval()
    compiled = torch.compile(model)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), atol=1e-4, rtol=1e-4)
