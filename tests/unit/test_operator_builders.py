"""Operator builders and pure reconcile logic: manifests from a TrainerJob and its shape, status
from a Job and its pods, admission against the shape."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml
from vlm_operator.builders.checkpoint import promote_job, task_job_name, verify_job
from vlm_operator.builders.job import EXIT_DATA_INVALID, trainer_workload
from vlm_operator.builders.rbac import trainer_rbac
from vlm_operator.reconcile.job import admission
from vlm_operator.reconcile.job_status import derive_status
from vlm_operator.reconcile.shape import desired_status
from vlm_operator.settings import Settings

from tests.unit.manifests import SHAPE, TJ

pytestmark = pytest.mark.unit

# The shared shape, placed on labelled, tainted GPU nodes so the pod spec's placement is checked.
PLACEMENT: dict[str, Any] = {
    "nodeSelector": {"gpu": "h100"},
    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
}


def shape(**spec: Any) -> dict[str, Any]:
    s = copy.deepcopy(SHAPE)
    s["spec"].update(copy.deepcopy(PLACEMENT), **spec)
    return s


def tj(**spec: Any) -> dict[str, Any]:
    t = copy.deepcopy(TJ)
    t["spec"].update(spec)
    return t


def by_kind(objs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {o["kind"]: o for o in objs}


def test_single_node_job_requests_gpus_and_mounts_claims() -> None:
    objs = by_kind(trainer_workload(tj(), shape(), "pvc://default-ckpt", "img:1"))
    assert set(objs) == {"ConfigMap", "Job"}  # no Service for one node
    job = objs["Job"]
    pod = job["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert (
        pod["nodeSelector"] == {"gpu": "h100"} and pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    )
    assert c["command"][:3] == ["vlm-trainer", "launch", "torchrun"]  # one process per GPU
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["NPROC_PER_NODE"] == "4" and env["NNODES"] == "1"
    assert env["VLM_CHECKPOINT_URI"] == "pvc://ckpts/team-a/run1-tj-1/checkpoints"
    claims = {
        v["persistentVolumeClaim"]["claimName"]: v["persistentVolumeClaim"]["readOnly"]
        for v in pod["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claims == {"data": True, "ckpts": False}
    cfg = yaml.safe_load(objs["ConfigMap"]["data"]["config.yaml"])
    assert cfg["dataset"] == "/mnt/pvc/data/sets/train.jsonl"
    assert cfg["log_path"] == "/mnt/pvc/ckpts/team-a/run1-tj-1"
    assert cfg["base_model"] == "Qwen/Qwen3-VL-8B-Instruct" and cfg["max_seq_len"] == 65536
    assert cfg["lora_rank"] == 16 and cfg["save_every_steps"] == 10
    # hardening and ownership
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert job["metadata"]["ownerReferences"][0]["uid"] == "tj-1"
    rule = job["spec"]["podFailurePolicy"]["rules"][0]
    assert rule["action"] == "FailJob" and EXIT_DATA_INVALID in rule["onExitCodes"]["values"]


def test_multi_node_is_indexed_with_headless_service() -> None:
    objs = by_kind(trainer_workload(tj(), shape(nodes=3, gpusPerNode=2), "pvc://x", "img:1"))
    job, svc = objs["Job"], objs["Service"]
    assert job["spec"]["completionMode"] == "Indexed" and job["spec"]["completions"] == 3
    assert svc["spec"]["clusterIP"] == "None"
    pod = job["spec"]["template"]["spec"]
    assert pod["subdomain"] == svc["metadata"]["name"]
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["MASTER_ADDR"]["value"] == "run1-0.run1"
    assert "job-completion-index" in env["NODE_RANK"]["valueFrom"]["fieldRef"]["fieldPath"]


def test_queue_name_sets_kueue_label_and_suspends() -> None:
    job = by_kind(trainer_workload(tj(queueName="gpu-queue"), shape(), "pvc://x", "img"))["Job"]
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    assert job["spec"]["suspend"] is True
    job = by_kind(trainer_workload(tj(), shape(), "pvc://x", "img"))["Job"]
    assert (
        job["spec"]["suspend"] is False
        and "kueue.x-k8s.io/queue-name" not in job["metadata"]["labels"]
    )


def test_rbac_limits_trainer_to_its_own_job() -> None:
    objs = by_kind(trainer_rbac(tj()))
    rules = objs["Role"]["rules"]
    status_rule = next(r for r in rules if r["resources"] == ["trainerjobs/status"])
    assert status_rule["resourceNames"] == ["run1"] and set(status_rule["verbs"]) == {
        "get",
        "patch",
    }
    assert all("*" not in r["verbs"] and "*" not in r["resources"] for r in rules)
    assert objs["RoleBinding"]["subjects"][0]["name"] == objs["ServiceAccount"]["metadata"]["name"]
    own = by_kind(trainer_rbac(tj(podOverrides={"serviceAccountName": "mine"})))
    assert "ServiceAccount" not in own and own["RoleBinding"]["subjects"][0]["name"] == "mine"


@pytest.mark.parametrize(
    ("spec", "shape_spec", "needle"),
    [
        ({"hyperparameters": {"learningRate": 1e-5, "loraRank": 128}}, {}, "loraRank: 128 exceeds"),
        ({"mode": "rl"}, {"modes": ["sft"]}, "spec.mode: rl is not allowed"),
        ({"hyperparameters": {"learningRate": 1e-5, "maxSeqLen": 70000}}, {}, "maxSeqLen: 70000"),
    ],
)
def test_admission_refuses_what_the_shape_does_not_allow(spec, shape_spec, needle) -> None:
    status, children = admission(tj(**spec), shape(**shape_spec), Settings())
    assert children == [] and status is not None
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "InvalidSpec" and needle in failed["message"]
    assert status["phase"] == "Failed"


def test_admission_waits_for_missing_or_unready_shape() -> None:
    status, _ = admission(tj(), None, Settings())
    adm = status["conditions"][0]
    assert (adm["type"], adm["status"], adm["reason"]) == ("Admitted", "False", "ShapeNotFound")
    assert status["phase"] == "Pending"
    unready = shape()
    unready["status"]["conditions"][0]["status"] = "False"
    status, _ = admission(tj(), unready, Settings())
    assert status["conditions"][0]["reason"] == "ShapeNotReady"
    status, children = admission(tj(), shape(), Settings())
    assert status is None and [o["kind"] for o in children][-1] == "Job"


def pod(phase: str, exit_code: int | None = None, message: str = "", finished: str = "t1") -> dict:
    st: dict[str, Any] = {"phase": phase}
    if exit_code is not None:
        st["containerStatuses"] = [
            {
                "name": "trainer",
                "state": {
                    "terminated": {
                        "exitCode": exit_code,
                        "message": message,
                        "finishedAt": finished,
                    }
                },
            }
        ]
    return {"metadata": {"name": f"p-{phase}-{finished}"}, "status": st}


def job(conds: list[dict] | None = None, suspend: bool = False, **status: Any) -> dict:
    return {"spec": {"suspend": suspend}, "status": {"conditions": conds or [], **status}}


def cond_of(status: dict, type: str) -> dict:
    return next(c for c in status["conditions"] if c["type"] == type)


def test_status_running_retrying_and_succeeded() -> None:
    s = derive_status(tj(), job(active=1, startTime="t0"), [pod("Running")])
    assert s["phase"] == "Running" and cond_of(s, "Running")["reason"] == "Training"
    assert s["attempts"] == 1 and s["startTime"] == "t0"
    s = derive_status(tj(), job(active=1, failed=1), [pod("Failed", 137, "killed"), pod("Running")])
    assert (
        cond_of(s, "Running")["reason"] == "Retrying" and "137" in cond_of(s, "Running")["message"]
    )
    done = job([{"type": "Complete", "status": "True"}], succeeded=1, completionTime="t9")
    s = derive_status(tj(), done, [pod("Succeeded", 0)])
    assert s["phase"] == "Succeeded" and s["completionTime"] == "t9"
    assert cond_of(s, "Succeeded")["status"] == "True"


@pytest.mark.parametrize(
    ("job_reason", "code", "reason"),
    [
        ("PodFailurePolicy", 65, "DataInvalid"),
        ("BackoffLimitExceeded", 1, "BackoffLimitExceeded"),
        ("DeadlineExceeded", None, "DeadlineExceeded"),
        ("PodFailurePolicy", 3, "TrainerFailed"),
    ],
)
def test_status_failure_reasons(job_reason: str, code: int | None, reason: str) -> None:
    failed = job(
        [{"type": "Failed", "status": "True", "reason": job_reason, "message": "m"}], failed=1
    )
    pods = (
        [pod("Failed", code, "data.jsonl:3: messages[0].role: missing")] if code is not None else []
    )
    s = derive_status(tj(), failed, pods)
    f = cond_of(s, "Failed")
    assert s["phase"] == "Failed" and f["reason"] == reason
    if code is not None:
        assert f"code {code}" in f["message"] and "data.jsonl:3" in f["message"]


def test_status_suspended_and_queued() -> None:
    s = derive_status(tj(suspend=True), job(suspend=True), [])
    assert s["phase"] == "Suspended" and cond_of(s, "Suspended")["status"] == "True"
    s = derive_status(tj(queueName="q"), job(suspend=True), [])
    assert s["phase"] == "Pending" and cond_of(s, "Admitted")["reason"] == "Queued"


def test_status_is_stable_when_nothing_changes() -> None:
    t = tj()
    s1 = derive_status(t, job(active=1), [pod("Running")])
    t["status"] = s1
    assert derive_status(t, job(active=1), [pod("Running")]) == s1


def test_shape_status_has_version_and_ready() -> None:
    s = desired_status(shape())
    assert len(s["version"]) == 16 and cond_of(s, "Ready")["status"] == "True"
    assert desired_status(shape(maxContext=1024))["version"] != s["version"]
    bad = shape(nodes=0)
    assert cond_of(desired_status(bad), "Ready")["reason"] == "InvalidSpec"


CKPT = {
    "apiVersion": "vlmtrain.dev/v1alpha1",
    "kind": "Checkpoint",
    "metadata": {"name": "run1-final", "namespace": "team-a", "uid": "c-1"},
    "spec": {
        "trainerJob": "run1",
        "step": 40,
        "final": True,
        "type": "lora",
        "uri": "pvc://ckpts/team-a/run1/checkpoints/final",
        "baseModel": "pvc://models/base",
    },
}


def test_checkpoint_jobs_mount_only_what_they_need() -> None:
    v = verify_job(CKPT, "img")
    c = v["spec"]["template"]["spec"]["containers"][0]
    assert c["command"] == [
        "vlm-trainer",
        "verify-checkpoint",
        "/mnt/pvc/ckpts/team-a/run1/checkpoints/final",
    ]
    assert [m["readOnly"] for m in c["volumeMounts"] if m["name"].startswith("pvc-")] == [True]
    p = promote_job(CKPT, "my-model", "pvc://models/published", "img")
    c = p["spec"]["template"]["spec"]["containers"][0]
    assert c["command"][-4:] == [
        "--output",
        "/mnt/pvc/models/published/team-a/my-model",
        "--base-model",
        "/mnt/pvc/models/base",
    ]
    writable = {
        m["name"]: not m["readOnly"] for m in c["volumeMounts"] if m["name"].startswith("pvc-")
    }
    assert writable == {"pvc-ckpts": False, "pvc-models": True}
    assert len(task_job_name("x" * 60, "promote")) <= 63


def test_network_policy_lets_only_the_jobs_own_pods_reach_the_rendezvous_port() -> None:
    _, without = admission(tj(), shape(), Settings())
    assert "NetworkPolicy" not in {o["kind"] for o in without}
    _, children = admission(tj(), shape(), Settings(network_policy=True))
    assert children[-1]["kind"] == "Job"  # created last, after everything it needs
    policy = by_kind(children)["NetworkPolicy"]
    assert policy["metadata"]["ownerReferences"][0]["uid"] == tj()["metadata"]["uid"]
    pod_labels = by_kind(children)["Job"]["spec"]["template"]["metadata"]["labels"]
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()  # it selects the job's trainer pods
    assert selector["vlmtrain.dev/trainer-job"] == "run1"
    assert selector["vlmtrain.dev/task"] == "train"
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    rule, metrics_rule = policy["spec"]["ingress"]
    assert rule["from"] == [{"podSelector": {"matchLabels": selector}}]  # same job, same namespace
    assert rule["ports"] == [{"protocol": "TCP", "port": 29500}]
    # The scraper may come from anywhere, but only to the trainer's metrics port.
    assert metrics_rule == {"ports": [{"protocol": "TCP", "port": 9400}]}
    metrics_port = by_kind(children)["Job"]["spec"]["template"]["spec"]["containers"][0]["ports"]
    assert metrics_port == [{"name": "metrics", "containerPort": 9400}]
    # ... which is the port torchrun rendezvouses on (4 GPUs: torchrun with MASTER_PORT).
    container = by_kind(children)["Job"]["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "MASTER_PORT", "value": "29500"} in container["env"]


CACHES = ["HOME", "HF_HOME", "XDG_CACHE_HOME", "TRITON_CACHE_DIR", "TORCHINDUCTOR_CACHE_DIR"]


@pytest.mark.parametrize("task", ["train", "verify", "promote"])
def test_every_cache_is_on_a_writable_volume_of_a_read_only_pod(task: str) -> None:
    """The root filesystem is read-only, so HOME, the hub's download folder (a hub-id base
    model, as SHAPE's, is fetched there) and every cache must lie on a writable emptyDir."""
    if task == "train":
        job = trainer_workload(tj(), shape(), "pvc://ckpts", "img")[-1]
    else:
        job = (verify_job if task == "verify" else promote_job)(
            CKPT, *(("my-model", "pvc://models/published") if task == "promote" else ()), "img"
        )
    pod = job["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    empty_dirs = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    writable = [
        m["mountPath"]
        for m in c["volumeMounts"]
        if m["name"] in empty_dirs and not m.get("readOnly")
    ]
    env = {e["name"]: e.get("value") for e in c["env"]}
    for name in CACHES:
        assert any(env[name] == w or env[name].startswith(w + "/") for w in writable), name


def test_tokens_per_batch_reaches_the_trainer_config_only_when_set() -> None:
    def rendered(hp: dict[str, Any]) -> dict[str, Any]:
        objs = by_kind(trainer_workload(tj(hyperparameters=hp), shape(), "pvc://x", "img:1"))
        return yaml.safe_load(objs["ConfigMap"]["data"]["config.yaml"])

    assert "tokens_per_batch" not in rendered({"loraRank": 16})
    assert rendered({"loraRank": 16, "tokensPerBatch": 131072})["tokens_per_batch"] == 131072
