"""The reliability probes of docs/training.md ("Reliability"): each failure the reliability issue found, run again as
a user (or an attacker) would, through the ``predec`` command, in a scratch directory.

Usage::

    python benchmarks/reliability_probes.py [--keep DIR]

Every probe records the exit code, whether stderr holds a traceback, its last line, and whether anything was written
to a canary directory outside the paths the command was given; a probe passes when its own expectation holds (the
exit code, a one-line error naming the path or value, files left finite or untouched). Prints a markdown table; exit
code 1 if any probe fails.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

TINY = [
    "model.encoder=test_resnet",
    "data.num_train=4",
    "data.num_val=4",
    "data.image_size=[32, 32]",
    "data.batch_size=4",
    "data.eval_batch_size=4",
    "trainer.max_steps=6",
    "trainer.val_every_n_steps=null",
    "trainer.checkpoint_every_n_steps=3",
    "trainer.progress_bar=false",
    "trainer.precision=32-true",
    "schedule.warmup_steps=1",
]


@dataclass
class Outcome:
    """What one command did."""

    code: int
    stderr: str
    seconds: float

    @property
    def traceback(self) -> bool:
        return "Traceback (most recent call last)" in self.stderr

    @property
    def last_line(self) -> str:
        lines = [line for line in self.stderr.strip().splitlines() if line.strip()]
        return lines[-1] if lines else ""

    @property
    def error_lines(self) -> int:
        return sum(": error: " in line for line in self.stderr.splitlines())


def predec(*argv: str, cwd: Path, timeout: float = 300) -> Outcome:
    """Run ``predec argv`` in ``cwd`` (offline, one thread) and collect its exit code and stderr."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    try:
        done = subprocess.run(
            [shutil.which("predec") or "predec", *argv],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return Outcome(done.returncode, done.stderr, time.perf_counter() - start)
    except subprocess.TimeoutExpired as err:
        stderr = err.stderr.decode() if isinstance(err.stderr, bytes) else (err.stderr or "")
        return Outcome(-9, stderr + f"\n(timed out after {timeout:.0f} s)", time.perf_counter() - start)


def checkpoints_finite(run: Path) -> bool:
    """Every checkpoint under ``run`` holds only finite tensors."""
    import torch

    from predec.engine.guards import nonfinite_tensors

    for path in run.rglob("*.ckpt"):
        state = torch.load(path, map_location="cpu", weights_only=False).get("state_dict", {})
        if nonfinite_tensors(state):
            return False
    return True


def rewrite_checkpoint(source: Path, target: Path, change: Callable[[dict], None], sidecar: bool = True) -> None:
    """Copy a checkpoint with ``change`` applied to its dict (and a fresh sha256 sidecar, unless ``sidecar`` is off:
    the attacker's file is internally consistent)."""
    import torch

    from predec.engine.checkpoint import checksum_path
    from predec.zoo.registry import sha256_file

    checkpoint = torch.load(source, map_location="cpu", weights_only=False)
    change(checkpoint)
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, target)
    if sidecar:
        checksum_path(target).write_text(f"{sha256_file(target)}  {target.name}\n")


