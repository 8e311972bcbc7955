"""The frozen-feature probe along a pre-training run: is the SSL entry pre-trained long enough?

Usage::

    predec zoo build synth-resnet18h-fpn-decon-ml --out runs/zoo_long trainer.max_steps=3200 \
        trainer.snapshot_every_n_steps=400
    python benchmarks/ssl_probe_curve.py --run runs/zoo_long/build/synth-resnet18h-fpn-decon-ml \
        [--run ...] [--entry predec:synth-resnet18h-fpn-decon-ml ...] --tasks segmentation depth \
        --json docs/images/ssl_probe_curve.json --out docs/images/ssl_probe_curve.png
    python benchmarks/ssl_probe_curve.py --merge a.json b.json --json docs/images/ssl_probe_curve.json \
        --out docs/images/ssl_probe_curve.png   # curves measured in separate calls, one figure

Each snapshot of a run (``<run>/snapshots/step<N>.ckpt``, its teacher weights) becomes the demo's fine-tuning
architecture for that method — SlotCon: its encoder + a random FPN (seeded); DeCon on an FPN or a ×Net: its encoder
and decoder — frozen, and a linear probe (:func:`predec.engine.probe.probe_model`) is trained on the decoder's output
features of the demo's labelled scenes and scored on its test scenes (the settings of
``predec/configs/demo/benchmark.yaml`` unless given). ``--entry`` adds a finished weights file or zoo entry as a
horizontal reference line. Writes the points as JSON and one panel per task.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch


def demo_architecture() -> Any:
    """The fine-tuning architecture of the benchmark (encoder, FPN width, ×Net) as the demo derives it."""
    from predec.demo.settings import load_demo_config
    from predec.demo.stages import architecture

    config = load_demo_config("benchmark")
    return config, architecture(config, {"classification", "decon-ml"}, from_scratch=False)


def probe_model_of(method: str, arch: Any, weights: str, task: str, seed: int) -> torch.nn.Module:
    """The frozen model a pre-trained checkpoint gives the demo: SlotCon → encoder + random FPN; DeCon → the
    architecture it pre-trained (FPN or ×Net), encoder and decoder."""
    import lightning as L

    from predec.config import ModelConfig
    from predec.demo.settings import MAX_DEPTH, NUM_SCENE_CLASSES
    from predec.engine.dense import build_model
    from predec.models.weights import read_state_dict

    names = read_state_dict(weights)
    is_xnet = any(k.startswith("teacher.decoder.backbone.") or k.startswith("decoder.backbone.") for k in names)
    has_decoder = any(k.startswith(("teacher.decoder.", "decoder.")) for k in names)
    fields = arch.model("xnet" if is_xnet else "fpn")
    task_fields = {"num_classes": NUM_SCENE_CLASSES} if task == "segmentation" else {"max_depth": MAX_DEPTH}
    L.seed_everything(seed, verbose=False)
    return build_model(
        ModelConfig(
            **fields,
            task=task,
            **task_fields,
            encoder_weights=weights,
            decoder_weights=weights if has_decoder and method != "slotcon" else None,
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, action="append", default=[], help="pre-training run directory")
    parser.add_argument("--entry", action="append", default=[], help="reference weights (file or predec:<entry>)")
    parser.add_argument("--tasks", nargs="+", default=["segmentation"], choices=["segmentation", "depth"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=int, default=None, help="probe epochs (default: the benchmark's)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--merge", type=Path, nargs="+", default=[], help="only join these earlier --json outputs into --json / --out"
    )
    parser.add_argument("--json", type=Path, default=Path("docs/images/ssl_probe_curve.json"))
    parser.add_argument("--out", type=Path, default=Path("docs/images/ssl_probe_curve.png"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.merge:  # curves measured in separate calls (e.g. while the runs were still training), one figure
        parts = [json.loads(path.read_text()) for path in args.merge]
        merged = {"settings": parts[0]["settings"], "curves": {}}
        for part in parts:
            merged["curves"].update(part["curves"])
        tasks = sorted({p["task"] for c in merged["curves"].values() for p in c["points"]}, reverse=True)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(merged, indent=2) + "\n")
        plot(merged, tasks, args.out)
        print(f"Wrote {args.json} and {args.out}")
        return

    from predec.config import load_config
    from predec.demo.settings import labelled_seed
    from predec.engine.probe import probe_model, synth_probe_data
    from predec.pretrain.config import PretrainConfig

    demo, arch = demo_architecture()
    ft, pr = demo.finetune, demo.probe
    epochs = args.epochs or pr.epochs
    size = tuple(ft.image_size)
    seed = labelled_seed(demo.data_seed)
    held_out = (ft.num_test, seed + 2) if ft.num_test else (ft.num_val, seed + 1)
    data = {
        task: (
            synth_probe_data(pr.num_train, size, seed, task, **ft.scene_options),
            synth_probe_data(held_out[0], size, held_out[1], task, **ft.scene_options),
        )
        for task in args.tasks
    }
    sources: list[tuple[str, str, list[tuple[int | None, str]]]] = []
    for run in args.run:
        method = load_config(run / "config.yaml", schema=PretrainConfig).method
        snapshots = sorted((run / "snapshots").glob("step*.ckpt"))
        if not snapshots:
            raise SystemExit(f"{run}/snapshots holds no step*.ckpt: build with trainer.snapshot_every_n_steps=N.")
        sources.append((run.name, method, [(int(p.stem.removeprefix("step")), str(p)) for p in snapshots]))
    for entry in args.entry:
        from predec.zoo.registry import find_entry

        if entry.startswith("predec:"):  # a zoo entry: its manifest says the method, its file holds the weights
            found = find_entry(entry)
            sources.append((entry, found.manifest["method"], [(None, str(found.file))]))
        else:
            sources.append((entry, "decon", [(None, entry)]))

    results: dict[str, Any] = {
        "settings": {
            "num_train": pr.num_train,
            "held_out": {"scenes": held_out[0], "seed": held_out[1]},
            "image_size": list(size),
            "scene_options": ft.scene_options,
            "epochs": epochs,
            "lr": pr.lr,
            "seeds": args.seeds,
            "threads": args.threads,
        },
        "curves": {},
    }
    for name, method, points in sources:
        curve = results["curves"].setdefault(name, {"method": method, "points": []})
        for step, weights in points:
            for task in args.tasks:
                (train_x, train_y), (test_x, test_y) = data[task]
                for probe_seed in args.seeds:
                    started = time.perf_counter()
                    model = probe_model_of(method, arch, weights, task, probe_seed)
                    result = probe_model(
                        model, train_x, train_y, test_x, test_y, task=task,
                        num_classes=getattr(model.head, "num_classes", None), seed=probe_seed, epochs=epochs,
                        lr=pr.lr,
                    )  # fmt: skip
                    metrics = result["metrics"]
                    point = {"step": step, "task": task, "seed": probe_seed, "weights": weights}
                    point |= {k: metrics[k] for k in ("mIoU", "aAcc", "abs_rel", "d1") if k in metrics}
                    point["seconds"] = round(time.perf_counter() - started, 1)
                    curve["points"].append(point)
                    print(json.dumps(point), flush=True)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    plot(results, args.tasks, args.out)
    print(f"Wrote {args.json} and {args.out}")


def plot(results: dict[str, Any], tasks: list[str], path: Path) -> None:
    """One panel per task: the probe metric against the pre-training step (mean over seeds), references dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from predec.demo.report import save_figure

    metric = {"segmentation": "mIoU", "depth": "abs_rel"}
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.0 * len(tasks), 3.6), squeeze=False)
    colors = plt.get_cmap("tab10")
    for ax, task in zip(axes[0], tasks):
        for i, (name, curve) in enumerate(results["curves"].items()):
            points: dict[Any, list[float]] = {}
            for p in curve["points"]:
                if p["task"] == task:
                    points.setdefault(p["step"], []).append(p[metric[task]])
            if None in points:
                value = sum(points[None]) / len(points[None])
                ax.axhline(value, color=colors(i % 10), ls="--", lw=1, label=f"{name} (finished entry)")
                continue
            steps = sorted(points)
            ax.plot(
                steps, [sum(points[s]) / len(points[s]) for s in steps], "o-", ms=3, color=colors(i % 10), label=name
            )
        ax.set_xlabel("pre-training step")
        ax.set_ylabel(f"probe {metric[task]} ({'↑' if task == 'segmentation' else '↓'})")
        ax.set_title(f"{task}: frozen encoder + decoder, linear probe", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    save_figure(fig, path)


if __name__ == "__main__":
    main()
