"""Helpers for the operator's integration tests: run the real operator process against the
local cluster, and stage the tiny model and demo data on a namespace's `vlm-demo` PVC.

The operator runs as `vlm-operator` (the console script a pod would run) with the admin
kubeconfig; the Helm tests run it with the chart's ServiceAccount instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.cluster.launcher import PYTHONPATH, REPO, free_port, spawn, stop_process
from tests.cluster.local import LocalCluster

DEMO_CLAIM = "vlm-demo"
CHECKPOINT_STORAGE = f"pvc://{DEMO_CLAIM}/checkpoints"
MODEL_STORAGE = f"pvc://{DEMO_CLAIM}/published"
TRAINER_IMAGE = "vlmtrain/vlm-trainer:test"
TINY_MODEL = "models/tiny-qwen3-vl"


@dataclass
class Operator:
    cluster: LocalCluster
    log: Path
    env: dict[str, str]
    proc: subprocess.Popen | None = None
    health_port: int = 0
    metrics_port: int = 0
    #: Replaces `--namespace t-*` (e.g. other namespaces, `--leader-elect`).
    args: tuple[str, ...] = ("--namespace", "t-*")

    def start(self) -> None:
        self.health_port, self.metrics_port = free_port(), free_port()
        argv = [
            str(Path(sys.executable).parent / "vlm-operator"),
            "--standalone",
            # The test namespaces only: a Helm-installed operator may own others meanwhile.
            *self.args,
            "--liveness",
            f"http://127.0.0.1:{self.health_port}/healthz",
            "--metrics-port",
            str(self.metrics_port),
        ]
        self.proc = spawn(argv, self.log, env=self.env)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"operator exited {self.proc.returncode}:\n{self.tail()}")
            with contextlib.suppress(OSError):
                url = f"http://127.0.0.1:{self.health_port}/healthz"
                if urllib.request.urlopen(url, timeout=1).status == 200:
                    return
            time.sleep(0.3)
        raise TimeoutError(f"operator not healthy in 60s:\n{self.tail()}")

    def stop(self, kill: bool = False) -> None:
        if self.proc is None:
            return
        if kill:
            self.proc.kill()
            self.proc.wait()
        else:
            stop_process(self.proc, grace=15)
        self.proc = None

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        return urllib.request.urlopen(url, timeout=5).read().decode()

    def tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""


def operator_env(cluster: LocalCluster, **extra: str) -> dict[str, str]:
    return {
        **cluster.env,
        "PYTHONPATH": PYTHONPATH,
        "VLM_TRAINER_IMAGE": TRAINER_IMAGE,
        "VLM_CHECKPOINT_STORAGE": CHECKPOINT_STORAGE,
        "VLM_MODEL_STORAGE": MODEL_STORAGE,
        "VLM_RESYNC_SECONDS": "5",
        "VLM_NETWORK_POLICY": "true",  # as the chart installs it by default
        **extra,
    }


def install_crds(cluster: LocalCluster) -> None:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    for crd in ("trainingshapes", "trainerjobs", "checkpoints"):

        def established(crd: str = crd) -> bool:
            c = condition(get(cluster, "crd", f"{crd}.vlmtrain.dev"), "Established")
            return bool(c and c["status"] == "True")

        wait_for(f"CRD {crd} Established", established, timeout=30)


def build_assets(dest: Path) -> Path:
    """The tiny model and the demo datasets, built once (offline) into `dest`."""
    if (dest / ".done").exists():
        return dest
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cli = [str(Path(sys.executable).parent / "vlm-trainer")]
    subprocess.run(
        [*cli, "make-tiny-model", str(dest / TINY_MODEL)], check=True, env=env, capture_output=True
    )
    subprocess.run(
        [*cli, "make-demo-data", str(dest / "data")], check=True, env=env, capture_output=True
    )
    (dest / ".done").touch()
    return dest


def wait_for(what: str, fn, timeout: float = 120.0, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := fn():
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def get(cluster: LocalCluster, *args: str) -> dict[str, Any] | None:
    p = cluster.kubectl("get", *args, "-o", "json", check=False)
    return json.loads(p.stdout) if p.returncode == 0 else None


def stage_demo_claim(cluster: LocalCluster, namespace: str, assets: Path) -> Path:
    """Create the `vlm-demo` PVC in `namespace`, wait until bound, copy the assets onto it."""
    pvc = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": DEMO_CLAIM, "namespace": namespace},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(pvc))
    wait_for(
        "the demo PVC to bind",
        lambda: (
            (get(cluster, "pvc", DEMO_CLAIM, "-n", namespace) or {}).get("status", {}).get("phase")
            == "Bound"
        ),
        timeout=30,
    )
    assert cluster.pvc_root is not None, "staging needs the local cluster's PVC folders"
    root = cluster.pvc_root / namespace / DEMO_CLAIM
    for part in ("models", "data"):
        shutil.copytree(assets / part, root / part, dirs_exist_ok=True)
    return root


def run_folder(cluster: LocalCluster, ns: str, tj: dict[str, Any]) -> Path:
    """Where a TrainerJob of the demo claim writes: `<storage>/<namespace>/<name>-<uid>` (the
    UID keeps a re-created job of the same name out of the earlier one's folder)."""
    name, uid = tj["metadata"]["name"], tj["metadata"]["uid"]
    return cluster.pvc_root / ns / DEMO_CLAIM / "checkpoints" / ns / f"{name}-{uid}"


def condition(obj: dict[str, Any] | None, type: str) -> dict[str, Any] | None:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c["type"] == type:
            return c
    return None


def settled(
    cluster: LocalCluster, kind: str, ns: str, name: str, phases: tuple[str, ...], timeout: float
) -> dict[str, Any]:
    """The object once its status.phase is one of `phases`."""

    def done() -> dict[str, Any] | None:
        obj = get(cluster, kind, name, "-n", ns)
        return obj if (obj or {}).get("status", {}).get("phase") in phases else None

    return wait_for(f"{kind} {name} to reach {'/'.join(phases)}", done, timeout=timeout)


def finished(cluster: LocalCluster, ns: str, name: str, timeout: float = 240) -> dict[str, Any]:
    """The TrainerJob once it Succeeded or Failed."""
    return settled(cluster, "tj", ns, name, ("Succeeded", "Failed"), timeout)


def checkpoint_settled(
    cluster: LocalCluster, ns: str, name: str, timeout: float = 240
) -> dict[str, Any]:
    """The Checkpoint once its promotion has ended (phase Promoted or Failed)."""
    return settled(cluster, "ckpt", ns, name, ("Promoted", "Failed"), timeout)


#: Hyperparameters of a short run (4 steps) for tests that only need the trainer to run.
SMALL = {"learningRate": 0.003, "epochs": 1, "batchSize": 8, "maxSteps": 4, "maxSeqLen": 256}


def apply(cluster: LocalCluster, ns: str, obj: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(obj))


def no_running_pods(cluster: LocalCluster, ns: str) -> bool:
    pods = (get(cluster, "pods", "-n", ns) or {}).get("items", [])
    return all(p["status"].get("phase") in ("Succeeded", "Failed") for p in pods)


def json_line(line: str) -> dict[str, Any]:
    """A JSON object from a log line, or {} for anything else (a cut or plain-text line)."""
    try:
        return json.loads(line) if line.startswith("{") else {}
    except ValueError:
        return {}


TINY_SHAPE = {
    "apiVersion": "vlmtrain.dev/v1alpha1",
    "kind": "TrainingShape",
    "metadata": {"name": "tiny-cpu"},
    "spec": {
        "baseModel": f"pvc://{DEMO_CLAIM}/{TINY_MODEL}",
        "maxContext": 1024,
        "gpusPerNode": 0,
        "nodes": 1,
        "precision": "fp32",
        "maxLoraRank": 64,
        "resources": {"requests": {"cpu": "1", "memory": "2Gi"}},
    },
}


def trainer_job(name: str, shape: str = "tiny-cpu", **spec: Any) -> dict[str, Any]:
    """A small SFT TrainerJob on the demo data; keyword arguments replace spec fields."""
    base: dict[str, Any] = {
        "shape": shape,
        "mode": "sft",
        "dataset": {"uri": f"pvc://{DEMO_CLAIM}/data/sft_train.jsonl"},
        "hyperparameters": {
            "learningRate": 0.002,
            "epochs": 1,
            "batchSize": 8,
            "loraRank": 0,
            "seed": 0,
        },
        "checkpointing": {"everySteps": 10, "keepLast": 0},
    }
    base.update(spec)
    return {
        "apiVersion": "vlmtrain.dev/v1alpha1",
        "kind": "TrainerJob",
        "metadata": {"name": name},
        "spec": base,
    }
