"""Rendering speed of SynthScenes and SynthObjects on one CPU core.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_render.py [--num 300] [--repeats 3] [--json FILE]

Renders ``--num`` consecutive samples per configuration, ``--repeats`` times, and reports the best repeat as
images/s of wall-clock and of process CPU time (the CPU figure is less disturbed by other processes on a shared
machine), with the 1-minute load average at the start.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy/torch are imported

import argparse
import json
import platform
import time
from collections.abc import Callable

import torch

from predec.data.synthetic import render_object, render_scene

CONFIGS: dict[str, tuple[str, Callable[[int], object]]] = {
    "scenes 128x128": ("SynthScenes", lambda i: render_scene(0, i, (128, 128))),
    "scenes 96x128": ("SynthScenes", lambda i: render_scene(0, i, (96, 128))),
    "scenes 240x320": ("SynthScenes", lambda i: render_scene(0, i, (240, 320))),
    "objects 64x64": ("SynthObjects", lambda i: render_object(0, i, 64)),
}


def measure(render: Callable[[int], object], num: int, repeats: int) -> dict[str, float]:
    """Best-of-``repeats`` images/s (wall clock and CPU time) over ``num`` renders."""
    render(0)  # warm-up (imports, lazily built tables)
    best_wall, best_cpu = float("inf"), float("inf")
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        for index in range(num):
            render(index)
        best_wall = min(best_wall, time.perf_counter() - wall)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    return {
        "images_per_s_wall": num / best_wall,
        "images_per_s_cpu": num / best_cpu,
        "ms_per_image": 1e3 * best_wall / num,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=300, help="renders per repeat and configuration")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS), metavar="NAME")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    load = os.getloadavg()[0]
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, 1 thread, load average {load:.2f}")
    print("| configuration | images/s (wall) | images/s (CPU time) | ms/image |")
    print("|---|---:|---:|---:|")
    results = {}
    for name in args.configs:
        _, render = CONFIGS[name]
        result = measure(render, args.num, args.repeats)
        results[name] = result
        print(
            f"| {name} | {result['images_per_s_wall']:.0f} | {result['images_per_s_cpu']:.0f} "
            f"| {result['ms_per_image']:.2f} |",
            flush=True,
        )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(
                {"load_average": load, "num": args.num, "repeats": args.repeats, "results": results}, handle, indent=2
            )


if __name__ == "__main__":
    main()
