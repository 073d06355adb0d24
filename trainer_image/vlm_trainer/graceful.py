"""Graceful stop: SIGTERM means "snapshot where you are and exit", never "lose the last steps".

Kubernetes sends SIGTERM when a pod is evicted, preempted (Kueue), drained or its Job is
suspended, then SIGKILL once ``terminationGracePeriodSeconds`` have passed. The trainer:

1. the handler only sets a flag (a signal can land anywhere, e.g. inside a collective or a
   checkpoint write, so it does no work itself; a second SIGTERM changes nothing);
2. the training loop checks the flag between optimizer steps; under several processes every
   rank all-reduces its flag there, so all ranks stop after the same step even when the signal
   reached only some of them, or reached them at different moments;
3. the recipe writes a ``step-*`` snapshot at that step (atomically, ``checkpoint.py``: a
   SIGKILL during the write leaves a ``.tmp-*`` folder that resume ignores, never a half
   snapshot that looks whole), reports it, and ``Stopped`` ends the run with
   ``exit_codes.EXIT_PREEMPTED``. A signal during setup stops before the first step; after the
   last step the run finishes (evaluation and ``final``) instead.

Grace period budget (what the shape's ``terminationGracePeriodSeconds`` must cover): the rest of
the current optimizer step, plus the snapshot: write its bytes, re-read them for the manifest's
sha256, fsync. For an 8B model trained in bf16 with AdamW the snapshot is about 16 GB of
weights + 32 GB of optimizer moments = 48 GB (a LoRA run: well under 1 GB). At 1 GB/s of disk
bandwidth that is ~48 s to write and ~48 s to hash (sha256 runs near 1-2 GB/s per core), so
~100 s, and ~200 s at 500 MB/s (a network volume). FSDP splits the optimizer part across ranks,
which write in parallel. Hence a default of 300 s for full fine-tunes of models up to ~8B on a
1 GB/s volume, plus a slow step's duration; size it as
``step_time + 2 * snapshot_bytes / disk_bytes_per_s + 30 s``.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from types import FrameType

from .exit_codes import EXIT_PREEMPTED


class Stopped(Exception):
    """The run stopped on SIGTERM after ``step``; ``snapshot`` holds that step (None when
    nothing was trained yet). The CLI turns it into ``EXIT_PREEMPTED``."""

    exit_code = EXIT_PREEMPTED

    def __init__(self, step: int, snapshot: Path | None):
        self.step, self.snapshot = step, snapshot
        where = f"snapshot {snapshot}" if snapshot else "nothing trained yet, no snapshot"
        super().__init__(f"stopped on SIGTERM after step {step}; {where}")


class StopFlag:
    """Set by SIGTERM (or ``request()``); ``install()`` / ``restore()`` around a run."""

    def __init__(self) -> None:
        self.requested = False
        self.signals = 0
        self._previous: object = None

    def request(self) -> None:
        self.requested = True

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        self.signals += 1
        # os.write, not print: the handler may interrupt a print on the same stream.
        os.write(2, f"SIGTERM received ({self.signals}): stopping after this step\n".encode())

    def install(self) -> None:
        """Take over SIGTERM (only the main thread may; elsewhere this is a no-op)."""
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handler)

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)  # type: ignore[arg-type]
            self._previous = None

    def agreed(self, dist) -> bool:
        """True on every rank when any rank was asked to stop (one all-reduce per step; a
        plain read for one process). Every rank must call it at the same point of the loop."""
        return bool(dist.all_sum(1.0 if self.requested else 0.0))
