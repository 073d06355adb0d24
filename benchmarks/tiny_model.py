"""Shared by the trainer benchmarks: the tiny offline Qwen3-VL, built in a child process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def build_tiny_model(out: Path) -> Path:
    """Built in a child process, as a user would: building it here (BPE training, model init)
    was seen to slow down what this process measures afterwards."""
    cmd = [sys.executable, "-m", "vlm_trainer.cli", "make-tiny-model", str(out)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return out
