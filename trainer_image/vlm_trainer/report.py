"""Progress reporting behind one small interface the recipes call.

A recipe calls, in order: ``on_start(info)``, then ``on_step(metrics)`` once per optimizer step
(and ``on_eval(metrics)`` after an evaluation), ``on_checkpoint(path, step, manifest)`` after
each checkpoint is complete, and ``on_done(summary)``, ``on_stopped(info)`` (a graceful stop
on SIGTERM: ``step``, ``snapshot``, ``reason``) or ``on_error(message)`` at the end.
Before ``keepLast`` deletes a snapshot, ``may_prune(path)`` asks every reporter that has it.
Reporters must not raise into the training loop; a failing reporter logs and carries on.

``LocalReporter`` (always on): one JSON object per line in ``<log_path>/metrics.jsonl``
(``event``: ``train`` | ``eval``, plus ``step``, ``loss``, ``lr``, ``tokens_per_second`` ...),
the same lines and the start/checkpoint/done events on stdout, or a progress bar instead when
stdout is a terminal (step, loss, learning rate, tokens/s and the ETA). ``build_reporter`` is
where other reporters join: TensorBoard event files and Prometheus metrics (``observe.py``),
and the operator's Kubernetes status reporter when running inside a TrainerJob pod.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Protocol, TextIO


class Reporter(Protocol):
    def on_start(self, info: dict[str, Any]) -> None: ...
    def on_step(self, metrics: dict[str, Any]) -> None: ...
    def on_eval(self, metrics: dict[str, Any]) -> None: ...
    def on_checkpoint(self, path: Path, step: int, manifest: dict[str, Any]) -> None: ...
    def on_done(self, summary: dict[str, Any]) -> None: ...
    def on_stopped(self, info: dict[str, Any]) -> None: ...
    def on_error(self, message: str) -> None: ...


class LocalReporter:
    """metrics.jsonl + stdout JSON lines (or a progress bar on a TTY)."""

    def __init__(self, log_dir: Path, stream: TextIO | None = None, tty: bool | None = None):
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.log_dir / "metrics.jsonl"
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty() if tty is None else tty
        self.total_steps = 0
        self._bar_open = False
        self._first: tuple[int, float] | None = None  # (step, time) of the first step seen

    # -- events ---------------------------------------------------------------------------------
    def on_start(self, info: dict[str, Any]) -> None:
        self.total_steps = int(info.get("total_steps") or 0)
        # Drop the lines of steps that will be run again: those after the checkpoint we resume
        # from, or all of them when a killed run starts over without a checkpoint.
        truncate_metrics(self.metrics_path, int(info.get("resumed_step") or 0))
        self._emit({"event": "start", **info})

    def on_step(self, metrics: dict[str, Any]) -> None:
        line = {"event": "train", **metrics}
        self._append(line)
        if self.tty:
            self._bar(metrics)
        else:
            self._print(line)

    def on_eval(self, metrics: dict[str, Any]) -> None:
        line = {"event": "eval", **metrics}
        self._append(line)
        self._emit(line)

    def on_checkpoint(self, path: Path, step: int, manifest: dict[str, Any]) -> None:
        self._emit(
            {"event": "checkpoint", "step": step, "path": str(path), "type": manifest.get("type")}
        )

    def on_done(self, summary: dict[str, Any]) -> None:
        self._emit({"event": "done", **summary})

    def on_stopped(self, info: dict[str, Any]) -> None:
        self._emit({"event": "stopped", **info})

    def on_error(self, message: str) -> None:
        self._emit({"event": "error", "message": message})

    # -- output ---------------------------------------------------------------------------------
    def _append(self, line: dict) -> None:
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(line, default=_jsonable) + "\n")

    def _emit(self, line: dict) -> None:
        if self._bar_open:
            self.stream.write("\n")
            self._bar_open = False
        self._print(line)

    def _print(self, line: dict) -> None:
        self.stream.write(json.dumps(line, default=_jsonable) + "\n")
        self.stream.flush()

    def _bar(self, m: dict) -> None:
        step, total = int(m.get("step", 0)), max(self.total_steps, 1)
        width = 30
        filled = min(width, int(width * step / total))
        tps = m.get("tokens_per_second", 0.0)
        self.stream.write(
            f"\r[{'#' * filled}{'.' * (width - filled)}] {step}/{total} "
            f"loss {m.get('loss', float('nan')):.4f} lr {m.get('lr', 0.0):.2e} {tps:,.0f} tok/s "
            f"ETA {self._eta(step, total)}"
        )
        self.stream.flush()
        self._bar_open = True

    def _eta(self, step: int, total: int) -> str:
        now = time.monotonic()
        if self._first is None or step <= self._first[0]:
            self._first = self._first or (step, now)
            return "--:--"
        left = (now - self._first[1]) / (step - self._first[0]) * max(total - step, 0)
        h, rem = divmod(int(left), 3600)
        return f"{h}:{rem // 60:02d}:{rem % 60:02d}" if h else f"{rem // 60:02d}:{rem % 60:02d}"


class MultiReporter:
    """Fans every event out to several reporters; one failing never stops the others."""

    def __init__(self, reporters: list[Reporter]):
        self.reporters = reporters

    def __getattr__(self, event: str):
        if not event.startswith("on_"):
            raise AttributeError(event)

        def call(*args, **kwargs):
            for r in self.reporters:
                try:
                    getattr(r, event)(*args, **kwargs)
                except Exception as e:  # reporting must never kill training
                    print(f"reporter {type(r).__name__}.{event} failed: {e}", file=sys.stderr)

        return call

    def may_prune(self, path: Path) -> bool:
        """Whether keepLast may delete this snapshot: every reporter that keeps a record of it
        (the Checkpoint object) agrees, having marked it pruned. An error keeps the files."""
        for r in self.reporters:
            check = getattr(r, "may_prune", None)
            try:
                if check is not None and not check(path):
                    return False
            except Exception as e:
                print(f"reporter {type(r).__name__}.may_prune failed: {e}", file=sys.stderr)
                return False
        return True


def build_reporter(log_dir: Path) -> MultiReporter:
    """The reporters for this process: always the local one; inside a TrainerJob pod (the
    operator's environment variables, rank 0) also ``kube_report.KubernetesReporter``."""
    from .observe import extra_reporters

    reporters: list[Reporter] = [LocalReporter(log_dir), *extra_reporters(log_dir)]
    try:
        from . import kube_report
    except ImportError:  # a trainer built without the operator's reporter
        kube_report = None
    if kube_report is not None and kube_report.enabled():
        reporters.append(kube_report.KubernetesReporter())
    return MultiReporter(reporters)


def truncate_metrics(path: Path, last_step: int) -> None:
    """Keep only lines with ``step <= last_step`` (atomic rewrite): after a resume the steps
    past the checkpoint are re-run and logged again, so their old lines are dropped."""
    if not path.exists():
        return
    tmp = path.with_suffix(".jsonl.tmp")
    with open(path, encoding="utf-8") as src, open(tmp, "w", encoding="utf-8") as dst:
        for raw in src:
            try:
                step = json.loads(raw).get("step", 0)
            except ValueError:
                continue  # a line cut by the crash
            if step <= last_step:
                dst.write(raw if raw.endswith("\n") else raw + "\n")
    os.replace(tmp, path)


def _jsonable(v: Any):
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if hasattr(v, "item"):
        return v.item()
    return str(v)
