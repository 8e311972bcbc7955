"""``predec bench``: model specs, precision detection, a tiny run of every mode, isolation and the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from predec.bench.hardware import bf16_runs, cpu_flags, default_precision, matmul_peak_flops
from predec.bench.runs import BenchReport, plan_configs, run_bench
from predec.bench.spec import MODES, RESULT_FIELDS, BenchConfig, ModelSpec, parse_model_spec
from predec.bench.table import format_table
from predec.cli import main

TINY = "xnet:test_resnet:test_resnet"


def test_parse_model_spec() -> None:
    assert parse_model_spec("xnet:resnet18:convnext_atto") == ModelSpec("xnet", "resnet18", "convnext_atto")
    assert parse_model_spec("fpn:resnet18") == ModelSpec("fpn", "resnet18")
    assert parse_model_spec("timm:resnet50") == ModelSpec("timm", "resnet50")
    assert str(ModelSpec("xnet", "resnet18", "resnet18")) == "xnet:resnet18:resnet18"
    for bad, message in [
        ("resnet18", "arch:encoder"),
        ("fpn:resnet18:", "arch:encoder"),
        ("segformer:resnet18", "unknown architecture"),
        ("xnet:resnet18", "needs a decoder"),
        ("fpn:resnet18:resnet18", "only xnet"),
        ("fpn:resnet1800", "not a timm model"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_model_spec(bad)


def test_default_precision_follows_the_hardware() -> None:
    precision = default_precision("cpu")
    native = bool({"avx512_bf16", "amx_bf16"} & cpu_flags())
    if cpu_flags():
        assert precision == ("bf16" if native else "fp32")
    assert precision in ("fp32", "bf16")
    assert not (precision == "bf16" and not bf16_runs("cpu"))


def test_matmul_peak_is_positive_and_finite() -> None:
    peak = matmul_peak_flops(torch.float32, "cpu", size=128, min_time=0.05)
    assert 1e6 < peak < 1e15


def test_tiny_run_every_mode_in_process() -> None:
    report = run_bench(
        [TINY],
        modes=MODES,
        precisions=["fp32"],
        channels_last=[True],
        height=64,
        width=64,
        batch=1,
        steps=2,
        warmup=0,
        threads=1,
        compile_backend="eager",  # inductor's C++ build takes minutes on 2 cores; the plumbing is the same
        matmul_size=256,
        matmul_seconds=0.1,
        isolate=False,
    )
    data = json.loads(report.to_json())
    assert set(data) == {
        "machine", "settings", "default_precision", "peak_gflop_per_s", "peak_gflop_per_s_runs", "results"
    }  # fmt: skip
    assert data["peak_gflop_per_s"]["fp32"] == max(data["peak_gflop_per_s_runs"]["fp32"]) > 0
    assert len(data["peak_gflop_per_s_runs"]["fp32"]) == 2  # before and after the measurements
    assert [r["mode"] for r in data["results"]] == list(MODES)
    for row in data["results"]:
        assert set(RESULT_FIELDS) <= set(row), set(RESULT_FIELDS) - set(row)
        assert row["status"] == "ok", row["error"]
        assert row["params"] > 0
        assert row["gflops_per_image"] > 0
        assert row["images_per_s"] > 0
        assert 0 < row["mfu"] <= 1
        assert row["peak_mem_mb"] >= row["setup_mem_mb"] > 0
        assert row["step_ms_min"] <= row["step_ms_median"] <= row["step_ms_max"]
    by_mode = {r["mode"]: r for r in data["results"]}
    # Training = forward + backward, measured: more than the forward, less than 3× (no input gradient).
    assert by_mode["infer"]["gflops_per_image"] < by_mode["train"]["gflops_per_image"]
    assert by_mode["train"]["gflops_per_image"] < 3.01 * by_mode["infer"]["gflops_per_image"]
    assert by_mode["infer"]["gflops_per_image"] == pytest.approx(by_mode["onnx"]["gflops_per_image"])
    assert by_mode["compile"]["setup_s"] > 0 and by_mode["onnx"]["setup_s"] > 0
    assert by_mode["onnx"]["channels_last"] is None and by_mode["train"]["channels_last"] is True
    table = format_table(report)
    assert table.count(f"| {TINY} |") == len(MODES)
    assert "Matmul peak" in table


def test_failed_measurement_is_reported_not_raised() -> None:
    report = run_bench(
        [TINY], modes=["infer"], precisions=["fp32"], height=48, width=64, batch=1, steps=1, threads=1,
        matmul_size=64, matmul_seconds=0.01, isolate=False,
    )  # fmt: skip
    (row,) = report.results
    assert row["status"] == "failed" and "divisible" in row["error"]
    assert set(RESULT_FIELDS) <= set(row)
    assert "failed" in format_table(report)


def test_plan_groups_modes_per_configuration() -> None:
    plan = plan_configs([TINY, "fpn:test_resnet"], MODES, ["fp32", "bf16"], [False, True], threads=1)
    assert len(plan) == 2 * 2 * 2
    assert [c.modes for c in plan[:4]] == [MODES] + [("train", "infer", "compile")] * 3  # onnx once per model
    assert {(c.precision, c.channels_last) for c in plan[:4]} == {
        ("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True)
    }  # fmt: skip
    with pytest.raises(ValueError, match="mode"):
        BenchConfig(TINY, ("training",))
    with pytest.raises(ValueError, match="steps"):
        BenchConfig(TINY, ("infer",), steps=0)


def test_repeats_keep_the_fastest_round() -> None:
    report = run_bench(
        [TINY], modes=["infer"], precisions=["fp32"], height=64, width=64, batch=1, steps=1, warmup=0, threads=1,
        matmul_size=64, matmul_seconds=0.01, repeats=2, isolate=False,
    )  # fmt: skip
    (row,) = report.results
    assert len(row["images_per_s_rounds"]) == 2
    assert row["images_per_s"] == max(row["images_per_s_rounds"])
    with pytest.raises(ValueError, match="repeats"):
        run_bench([TINY], repeats=0)


def test_cli_isolated_run_writes_json(tmp_path, capsys) -> None:
    precision = "bf16" if bf16_runs("cpu") else "fp32"
    out = tmp_path / "bench.json"
    code = main(
        ["bench", "--models", TINY, "--size", "64", "64", "--batch", "1", "--modes", "train", "--precision",
         precision, "--channels-last", "on", "--steps", "1", "--warmup", "0", "--threads", "1", "--device", "cpu",
         "--matmul-size", "256", "--matmul-seconds", "0.1", "--json", str(out)]
    )  # fmt: skip
    printed = capsys.readouterr().out
    data = json.loads(out.read_text())
    (row,) = data["results"]
    assert code == 0, row["error"]
    assert row["precision"] == precision and row["channels_last"] is True
    assert 0 < row["mfu"] <= 1
    assert row["peak_mem_mb"] >= row["setup_mem_mb"] > 0  # measured in the fresh process
    assert data["settings"]["isolated"] is True
    assert f"| {TINY} | train | {precision} | on |" in printed
    BenchReport(**data)  # the JSON round-trips into the report type


def test_cli_rejects_bad_spec(capsys) -> None:
    assert main(["bench", "--models", "xnet:resnet18"]) == 2
    assert "needs a decoder" in capsys.readouterr().err
