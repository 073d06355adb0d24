"""The trainer's Kubernetes reporter against a real local HTTP server that refuses
connections, or accepts them and never answers: reporting returns at once (training never
waits), nothing raises, and the last report arrives once the server answers again. The client
is the real ``kubernetes`` client; only the server is a stand-in for the API server."""

from __future__ import annotations

import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.trainer.helpers import free_port
from tests.trainer.json_http import JsonHandler

pytestmark = pytest.mark.unit


class FakeApi(ThreadingHTTPServer):
    """Records every request; while ``hang`` is set, holds each request until released."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, hang: bool = False):
        self.requests: list[tuple[str, str, dict]] = []
        self.release = threading.Event()
        if not hang:
            self.release.set()
        super().__init__(("127.0.0.1", port), _Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.release.set()
        self.shutdown()
        self.server_close()

    def patches(self) -> list[dict]:
        return [b["status"] for m, _, b in self.requests if m == "PATCH"]


class _Handler(JsonHandler):
    def _answer(self, code: int) -> None:
        body = self.read_json()
        self.server.release.wait(60)
        self.server.requests.append((self.command, self.path, body))
        self.send_json(code, body)

    def do_PATCH(self) -> None:
        self._answer(200)

    def do_POST(self) -> None:
        self._answer(201)


@pytest.fixture
def reporter_for(monkeypatch):
    from kubernetes.client import ApiClient, Configuration
    from vlm_trainer.kube_report import KubernetesReporter

    monkeypatch.setenv("VLM_TRAINERJOB_NAME", "job")
    monkeypatch.setenv("VLM_TRAINERJOB_NAMESPACE", "ns")
    monkeypatch.setenv("VLM_PROGRESS_INTERVAL", "0")
    monkeypatch.setenv("VLM_REPORT_FLUSH_S", "1")

    def make(port: int) -> KubernetesReporter:
        conf = Configuration(host=f"http://127.0.0.1:{port}")
        conf.retries = 0  # our sender retries; urllib3's own retries would only add time
        api = ApiClient(conf)
        return KubernetesReporter(api, timeout=(0.5, 0.5), attempts=2, retry_interval_s=0.2)

    return make


def train(reporter, steps: int) -> float:
    """What the training loop calls; returns the longest single call, in seconds."""
    longest = 0.0
    for step in range(1, steps + 1):
        t0 = time.monotonic()
        reporter.on_step({"step": step, "loss": 1.0 / step})
        if step == 10:
            reporter.on_checkpoint(Path("/ck/step-000010"), 10, {"type": "full"})
        longest = max(longest, time.monotonic() - t0)
    return longest


def wait_for(predicate, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "the server never got the last report"
        time.sleep(0.05)


def test_refused_connections_never_block_and_the_last_report_is_resent(reporter_for):
    port = free_port()
    reporter = reporter_for(port)  # nothing listens on the port yet
    reporter.on_start({"total_steps": 100})
    assert train(reporter, 30) < 0.05
    wait_for(lambda: reporter.sender.failures >= 2)  # it did try, and failed

    server = FakeApi(port)  # the API server comes back
    try:
        wait_for(lambda: any(p["progress"]["step"] == 30 for p in server.patches()))
        posts = [b for m, _, b in server.requests if m == "POST"]
        assert [b["metadata"]["name"] for b in posts] == ["job-step-000010"]
        first_with_ckpt = next(i for i, r in enumerate(server.requests) if "latestCheckpoint"
                               in r[2].get("status", {}))  # fmt: skip
        assert server.requests[0][0] == "POST" and first_with_ckpt > 0  # create, then status
        assert len(server.patches()) <= 3  # latest wins: not one patch per missed step
    finally:
        server.stop()


def test_a_hung_server_never_blocks_training_and_the_end_waits_boundedly(reporter_for):
    port = free_port()
    server = FakeApi(port, hang=True)  # accepts, reads, never answers
    try:
        reporter = reporter_for(port)
        reporter.on_start({"total_steps": 100})
        assert train(reporter, 30) < 0.05
        t0 = time.monotonic()
        reporter.on_done({"step": 30, "loss": 0.5})  # flushes for at most VLM_REPORT_FLUSH_S
        assert 0.9 < time.monotonic() - t0 < 3
        wait_for(lambda: reporter.sender.failures >= 2)  # read timeouts, no exception

        server.release.set()  # the server answers again
        wait_for(lambda: any(p["progress"]["step"] == 30 and p["progress"].get("loss") == 0.5
                             for p in server.patches()))  # fmt: skip
    finally:
        server.stop()
