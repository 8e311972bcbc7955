"""Running the demo's stages: caching, failures, worker processes, and the final results and report.

A finished stage writes ``done.json`` (its settings, outputs, time); a later run with the same settings reuses it and
says so. A failing stage writes ``failed.json`` (the error); the stages that need its output are marked skipped with
the reason, the others still run. After Ctrl-C the next run resumes: finished stages are reused and an interrupted
fine-tuning run continues from its checkpoint. Stages run in ``workers`` processes of ``threads_per_worker`` threads.
The results (``results.json``), the report (``report.md``) and figures are written at the end of every run.
"""

from __future__ import annotations

import concurrent.futures as futures
import json
import multiprocessing
import os
import shutil
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from predec.demo.results import CACHED, DONE, FAILED, SKIPPED, collect_results
from predec.demo.settings import SOURCES, DemoConfig, load_demo_config, plain
from predec.demo.stages import Stage, execute_stage, plan


class Demo:
    """Runs the stages of a demo configuration in ``out`` and writes the results and the report.

    Args:
        config: the demo settings.
        out: the run directory.
        echo: where progress lines go (default: print to stdout).
        from_scratch: rebuild the zoo entries first (stages ``zoo/<entry>``, into ``<out>/zoo``) instead of loading
            the shipped ones.

    Raises:
        ConfigError / ZooError: inconsistent settings, or (without ``from_scratch``) a missing or corrupt zoo entry.
    """

    def __init__(
        self, config: DemoConfig, out: str | Path, echo: Callable[[str], None] = print, from_scratch: bool = False
    ) -> None:
        self.config, self.out, self.echo, self.from_scratch = config, Path(out), echo, from_scratch
        self.stages = plan(config, from_scratch)
        self.states: dict[str, dict[str, Any]] = {}
        self._started = time.perf_counter()

    def _clock(self) -> str:
        """Elapsed time of this run, for progress lines (``[  42 s]``)."""
        return f"[{time.perf_counter() - self._started:5.0f} s]"

    def stage_dir(self, name: str) -> Path:
        return self.out / "stages" / name

    # ---------------------------------------------------------------------------------------------- cache files
    def _fingerprint(self, stage: Stage) -> dict[str, Any]:
        """The stage's spec plus the finishing times of the stages it needs (a re-run input invalidates it)."""
        return {"spec": stage.spec, "inputs": {n: self.states[n].get("finished") for n in stage.needs}}

    def _cached(self, stage: Stage) -> dict[str, Any] | None:
        done = self.stage_dir(stage.name) / "done.json"
        if not done.is_file():
            return None
        record = json.loads(done.read_text())
        if record.get("fingerprint") != plain(self._fingerprint(stage)):
            return None
        return record

    def _record(self, stage: Stage, state: str, **fields: Any) -> dict[str, Any]:
        from predec.engine.run_dir import write_json

        directory = self.stage_dir(stage.name)
        directory.mkdir(parents=True, exist_ok=True)
        record = {"stage": stage.name, "state": state, "fingerprint": plain(self._fingerprint(stage)), **fields}
        if state == DONE:
            record["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S") + f".{time.time_ns() % 10**9:09d}"
            (directory / "failed.json").unlink(missing_ok=True)
            write_json(directory / "done.json", record)
        else:
            (directory / "done.json").unlink(missing_ok=True)
            write_json(directory / "failed.json", record)
        return record

    def _prepare(self, stage: Stage) -> None:
        """Clear a stage directory whose content belongs to other settings (a stale or failed attempt is kept for
        resuming only if its settings are the same)."""
        directory = self.stage_dir(stage.name)
        attempt = directory / "attempt.json"
        fingerprint = plain(self._fingerprint(stage))
        if directory.exists() and (not attempt.is_file() or json.loads(attempt.read_text()) != fingerprint):
            shutil.rmtree(directory)
        directory.mkdir(parents=True, exist_ok=True)
        from predec.engine.run_dir import write_json

        write_json(attempt, fingerprint)

    # ------------------------------------------------------------------------------------------------------ run
    def run(self) -> dict[str, Any]:
        """Run (or reuse) every stage, then write ``results.json``, ``report.md`` and the figures.

        Returns:
            The results (as written to ``results.json``).

        Raises:
            KeyboardInterrupt: after recording what finished (the next run resumes from there).
        """
        self.out.mkdir(parents=True, exist_ok=True)
        started = self._started = time.perf_counter()
        load_start = _load_average()
        total = len(self.stages)
        origin = "rebuilt from their recipes (--from-scratch)" if self.from_scratch else "loaded from the zoo"
        self.echo(
            f"predec demo ({self.config.name}): {total} stages in {self.out}, pre-trained weights {origin} — "
            f"{self.config.workers} worker(s) × {self.config.threads_per_worker} thread(s); load average {load_start}"
        )
        for stage in self.stages:
            ready = all(self.states.get(n, {}).get("state") in (DONE, CACHED) for n in stage.needs)
            cached = self._cached(stage) if ready else None
            if cached is not None:
                self.states[stage.name] = {**cached, "state": CACHED}
        cached_names = [s.name for s in self.stages if self.states.get(s.name, {}).get("state") == CACHED]
        if cached_names:
            self.echo(f"Reusing {len(cached_names)} finished stage(s) from {self.out} (delete stages/<name> to redo):")
            for name in cached_names:
                self.echo(f"  cached  {name}")
        pending = [s for s in self.stages if s.name not in self.states]
        try:
            self._execute(pending, total)
        except (KeyboardInterrupt, SystemExit) as err:  # Lightning turns Ctrl-C into SystemExit(1)
            self.echo(f"\nInterrupted. Finished stages are kept in {self.out}; run the same command to resume.")
            raise KeyboardInterrupt from err
        finally:
            seconds = time.perf_counter() - started
        from predec.demo import report

        results = collect_results(
            self.config,
            self.stages,
            self.states,
            seconds,
            load_start,
            _load_average(),
            from_scratch=self.from_scratch,
            zoo=self._zoo_summary(),
        )
        paths = report.write_all(results, self.out)
        self.echo(report.summary_table(results))
        self.echo(f"Wrote {', '.join(str(p) for p in paths)} in {seconds:.0f} s.")
        return results

    def _zoo_summary(self) -> dict[str, dict[str, Any]]:
        """Per source: the entry used, how it was obtained and what its manifest says it reached."""
        from predec.zoo.registry import ZooError, find_entry
        from predec.zoo.registry import search_dirs as zoo_search_dirs

        dirs = zoo_search_dirs([self.out / "zoo"]) if self.from_scratch else None
        summary = {}
        used = {s for stage in self.stages if stage.kind == "finetune" for s in stage.spec["zoo"]}
        for source in SOURCES:
            if source not in used:
                continue
            name = self.config.zoo.entry(source)
            record: dict[str, Any] = {"entry": name, "state": "rebuilt" if self.from_scratch else "loaded"}
            if self.from_scratch:
                stage_state = self.states.get(f"zoo/{name}", {})
                record["state"] = "rebuilt" if stage_state.get("state") in (DONE, CACHED) else "failed"
                record["seconds"] = stage_state.get("seconds")
            try:
                entry = find_entry(name, dirs)
            except ZooError as err:
                summary[source] = {**record, "error": str(err)}
                continue
            m = entry.manifest
            summary[source] = {
                **record,
                "file": str(entry.file),
                "sha256": entry.sha256,
                "description": m.get("description"),
                "metric": m.get("metric"),
                "steps": m.get("steps"),
                "wall_seconds": m.get("wall_seconds"),
                "machine": m.get("machine"),
                "command": m.get("command"),
                "loss_tail_change": m.get("loss_tail_change"),
            }
        return summary

    def _ready(self, stage: Stage) -> bool | str:
        """True if every needed stage is done, a message if one failed, False if one is still to run."""
        for name in stage.needs:
            state = self.states.get(name, {}).get("state")
            if state in (FAILED, SKIPPED):
                return f"needs {name}, which failed: {self.states[name].get('error', '')}"
            if state not in (DONE, CACHED):
                return False
        return True

    def _inputs(self, stage: Stage) -> dict[str, dict[str, Any]]:
        return {n: self.states[n].get("outputs", {}) for n in stage.needs}

    def _finish(self, stage: Stage, outputs: dict | None, error: BaseException | None, seconds: float, count: str):
        if error is None:
            self.states[stage.name] = self._record(stage, DONE, outputs=outputs, seconds=seconds)
            self.echo(
                f"{self._clock()} [{count}] done    {stage.name} in {seconds:.0f} s{_outputs_line(outputs or {})}"
            )
        else:
            text = f"{type(error).__name__}: {error}"
            tb = "".join(traceback.format_exception(error))[-4000:]
            self.states[stage.name] = self._record(stage, FAILED, error=text, traceback=tb, seconds=seconds)
            self.echo(f"{self._clock()} [{count}] FAILED  {stage.name} after {seconds:.0f} s: {text}")

    def _skip_blocked(self, waiting: list[Stage], finished: int, total: int) -> tuple[list[Stage], int]:
        still = []
        for stage in waiting:
            ready = self._ready(stage)
            if isinstance(ready, str):
                finished += 1
                self.states[stage.name] = self._record(stage, SKIPPED, error=ready, seconds=0.0)
                self.echo(f"{self._clock()} [{finished}/{total}] skipped {stage.name}: {ready}")
            else:
                still.append(stage)
        return still, finished

    def _execute(self, pending: list[Stage], total: int) -> None:
        finished = total - len(pending)
        workers, threads = self.config.workers, self.config.threads_per_worker
        if workers == 1:
            waiting = list(pending)
            while waiting:
                waiting, finished = self._skip_blocked(waiting, finished, total)
                if not waiting:
                    break
                stage = next(s for s in waiting if self._ready(s) is True)
                waiting.remove(stage)
                self.echo(f"{self._clock()} [{finished + 1}/{total}] start   {stage.name}")
                self._prepare(stage)
                started = time.perf_counter()
                try:
                    outputs, error = (
                        execute_stage(stage, self.stage_dir(stage.name), self._inputs(stage), threads, True),
                        None,
                    )
                except Exception as err:  # recorded; the other stages still run
                    outputs, error = None, err
                finished += 1
                self._finish(stage, outputs, error, time.perf_counter() - started, f"{finished}/{total}")
            return
        context = multiprocessing.get_context("spawn")
        running: dict[futures.Future, tuple[Stage, float]] = {}
        waiting = list(pending)
        pool_options = {"initializer": exit_with_parent, "initargs": (os.getpid(),)}
        with futures.ProcessPoolExecutor(max_workers=workers, mp_context=context, **pool_options) as pool:
            try:
                while waiting or running:
                    waiting, finished = self._skip_blocked(waiting, finished, total)
                    for stage in [s for s in waiting if self._ready(s) is True]:
                        if len(running) >= workers:
                            break
                        waiting.remove(stage)
                        self._prepare(stage)
                        self.echo(f"{self._clock()} [{finished + len(running) + 1}/{total}] start   {stage.name}")
                        args = (stage, self.stage_dir(stage.name), self._inputs(stage), threads, False)
                        running[pool.submit(execute_stage, *args)] = (stage, time.perf_counter())
                    if not running:
                        continue
                    done, _ = futures.wait(running, return_when=futures.FIRST_COMPLETED)
                    for future in done:
                        stage, started = running.pop(future)
                        error = future.exception()
                        finished += 1
                        outputs = None if error else future.result()
                        self._finish(stage, outputs, error, time.perf_counter() - started, f"{finished}/{total}")
            except (KeyboardInterrupt, SystemExit):
                pool.shutdown(wait=False, cancel_futures=True)
                raise


