"""Why depth did not learn on SynthScenes, measured: one FPN / U-Net / ×Net depth fit per call, with the scene
options, head, loss, resolution and label budget as arguments, scored on held-out scenes (overall and per class).

Usage (each line of docs/demo.md's "Depth that learns" table is one call)::

    python benchmarks/depth_study.py --num-train 512 --steps 1500                              # scenes as they were
    python benchmarks/depth_study.py --num-train 512 --steps 1500 --fixed-pose                 # camera 1.3 m, 15°
    python benchmarks/depth_study.py --num-train 512 --steps 1500 --fixed-pose --head-convs 2  # non-linear FPN head
    python benchmarks/depth_study.py ... --arch unet | --size 128 | --loss silog | --loss logl1 | --encoder-lr-mult 0.1
    python benchmarks/depth_study.py ... --batch-size 16 | --jitter 0.2

A plain PyTorch loop on cached, normalised tensors (the labelled scenes of the demo, seed 10; held-out scenes seed
11, 200 of them): AdamW (weight decay 0.01), 50 warm-up steps then cosine decay, batch 8, horizontal flips (options:
batch size, photometric jitter); the encoder (and ×Net decoder backbone) from the zoo's classifier. Prints a JSON
line every fifth of the run (held-out δ1 / AbsRel, and the same on the first 100 training scenes; with median
scaling too: the scale-aligned ceiling) and a final line with the per-class δ1 / AbsRel. One thread by default, as a
demo worker.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn

HALF_RESNET18 = {"channels": [32, 64, 128, 256], "stem_width": 32}
FIXED_POSE = {"camera_height": [1.3, 1.3], "camera_pitch_deg": [15.0, 15.0]}
CLASS_NAMES = ("floor", "wall", "sphere", "box", "cylinder", "cone")


class PanopticBranch(nn.Module):
    """Panoptic FPN's semantic branch on P2..P5 (per level k: max(1, k) Conv3×3-BN-ReLU blocks, each level above P2
    upsampled ×2 after each block, summed at stride 4): the alternative to a head on the FPN's merged output."""

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__()

        def block(c_in: int) -> nn.Sequential:
            conv = nn.Conv2d(c_in, channels, 3, padding=1, bias=False)
            return nn.Sequential(conv, nn.BatchNorm2d(channels), nn.ReLU())

        self.levels = nn.ModuleList(
            nn.ModuleList(block(in_channels if i == 0 else channels) for i in range(max(1, k))) for k in range(4)
        )

    def forward(self, levels: list[Tensor]) -> Tensor:
        total = 0
        for k, (x, blocks) in enumerate(zip(levels, self.levels)):
            for b in blocks:
                x = b(x)
                if k > 0:
                    x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            total = total + x
        return total


def build(args: argparse.Namespace) -> nn.Module:
    import predec

    common = dict(encoder="resnet18", encoder_kwargs=HALF_RESNET18, task="depth", max_depth=10.0)
    common["encoder_weights"] = "predec:synth-resnet18h-cls"
    head = {"convs": args.head_convs, "channels": args.head_channels}
    if args.arch == "fpn":
        model = predec.create_model("fpn", channels=128, head_kwargs=head, **common)
    elif args.arch == "unet":
        model = predec.create_model("unet", head_kwargs=head, **common)
    else:
        model = predec.create_model(
            "xnet", decoder="resnet18", backbone_kwargs=HALF_RESNET18, reshape="bilinear", head_kwargs=head,
            decoder_weights="predec:synth-resnet18h-cls", **common,
        )  # fmt: skip
    if args.panoptic_branch:
        if args.arch != "fpn":
            raise SystemExit("--panoptic-branch applies to --arch fpn.")
        branch = PanopticBranch(model.decoder.out_channels, args.head_channels)
        decoder_forward = model.decoder.forward

        def forward(features: list[Tensor], image: Tensor | None = None):  # the branch replaces FPN's merged output
            out = decoder_forward(features, image)
            out.out = branch([out.levels[f"p{s}"] for s in (2, 3, 4, 5)])
            return out

        model.decoder.branch = branch
        model.decoder.forward = forward
        model.head.conv = nn.Conv2d(args.head_channels, 1, 3, padding=1)
    return model


def loss_fn(kind: str, pred: Tensor, gt: Tensor) -> Tensor:
    from predec.tasks.depth import silog_loss

    if kind == "silog0":
        return silog_loss(pred, gt, lambd=0.0)
    if kind == "silog":
        return silog_loss(pred, gt)
    valid = gt > 1e-3
    return (pred[valid].log() - gt[valid].log()).abs().mean()  # logl1


