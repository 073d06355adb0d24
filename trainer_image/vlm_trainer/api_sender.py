"""Sending reports to the Kubernetes API without ever blocking or killing training.

The training loop hands reports to an ``ApiSender`` and returns at once; one daemon thread
sends them. What it guarantees:

- **latest wins**: status patches merge into one pending patch (a newer key replaces an older
  one), so a slow or absent API server costs memory for one patch, not one per step;
- **creates in order, never dropped**: objects to create (Checkpoints) are sent first, in order
  (a bounded queue of ``MAX_CREATES``), so a status naming a Checkpoint follows its creation;
- **timeouts and bounded retries**: every call gets ``_request_timeout=(connect, read)``; a
  failed call is tried ``attempts`` times with a short backoff, then the item stays pending and
  the thread waits ``retry_interval_s`` before the next round, for as long as the trainer runs:
  when the server comes back, the last report is sent;
- a call the server refuses for good (4xx other than 408/409/429) is dropped with a log line;
  a create answered 409 (it exists: a resumed run saving the same step) counts as done;
- ``flush(timeout_s)`` (at the end of the run) waits for the queue to drain, at most that long.

Knobs (environment): ``VLM_REPORT_TIMEOUT_S`` (read timeout, default 10; connect is the
smaller of it and 5) and ``VLM_REPORT_RETRY_S`` (pause between rounds, default 5).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

MAX_CREATES = 256
_RETRYABLE_4XX = (408, 409, 429)

Call = Callable[[dict[str, Any], tuple[float, float]], None]


def default_timeout() -> tuple[float, float]:
    read = float(os.environ.get("VLM_REPORT_TIMEOUT_S", "10"))
    return min(5.0, read), read


class ApiSender:
    """``patch(status, timeout)`` and ``create(body, timeout)`` make the real calls."""

    def __init__(
        self,
        patch: Call,
        create: Call,
        timeout: tuple[float, float] | None = None,
        attempts: int = 3,
        retry_interval_s: float | None = None,
    ):
        self._patch, self._create = patch, create
        self.timeout = timeout or default_timeout()
        self.attempts = attempts
        self.retry_interval_s = (
            float(os.environ.get("VLM_REPORT_RETRY_S", "5"))
            if retry_interval_s is None
            else retry_interval_s
        )
        self._status: dict[str, Any] = {}
        self._creates: deque[dict[str, Any]] = deque()
        self._cond = threading.Condition()
        self._busy = False
        self._retry_at = 0.0  # after a failed round: no new round before this (monotonic)
        self._flushing = 0  # flush() callers waiting: retry now, do not wait out the pause
        self.sent = 0  # calls that succeeded (for tests and logs)
        self.failures = 0
        threading.Thread(target=self._run, name="api-sender", daemon=True).start()

    # -- producer side (the training thread): never blocks on the network -------------------
    def put_status(self, status: dict[str, Any]) -> None:
        with self._cond:
            self._status.update(status)
            self._cond.notify()

    def put_create(self, body: dict[str, Any]) -> None:
        with self._cond:
            if len(self._creates) >= MAX_CREATES:
                self._creates.popleft()
                _log("report queue full: dropped the oldest pending create")
            self._creates.append(body)
            self._cond.notify()

    def flush(self, timeout_s: float) -> bool:
        """Wait until everything pending was sent (True) or ``timeout_s`` passed (False)."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            self._flushing += 1
            self._cond.notify_all()
            try:
                while self._pending() or self._busy:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    self._cond.wait(min(left, 0.05))
            finally:
                self._flushing -= 1
        return True

    def _pending(self) -> bool:
        return bool(self._status or self._creates)

    # -- the sending thread ------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                self._wait_for_work()
                kind, item = self._take()
                self._busy = True
            ok = self._send(kind, item)
            with self._cond:
                self._busy = False
                if not ok:
                    self._put_back(kind, item)
                if not ok:  # the server is away: pause (new reports only merge meanwhile)
                    self._retry_at = time.monotonic() + self.retry_interval_s
                self._cond.notify_all()

    def _wait_for_work(self) -> None:
        """Under the lock: until something is pending and the pause after a failure is over
        (or a ``flush`` is waiting)."""
        while True:
            pause = self._retry_at - time.monotonic()
            if self._pending() and (pause <= 0 or self._flushing):
                return
            self._cond.wait(pause if self._pending() else None)

    def _take(self) -> tuple[str, dict[str, Any]]:
        if self._creates:
            return "create", self._creates.popleft()
        status, self._status = self._status, {}
        return "status", status

    def _put_back(self, kind: str, item: dict[str, Any]) -> None:
        if kind == "create":
            self._creates.appendleft(item)
        else:  # newer keys that arrived meanwhile win over the ones that failed
            self._status = {**item, **self._status}

    def _send(self, kind: str, item: dict[str, Any]) -> bool:
        """True when done with ``item`` (sent, or refused for good); False to retry later."""
        call = self._create if kind == "create" else self._patch
        for attempt in range(self.attempts):
            try:
                call(item, self.timeout)
                self.sent += 1
                return True
            except Exception as e:
                status = getattr(e, "status", None)
                if kind == "create" and status == 409:
                    return True  # it exists already
                final = isinstance(status, int) and 400 <= status < 500
                if final and status not in _RETRYABLE_4XX:
                    _log(f"report refused by the API server ({status}), dropped: {e}")
                    return True
                self.failures += 1
                if attempt + 1 < self.attempts:
                    time.sleep(min(2.0, 0.25 * 2**attempt))
                else:
                    _log(f"report not sent ({type(e).__name__}); will retry: {str(e)[:200]}")
        return False


def _log(msg: str) -> None:
    print(f"kube report: {msg}", file=sys.stderr, flush=True)
