"""Failure paths: each ends in a condition with its reason, and nothing is left running."""

from __future__ import annotations

import json
import secrets

import pytest

from tests.cluster.local import LocalCluster
from tests.integration.operator_env import (
    DEMO_CLAIM,
    SMALL,
    TINY_SHAPE,
    Operator,
    apply,
    condition,
    finished,
    get,
    json_line,
    no_running_pods,
    trainer_job,
    wait_for,
)

pytestmark = pytest.mark.integration


def test_unknown_shape_then_recovery(
    cluster: LocalCluster, demo_ns: str, operator: Operator
) -> None:
    shape_name = f"late-{secrets.token_hex(3)}"
    apply(cluster, demo_ns, trainer_job("orphan", shape=shape_name, suspend=True))

    def not_found() -> dict | None:
        c = condition(get(cluster, "tj", "orphan", "-n", demo_ns), "Admitted")
        return c if c and c["reason"] == "ShapeNotFound" else None

    c = wait_for("Admitted=False/ShapeNotFound", not_found, timeout=30)
    assert c["status"] == "False" and shape_name in c["message"]
    assert get(cluster, "job", "orphan", "-n", demo_ns) is None
    shape = json.loads(json.dumps(TINY_SHAPE))
    shape["metadata"]["name"] = shape_name
    cluster.kubectl("apply", "-f", "-", input=json.dumps(shape))
    try:
        job = wait_for(
            "the Job once the shape exists",
            lambda: get(cluster, "job", "orphan", "-n", demo_ns),
            timeout=30,
        )
        assert job["spec"]["suspend"] is True

        def admitted() -> dict | None:
            # The Job is created before the status that records it is written: wait for both.
            tj = get(cluster, "tj", "orphan", "-n", demo_ns)
            c = condition(tj, "Admitted")
            return tj if c and c["status"] == "True" else None

        tj = wait_for("Admitted=True", admitted, timeout=30)
        assert tj["status"]["shapeVersion"]
    finally:
        cluster.kubectl("delete", "ts", shape_name, "--wait=false")


def test_lora_rank_above_shape_maximum_is_invalid_spec(
    cluster: LocalCluster, demo_ns: str, operator: Operator
) -> None:
    apply(cluster, demo_ns, trainer_job("greedy", hyperparameters={**SMALL, "loraRank": 512}))
    tj = finished(cluster, demo_ns, "greedy", timeout=30)
    failed = condition(tj, "Failed")
    assert tj["status"]["phase"] == "Failed" and failed["reason"] == "InvalidSpec"
    assert (
        "spec.hyperparameters.loraRank: 512 exceeds TrainingShape tiny-cpu's maxLoraRank 64"
        in failed["message"]
    )
    assert get(cluster, "job", "greedy", "-n", demo_ns) is None
    events = cluster.kubectl(
        "get", "events", "-n", demo_ns, "--field-selector", "involvedObject.name=greedy"
    ).stdout
    assert "InvalidSpec" in events


def test_bad_dataset_is_data_invalid_with_the_validators_message(
    cluster: LocalCluster, demo_ns: str, operator: Operator
) -> None:
    data = cluster.pvc_root / demo_ns / DEMO_CLAIM / "data"
    good = (data / "sft_train.jsonl").read_text().splitlines()[0]
    (data / "bad.jsonl").write_text(
        "\n".join([good, '{"messages": "nope"}', "not json", good]) + "\n"
    )
    spec = {
        "dataset": {"uri": f"pvc://{DEMO_CLAIM}/data/bad.jsonl"},
        "hyperparameters": SMALL,
        "backoffLimit": 3,
    }
    apply(cluster, demo_ns, trainer_job("bad-data", **spec))
    tj = finished(cluster, demo_ns, "bad-data")
    failed = condition(tj, "Failed")
    assert failed["reason"] == "DataInvalid", failed
    assert "bad.jsonl:2" in failed["message"] and "bad.jsonl:3" in failed["message"]
    assert tj["status"]["attempts"] == 1  # not retried: retrying cannot fix the data
    assert (get(cluster, "ckpt", "-n", demo_ns) or {}).get("items") == []
    wait_for("no running pods", lambda: no_running_pods(cluster, demo_ns), timeout=30)


