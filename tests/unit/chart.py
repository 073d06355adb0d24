"""Helpers for the Helm chart tests: find the helm binary, render the chart, pick objects.

Used by tests/unit/test_chart_*.py (helm lint/template only, no cluster) and by
tests/integration/test_chart.py. helm comes from `TEST_ASSET_HELM`, `KUBEBUILDER_ASSETS`, the
project's cached build (`make k8s-bins`, the version pinned in hack/k8s/go.mod) or `$PATH`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "vlm-trainer-operator"

#: Every optional value switched on (tests render and dry-run the chart with these).
ALL_ON: dict[str, Any] = {
    "image": {"digest": "sha256:" + "a" * 64},
    "trainer": {"image": {"tag": "0.1.0-cuda"}},
    "imagePullSecrets": [{"name": "registry"}],
    "storage": {"checkpoints": "pvc://ckpt/team-a", "models": "file:///models"},
    "logFormat": "text",
    "watchNamespaces": ["team-a", "team-b"],
    "replicaCount": 2,
    "leaderElection": {"leaseName": "vlm-leader", "leaseSeconds": 20},
    "networkPolicy": {"enabled": True},
    "ports": {"health": 18080, "metrics": 19090},
    "extraArgs": ["--verbose"],
    "extraEnv": [{"name": "HTTPS_PROXY", "value": "http://proxy:3128"}],
    "serviceAccount": {"name": "vlm-op", "annotations": {"example.com/role": "trainer"}},
    "securityContext": {"runAsUser": 1000, "runAsGroup": 1000},
    "podAnnotations": {"example.com/owner": "ml-platform"},
    "podLabels": {"team": "ml-platform"},
    "priorityClassName": "ml-platform-critical",
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [
        {"key": "dedicated", "operator": "Equal", "value": "ops", "effect": "NoSchedule"}
    ],
    "affinity": {
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 100,
                    "podAffinityTerm": {
                        "topologyKey": "kubernetes.io/hostname",
                        "labelSelector": {
                            "matchLabels": {"app.kubernetes.io/name": "vlm-trainer-operator"}
                        },
                    },
                }
            ]
        }
    },
    "metrics": {
        "service": {"annotations": {"prometheus.io/scrape": "true"}},
        "serviceMonitor": {"enabled": True, "scrapeTimeout": "10s", "labels": {"release": "kps"}},
    },
    "shapes": [
        {
            "name": "tiny-cpu-from-values",
            "labels": {"tier": "demo"},
            "spec": {
                "baseModel": "pvc://vlm-demo/models/tiny",
                "maxContext": 1024,
                "gpusPerNode": 0,
            },
        },
        {
            "name": "qwen3-vl-8b-from-values",
            "spec": {
                "baseModel": "Qwen/Qwen3-VL-8B-Instruct",
                "maxContext": 65536,
                "gpusPerNode": 4,
            },
        },
    ],
}


def helm_bin() -> str:
    """The helm binary, or skip the test when none was built or installed."""
    if os.environ.get("TEST_ASSET_HELM"):
        return os.environ["TEST_ASSET_HELM"]
    candidates: list[Path] = []
    if os.environ.get("KUBEBUILDER_ASSETS"):
        candidates.append(Path(os.environ["KUBEBUILDER_ASSETS"]) / "helm")
    go_mod = (REPO / "hack/k8s/go.mod").read_text()
    match = re.search(r"^require k8s.io/kubernetes (\S+)", go_mod, re.M)
    if match:
        cache = Path(os.environ.get("VLM_CACHE", Path.home() / ".cache/vlm-trainer-operator"))
        candidates.append(cache / "k8s" / match.group(1) / "bin" / "helm")
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    found = shutil.which("helm")
    if not found:
        pytest.skip("helm not found: run `make k8s-bins` (or set TEST_ASSET_HELM)")
    return found


def helm(*args: str, check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run helm; raises CalledProcessError (with stderr) on failure when ``check``."""
    p = subprocess.run([helm_bin(), *args], capture_output=True, text=True, timeout=120, **kw)
    if check and p.returncode != 0:
        raise subprocess.CalledProcessError(p.returncode, p.args, p.stdout, p.stderr)
    return p


def values_file(tmp: Path, values: dict[str, Any]) -> Path:
    path = tmp / "values.yaml"
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return path


def template(
    tmp: Path,
    values: dict[str, Any] | None = None,
    *,
    release: str = "vlm",
    namespace: str = "vlm-system",
    extra: tuple[str, ...] = (),
) -> list[dict[str, Any]]:
    """`helm template` with these values; the rendered objects (CRDs not included)."""
    args = ["template", release, str(CHART), "--namespace", namespace, *extra]
    if values:
        args += ["--values", str(values_file(tmp, values))]
    out = helm(*args).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    """The objects of one kind (and name) among rendered documents."""
    return [
        d for d in docs if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)
    ]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]