PARENT_POLL_SECONDS = 2.0
"""How often a demo worker checks that the process that started it is alive."""


def exit_with_parent(parent_pid: int) -> None:
    """Worker initializer: end this worker when ``parent_pid`` is gone (killed, even by SIGKILL), instead of leaving it
    blocked forever on a queue nobody reads. A daemon thread polls the parent pid (portable; the pid a process reports
    as its parent changes when that parent dies)."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_POLL_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="predec-parent-watch", daemon=True).start()


def _outputs_line(outputs: dict[str, Any]) -> str:
    values = outputs.get("metrics") or {}
    if not values:
        return ""
    return ": " + ", ".join(f"{k} {v:.4g}" for k, v in values.items() if isinstance(v, (int, float)))


def _load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def run_demo(
    source: str | Path = "full",
    out: str | Path = "runs/demo",
    overrides: Sequence[str] = (),
    echo: Callable[[str], None] = print,
    from_scratch: bool = False,
) -> dict[str, Any]:
    """Run the demo with the settings ``source`` (``quick``, ``full``, ``benchmark`` or a YAML file) in ``out``.

    Returns:
        The results written to ``<out>/results.json``.
    """
    config = load_demo_config(source, overrides)
    return Demo(config, out, echo, from_scratch=from_scratch).run()