def test_missing_base_model_is_invalid_spec_naming_the_key(
    cluster: LocalCluster, demo_ns: str, operator: Operator
) -> None:
    shape_name = f"broken-{secrets.token_hex(3)}"
    shape = json.loads(json.dumps(TINY_SHAPE))
    shape["metadata"]["name"] = shape_name
    shape["spec"]["baseModel"] = f"pvc://{DEMO_CLAIM}/models/does-not-exist"
    cluster.kubectl("apply", "-f", "-", input=json.dumps(shape))
    try:
        apply(cluster, demo_ns, trainer_job("no-model", shape=shape_name, hyperparameters=SMALL))
        tj = finished(cluster, demo_ns, "no-model")
        failed = condition(tj, "Failed")
        assert tj["status"]["phase"] == "Failed" and failed["reason"] == "InvalidSpec", failed
        assert "trainer exited with code 78" in failed["message"]
        assert "/mnt/pvc/vlm-demo/models/does-not-exist does not exist" in failed["message"]
        assert tj["status"]["attempts"] == 1  # a config error is not retried
    finally:
        cluster.kubectl("delete", "ts", shape_name, "--wait=false")


def test_trainer_crash_reports_exit_code_and_message(
    cluster: LocalCluster, demo_ns: str, operator: Operator
) -> None:
    # The trainer kills itself (SIGKILL) right after its second step's checkpoint: a hard crash.
    # VLM_* is reserved for the operator and admins: the fault comes from the shape's podPolicy.
    shape_name = f"crashing-{secrets.token_hex(3)}"
    shape = json.loads(json.dumps(TINY_SHAPE))
    shape["metadata"]["name"] = shape_name
    fault = [{"name": "VLM_TRAINER_FAULT", "value": "after_checkpoint:2"}]
    shape["spec"]["podPolicy"] = {"env": fault}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(shape))
    spec = {"hyperparameters": SMALL, "checkpointing": {"everySteps": 2}, "backoffLimit": 0}
    try:
        apply(cluster, demo_ns, trainer_job("crash", shape=shape_name, **spec))
        tj = finished(cluster, demo_ns, "crash")
    finally:
        cluster.kubectl("delete", "ts", shape_name, "--wait=false")
    failed = condition(tj, "Failed")
    assert tj["status"]["phase"] == "Failed" and failed["reason"] == "BackoffLimitExceeded", failed
    assert "trainer exited with code 137" in failed["message"]
    # No termination message after a SIGKILL: the log tail stands in (FallbackToLogsOnError).
    assert '"event": "start"' in failed["message"] and '"job": "crash"' in failed["message"]
    wait_for("no running pods", lambda: no_running_pods(cluster, demo_ns), timeout=30)


@pytest.mark.slow
def test_deleted_pod_is_retried_and_resumes_from_checkpoint(
    cluster: LocalCluster, demo_ns: str, operator: Operator
) -> None:
    hp = {"learningRate": 0.003, "epochs": 2, "batchSize": 8, "maxSeqLen": 256}
    apply(
        cluster,
        demo_ns,
        trainer_job("resilient", hyperparameters=hp, checkpointing={"everySteps": 5}),
    )

    def first_checkpoint() -> str | None:
        return (
            (get(cluster, "tj", "resilient", "-n", demo_ns) or {})
            .get("status", {})
            .get("latestCheckpoint")
        )

    wait_for("the first checkpoint", first_checkpoint, timeout=240)
    pods = get(
        cluster,
        "pods",
        "-n",
        demo_ns,
        "-l",
        "vlmtrain.dev/trainer-job=resilient,vlmtrain.dev/task=train",
    )["items"]
    running = [p["metadata"]["name"] for p in pods if p["status"].get("phase") == "Running"]
    assert running, "the trainer finished before it could be interrupted"
    cluster.kubectl("delete", "pod", running[0], "-n", demo_ns, "--wait=false")

    # A deleted pod is a disruption, not a failure: SIGTERM, snapshot, exit 75, ignored.
    def restarted() -> bool:
        c = condition(get(cluster, "tj", "resilient", "-n", demo_ns), "Running")
        return bool(c and c["status"] == "True" and c["reason"] == "Preempted")

    wait_for("Running/Preempted", restarted, timeout=120)
    tj = finished(cluster, demo_ns, "resilient", timeout=400)
    assert tj["status"]["phase"] == "Succeeded", tj["status"]
    assert tj["status"]["attempts"] == 2
    pod_dirs = (cluster.workdir / "runner" / "pods").glob(
        f"{demo_ns}_resilient-*/containers/trainer/log"
    )
    logs = sorted(pod_dirs, key=lambda p: p.stat().st_mtime)
    assert len(logs) == 2
    starts = [
        e for e in map(json_line, logs[-1].read_text().splitlines()) if e.get("event") == "start"
    ]
    assert starts and starts[0].get("resumed_step", 0) >= 5, logs[-1].read_text()[-2000:]
