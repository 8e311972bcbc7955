"""Predict depth or segmentation for image files and write coloured and raw outputs.

  predec predict --checkpoint CKPT IMAGES... --out DIR [--flip] [--resize H W] [--max-size PIXELS] [--npy]
      [--colormap NAME]

CKPT: a predec train checkpoint (.ckpt), a save_pretrained directory or a .safetensors file with config.json.
Images are normalised as in evaluation and predicted at their own size (padded to the model's stride and cropped
back); an image whose longer side exceeds --max-size (2048) is refused unless --resize is given. For each image
STEM, DIR receives:

  depth:         STEM_depth.png (colour: perceptually uniform colormap, default magma, near = bright, per-image
                 range), STEM_depth_bar.png (the same with a colour bar in metres), STEM_depth16.png (16-bit PNG,
                 millimetres; 1/256 m units if the model's max_depth exceeds 65.535 m), and with --npy
                 STEM_depth.npy (float32 metres)
  segmentation:  STEM_labels.png (palette PNG: pixel values are class ids, colours the VOC palette),
                 STEM_overlay.png (the image with the classes blended over it and a legend naming the classes
                 present: the training dataset's class names when the checkpoint records its recipe), and with
                 --npy STEM_logits.npy (float32 class scores)

plus predictions.json listing the files, the depth PNG scale, the class names and the model.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from predec.commands import error_message, os_error_message

if TYPE_CHECKING:
    import numpy as np


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``predict`` options to ``parser``."""
    parser.add_argument("--checkpoint", required=True, help="checkpoint (.ckpt), save_pretrained dir or .safetensors")
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGES", help="image files")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--flip", action="store_true", help="average with the horizontally flipped prediction")
    parser.add_argument(
        "--resize", type=int, nargs=2, metavar=("H", "W"), help="infer at this size, outputs resized back"
    )
    parser.add_argument(
        "--max-size",
        type=int,
        default=2048,
        metavar="PIXELS",
        help="refuse images whose longer side exceeds this without --resize (default 2048: about 1.6 GB for an FPN on "
        "CPU; memory grows with the pixel count)",
    )
    parser.add_argument("--npy", action="store_true", help="also write raw float outputs as .npy")
    parser.add_argument("--colormap", default="magma", help="matplotlib colormap of the depth images (default magma)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")


def colorize_depth(depth: np.ndarray, colormap: str = "magma") -> np.ndarray:
    """Colour a depth map (H, W) in metres: near = bright end of ``colormap``, range = this image's 2–98 percentiles.

    Returns:
        uint8 RGB (H, W, 3).
    """
    import numpy as np
    from matplotlib import colormaps

    valid = np.isfinite(depth) & (depth > 0)
    if not valid.any():
        return np.zeros((*depth.shape, 3), dtype=np.uint8)
    low, high = np.percentile(depth[valid], [2, 98])
    scaled = np.clip((depth - low) / max(high - low, 1e-6), 0.0, 1.0)
    rgba = colormaps[colormap](1.0 - scaled)
    rgb = (rgba[..., :3] * 255.0 + 0.5).astype(np.uint8)
    rgb[~valid] = 0
    return rgb


def _unique_stems(paths: list[Path]) -> list[str]:
    seen: dict[str, int] = {}
    stems = []
    for path in paths:
        count = seen.get(path.stem, 0)
        seen[path.stem] = count + 1
        stems.append(path.stem if count == 0 else f"{path.stem}_{count}")
    return stems


def run(args: argparse.Namespace) -> int:
    """Predict every image; exit code 2 on bad input (unreadable image or checkpoint)."""
    from predec.config import ConfigError
    from predec.data.io import DataError

    try:
        return _predict(args)
    except (ConfigError, DataError, FileNotFoundError, ValueError) as err:
        print(f"predec predict: error: {error_message(err)}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"predec predict: error: {os_error_message(err)}", file=sys.stderr)
        return 2


def resolve_device(name: str) -> Any:
    """The ``torch.device`` of ``--device`` (``auto``: cuda if available), checked to exist on this machine.

    Raises:
        ValueError: an unknown device string, or a CUDA device on a machine without (that) GPU.
    """
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r} is not a device: use auto, cpu, cuda or cuda:N.") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (device.index or 0) >= count:
            raise ValueError(f"--device {name!r}: this machine has {count} CUDA device(s); use --device cpu or auto.")
    elif device.type != "cpu":
        raise ValueError(f"--device {name!r}: predict runs on cpu or cuda; use auto, cpu, cuda or cuda:N.")
    return device


def class_names(checkpoint: Any, config: Any) -> list[str]:
    """Names of the model's classes: those of the dataset its recipe trained on (a ``predec train`` checkpoint
    records it) when their number matches, else ``class 0``, ``class 1``, ..."""
    from predec.engine.datamodule import dataset_classes

    count = int(config.model.num_classes or 0)
    names = dataset_classes(config.data) if checkpoint.config is not None else None
    return list(names) if names and len(names) == count else [f"class {k}" for k in range(count)]


def save_overlay(path: Path, image: np.ndarray, labels: np.ndarray, names: list[str]) -> None:
    """The image with the predicted classes blended over it (VOC palette, as the label PNG) and a legend of the
    classes present (colour and name)."""
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    from predec.data.io import voc_palette

    palette = voc_palette(256)
    blended = (0.5 * image + 0.5 * palette[labels]).astype(np.uint8)
    height, width = labels.shape
    legend_width = 130  # pixels right of the image
    figure = plt.figure(figsize=((width + legend_width) / 100, max(height / 100, 1.2)), dpi=100)
    image_share = width / (width + legend_width)
    axes = figure.add_axes((0, 0, image_share, 1))
    axes.imshow(blended)
    axes.axis("off")
    present = [int(k) for k in np.unique(labels)]
    handles = [Patch(color=palette[k] / 255, label=names[k] if k < len(names) else f"class {k}") for k in present]
    figure.legend(handles=handles, loc="center left", bbox_to_anchor=(image_share, 0.5), frameon=False, fontsize=8)
    figure.savefig(path)
    plt.close(figure)


