"""The operator as the Helm chart installs it: its Deployment runs (through the pod runner) with
the chart's ServiceAccount, so every API call it makes is checked against the chart's ClusterRole.
An SFT TrainerJob must train, checkpoint and promote under that identity alone."""

from __future__ import annotations

import json
import secrets
import subprocess

import pytest

from tests.cluster.launcher import REPO, free_port
from tests.cluster.local import LocalCluster
from tests.integration.operator_env import (
    CHECKPOINT_STORAGE,
    MODEL_STORAGE,
    TINY_SHAPE,
    condition,
    get,
    install_crds,
    stage_demo_claim,
    trainer_job,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]
CHART = REPO / "charts" / "vlm-trainer-operator"


def helm(cluster: LocalCluster, *args: str) -> subprocess.CompletedProcess[str]:
    assert cluster.helm_bin, "helm comes with the control-plane binaries"
    return subprocess.run(
        [cluster.helm_bin, *args], capture_output=True, text=True, env=cluster.env, timeout=120
    )


def test_operator_under_the_charts_identity_runs_sft_end_to_end(
    cluster: LocalCluster, demo_assets
) -> None:
    ns = f"chart-{secrets.token_hex(3)}"  # not t-*: the test session's own operator ignores it
    cluster.kubectl("create", "namespace", ns)
    try:
        install_crds(cluster)
        wait_for(
            "default ServiceAccount", lambda: get(cluster, "sa", "default", "-n", ns), timeout=30
        )
        stage_demo_claim(cluster, ns, demo_assets)
        values = [
            f"watchNamespaces={{{ns}}}",
            f"ports.health={free_port()}",
            f"ports.metrics={free_port()}",
            f"storage.checkpoints={CHECKPOINT_STORAGE}",
            f"storage.models={MODEL_STORAGE}",
            "logFormat=text",
        ]
        out = helm(
            cluster,
            "install",
            "vlm",
            str(CHART),
            "-n",
            ns,
            *(a for v in values for a in ("--set", v)),
        )
        assert out.returncode == 0, out.stderr

        def operator_running() -> bool:
            pods = get(cluster, "pods", "-n", ns, "-l", "app.kubernetes.io/component=operator")[
                "items"
            ]
            return any(p["status"].get("phase") == "Running" for p in pods)

        wait_for("the operator pod", operator_running, timeout=60)
        pod = get(cluster, "pods", "-n", ns, "-l", "app.kubernetes.io/component=operator")["items"][
            0
        ]
        assert pod["spec"]["serviceAccountName"] != "default"
        cluster.kubectl("apply", "-f", "-", input=json.dumps(TINY_SHAPE))
        job = trainer_job(
            "chart-sft",
            hyperparameters={
                "learningRate": 0.003,
                "epochs": 1,
                "batchSize": 8,
                "maxSteps": 10,
                "maxSeqLen": 256,
            },
            checkpointing={"everySteps": 5},
            promote={"outputModel": "chart-model"},
        )
        cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(job))
        wait = cluster.kubectl(
            "wait",
            "--for=condition=Succeeded",
            "tj/chart-sft",
            "-n",
            ns,
            "--timeout=300s",
            check=False,
            timeout=320,
        )
        tj = get(cluster, "tj", "chart-sft", "-n", ns)
        assert wait.returncode == 0, json.dumps(tj.get("status"), indent=1)
        assert tj["status"]["progress"]["step"] == 10
        assert condition(tj, "Admitted")["status"] == "True"

        def promoted() -> dict | None:
            c = get(cluster, "ckpt", "chart-sft-final", "-n", ns)
            return c if (c or {}).get("status", {}).get("phase") in ("Promoted", "Failed") else None

        final = wait_for("promotion", promoted, timeout=180)
        assert final["status"]["phase"] == "Promoted", final["status"]
        assert get(cluster, "ckpt", "chart-sft-step-000005", "-n", ns)["status"]["verified"] is True
        assert helm(cluster, "uninstall", "vlm", "-n", ns, "--wait").returncode == 0
    finally:
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
