"""Workers × threads on this machine: seconds per FPN training step alone, with two threads, and in two processes.

Usage::

    python benchmarks/bench_workers.py [--steps 15] [--size 64] [--batch 8] [--channels 128]

The step is what a ``predec demo`` fine-tuning stage runs: ``create_model("fpn", encoder="resnet18",
task="segmentation", num_classes=6, channels=C)``, channels-last, cross-entropy, backward, fused AdamW, at
``--batch`` × 3 × ``--size``². Printed: the median seconds per step of (a) one process with one thread, (b) one process
with two threads, (c) each of two concurrent one-thread processes. ``predec demo`` runs ``workers`` processes of
``threads_per_worker`` threads; pick the setting with the most steps per second in total. Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time


def measure(threads: int, steps: int, size: int, batch: int, channels: int) -> float:
    """Median seconds per training step in this process with ``threads`` torch threads."""
    import torch
    import torch.nn.functional as F

    import predec

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = predec.create_model("fpn", encoder="resnet18", task="segmentation", num_classes=6, channels=channels)
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), fused=True)
    images = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 6, (batch, size, size))
    times = []
    for step in range(steps + 3):
        started = time.perf_counter()
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step >= 3:  # warm-up
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--channels", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None, help=argparse.SUPPRESS)  # child mode
    args = parser.parse_args()
    shape = [str(args.steps), str(args.size), str(args.batch), str(args.channels)]
    if args.threads is not None:
        print(measure(args.threads, args.steps, args.size, args.batch, args.channels))
        return

    def child(threads: int) -> subprocess.Popen:
        argv = ["--steps", shape[0], "--size", shape[1], "--batch", shape[2], "--channels", shape[3]]
        return subprocess.Popen([sys.executable, __file__, *argv, "--threads", str(threads)], stdout=subprocess.PIPE)

    def result(process: subprocess.Popen) -> float:
        out, _ = process.communicate()
        return float(out.decode().strip().splitlines()[-1])

    one = result(child(1))
    two = result(child(2))
    pair = [child(1), child(1)]
    concurrent = [result(p) for p in pair]
    print(f"one process, 1 thread:        {one:.3f} s/step  ({1 / one:.2f} steps/s)")
    print(f"one process, 2 threads:       {two:.3f} s/step  ({1 / two:.2f} steps/s)")
    print(
        f"two processes × 1 thread:     {concurrent[0]:.3f} / {concurrent[1]:.3f} s/step  "
        f"({sum(1 / t for t in concurrent):.2f} steps/s in total)"
    )


if __name__ == "__main__":
    main()
