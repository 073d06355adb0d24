"""A rate-limited work queue of object keys, as controller-runtime has.

Watch events and the periodic resync only *enqueue* keys; a few worker threads reconcile them.
A key is never reconciled by two workers at once (re-adding it while it runs marks it dirty and
it runs again afterwards), duplicates collapse, and a failed reconcile is retried with
exponential backoff (1 s doubling to 60 s) while the error is logged with the object's name.
A 409 Conflict (the object changed since it was read: a resourceVersion-guarded write lost) is
not a failure: the key runs again at once, on a fresh read.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger("vlm_operator.queue")
Key = tuple[str, str | None, str]  # kind, namespace, name
MAX_BACKOFF = 60.0


class WorkQueue:
    def __init__(self, handler: Callable[[Key], list[Key]], workers: int = 4) -> None:
        self.handler = handler
        self.workers = workers
        self._heap: list[tuple[float, Key]] = []
        self._queued: set[Key] = set()
        self._running: set[Key] = set()
        self._dirty: set[Key] = set()
        self._failures: dict[Key, int] = {}
        self._cv = threading.Condition()
        self._stop = False
        self._threads: list[threading.Thread] = []

    def add(self, key: Key, delay: float = 0.0) -> None:
        with self._cv:
            if key in self._running:
                self._dirty.add(key)
                return
            if key in self._queued and delay > 0:
                return  # already due sooner
            self._queued.add(key)
            heapq.heappush(self._heap, (time.monotonic() + delay, key))
            self._cv.notify()

    def start(self) -> None:
        for i in range(self.workers):
            t = threading.Thread(target=self._work, name=f"reconcile-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        for t in self._threads:
            t.join(timeout=10)

    def _next(self) -> Key | None:
        with self._cv:
            while not self._stop:
                now = time.monotonic()
                while self._heap and self._heap[0][1] in self._running:
                    _, k = heapq.heappop(self._heap)  # picked up again when it finishes
                    self._dirty.add(k)
                if self._heap and self._heap[0][0] <= now:
                    _, key = heapq.heappop(self._heap)
                    if key not in self._queued:
                        continue  # a stale duplicate entry
                    self._queued.discard(key)
                    self._running.add(key)
                    return key
                self._cv.wait(timeout=(self._heap[0][0] - now) if self._heap else 1.0)
        return None

    def _work(self) -> None:
        while (key := self._next()) is not None:
            follow_ups: list[Key] = []
            try:
                follow_ups = self.handler(key) or []
                self._failures.pop(key, None)
                retry = None
            except Exception as e:
                if getattr(e, "status", None) == 409:
                    log.debug("%s %s/%s: conflict, reconciling again", key[0], key[1], key[2])
                    with self._cv:
                        self._running.discard(key)
                        self._dirty.discard(key)
                    self.add(key)
                    continue
                n = self._failures[key] = self._failures.get(key, 0) + 1
                retry = min(MAX_BACKOFF, 2.0 ** (n - 1))
                log.warning(
                    "%s %s/%s: reconcile failed (attempt %d, retry in %.0fs): %s",
                    key[0],
                    key[1] or "-",
                    key[2],
                    n,
                    retry,
                    e,
                    exc_info=n >= 3,
                )
            with self._cv:
                self._running.discard(key)
                again = key in self._dirty
                self._dirty.discard(key)
            if retry is not None:
                self.add(key, retry)
            elif again:
                self.add(key)
            for k in follow_ups:
                self.add(k)
