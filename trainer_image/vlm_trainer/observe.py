"""Watching a run: Prometheus metrics and TensorBoard event files, as reporters.

- ``PrometheusReporter``: serves ``/metrics`` (prometheus-client, its own registry) on
  ``VLM_TRAINER_METRICS_PORT`` from rank 0: ``vlm_trainer_step``, ``vlm_trainer_total_steps``,
  ``vlm_trainer_loss``, ``vlm_trainer_tokens_per_second``, ``vlm_trainer_learning_rate``,
  ``vlm_trainer_grad_norm``, ``vlm_trainer_eval{metric=...}`` (every eval metric of the
  latest evaluation) and, for RL, ``vlm_trainer_reward_mean`` / ``vlm_trainer_reward_std``;
  every series carries a ``job`` label. In a TrainerJob pod the operator sets the port and
  declares it as the container port ``metrics`` (the chart's optional PodMonitor scrapes it).
  A port already in use (several local runs on one host) is logged and not served: watching
  must never stop training.
- ``TensorBoardReporter``: ``events.out.tfevents.*`` in the run folder, next to
  ``metrics.jsonl`` (``train/<key>`` per step, ``eval/<key>`` per evaluation), so
  ``tensorboard --logdir <storage>`` shows every run. A resumed run purges the steps it will
  redo. Needs the ``tensorboard`` package (the trainer extra has it); without it, nothing.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Any

METRICS_PORT_ENV = "VLM_TRAINER_METRICS_PORT"

_GAUGES = {
    "step": ("vlm_trainer_step", "Optimizer steps done."),
    "total_steps": ("vlm_trainer_total_steps", "Optimizer steps planned."),
    "loss": ("vlm_trainer_loss", "Training loss of the latest step."),
    "tokens_per_second": ("vlm_trainer_tokens_per_second", "Training throughput, all ranks."),
    "lr": ("vlm_trainer_learning_rate", "Learning rate of the latest step."),
    "grad_norm": ("vlm_trainer_grad_norm", "Global gradient norm before clipping."),
    "reward_mean": ("vlm_trainer_reward_mean", "RL: mean reward of the latest step."),
    "reward_std": ("vlm_trainer_reward_std", "RL: reward standard deviation, latest step."),
}


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return float(v) if math.isfinite(v) else None


class PrometheusReporter:
    """Gauges of the latest step and evaluation, served over HTTP."""

    def __init__(self, port: int, job: str = "vlm-trainer"):
        from prometheus_client import CollectorRegistry, Gauge, start_http_server

        self.registry = CollectorRegistry()
        self.job = job
        self.gauges = {
            key: Gauge(name, doc, ["job"], registry=self.registry)
            for key, (name, doc) in _GAUGES.items()
        }
        self.eval = Gauge(
            "vlm_trainer_eval", "Latest eval metrics.", ["job", "metric"], registry=self.registry
        )
        self.server = None
        try:
            self.server, _ = start_http_server(port, registry=self.registry)
        except OSError as e:
            print(f"trainer metrics: port {port} unavailable ({e}); not serving", file=sys.stderr)

    def _set(self, metrics: dict[str, Any]) -> None:
        for key, gauge in self.gauges.items():
            if (v := _number(metrics.get(key))) is not None:
                gauge.labels(job=self.job).set(v)

    def on_start(self, info: dict[str, Any]) -> None:
        self.job = str(info.get("job") or self.job)
        self._set({"total_steps": info.get("total_steps"), "step": info.get("resumed_step")})

    def on_step(self, metrics: dict[str, Any]) -> None:
        self._set(metrics)

    def on_eval(self, metrics: dict[str, Any]) -> None:
        for key, value in metrics.items():
            if key.startswith("eval_") and (v := _number(value)) is not None:
                self.eval.labels(job=self.job, metric=key).set(v)

    def on_checkpoint(self, path: Path, step: int, manifest: dict[str, Any]) -> None:
        pass

    def on_done(self, summary: dict[str, Any]) -> None:
        if self.server is not None:
            self.server.shutdown()

    def on_error(self, message: str) -> None:
        self.on_done({})


class TensorBoardReporter:
    """Scalars into a TensorBoard event file in the run folder."""

    def __init__(self, log_dir: Path):
        self.log_dir = Path(log_dir)
        self.writer = None

    def on_start(self, info: dict[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        resumed = info.get("resumed_step")
        # purge_step: events past the resumed checkpoint are re-run, so their old ones go.
        self.writer = SummaryWriter(str(self.log_dir), purge_step=(resumed or 0) + 1)

    def _scalars(self, prefix: str, metrics: dict[str, Any]) -> None:
        if self.writer is None:
            return
        step = int(metrics.get("step") or 0)
        for key, value in metrics.items():
            if key != "step" and (v := _number(value)) is not None:
                self.writer.add_scalar(f"{prefix}/{key}", v, step)

    def on_step(self, metrics: dict[str, Any]) -> None:
        self._scalars("train", metrics)

    def on_eval(self, metrics: dict[str, Any]) -> None:
        self._scalars("eval", metrics)
        if self.writer is not None:
            self.writer.flush()

    def on_checkpoint(self, path: Path, step: int, manifest: dict[str, Any]) -> None:
        if self.writer is not None:
            self.writer.flush()

    def on_done(self, summary: dict[str, Any]) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def on_error(self, message: str) -> None:
        self.on_done({})


def extra_reporters(log_dir: Path) -> list:
    """The watching reporters this process can run: TensorBoard when the package is there,
    Prometheus when the port is set."""
    out: list = []
    try:
        import tensorboard  # noqa: F401  (torch's SummaryWriter needs it)

        out.append(TensorBoardReporter(log_dir))
    except ImportError:
        pass
    if port := os.environ.get(METRICS_PORT_ENV):
        out.append(PrometheusReporter(int(port)))
    return out
