"""``vlm-trainer plot RUN_DIR [-o curves.png]``: a PNG of a run's curves from its metrics.jsonl,
for people without TensorBoard.

Panels, each only when the run has its data: loss (training loss per step, and eval_loss per
evaluation), other eval metrics (accuracies, margins, eval_reward_mean ...; not eval_records),
and RL reward (mean per step with a band of one standard deviation). matplotlib with the Agg
backend: no display needed (the ``plot`` extra).
"""

from __future__ import annotations

import json
from pathlib import Path

_SKIP_EVAL = {"eval_records", "eval_completion_length"}


def read_events(run_dir: Path) -> tuple[list[dict], list[dict]]:
    """``(train lines, eval lines)`` of ``RUN_DIR/metrics.jsonl``; cut lines are skipped."""
    train, evals = [], []
    for raw in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        if line.get("event") == "train":
            train.append(line)
        elif line.get("event") == "eval":
            evals.append(line)
    return train, evals


def _series(lines: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(m["step"], m[key]) for m in lines if isinstance(m.get(key), int | float)]
    return [s for s, _ in pts], [v for _, v in pts]


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the curves of ``run_dir`` to ``out`` (default ``RUN_DIR/curves.png``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    out = Path(out) if out else run_dir / "curves.png"
    train, evals = read_events(run_dir)
    if not train and not evals:
        raise ValueError(f"{run_dir}/metrics.jsonl has no train or eval lines")
    eval_keys = sorted({k for m in evals for k in m if k.startswith("eval_")} - _SKIP_EVAL)
    panels = ["loss"]
    if [k for k in eval_keys if k != "eval_loss"]:
        panels.append("eval")
    if any("reward_mean" in m for m in train):
        panels.append("reward")
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        if panel == "loss":
            ax.plot(*_series(train, "loss"), label="train loss", linewidth=1)
            if "eval_loss" in eval_keys:
                ax.plot(*_series(evals, "eval_loss"), "o-", label="eval loss")
        elif panel == "eval":
            for key in eval_keys:
                if key != "eval_loss":
                    ax.plot(*_series(evals, key), "o-", label=key.removeprefix("eval_"))
        else:
            steps, mean = _series(train, "reward_mean")
            _, std = _series(train, "reward_std")
            ax.plot(steps, mean, label="reward mean")
            if len(std) == len(mean):
                lo = [m - s for m, s in zip(mean, std, strict=True)]
                hi = [m + s for m, s in zip(mean, std, strict=True)]
                ax.fill_between(steps, lo, hi, alpha=0.2, label="± 1 std")
        ax.set_title(panel)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(run_dir.name)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
