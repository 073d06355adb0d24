"""keepLast pruning through the trainer's Kubernetes reporter (``may_prune``): a Checkpoint that
another job's spec.initFrom marked in use keeps its files, and so does one that gained such a
mark after it was read (the pruned mark is conditional on its resourceVersion). The client is
the real ``kubernetes`` client; the server is a small stand-in for the API server that holds
one Checkpoint and applies merge patches with the resourceVersion precondition."""

from __future__ import annotations

import json
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.trainer.helpers import free_port
from tests.trainer.json_http import JsonHandler

pytestmark = pytest.mark.unit

URI = "pvc://ckpts/ns/job-uid/checkpoints"
IN_USE = "vlmtrain.dev/in-use-by.uid-dpo"


class CheckpointServer(ThreadingHTTPServer):
    """One Checkpoint ``job-step-10``; ``after_get`` changes it once right after it is read."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, annotations: dict[str, str]):
        self.ck = {
            "apiVersion": "vlmtrain.dev/v1alpha1",
            "kind": "Checkpoint",
            "metadata": {"name": "job-step-10", "namespace": "ns", "resourceVersion": "1",
                         "annotations": dict(annotations)},
            "spec": {"trainerJob": "job", "step": 10, "uri": f"{URI}/step-10"},
        }  # fmt: skip
        self.after_get: dict[str, str] | None = None
        self.patches: list[dict] = []
        super().__init__(("127.0.0.1", port), _Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def annotate(self, annotations: dict[str, str | None]) -> None:
        ann = self.ck["metadata"]["annotations"]
        for k, v in annotations.items():
            ann.pop(k, None) if v is None else ann.__setitem__(k, v)
        meta = self.ck["metadata"]
        meta["resourceVersion"] = str(int(meta["resourceVersion"]) + 1)


class _Handler(JsonHandler):
    _send = JsonHandler.send_json

    def do_GET(self) -> None:
        srv: CheckpointServer = self.server
        if not self.path.endswith("/checkpoints/job-step-10"):
            return self._send(404, {"kind": "Status", "code": 404})
        self._send(200, srv.ck)
        if srv.after_get is not None:
            srv.annotate(srv.after_get)
            srv.after_get = None

    def do_PATCH(self) -> None:
        srv: CheckpointServer = self.server
        patch = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        srv.patches.append(patch)
        meta = patch.get("metadata", {})
        if meta.get("resourceVersion") not in (None, srv.ck["metadata"]["resourceVersion"]):
            return self._send(409, {"kind": "Status", "code": 409, "reason": "Conflict"})
        srv.annotate(meta.get("annotations") or {})
        self._send(200, srv.ck)


@pytest.fixture
def prune_with(monkeypatch):
    from kubernetes.client import ApiClient, Configuration
    from vlm_trainer.kube_report import KubernetesReporter

    monkeypatch.setenv("VLM_TRAINERJOB_NAME", "job")
    monkeypatch.setenv("VLM_TRAINERJOB_NAMESPACE", "ns")
    monkeypatch.setenv("VLM_CHECKPOINT_URI", URI)
    servers = []

    def make(annotations: dict[str, str]) -> tuple[KubernetesReporter, CheckpointServer]:
        port = free_port()
        servers.append(CheckpointServer(port, annotations))
        conf = Configuration(host=f"http://127.0.0.1:{port}")
        conf.retries = 0
        return KubernetesReporter(ApiClient(conf)), servers[-1]

    yield make
    for s in servers:
        s.shutdown()
        s.server_close()


def test_an_unmarked_checkpoint_is_marked_pruned(prune_with):
    rep, srv = prune_with({})
    assert rep.may_prune(Path("/ckpt/step-10"))
    assert "vlmtrain.dev/pruned" in srv.ck["metadata"]["annotations"]


def test_a_checkpoint_in_use_by_another_job_keeps_its_files(prune_with):
    rep, srv = prune_with({IN_USE: "dpo"})
    assert not rep.may_prune(Path("/ckpt/step-10"))
    assert srv.patches == [] and "vlmtrain.dev/pruned" not in srv.ck["metadata"]["annotations"]


def test_a_mark_added_after_the_read_wins(prune_with):
    rep, srv = prune_with({})
    srv.after_get = {IN_USE: "dpo"}  # the operator admits a dependent job meanwhile
    assert not rep.may_prune(Path("/ckpt/step-10"))
    assert len(srv.patches) == 1  # tried, refused (409)
    assert srv.ck["metadata"]["annotations"] == {IN_USE: "dpo"}


def test_keeps_files_names_the_reason():
    from vlm_trainer.kube_report import keeps_files

    ck = {"metadata": {"annotations": {IN_USE: "dpo", "vlmtrain.dev/in-use-by.u2": "rl"}},
          "spec": {}}  # fmt: skip
    assert keeps_files(ck) == "in use by TrainerJob dpo, rl"
    ck["metadata"]["annotations"] = {"vlmtrain.dev/root-model": "Qwen/x"}
    assert keeps_files(ck) is None
    ck["spec"]["promote"] = {"outputModel": "m"}
    assert keeps_files(ck) == "promotion"
