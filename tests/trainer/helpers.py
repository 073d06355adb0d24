"""Helpers shared by the trainer tests."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def run_cli(
    *args: str, env: dict | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run ``vlm-trainer`` in a fresh process (as the pod would), capturing its output."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "vlm_trainer.cli", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        cwd=ROOT,
    )


def write_config(path: Path, **keys) -> Path:
    path.write_text(
        yaml.safe_dump({k: str(v) if isinstance(v, Path) else v for k, v in keys.items()})
    )
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def sft_then_eval(cfg: Path, log_path: Path, eval_data: Path, threads: int) -> tuple[float, dict]:
    """``vlm-trainer sft --config cfg``, then ``vlm-trainer eval`` of its final checkpoint
    (under ``log_path``) on ``eval_data``; returns (training wall seconds, the eval report)."""
    t0 = time.monotonic()
    out = run_cli("sft", "--config", str(cfg))
    elapsed = time.monotonic() - t0
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    final = Path(log_path) / "checkpoints" / "final"
    ev = run_cli(
        "eval", "--model", str(final), "--data", str(eval_data), "--num-threads", str(threads)
    )
    assert ev.returncode == 0, ev.stderr[-3000:]
    return elapsed, json.loads(ev.stdout)


# -- several processes on CPU (torchrun, gloo) -------------------------------------------------

TORCHRUN = str(Path(sys.executable).parent / "torchrun")
DIST_ENV = {"OMP_NUM_THREADS": "1", "VLM_DIST_TIMEOUT_S": "120"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(
    cfg: Path, nproc: int = 2, mode: str = "sft", **env: str
) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node nproc -m vlm_trainer.cli MODE --config CFG``."""
    argv = [TORCHRUN, f"--nproc_per_node={nproc}", f"--master-port={free_port()}"]
    argv += ["-m", "vlm_trainer.cli", mode, "--config", str(cfg)]
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **DIST_ENV, **env}
    return subprocess.run(argv, capture_output=True, text=True, env=full_env, cwd=ROOT, timeout=300)


def torchrun_ok(cfg: Path, mode: str = "sft", **env: str) -> subprocess.CompletedProcess:
    out = torchrun(cfg, mode=mode, **env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    return out


def assert_close_curves(a: list, b: list, tol: float = 1e-5) -> float:
    """Two ``[(step, value, ...)]`` curves: the same steps, every value within ``tol``.
    Returns the largest difference."""
    assert [s for s, *_ in a] == [s for s, *_ in b] and a
    worst = max(
        abs(x - y)
        for (_, *xs), (_, *ys) in zip(a, b, strict=True)
        for x, y in zip(xs, ys, strict=True)
    )
    assert worst <= tol, f"curves differ by up to {worst:.2e}: {a} vs {b}"
    return worst