def save_depth_figure(path: Path, depth: np.ndarray, colormap: str) -> None:
    """The depth map in colour with a colour bar in metres (the range of ``colorize_depth``)."""
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    valid = np.isfinite(depth) & (depth > 0)
    low, high = np.percentile(depth[valid], [2, 98]) if valid.any() else (0.0, 1.0)
    height, width = depth.shape
    figure, axes = plt.subplots(figsize=(width / 100 + 1.4, max(height / 100, 1.2)), dpi=100)
    cmap = matplotlib.colormaps[colormap].reversed()  # near = bright, as colorize_depth
    shown = axes.imshow(np.where(valid, depth, np.nan), cmap=cmap, vmin=low, vmax=max(high, low + 1e-6))
    axes.axis("off")
    figure.colorbar(shown, ax=axes, fraction=0.08, pad=0.02).set_label("depth (m)", fontsize=8)
    figure.savefig(path, bbox_inches="tight")
    plt.close(figure)


def check_colormap(name: str) -> None:
    """Raise ``ValueError`` naming close matplotlib colormaps if ``name`` is not one."""
    import difflib

    from matplotlib import colormaps

    if name not in colormaps:
        close = difflib.get_close_matches(name, list(colormaps), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else " E.g. magma, viridis, plasma, turbo."
        raise ValueError(f"--colormap {name!r} is not a matplotlib colormap.{hint}")


def _predict(args: argparse.Namespace) -> int:
    if args.out.exists() and not args.out.is_dir():
        raise ValueError(f"--out {args.out} is a file: give a directory (it receives the prediction files).")
    missing = [str(path) for path in args.images if not Path(path).is_file()]
    if missing:  # before any prediction: a typo in the last name must not leave a half-written --out
        raise FileNotFoundError(f"{len(missing)} of the images not found: {', '.join(missing[:5])}"
                                + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else "") + ".")  # fmt: skip
    import numpy as np
    import torch
    from PIL import Image
    from tqdm import tqdm

    from predec.config import to_dict
    from predec.data.io import read_image, write_depth, write_label
    from predec.engine.dense_checkpoint import inference_config, load_dense_checkpoint, load_inference_module

    device = resolve_device(args.device)  # bad options fail before the checkpoint is read
    check_colormap(args.colormap)
    checkpoint = load_dense_checkpoint(args.checkpoint)
    config = inference_config(checkpoint)
    if args.flip:
        config.eval.flip = True
    if args.resize:
        config.eval.resize = list(args.resize)
    module = load_inference_module(checkpoint, config)
    module = module.to(device).eval()
    task = config.model.task
    depth_scale = 1e-3 if config.model.max_depth <= 65.535 else 1.0 / 256.0
    names = class_names(checkpoint, config) if task == "segmentation" else []
    args.out.mkdir(parents=True, exist_ok=True)
    written: list[dict[str, Any]] = []
    for path, stem in tqdm(list(zip(args.images, _unique_stems(args.images))), desc="predict", unit="image"):
        image = read_image(path)
        if not args.resize and max(image.shape[:2]) > args.max_size:
            height, width = image.shape[:2]
            scale = args.max_size / max(height, width)
            raise ValueError(
                f"{path} is {height}×{width} px, above --max-size {args.max_size} (longer side): inference at full "
                f"size needs memory in proportion to the pixels. Pass --resize {round(height * scale)} "
                f"{round(width * scale)} (outputs are resized back) or a larger --max-size."
            )
        images = module.model.preprocess(image)  # the model's normalisation, on its device
        with torch.no_grad():
            output = module.inference(images)[0].float().cpu()
        entry: dict[str, Any] = {"image": str(path)}
        if task == "depth":
            depth = output[0].numpy()
            entry["depth_color"] = str(args.out / f"{stem}_depth.png")
            Image.fromarray(colorize_depth(depth, args.colormap)).save(entry["depth_color"])
            entry["depth_png"] = str(args.out / f"{stem}_depth16.png")
            write_depth(entry["depth_png"], depth, depth_scale)
            entry["depth_figure"] = str(args.out / f"{stem}_depth_bar.png")
            save_depth_figure(Path(entry["depth_figure"]), depth, args.colormap)
            if args.npy:
                entry["depth_npy"] = str(args.out / f"{stem}_depth.npy")
                np.save(entry["depth_npy"], depth.astype(np.float32))
        else:
            labels = output.argmax(dim=0).numpy().astype(np.uint8)
            entry["labels"] = str(args.out / f"{stem}_labels.png")
            write_label(entry["labels"], labels)
            entry["overlay"] = str(args.out / f"{stem}_overlay.png")
            save_overlay(Path(entry["overlay"]), image, labels, names)
            if args.npy:
                entry["logits_npy"] = str(args.out / f"{stem}_logits.npy")
                np.save(entry["logits_npy"], output.numpy().astype(np.float32))
        written.append(entry)
    manifest = {
        "checkpoint": str(checkpoint.path),
        "model": to_dict(config.model),
        "task": task,
        "depth_png_scale_m": depth_scale if task == "depth" else None,
        "class_names": names or None,
        "outputs": written,
    }
    (args.out / "predictions.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"Wrote {len(written)} prediction(s) to {args.out}")
    return 0