def scores(pred: Tensor, gt: Tensor, labels: Tensor | None = None) -> dict[str, float]:
    """δ1 / AbsRel (mean over images), the same after per-image median scaling, and per class (pixels pooled)."""
    from predec.tasks.depth import depth_metrics

    m = depth_metrics(pred, gt, min_depth=1e-3, max_depth=10.0)
    valid = gt > 1e-3
    scale = torch.stack([gt[i][valid[i]].median() / pred[i][valid[i]].median() for i in range(len(gt))])
    aligned = depth_metrics(pred * scale.view(-1, 1, 1, 1), gt, min_depth=1e-3, max_depth=10.0)
    out = {"d1": m["d1"].mean().item(), "abs_rel": m["abs_rel"].mean().item()}
    out |= {"aligned_d1": aligned["d1"].mean().item(), "aligned_abs_rel": aligned["abs_rel"].mean().item()}
    if labels is not None:
        for c, name in enumerate(CLASS_NAMES):
            mask = (labels == c) & valid
            p, g = pred[mask].clamp(1e-3, 10.0), gt[mask]
            out[f"{name}_d1"] = (torch.maximum(p / g, g / p) < 1.25).float().mean().item()
            out[f"{name}_abs_rel"] = ((p - g).abs() / g).mean().item()
    return {k: round(v, 4) for k, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=["fpn", "unet", "xnet"], default="fpn")
    parser.add_argument("--num-train", type=int, default=512)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--fixed-pose", action="store_true", help=f"render with {FIXED_POSE}")
    parser.add_argument("--scene-options", type=json.loads, default={}, help="more SynthScenes render options")
    parser.add_argument("--head-convs", type=int, default=0, help="Conv3x3-BN-ReLU blocks before the head's conv")
    parser.add_argument("--head-channels", type=int, default=128)
    parser.add_argument("--panoptic-branch", action="store_true", help="FPN: Panoptic FPN's semantic branch")
    parser.add_argument("--loss", choices=["silog0", "silog", "logl1"], default="silog0")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--encoder-lr-mult", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--jitter", type=float, default=0.0, help="per-image, per-channel gain and offset ±jitter")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    from predec.demo.settings import labelled_seed
    from predec.engine.probe import synth_probe_data

    options = {**(FIXED_POSE if args.fixed_pose else {}), **args.scene_options}
    size = (args.size, args.size)
    train_x, train_d = synth_probe_data(args.num_train, size, labelled_seed(0), "depth", **options)
    test_x, test_d = synth_probe_data(200, size, labelled_seed(0) + 1, "depth", **options)
    _, test_labels = synth_probe_data(200, size, labelled_seed(0) + 1, "segmentation", **options)
    model = build(args)
    encoder = [p for n, p in model.named_parameters() if n.startswith("encoder.")]
    rest = [p for n, p in model.named_parameters() if not n.startswith("encoder.")]
    groups = [{"params": encoder, "lr": args.lr * args.encoder_lr_mult}, {"params": rest, "lr": args.lr}]
    optimizer = torch.optim.AdamW(groups, weight_decay=0.01)
    warmup = 50
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * s / args.steps))
    )

    def predict(x: Tensor) -> Tensor:
        model.eval()
        with torch.no_grad():
            out = torch.cat([model(x[i : i + 50]) for i in range(0, len(x), 50)])
        model.train()
        return out

    started = time.perf_counter()
    for step in range(1, args.steps + 1):
        index = torch.randint(0, args.num_train, (args.batch_size,))
        x, d = train_x[index], train_d[index]
        flip = (torch.rand(args.batch_size) < 0.5).view(-1, 1, 1, 1)
        x, d = torch.where(flip, x.flip(-1), x), torch.where(flip, d.flip(-1), d)
        if args.jitter:  # photometric only: the geometry, hence the depth, is unchanged
            gain, offset = (1 + args.jitter * (2 * torch.rand(2, args.batch_size, 3, 1, 1) - 1)).unbind(0)
            x = x * gain + (offset - 1)
        loss = loss_fn(args.loss, model(x), d)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % max(1, args.steps // 5) == 0 or step == args.steps:
            line = {"step": step, "held_out": scores(predict(test_x), test_d)}
            line["train"] = scores(predict(train_x[:100]), train_d[:100])
            line["seconds"] = round(time.perf_counter() - started, 1)
            print(json.dumps(line), flush=True)
    final = scores(predict(test_x), test_d, test_labels.unsqueeze(1))
    print(json.dumps({"final": final, "args": vars(args)}), flush=True)


if __name__ == "__main__":
    main()
