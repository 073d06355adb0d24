"""End to end on the local control plane: a TrainerJob becomes a batch Job, the real trainer runs
in a pod, Checkpoints appear and are verified, the final one is promoted, and the promoted model
loads and answers the held-out demo questions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cluster.local import LocalCluster
from tests.integration.operator_env import (
    DEMO_CLAIM,
    Operator,
    checkpoint_settled,
    condition,
    get,
    trainer_job,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def checkpoints(cluster: LocalCluster, ns: str, job: str) -> list[dict]:
    items = (get(cluster, "checkpoints", "-n", ns) or {}).get("items", [])
    return sorted(
        (c for c in items if c["spec"]["trainerJob"] == job), key=lambda c: c["spec"]["step"]
    )


def test_sft_job_trains_checkpoints_and_promotes(
    cluster: LocalCluster, demo_ns: str, operator: Operator, demo_assets: Path
) -> None:
    ns = demo_ns
    manifest = trainer_job(
        "sft-e2e",
        hyperparameters={
            "learningRate": 0.003,
            "epochs": 3,
            "batchSize": 8,
            "loraRank": 0,
            "warmupSteps": 5,
            "maxSeqLen": 256,
            "seed": 0,
        },
        checkpointing={"everySteps": 25, "keepLast": 0},
        promote={"outputModel": "colour-sft"},
    )
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(manifest))

    job = wait_for("the batch Job", lambda: get(cluster, "job", "sft-e2e", "-n", ns), timeout=60)
    assert job["metadata"]["ownerReferences"][0]["kind"] == "TrainerJob"
    wait = cluster.kubectl(
        "wait",
        "--for=condition=Succeeded",
        "tj/sft-e2e",
        "-n",
        ns,
        "--timeout=400s",
        check=False,
        timeout=420,
    )
    tj = get(cluster, "tj", "sft-e2e", "-n", ns)
    assert wait.returncode == 0, (
        f"{wait.stderr}\n{json.dumps(tj.get('status'), indent=1)}\n{operator.tail()}"
    )

    status = tj["status"]
    assert status["phase"] == "Succeeded" and status["shapeVersion"]
    assert status["progress"]["step"] == status["progress"]["totalSteps"] == 75
    assert status["progress"]["percent"] == 100 and status["startTime"] and status["completionTime"]
    assert status["latestCheckpoint"] == "sft-e2e-final"
    assert condition(tj, "Admitted")["status"] == "True"

    cks = checkpoints(cluster, ns, "sft-e2e")
    assert [c["metadata"]["name"] for c in cks][:2] == [
        "sft-e2e-step-000025",
        "sft-e2e-step-000050",
    ]
    assert cks[-1]["spec"]["final"] is True and len(cks) >= 3

    final = checkpoint_settled(cluster, ns, "sft-e2e-final", timeout=240)
    assert final["status"]["phase"] == "Promoted", json.dumps(final["status"], indent=1)
    assert final["status"]["verified"] is True and final["status"]["sizeBytes"] > 0
    promotion = final["status"]["promotion"]
    assert promotion["outputModel"] == "colour-sft"
    assert promotion["uri"] == f"pvc://{DEMO_CLAIM}/published/{ns}/colour-sft"
    assert "ownerReferences" not in final["metadata"]  # survives deletion of the job
    for c in cks[:-1]:
        wait_for(
            f"{c['metadata']['name']} verified",
            lambda c=c: (
                (get(cluster, "ckpt", c["metadata"]["name"], "-n", ns) or {})
                .get("status", {})
                .get("phase")
                == "Available"
            ),
            timeout=120,
        )

    model_dir = cluster.pvc_root / ns / DEMO_CLAIM / "published" / ns / "colour-sft"
    assert (model_dir / "promoted.json").exists()
    cli = str(Path(sys.executable).parent / "vlm-trainer")
    ev = subprocess.run(
        [
            cli,
            "eval",
            "--model",
            str(model_dir),
            "--data",
            str(demo_assets / "data" / "sft_eval.jsonl"),
            "--num-threads",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ev.returncode == 0, ev.stderr[-3000:]
    report = json.loads(ev.stdout)
    print(f"\npromoted model eval: {report}")
    assert report["accuracy"] >= 0.9, report

    # Deleting the TrainerJob removes its children but keeps the promoted checkpoint.
    cluster.kubectl("delete", "tj", "sft-e2e", "-n", ns, "--wait=true", "--timeout=60s")
    wait_for(
        "the batch Job to be garbage collected",
        lambda: get(cluster, "job", "sft-e2e", "-n", ns) is None,
    )
    assert get(cluster, "ckpt", "sft-e2e-final", "-n", ns) is not None
    metrics = operator.metrics()
    assert 'vlm_operator_promotions_total{result="succeeded"}' in metrics
