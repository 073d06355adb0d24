"""Snapshot evaluation records and best-snapshot selection.

Every snapshot written while an eval dataset is set carries an ``eval`` section in its
manifest::

    "eval": {"step": 50, "headline": "eval_loss", "mode": "min", "metrics": {"eval_loss": ...}}

``headline`` is the recipe's main eval metric (SFT and DPO: ``eval_loss``, lower is better;
RL: ``eval_reward_mean``, higher is better); ``kubectl get ckpt`` shows it. ``best_snapshot``
picks, among committed snapshots (``step-*`` and ``final``), the one with the best value of a
metric; ties go to the earlier step (less training for the same score). Snapshots without the
metric are never picked. Pure apart from reading manifests; no torch.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

Direction = Literal["min", "max"]


def eval_section(metrics: dict, step: int, headline: str, mode: Direction) -> dict | None:
    """The manifest's ``eval`` section from a recipe's eval metrics; None without any."""
    numbers = {
        k: float(v)
        for k, v in metrics.items()
        if k.startswith("eval_") and isinstance(v, int | float) and math.isfinite(float(v))
    }
    if not numbers:
        return None
    return {"step": step, "headline": headline, "mode": mode, "metrics": numbers}


def better(a: float, b: float, mode: Direction) -> bool:
    """Whether ``a`` is strictly better than ``b``."""
    return a < b if mode == "min" else a > b


def pick_best(
    candidates: list[tuple[int, str, dict]], metric: str, mode: Direction
) -> tuple[int, str, float] | None:
    """``(step, name, value)`` of the best of ``(step, name, eval metrics)``; None when no
    candidate has ``metric``. Ties keep the earliest step."""
    best: tuple[int, str, float] | None = None
    for step, name, metrics in sorted(candidates, key=lambda c: c[0]):
        value = metrics.get(metric)
        if not isinstance(value, int | float) or not math.isfinite(value):
            continue
        if best is None or better(float(value), best[2], mode):
            best = (step, name, float(value))
    return best


def snapshot_evals(root: Path) -> list[tuple[int, str, dict]]:
    """``(step, folder name, eval metrics)`` of every committed snapshot under ``root``."""
    from . import checkpoint as ckpt

    out = []
    if not root.is_dir():
        return out
    for path in sorted(root.iterdir()):
        if path.name.startswith("."):
            continue
        manifest = ckpt.read_manifest(path)
        if manifest and isinstance(manifest.get("eval"), dict):
            ev = manifest["eval"]
            out.append((int(ev.get("step", manifest.get("step", 0))), path.name, ev["metrics"]))
    return out


def best_snapshot(root: Path, metric: str, mode: Direction) -> str | None:
    """Folder name of the best committed snapshot under ``root`` by ``metric``."""
    best = pick_best(snapshot_evals(root), metric, mode)
    return best[1] if best else None
