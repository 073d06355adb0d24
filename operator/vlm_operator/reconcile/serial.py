"""One reconcile per object at a time.

Several triggers (the object's own events, its Job's and pods' events, the resync timer) may
fire together; kopf serialises handlers per object only for the object's own handlers. A lock
per key keeps two reconciles of the same TrainerJob from interleaving their reads and writes.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

_locks: dict[str, threading.Lock] = {}
_guard = threading.Lock()


@contextmanager
def serial(key: str) -> Iterator[None]:
    with _guard:
        lock = _locks.setdefault(key, threading.Lock())
    with lock:
        yield
