"""Issue 11 on a real control plane: a namespace user who may only create TrainerJobs gets no
more than the shape allows; the operator never adopts a foreign object; a job re-created under
the same name starts from step 0; forged Checkpoints are not promoted and an existing model is
not replaced."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.local import LocalCluster
from tests.integration.operator_env import (
    DEMO_CLAIM,
    Operator,
    apply,
    condition,
    finished,
    get,
    run_folder,
    settled,
    trainer_job,
)

pytestmark = pytest.mark.integration

USER = "alice"
RUNTIME_SOCKET = "/run/containerd/containerd.sock"


def allow_only_trainerjobs(cluster: LocalCluster, ns: str) -> None:
    """A Role and RoleBinding: USER may create and read TrainerJobs in `ns`, nothing else."""
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "trainerjob-author", "namespace": ns},
        "rules": [
            {
                "apiGroups": ["vlmtrain.dev"],
                "resources": ["trainerjobs"],
                "verbs": ["create", "get", "list"],
            }
        ],
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "trainerjob-author", "namespace": ns},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": role["metadata"]["name"],
        },
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": USER}],
    }
    for obj in (role, binding):
        apply(cluster, ns, obj)
    # The user really is that limited (so the refusals below are the policy's, not RBAC's).
    can = cluster.kubectl("auth", "can-i", "create", "pods", "-n", ns, f"--as={USER}", check=False)
    assert can.stdout.strip() == "no", can.stdout
    can = cluster.kubectl("auth", "can-i", "create", "trainerjobs", "-n", ns, f"--as={USER}")
    assert can.stdout.strip() == "yes"


def create_as_user(cluster: LocalCluster, ns: str, obj: dict[str, Any]):
    return cluster.kubectl(
        "create", "-n", ns, f"--as={USER}", "-f", "-", input=json.dumps(obj), check=False
    )


def children(cluster: LocalCluster, ns: str, name: str) -> list[str]:
    """Jobs, Pods and Roles that exist for a TrainerJob name (by label or by name)."""
    found = []
    for kind in ("jobs", "pods", "roles"):
        items = get(cluster, kind, "-n", ns, "-l", f"vlmtrain.dev/trainer-job={name}") or {}
        found += [f"{kind}/{i['metadata']['name']}" for i in items.get("items", [])]
    for kind, child in (("job", name), ("role", f"{name}-trainer")):
        if get(cluster, kind, child, "-n", ns) is not None:
            found.append(f"{kind}/{child}")
    return found


#: Escalations the apiserver refuses at create (CEL on the CRD): the field it names.
CEL_REFUSED = [
    ({"env": [{"name": "LD_PRELOAD", "value": "/tmp/x.so"}]}, "spec.podOverrides.env[0].name"),
    (
        {"env": [{"name": "VLM_CHECKPOINT_URI", "value": "pvc://other/ckpts"}]},
        "spec.podOverrides.env[0].name",
    ),
    ({"tolerations": [{"operator": "Exists"}]}, "spec.podOverrides.tolerations"),
    ({"priorityClassName": "system-node-critical"}, "spec.podOverrides.priorityClassName"),
]
#: Escalations the operator refuses at admission (they depend on the shape): the field named.
OPERATOR_REFUSED = [
    ({"volumes": [{"name": "root", "hostPath": {"path": "/"}}]}, "volumes[0].hostPath"),
    (
        {"volumes": [{"name": "sock", "hostPath": {"path": RUNTIME_SOCKET, "type": "Socket"}}]},
        "volumes[0].hostPath",
    ),
    ({"serviceAccountName": "default"}, "serviceAccountName"),
    ({"volumes": [{"name": "s", "secret": {"secretName": "db-admin"}}]}, "volumes[0].secret"),
]


def test_escalations_are_refused_with_the_field_named(
    cluster: LocalCluster, demo_ns: str, operator: Operator
) -> None:
    allow_only_trainerjobs(cluster, demo_ns)
    for i, (overrides, field) in enumerate(CEL_REFUSED):
        name = f"cel-{i}"
        p = create_as_user(cluster, demo_ns, trainer_job(name, podOverrides=overrides))
        assert p.returncode != 0 and field in p.stderr, (overrides, p.stderr)
        assert get(cluster, "tj", name, "-n", demo_ns) is None
    names = []
    for i, (overrides, field) in enumerate(OPERATOR_REFUSED):
        name = f"policy-{i}"
        p = create_as_user(cluster, demo_ns, trainer_job(name, podOverrides=overrides))
        assert p.returncode == 0, p.stderr
        names.append((name, field))
    for name, field in names:
        tj = finished(cluster, demo_ns, name, timeout=60)
        failed = condition(tj, "Failed")
        assert failed["reason"] == "InvalidSpec", failed
        assert f"spec.podOverrides.{field}" in failed["message"], failed["message"]
        assert children(cluster, demo_ns, name) == []
    # The CEL-refused names never existed, so nothing was made for them either.
    for i in range(len(CEL_REFUSED)):
        assert children(cluster, demo_ns, f"cel-{i}") == []


def _foreign(kind: str, name: str) -> dict[str, Any]:
    if kind == "ConfigMap":
        return {"apiVersion": "v1", "kind": kind, "metadata": {"name": name}, "data": {"a": "1"}}
    if kind == "Role":
        rule = {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}
        return {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": kind,
            "metadata": {"name": name},
            "rules": [rule],
        }
    container = {"name": "c", "image": "busybox", "command": ["true"]}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "suspend": True,  # never runs: only its name matters
            "template": {"spec": {"restartPolicy": "Never", "containers": [container]}},
        },
    }


def _settled_object(cluster: LocalCluster, ns: str, kind: str, name: str) -> dict[str, Any]:
    """The object once controllers stopped writing to it (same resourceVersion for 2s)."""
    last: dict[str, Any] = {}
    for _ in range(30):
        obj = get(cluster, kind, name, "-n", ns)
        if obj == last:
            return obj
        last = obj
        time.sleep(2)
    raise AssertionError(f"{kind} {name} kept changing")


@pytest.mark.parametrize(
    ("kind", "child"), [("Job", "{}"), ("ConfigMap", "{}-config"), ("Role", "{}-trainer")]
)
def test_foreign_child_is_left_alone_and_the_job_fails(
    cluster: LocalCluster, demo_ns: str, operator: Operator, kind: str, child: str
) -> None:
    name = f"clash-{kind.lower()}"
    child = child.format(name)
    apply(cluster, demo_ns, _foreign(kind, child))
    before = _settled_object(cluster, demo_ns, kind.lower(), child)
    apply(cluster, demo_ns, trainer_job(name))
    tj = finished(cluster, demo_ns, name, timeout=60)
    failed = condition(tj, "Failed")
    assert failed["reason"] == "ChildConflict", failed
    assert f"{kind} {child}" in failed["message"], failed["message"]
    time.sleep(3)  # a resync or two later: still untouched
    after = get(cluster, kind.lower(), child, "-n", demo_ns)
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert after == before
    # Nothing else was made for the job either: the collision is found before any child.
    for other_kind, other in (
        ("serviceaccount", f"{name}-trainer"),
        ("role", f"{name}-trainer"),
        ("rolebinding", f"{name}-trainer"),
        ("configmap", f"{name}-config"),
        ("job", name),
    ):
        if (other_kind, other) != (kind.lower(), child):
            assert get(cluster, other_kind, other, "-n", demo_ns) is None, (other_kind, other)


def _small_dataset(cluster: LocalCluster, ns: str, records: int) -> str:
    """The first `records` lines of the demo SFT data as their own file on the PVC."""
    data = cluster.pvc_root / ns / DEMO_CLAIM / "data"
    lines = (data / "sft_train.jsonl").read_text().splitlines()[:records]
    (data / f"sft_{records}.jsonl").write_text("\n".join(lines) + "\n")
    return f"pvc://{DEMO_CLAIM}/data/sft_{records}.jsonl"


def _train_steps(folder: Path) -> list[int]:
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    return [e["step"] for e in map(json.loads, lines) if e.get("event") == "train"]


def _job(name: str, dataset: str, epochs: int, keep_last: int = 0) -> dict[str, Any]:
    hp = {"learningRate": 0.003, "epochs": epochs, "batchSize": 8, "maxSeqLen": 256}
    return trainer_job(
        name,
        dataset={"uri": dataset},
        hyperparameters=hp,
        checkpointing={"everySteps": 1, "keepLast": keep_last},
    )


def test_recreated_job_starts_from_step_zero_and_forged_checkpoints_are_refused(
    cluster: LocalCluster, demo_ns: str, operator: Operator
) -> None:
    ns, name = demo_ns, "again"
    dataset = _small_dataset(cluster, ns, 16)  # 2 steps per epoch at batch size 8
    apply(cluster, ns, _job(name, dataset, epochs=1))
    first = finished(cluster, ns, name)
    assert first["status"]["phase"] == "Succeeded", first["status"]
    old_folder = run_folder(cluster, ns, first)
    per_epoch = len(_train_steps(old_folder))
    assert per_epoch >= 1 and _train_steps(old_folder) == list(range(1, per_epoch + 1))
    cluster.kubectl("delete", "tj", name, "-n", ns, "--wait=true")

    apply(cluster, ns, _job(name, dataset, epochs=2, keep_last=1))
    second = finished(cluster, ns, name, timeout=300)
    assert second["status"]["phase"] == "Succeeded", second["status"]
    assert second["metadata"]["uid"] != first["metadata"]["uid"]
    new_folder = run_folder(cluster, ns, second)
    total = 2 * per_epoch
    # From step 0 to the new total: neither resumed from the old run nor "done" on its final.
    assert _train_steps(new_folder) == list(range(1, total + 1))
    assert second["status"]["progress"]["step"] == total
    assert second["status"]["progress"]["totalSteps"] == total
    manifest = json.loads((new_folder / "checkpoints" / "final" / "manifest.json").read_text())
    assert manifest["job_uid"] == second["metadata"]["uid"] and manifest["step"] == total
    _pruned_snapshots_are_marked(cluster, ns, second, new_folder, total)
    _forged_checkpoints_are_not_promoted(cluster, ns, second, old_folder)
    _existing_model_is_not_replaced(cluster, ns, second)


def _pruned_snapshots_are_marked(
    cluster: LocalCluster, ns: str, job: dict[str, Any], folder: Path, total: int
) -> None:
    """keepLast 1: every step but the last is gone from storage, and its Checkpoint says so."""
    uid = job["metadata"]["uid"]
    steps = {
        c["spec"]["step"]: c
        for c in get(cluster, "ckpt", "-n", ns)["items"]
        if not c["spec"]["final"]
        and uid in {r["uid"] for r in c["metadata"].get("ownerReferences", [])}
    }
    # Every step saved but the last (the final checkpoint is written there instead).
    assert sorted(steps) == list(range(1, total))
    last = total - 1
    assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == [
        "final",
        f"step-{last:06d}",
    ]
    for step, ck in steps.items():
        name = ck["metadata"]["name"]
        if step < last:
            ck = settled(cluster, "ckpt", ns, name, ("Pruned",), 60)
            assert condition(ck, "Promoted")["reason"] == "Pruned"
        else:
            ck = settled(cluster, "ckpt", ns, name, ("Available",), 120)


def _checkpoint(name: str, job: str, owner: dict[str, Any], uri: str) -> dict[str, Any]:
    ref = {
        "apiVersion": "vlmtrain.dev/v1alpha1",
        "kind": "TrainerJob",
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
    }
    return {
        "apiVersion": "vlmtrain.dev/v1alpha1",
        "kind": "Checkpoint",
        "metadata": {"name": name, "ownerReferences": [ref]},
        "spec": {
            "trainerJob": job,
            "step": 2,
            "final": True,
            "uri": uri,
            "type": "full",
            "baseModel": "pvc://vlm-demo/models/tiny-qwen3-vl",
            "promote": {"outputModel": f"{name}-model"},
        },
    }


def _forged_checkpoints_are_not_promoted(
    cluster: LocalCluster, ns: str, job: dict[str, Any], old_folder: Path
) -> None:
    name = job["metadata"]["name"]
    base = f"pvc://{DEMO_CLAIM}/checkpoints/{ns}"
    real_uri = f"{base}/{name}-{job['metadata']['uid']}/checkpoints/final"
    # Another job's UID as owner: a TrainerJob of the namespace (waiting for its shape).
    apply(cluster, ns, trainer_job("bystander", shape="no-such-shape"))
    other = get(cluster, "tj", "bystander", "-n", ns)
    # The job's real UID, but the URI of the earlier job of the same name (its files verify).
    old_uri = f"{base}/{old_folder.name}/checkpoints/final"
    forged = {
        "forged-owner": _checkpoint("forged-owner", name, other, real_uri),
        "forged-uri": _checkpoint("forged-uri", name, job, old_uri),
    }
    for ck in forged.values():
        apply(cluster, ns, ck)
    for ck_name in forged:
        ck = settled(cluster, "ckpt", ns, ck_name, ("Promoted", "Failed"), 180)
        promoted = condition(ck, "Promoted")
        assert ck["status"]["phase"] == "Failed" and promoted["reason"] == "NotOwned", promoted
        model = cluster.pvc_root / ns / DEMO_CLAIM / "published" / ns / f"{ck_name}-model"
        assert not model.exists()


def _existing_model_is_not_replaced(cluster: LocalCluster, ns: str, job: dict[str, Any]) -> None:
    taken = cluster.pvc_root / ns / DEMO_CLAIM / "published" / ns / "taken"
    taken.mkdir(parents=True)
    (taken / "config.json").write_text('{"someone": "else"}')
    # The job's own final Checkpoint (named <job>-final, or with a UID suffix if an earlier
    # job's of that name was still there).
    ck_name = next(
        c["metadata"]["name"]
        for c in get(cluster, "ckpt", "-n", ns)["items"]
        if c["spec"]["final"]
        and job["metadata"]["uid"] in {r["uid"] for r in c["metadata"].get("ownerReferences", [])}
    )
    patch = json.dumps({"spec": {"promote": {"outputModel": "taken"}}})
    cluster.kubectl("patch", "ckpt", ck_name, "-n", ns, "--type=merge", "-p", patch)
    ck = settled(cluster, "ckpt", ns, ck_name, ("Promoted", "Failed"), 240)
    promoted = condition(ck, "Promoted")
    assert ck["status"]["phase"] == "Failed" and promoted["reason"] == "ModelExists", promoted
    assert [p.name for p in taken.iterdir()] == ["config.json"]
    assert (taken / "config.json").read_text() == '{"someone": "else"}'
