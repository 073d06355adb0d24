"""Kueue's controller (kueue-manager) as a process next to the local control plane.

Supported: the release that `hack/kueue/build.sh` builds from its Go module (binary and CRDs
from the same module, cached by version); the `batch/job` integration only, and only for Jobs
that carry `kueue.x-k8s.io/queue-name` (`manageJobsWithoutQueueName: false`): the operator
already creates such Jobs suspended, and Kueue admits them by unsuspending and preempts them
by suspending again.

How it runs outside a cluster: no internal cert management (it would sign a certificate for an
in-cluster Service name, which nothing here can reach); its webhook server listens on loopback
with the control plane's serving certificate (its SANs include 127.0.0.1), and the webhook
configurations from the module are installed with `clientConfig.url` pointing there, limited to
Kueue's own kinds and to Jobs with the queue label, so the rest of the cluster never depends on
Kueue being up. The metrics server is off, but Kueue still loads a certificate from the fixed
path /etc/kueue/metrics/certs: it runs in a private mount namespace (`pod_exec`, as pods do)
with that folder bind-mounted, so nothing is written to the host's /etc. The on-demand
visibility API server is turned off (an aggregated API would need an APIService).
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.cluster.launcher import PYTHONPATH, REPO, free_port, spawn, stop_process
from tests.cluster.local import LocalCluster

BUILD_SCRIPT = REPO / "hack" / "kueue" / "build.sh"
NAMESPACE = "kueue-system"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
WEBHOOK_NAMES = ("vlm-test-kueue-mutating", "vlm-test-kueue-validating")


def kueue_dir() -> Path:
    """The version folder with bin/kueue and crds/ (built on the first call, then cached)."""
    out = subprocess.run(["bash", str(BUILD_SCRIPT)], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


def _config(health_port: int, webhook_port: int, cert_dir: Path) -> dict[str, Any]:
    return {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "namespace": NAMESPACE,
        "health": {"healthProbeBindAddress": f"127.0.0.1:{health_port}"},
        "metrics": {"bindAddress": "0"},
        "webhook": {"host": "127.0.0.1", "port": webhook_port, "certDir": str(cert_dir)},
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},
        "manageJobsWithoutQueueName": False,
        "integrations": {"frameworks": ["batch/job"]},
        "featureGates": {"VisibilityOnDemand": False},
    }


def _ours(hook: dict[str, Any]) -> bool:
    """Webhooks for Kueue's own kinds and for batch Jobs; not pods, deployments, other CRDs."""
    groups = {g for rule in hook.get("rules", []) for g in rule.get("apiGroups", [])}
    resources = {r for rule in hook.get("rules", []) for r in rule.get("resources", [])}
    return groups == {"kueue.x-k8s.io"} or (groups == {"batch"} and resources == {"jobs"})


def webhook_configs(module_manifests: Path, port: int, ca: Path) -> list[dict[str, Any]]:
    """The module's webhook configurations, pointed at the loopback server."""
    bundle = base64.b64encode(ca.read_bytes()).decode()
    out = []
    docs = [d for d in yaml.safe_load_all(module_manifests.read_text()) if d]
    assert [d["kind"] for d in docs] == [
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
    ], "the module's webhook manifests changed shape"
    for doc, name in zip(docs, WEBHOOK_NAMES, strict=True):
        hooks = [h for h in doc["webhooks"] if _ours(h)]
        for h in hooks:
            path = h["clientConfig"]["service"]["path"]
            h["clientConfig"] = {"url": f"https://127.0.0.1:{port}{path}", "caBundle": bundle}
            if "batch" in h["rules"][0]["apiGroups"]:
                selector = {"matchExpressions": [{"key": QUEUE_LABEL, "operator": "Exists"}]}
                h["objectSelector"] = selector
        out.append({**doc, "metadata": {"name": name}, "webhooks": hooks})
    return out


@dataclass
class Kueue:
    cluster: LocalCluster
    workdir: Path
    proc: subprocess.Popen | None = None

    @property
    def log(self) -> Path:
        return self.workdir / "kueue.log"

    def stop(self) -> None:
        # Webhooks first: with Kueue gone, a Job with the queue label could not be created.
        for kind, name in zip(
            ("mutatingwebhookconfiguration", "validatingwebhookconfiguration"),
            WEBHOOK_NAMES,
            strict=True,
        ):
            self.cluster.kubectl("delete", kind, name, "--ignore-not-found", check=False)
        if self.proc is not None:
            stop_process(self.proc, grace=10)
            self.proc = None

    def tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""


def _install_crds(cluster: LocalCluster, crds: Path) -> None:
    # Server-side: the Workload CRD is larger than client-side apply's annotation limit.
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crds), timeout=120)
    for f in sorted(crds.glob("*.yaml")):
        name = yaml.safe_load(f.read_text())["metadata"]["name"]
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")


def _wait_ready(k: Kueue, health_port: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if k.proc is not None and k.proc.poll() is not None:
            raise RuntimeError(f"kueue exited {k.proc.returncode}:\n{k.tail()}")
        try:
            url = f"http://127.0.0.1:{health_port}/readyz"
            if urllib.request.urlopen(url, timeout=1).status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"kueue not ready in {timeout}s:\n{k.tail()}")


def start_kueue(cluster: LocalCluster, workdir: Path) -> Kueue:
    """Install Kueue's CRDs, start its controller against `cluster`, install its webhooks."""
    assert cluster.control_plane is not None, "Kueue runs next to the local control plane"
    pki = cluster.control_plane.pki
    root = kueue_dir()
    workdir.mkdir(parents=True, exist_ok=True)
    _install_crds(cluster, root / "crds")
    cluster.kubectl("create", "namespace", NAMESPACE, check=False)
    certs = workdir / "certs"
    certs.mkdir(exist_ok=True)
    shutil.copy(pki.serving_cert, certs / "tls.crt")
    shutil.copy(pki.serving_key, certs / "tls.key")
    health_port, webhook_port = free_port(), free_port()
    config = workdir / "config.yaml"
    config.write_text(yaml.safe_dump(_config(health_port, webhook_port, certs)))
    spec = {
        "argv": [str(root / "bin" / "kueue"), f"--config={config}", "--zap-log-level=info"],
        "env": {"KUBECONFIG": str(cluster.kubeconfig), "PATH": "/usr/bin:/bin"},
        "cwd": str(workdir),
        "mounts": [{"source": str(certs), "target": "/etc/kueue/metrics/certs", "read_only": True}],
    }
    (workdir / "exec.json").write_text(json.dumps(spec))
    argv = ["unshare", "--mount", "--", sys.executable, "-m", "tests.cluster.pod_exec"]
    k = Kueue(cluster, workdir)
    k.proc = spawn(
        [*argv, str(workdir / "exec.json")],
        k.log,
        env={"PYTHONPATH": PYTHONPATH, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
    )
    try:
        _wait_ready(k, health_port)
        manifests = root / "webhook-manifests.yaml"
        for cfg in webhook_configs(manifests, webhook_port, pki.ca_cert):
            cluster.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(cfg))
    except BaseException:
        k.stop()
        raise
    return k
