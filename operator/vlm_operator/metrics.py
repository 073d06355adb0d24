"""Prometheus metrics of the operator and the /metrics server.

Exposed: `vlm_operator_trainerjobs{phase}` and `vlm_operator_checkpoints{phase}` (objects this
operator has seen, by phase), `vlm_operator_reconcile_total{kind,result}`,
`vlm_operator_reconcile_errors_total{kind}`, `vlm_operator_reconcile_seconds{kind}` (histogram),
`vlm_operator_promotions_total{result}`, `vlm_operator_api_writes_total{kind,verb}` (every
write this process sent to the API server) and `vlm_operator_leader` (1 while this replica holds
the leader Lease, or always with leader election off).
"""

from __future__ import annotations

import threading
import time
from collections import Counter as Tally
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Counter, Gauge, Histogram, start_http_server

RECONCILES = Counter("vlm_operator_reconcile", "Reconciles by kind and result", ["kind", "result"])
ERRORS = Counter("vlm_operator_reconcile_errors", "Reconciles that raised", ["kind"])
DURATION = Histogram("vlm_operator_reconcile_seconds", "Reconcile duration", ["kind"])
PROMOTIONS = Counter("vlm_operator_promotions", "Finished promotions by result", ["result"])
JOBS = Gauge("vlm_operator_trainerjobs", "TrainerJobs by phase", ["phase"])
API_WRITES = Counter("vlm_operator_api_writes", "API writes by kind and verb", ["kind", "verb"])
LEADER = Gauge("vlm_operator_leader", "1 while this replica is the active one")
CHECKPOINTS = Gauge("vlm_operator_checkpoints", "Checkpoints by phase", ["phase"])

_phases: dict[str, dict[str, str]] = {"TrainerJob": {}, "Checkpoint": {}}
_reported: dict[str, set[str]] = {"TrainerJob": set(), "Checkpoint": set()}  # gauge labels so far
_lock = threading.Lock()


def observe_phase(kind: str, key: str, phase: str | None) -> None:
    """Record the phase of one object (None: deleted) and refresh the by-phase gauge."""
    gauge = JOBS if kind == "TrainerJob" else CHECKPOINTS
    with _lock:
        seen = _phases[kind]
        if phase is None:
            seen.pop(key, None)
        else:
            seen[key] = phase
        counts = Tally(seen.values())
        _reported[kind] |= set(counts)  # a phase that empties must drop to 0, not vanish
        for p in _reported[kind]:
            gauge.labels(phase=p).set(counts.get(p, 0))


@contextmanager
def timed(kind: str) -> Iterator[None]:
    t0 = time.perf_counter()
    try:
        yield
    except Exception:
        ERRORS.labels(kind=kind).inc()
        raise
    finally:
        DURATION.labels(kind=kind).observe(time.perf_counter() - t0)


def serve(port: int) -> None:
    if port:
        start_http_server(port)