class Canary:
    """A pickle that, if ever unpickled, writes ``<dir>/pwned``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def __reduce__(self) -> tuple:
        return (Path.write_text, (self.directory / "pwned", "unpickled"))


def children_of(pid: int) -> list[int]:
    """Process ids whose parent is ``pid`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", type=Path, help="work here and keep the files (default: a temporary directory)")
    args = parser.parse_args(argv)
    root = Path(args.keep or tempfile.mkdtemp(prefix="predec-probes-")).resolve()
    work, outside = root / "work", root / "outside"
    shutil.rmtree(root, ignore_errors=True)
    work.mkdir(parents=True)
    outside.mkdir()
    rows: list[tuple[str, str, Outcome | None, bool, str]] = []

    def record(case: str, command: str, outcome: Outcome | None, ok: bool, note: str = "") -> None:
        ok = ok and not any(outside.iterdir())
        rows.append((case, command, outcome, ok, note))
        status = "ok" if ok else "FAIL"
        print(f"[{status}] {case}: {outcome.code if outcome else '-'} {outcome.last_line if outcome else note}",
              file=sys.stderr, flush=True)  # fmt: skip

    def one_line_exit_2(outcome: Outcome, *words: str) -> bool:
        return (
            outcome.code == 2
            and not outcome.traceback
            and outcome.error_lines == 1
            and all(w in outcome.last_line for w in words)
        )

    seg = ["--config", "dense/synth_seg_fpn"]
    depth = ["--config", "dense/synth_depth_fpn"]
    # A good segmentation run and a good depth run to start from.
    good = predec("train", *seg, "--run-dir", "good", *TINY, cwd=work)
    good_depth = predec("train", *depth, "--run-dir", "good_depth", *TINY, "model.max_depth=10", cwd=work)
    assert good.code == 0 and good_depth.code == 0, good.stderr[-2000:] + good_depth.stderr[-2000:]
    ckpt = work / "good" / "checkpoints" / "last.ckpt"
    import numpy as np
    from PIL import Image

    Image.fromarray(np.zeros((40, 48, 3), np.uint8)).save(work / "image.png")

    # 1. A NaN stop keeps no poisoned checkpoint; eval refuses a poisoned one.
    for lr in ("1e6", ".inf"):
        run = f"lr_{lr.strip('.')}"
        out = predec("train", *seg, "--run-dir", run, *TINY, f"optim.lr={lr}", "trainer.checkpoint_every_n_steps=1",
                     cwd=work)  # fmt: skip
        finite = checkpoints_finite(work / run)
        note = "checkpoints left: all finite" if finite else "a checkpoint with NaN/Inf"
        record(f"train optim.lr={lr}, a checkpoint every step", f"predec train ... optim.lr={lr}", out,
               out.code == 1 and finite and not out.traceback, note)  # fmt: skip

    def poison(checkpoint: dict) -> None:
        name = next(k for k in checkpoint["state_dict"] if k.endswith("running_var"))
        checkpoint["state_dict"][name].fill_(float("inf"))

    rewrite_checkpoint(ckpt, work / "poisoned.ckpt", poison)
    out = predec("eval", *seg, "--checkpoint", "poisoned.ckpt", *TINY, cwd=work)
    record("eval of a checkpoint with an Inf BN variance", "predec eval --checkpoint poisoned.ckpt", out,
           one_line_exit_2(out, "running_var"))  # fmt: skip

    # 2. Untrusted files stay in their box.
    def redirect(checkpoint: dict) -> None:
        recipe = checkpoint["hyper_parameters"]["config"]
        recipe["name"], recipe["output_dir"] = "../../outside/evil", str(outside)
        recipe["trainer"]["num_nodes"] = 2

    rewrite_checkpoint(ckpt, work / "crafted.ckpt", redirect)
    out = predec("eval", "--checkpoint", "crafted.ckpt", "--out", "eval_out", "data.num_val=4", cwd=work, timeout=180)
    record("eval of a checkpoint whose recipe names output_dir/name outside and num_nodes=2",
           "predec eval --checkpoint crafted.ckpt --out eval_out", out,
           out.code == 0 and (work / "eval_out").is_dir(), "exit 0 in "
           f"{out.seconds:.0f} s (no wait for a second node); wrote eval_out/ only")  # fmt: skip

    def model_with(options: dict, name: str) -> Path:
        folder = work / name
        shutil.copytree(work / "good" / "model", folder)
        config = json.loads((folder / "config.json").read_text())
        config["encoder_kwargs"] = {**(config.get("encoder_kwargs") or {}), **options}
        (folder / "config.json").write_text(json.dumps(config))
        return folder

    with open(work / "model.pkl", "wb") as handle:
        pickle.dump(Canary(outside), handle)
    crafted = (
        ({"pretrained_cfg_overlay": {"file": "/etc/passwd"}}, "overlay", "pretrained_cfg_overlay"),
        ({"checkpoint_path": "model.pkl"}, "pickle", "checkpoint_path"),
        ({"channels": [60000, 60000, 60000, 60000]}, "huge", "60000"),
    )
    for options, name, word in crafted:
        folder = model_with(options, f"model_{name}")
        out = predec("predict", "--checkpoint", folder.name, "image.png", "--out", f"pred_{name}", cwd=work)
        record(f"predict with config.json encoder_kwargs {json.dumps(options)}", f"predec predict --checkpoint "
               f"{folder.name} ...", out, one_line_exit_2(out, word))  # fmt: skip

    # 3. The depth range is part of the architecture.
    depth_ckpt = str(work / "good_depth" / "checkpoints" / "last.ckpt")
    out = predec("eval", *depth, "--checkpoint", depth_ckpt, *TINY, "model.max_depth=15", cwd=work)
    record("eval of a max_depth 10 checkpoint with model.max_depth=15", "predec eval ... model.max_depth=15", out,
           one_line_exit_2(out, "max_depth"))  # fmt: skip

    # 4. One error path: file-system errors, devices, colormaps, options.
    small_fs = root / "small_fs"
    small_fs.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(small_fs)],
                             capture_output=True).returncode == 0  # fmt: skip
    if mounted:
        try:
            out = predec("train", *seg, "--run-dir", str(small_fs / "run"), *TINY, "trainer.checkpoint_every_n_steps=1",
                         cwd=work)  # fmt: skip
            status = json.loads((small_fs / "run" / "status.json").read_text()).get("state")
            record("train into a 600 KB file system (disk full)", "predec train --run-dir <full tmpfs>/run", out,
                   one_line_exit_2(out, "No space left") and status == "failed", f"status.json: {status}")  # fmt: skip
            shutil.rmtree(small_fs / "run", ignore_errors=True)
            subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
            out = predec("train", *seg, "--run-dir", str(small_fs / "run"), *TINY, cwd=work)
            record("train into a read-only file system", "predec train --run-dir <read-only>/run", out,
                   one_line_exit_2(out, "Read-only"))  # fmt: skip
        finally:
            subprocess.run(["umount", str(small_fs)], capture_output=True)
    else:
        record("train into a full / read-only file system", "-", None, True, "not run: cannot mount a tmpfs here")

    (work / "a_file").write_text("x")
    (work / "a_dir").mkdir()
    model = str(work / "good" / "model")
    cases = (
        ("run directory that is a file", ["train", *seg, "--run-dir", "a_file", *TINY], "a_file"),
        ("predict --out a file", ["predict", "--checkpoint", model, "image.png", "--out", "a_file"], "a_file"),
        ("export --onnx a directory", ["export", "--checkpoint", model, "--onnx", "a_dir"], "a_dir"),
        ("predict --device cuda (no GPU)", ["predict", "--checkpoint", model, "image.png", "--out", "p",
                                            "--device", "cuda"], "--device"),
        ("predict --colormap nope", ["predict", "--checkpoint", model, "image.png", "--out", "p",
                                     "--colormap", "nope"], "--colormap"),
        ("train model.encoder_kwargs={bogus: 1}", ["train", *seg, "--run-dir", "bogus", *TINY,
                                                   "model.encoder_kwargs={bogus: 1}"], "bogus"),
    )  # fmt: skip
    for case, command, word in cases:
        out = predec(*command, cwd=work)
        record(case, "predec " + " ".join(command[:2]) + " ...", out, one_line_exit_2(out, word))

    shutil.copytree(work / "good" / "checkpoints", work / "empty_sidecar")
    (work / "empty_sidecar" / "last.ckpt.sha256").write_text("")
    (work / "empty_sidecar" / "last.previous.ckpt").unlink(missing_ok=True)
    out = predec("eval", *seg, "--checkpoint", "empty_sidecar/last.ckpt", *TINY, cwd=work)
    record("eval with an empty checksum sidecar", "predec eval --checkpoint empty_sidecar/last.ckpt", out,
           one_line_exit_2(out, "checksum"))  # fmt: skip

    # 5. predict caps its input size.
    Image.fromarray(np.zeros((4000, 4000, 3), np.uint8)).save(work / "big.png")
    out = predec("predict", "--checkpoint", model, "big.png", "--out", "p_big", cwd=work)
    record("predict a 4000×4000 PNG", "predec predict ... big.png", out, one_line_exit_2(out, "--max-size"))

    # 7. A flipped byte with the sidecar deleted: loaded only with a warning, and only if finite.
    flipped = work / "flipped" / "last.ckpt"
    flipped.parent.mkdir()
    data = bytearray(ckpt.read_bytes())
    data[len(data) // 2] ^= 0x01
    flipped.write_bytes(bytes(data))
    out = predec("eval", *seg, "--checkpoint", str(flipped), *TINY, cwd=work)
    warning = [line for line in out.stderr.splitlines() if "sidecar" in line or "checksum" in line]
    warned = bool(warning)
    record("eval of a checkpoint with a flipped byte and no sidecar", "predec eval --checkpoint flipped/last.ckpt",
           out, (out.code == 0 and warned) or one_line_exit_2(out),
           warning[0].split("UserWarning: ")[-1] if warned else "loaded silently")  # fmt: skip

    # 6. Demo workers exit when their parent is killed.
    demo = subprocess.Popen(
        [shutil.which("predec") or "predec", "demo", "--quick", "--out", str(work / "demo"), "workers=2"],
        cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    workers: list[int] = []
    for _ in range(120):  # wait for the worker processes (up to a minute)
        time.sleep(0.5)
        workers = children_of(demo.pid)
        if len(workers) >= 2:
            break
    demo.kill()
    demo.wait()
    deadline = time.time() + 20
    while time.time() < deadline and any(Path(f"/proc/{pid}").exists() for pid in workers):
        time.sleep(0.5)
    left = [pid for pid in workers if Path(f"/proc/{pid}").exists()]
    for pid in left:
        os.kill(pid, 9)
    note = f"{len(workers)} child processes seen (workers, resource tracker), {len(left)} left 20 s after the SIGKILL"
    record("kill -9 the parent of a running `predec demo --quick` (2 workers)", "kill -9 <predec demo pid>", None,
           bool(workers) and not left, note)  # fmt: skip

    failed = sum(not ok for *_, ok, _ in rows)
    print("| probe | command | exit | traceback | stderr (last line) | outside files | verdict |")
    print("|---|---|--:|---|---|---|---|")
    for case, command, outcome, ok, note in rows:
        shown = note if not outcome or (outcome.code == 0 and note) else outcome.last_line
        line = shown.replace("|", "\\|")
        line = line if len(line) <= 140 else line[:137] + "..."
        extra = f" ({note})" if note and outcome and shown != note else ""
        code = outcome.code if outcome else "-"
        tb = ("yes" if outcome.traceback else "no") if outcome else "-"
        print(f"| {case} | `{command}` | {code} | {tb} | {line}{extra} | none | {'ok' if ok else 'FAIL'} |")
    print(f"\n{len(rows) - failed}/{len(rows)} probes as expected; files written outside: "
          f"{sorted(p.name for p in outside.iterdir()) or 'none'}")  # fmt: skip
    if args.keep is None:
        shutil.rmtree(root, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
