"""Pod Security `restricted` on the namespace: the API server's PodSecurity admission (on by
default in the local control plane) refuses a pod that breaks the profile, and a TrainerJob's
trainer, verify and promote pods pass it and run to the end, with the pod runner enforcing
their securityContext (non-root, read-only root filesystem)."""

from __future__ import annotations

import json

import pytest

from tests.cluster.local import LocalCluster
from tests.integration.operator_env import (
    SMALL,
    Operator,
    apply,
    checkpoint_settled,
    finished,
    get,
    trainer_job,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]
RESTRICTED = "pod-security.kubernetes.io/enforce=restricted"


def test_trainer_job_runs_in_a_restricted_namespace(
    cluster: LocalCluster, demo_ns: str, operator: Operator
) -> None:
    cluster.kubectl("label", "namespace", demo_ns, RESTRICTED, "--overwrite")
    # The label is enforced: a plain root pod is refused at admission.
    plain = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "plain"},
        "spec": {"containers": [{"name": "m", "image": "busybox", "command": ["true"]}]},
    }
    refused = cluster.kubectl(
        "apply", "-n", demo_ns, "-f", "-", input=json.dumps(plain), check=False
    )
    assert refused.returncode != 0 and 'violates PodSecurity "restricted' in refused.stderr

    apply(
        cluster,
        demo_ns,
        trainer_job("restricted", hyperparameters=SMALL, promote={"outputModel": "ps-model"}),
    )
    tj = finished(cluster, demo_ns, "restricted", timeout=300)
    assert tj["status"]["phase"] == "Succeeded", tj["status"]
    final = checkpoint_settled(cluster, demo_ns, "restricted-final", timeout=240)
    assert final["status"]["phase"] == "Promoted", final["status"]
    # Its trainer pods accept only each other, on the rendezvous port (the chart's default).
    policy = get(cluster, "networkpolicy", "restricted-trainer", "-n", demo_ns)
    assert policy["spec"]["podSelector"]["matchLabels"]["vlmtrain.dev/trainer-job"] == "restricted"
    assert policy["spec"]["ingress"][0]["ports"] == [{"protocol": "TCP", "port": 29500}]
    # Every pod ran as the builders say: non-root, read-only root filesystem.
    pods = get(cluster, "pods", "-n", demo_ns, "-l", "vlmtrain.dev/trainer-job=restricted")
    tasks = {p["metadata"]["labels"]["vlmtrain.dev/task"] for p in pods["items"]}
    assert {"train", "verify", "promote"} <= tasks, tasks
    for p in pods["items"]:
        (c,) = p["spec"]["containers"]
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert p["spec"]["securityContext"]["runAsNonRoot"] is True
        assert p["status"]["phase"] == "Succeeded", p["status"]
