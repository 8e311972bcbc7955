"""Data tools: write the synthetic benchmark to disk in the standard dataset layouts.

  predec data synth --out DIR [--num N] [--size H W] [--seed S] [--num-objects M] [--object-size P]
                    [--object-labels {shape,shape_texture}] [--val-fraction F] [--overwrite]

writes SynthScenes as DIR/nyu (NYU-Depth-v2 split files, 16-bit depth PNGs in mm) and DIR/voc (VOCdevkit layout,
palette label PNGs of the 6 scene classes), SynthObjects as DIR/objects/{train,val}/<class>/*.png, and DIR/synth.json.
See docs/datasets.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from predec.commands import error_message


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``data`` sub-commands to ``parser``."""
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    synth = sub.add_parser(
        "synth",
        help="write SynthScenes (NYU and VOC layouts) and SynthObjects (image folders) to disk",
        description="Render SynthScenes into DIR/nyu and DIR/voc and SynthObjects into DIR/objects.",
    )
    synth.add_argument("--out", type=Path, required=True, metavar="DIR", help="output directory")
    synth.add_argument("--num", type=int, default=200, help="number of scenes (default 200)")
    synth.add_argument(
        "--size", type=int, nargs=2, default=(128, 128), metavar=("H", "W"), help="scene size (default 128 128)"
    )
    synth.add_argument("--seed", type=int, default=0, help="data-set seed (default 0)")
    synth.add_argument(
        "--num-objects",
        type=int,
        default=None,
        metavar="M",
        help="number of SynthObjects images (default: --num; 0 = none)",
    )
    synth.add_argument("--object-size", type=int, default=64, help="side of the object images (default 64)")
    synth.add_argument(
        "--object-labels",
        default="shape",
        metavar="MODE",
        help="object classes: shape or shape_texture (predec.data.LABEL_MODES; default shape)",
    )
    synth.add_argument(
        "--val-fraction", type=float, default=0.2, help="held-out fraction, the last indices (default 0.2)"
    )
    synth.add_argument("--overwrite", action="store_true", help="replace existing nyu/voc/objects directories")
    synth.set_defaults(_data_run=_run_synth)


def _run_synth(args: argparse.Namespace) -> int:
    from predec.data.datasets.synth_layout import write_synthetic

    num_objects = args.num if args.num_objects is None else args.num_objects
    try:
        record = write_synthetic(
            args.out,
            args.num,
            tuple(args.size),
            args.seed,
            num_objects=num_objects,
            object_size=args.object_size,
            object_labels=args.object_labels,
            val_fraction=args.val_fraction,
            overwrite=args.overwrite,
        )
    except (FileExistsError, ValueError) as err:
        print(f"predec data synth: error: {error_message(err)}", file=sys.stderr)
        return 2
    splits = record["splits"]
    print(f"wrote {args.num} scenes ({splits['train']} train, {splits['val']} val) to {args.out}")
    print(f"  depth:        NYUDepthV2('{args.out / 'nyu'}', 'train.txt')   # and 'test.txt'")
    print(f"  segmentation: PascalVOC('{args.out / 'voc'}', 'train', classes=SCENE_CLASSES)   # and 'val'")
    if "objects" in record:
        objects = record["objects"]
        print(
            f"  objects:      ClassificationFolder('{args.out / 'objects' / 'train'}', "
            f"classes=object_classes('{objects['labels']}'))   # {objects['num']} images, "
            f"{len(objects['classes'])} classes"
        )
    return 0


def run(args: argparse.Namespace) -> int:
    """Run the chosen ``data`` action."""
    return int(args._data_run(args))
