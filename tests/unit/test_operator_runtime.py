"""The operator's runtime pieces without a cluster: the work queue and the phase gauges."""

from __future__ import annotations

import threading
import time

import pytest
from prometheus_client import REGISTRY
from vlm_operator import metrics
from vlm_operator.workqueue import WorkQueue

pytestmark = pytest.mark.unit


def test_queue_collapses_duplicates_and_retries_failures_with_backoff() -> None:
    calls: list[tuple[str, float]] = []
    done = threading.Event()

    def handler(key):
        calls.append((key[2], time.monotonic()))
        if key[2] == "flaky" and sum(1 for n, _ in calls if n == "flaky") < 3:
            raise RuntimeError("apiserver said no")
        if sum(1 for n, _ in calls if n == "flaky") >= 3:
            done.set()
        return [("TrainerJob", "ns", "follow-up")] if key[2] == "a" else []

    q = WorkQueue(handler, workers=2)
    for _ in range(5):
        q.add(("TrainerJob", "ns", "a"))  # five events for one object: one reconcile
    q.add(("TrainerJob", "ns", "flaky"))
    q.start()
    try:
        assert done.wait(10), calls
        time.sleep(0.3)
    finally:
        q.stop()
    names = [n for n, _ in calls]
    assert names.count("a") == 1 and names.count("follow-up") == 1
    flaky = [t for n, t in calls if n == "flaky"]
    assert len(flaky) == 3
    assert flaky[1] - flaky[0] >= 0.9 and flaky[2] - flaky[1] >= 1.9  # 1 s, then 2 s


def test_phase_gauge_counts_objects_and_drops_emptied_phases_to_zero() -> None:
    def value(phase: str) -> float | None:
        return REGISTRY.get_sample_value("vlm_operator_checkpoints", {"phase": phase})

    metrics.observe_phase("Checkpoint", "ns/a", "Verifying")
    metrics.observe_phase("Checkpoint", "ns/b", "Verifying")
    assert value("Verifying") == 2
    metrics.observe_phase("Checkpoint", "ns/a", "Available")
    metrics.observe_phase("Checkpoint", "ns/b", None)  # deleted
    assert value("Verifying") == 0 and value("Available") == 1
