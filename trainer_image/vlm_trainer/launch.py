"""``python -m vlm_trainer.launch torchrun ARGS...``: PID 1 of a several-process trainer pod.

Why: Kubernetes sends SIGTERM to the container's PID 1 only. Were that torchrun, it would
SIGTERM its workers and SIGKILL them 30 s later (a constant inside torch.distributed.elastic),
which is too short to snapshot a large model (see ``graceful.py`` for the budget), and it
would exit 1 whatever the workers did, so the Job could not tell a graceful stop from a crash.

What it does: starts torchrun with SIGTERM ignored (inherited through exec; torchrun is told
not to handle it, ``TORCHELASTIC_SIGNALS_TO_HANDLE``), so only the workers act on it: on
SIGTERM this launcher forwards it to torchrun's workers, which agree on a step, snapshot and
exit (``graceful.py``), then torchrun exits. A worker that stopped gracefully leaves a marker
file (``VLM_STOP_MARKER``); with it, the launcher exits ``EXIT_PREEMPTED``, else with
torchrun's own code. The pod's ``terminationGracePeriodSeconds`` bounds the whole stop.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from .exit_codes import EXIT_PREEMPTED, EXIT_USAGE

STOP_MARKER_ENV = "VLM_STOP_MARKER"


def children(pid: int) -> list[int]:
    """The direct children of ``pid`` (torchrun's workers), from /proc."""
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _ignore_sigterm() -> None:  # runs in the child between fork and exec
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        print("usage: python -m vlm_trainer.launch torchrun [ARGS...]", file=sys.stderr)
        return EXIT_USAGE
    marker = Path(tempfile.mkdtemp(prefix="vlm-launch-")) / "stopped"
    env = {
        **os.environ,
        "TORCHELASTIC_SIGNALS_TO_HANDLE": "SIGINT,SIGHUP,SIGQUIT",
        STOP_MARKER_ENV: str(marker),
    }
    proc = subprocess.Popen(argv, env=env, preexec_fn=_ignore_sigterm)

    def forward(signum, frame) -> None:
        for pid in children(proc.pid):
            with contextlib.suppress(ProcessLookupError):  # a worker that just ended
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    code = proc.wait()
    if marker.exists():
        print(f"launch: workers stopped gracefully ({marker.read_text().strip()})", file=sys.stderr)
        return EXIT_PREEMPTED
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main())
