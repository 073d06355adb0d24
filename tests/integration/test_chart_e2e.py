"""The operator as the Helm chart installs it: its Deployment runs (through the pod runner) with
the chart's ServiceAccount, so every API call it makes is checked against the chart's ClusterRole.
With every example applied as a newcomer would, the SFT example must train, checkpoint and
promote under that identity alone, and re-applying the examples afterwards must change nothing."""

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
    checkpoint_settled,
    condition,
    get,
    install_crds,
    stage_demo_claim,
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
        # Every example, as a newcomer applies them. DPO and RL are suspended at once (a patch
        # outside the manifests, which re-applying must leave alone) to keep the CPU for SFT.
        examples = cluster.kubectl("apply", "-n", ns, "-R", "-f", str(REPO / "examples")).stdout
        cluster.kubectl(
            "patch",
            "tj",
            "dpo-demo",
            "rl-demo",
            "-n",
            ns,
            "--type=merge",
            "-p",
            '{"spec":{"suspend":true}}',
        )
        assert "trainerjob.vlmtrain.dev/sft-demo created" in examples, examples
        wait = cluster.kubectl(
            "wait",
            "--for=condition=Succeeded",
            "tj/sft-demo",
            "-n",
            ns,
            "--timeout=400s",
            check=False,
            timeout=420,
        )
        tj = get(cluster, "tj", "sft-demo", "-n", ns)
        assert wait.returncode == 0, json.dumps(tj.get("status"), indent=1)
        assert tj["status"]["progress"]["step"] == tj["status"]["progress"]["totalSteps"]
        assert condition(tj, "Admitted")["status"] == "True"

        final = checkpoint_settled(cluster, ns, "sft-demo-final", timeout=180)
        assert final["status"]["phase"] == "Promoted", final["status"]
        assert final["status"]["promotion"]["outputModel"] == "colour-sft"
        assert get(cluster, "ckpt", "sft-demo-step-000025", "-n", ns)["status"]["verified"] is True
        for name in ("dpo-demo", "rl-demo"):
            wait_for(
                f"{name} Suspended",
                lambda name=name: (
                    (get(cluster, "tj", name, "-n", ns) or {}).get("status", {}).get("phase")
                    == "Suspended"
                ),
                timeout=60,
            )

        # GitOps: after the operator has worked on every object, re-applying the examples
        # changes neither generation nor spec of any of them.
        def snapshot() -> dict[str, tuple[int, str]]:
            objs = get(cluster, "ts,tj,ckpt", "-n", ns)["items"]
            return {
                f"{o['kind']}/{o['metadata']['name']}": (
                    o["metadata"]["generation"],
                    json.dumps(o["spec"], sort_keys=True),
                )
                for o in objs
            }

        before = snapshot()
        again = cluster.kubectl("apply", "-n", ns, "-R", "-f", str(REPO / "examples")).stdout
        assert "configured" not in again and "created" not in again, again
        assert snapshot() == before
        assert helm(cluster, "uninstall", "vlm", "-n", ns, "--wait").returncode == 0
    finally:
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
