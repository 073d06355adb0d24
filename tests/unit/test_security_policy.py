"""Issue 11's pure checks: the shape's podPolicy against a job's podOverrides, reserved
environment names, child ownership, the job-UID identity of checkpoints, promotion integrity
(owner, URI, existing model) and pruning that asks first."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from vlm_operator import kube
from vlm_operator.api import TrainerJob, TrainingShape
from vlm_operator.api.pod import RESERVED_ENV_NAMES, RESERVED_ENV_PREFIXES, reserved_env
from vlm_operator.api.policy import PodPolicy, policy_violations
from vlm_operator.builders.job import trainer_workload
from vlm_operator.builders.labels import owner_ref, without_status
from vlm_operator.reconcile.checkpoint import not_owned
from vlm_operator.reconcile.job import admission
from vlm_operator.settings import Settings

from tests.unit.test_operator_builders import SHAPE, TJ, shape, tj

pytestmark = pytest.mark.unit
RUNTIME_SOCKET = "/run/containerd/containerd.sock"


def violations(overrides: dict[str, Any], policy: dict[str, Any] | None = None) -> list[str]:
    job = TrainerJob.model_validate(tj(podOverrides=overrides))
    pol = PodPolicy.model_validate(policy) if policy is not None else None
    return policy_violations(job.spec.pod_overrides, pol, "big")


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"volumes": [{"name": "root", "hostPath": {"path": "/"}}]}, "volumes[0].hostPath"),
        (
            {"volumes": [{"name": "sock", "hostPath": {"path": RUNTIME_SOCKET}}]},
            "volumes[0].hostPath",
        ),
        ({"volumes": [{"name": "s", "secret": {"secretName": "db"}}]}, "volumes[0].secret"),
        (
            {"volumes": [{"name": "p", "projected": {"sources": [{"secret": {"name": "db"}}]}}]},
            "volumes[0].projected",
        ),
        (
            {"env": [{"name": "T", "valueFrom": {"secretKeyRef": {"name": "db", "key": "k"}}}]},
            "env[0].valueFrom.secretKeyRef.name",
        ),
        ({"serviceAccountName": "admin"}, "serviceAccountName"),
        (
            {"tolerations": [{"key": "node-role", "operator": "Exists"}]},
            "tolerations[0]",
        ),
        ({"nodeSelector": {"pool": "admins"}}, "nodeSelector.pool"),
        ({"priorityClassName": "high"}, "priorityClassName"),
    ],
)
def test_closed_defaults_refuse_with_the_field_path(overrides: dict, field: str) -> None:
    problems = violations(overrides)
    assert len(problems) >= 1, problems
    assert problems[0].startswith(f"spec.podOverrides.{field}"), problems


def test_policy_allows_what_it_lists() -> None:
    policy = {
        "volumeTypes": ["persistentVolumeClaim", "secret", "hostPath"],
        "allowedSecrets": ["hf"],
        "allowServiceAccount": True,
        "tolerations": [{"key": "spot", "operator": "Exists"}],
        "nodeSelector": {"pool": ["a", "b"]},
        "priorityClasses": ["high"],
    }
    ok = {
        "volumes": [
            {"name": "d", "persistentVolumeClaim": {"claimName": "x"}},
            {"name": "s", "secret": {"secretName": "hf"}},
            {"name": "h", "hostPath": {"path": "/data"}},
        ],
        "env": [{"name": "T", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "k"}}}],
        "serviceAccountName": "mine",
        "tolerations": [{"key": "spot", "operator": "Exists"}],
        "nodeSelector": {"pool": "b"},
        "priorityClassName": "high",
    }
    assert violations(ok, policy) == []
    # ...and still nothing else: another value, another Secret, another volume type.
    bad = {"nodeSelector": {"pool": "c"}, "volumes": [{"name": "c", "csi": {"driver": "x"}}]}
    assert [p.split(":")[0] for p in violations(bad, policy)] == [
        "spec.podOverrides.volumes[0].csi",
        "spec.podOverrides.nodeSelector.pool",
    ]
    # The default volume types without any Secret listed: PVC, ConfigMap and emptyDir pass.
    plain = [
        {"name": "a", "persistentVolumeClaim": {"claimName": "x"}},
        {"name": "b", "configMap": {"name": "c"}},
        {"name": "c", "emptyDir": {}},
    ]
    assert violations({"volumes": plain}) == []


@pytest.mark.parametrize(
    "name", ["LD_PRELOAD", "VLM_CHECKPOINT_URI", "HOME", "PYTHONPATH", "MASTER_ADDR", "RANK"]
)
def test_reserved_env_names_are_refused_by_the_model(name: str) -> None:
    assert reserved_env(name)
    with pytest.raises(ValidationError, match="reserved"):
        TrainerJob.model_validate(tj(podOverrides={"env": [{"name": name, "value": "x"}]}))


def test_reserved_env_definition_covers_the_brief_and_leaves_ordinary_names() -> None:
    for prefix in ("VLM_", "HF_", "PYTHON", "LD_", "MASTER_", "TORCH", "NCCL_", "CUDA_", "AWS_"):
        assert prefix in RESERVED_ENV_PREFIXES and reserved_env(prefix + "X")
    for name in ("HOME", "PATH", "RANK", "LOCAL_RANK", "WORLD_SIZE", "NNODES", "NODE_RANK"):
        assert name in RESERVED_ENV_NAMES and reserved_env(name)
    for name in ("OMP_NUM_THREADS", "MY_HOME", "HOMEDIR", "WANDB_PROJECT", "rank"):
        assert not reserved_env(name), name


def test_admission_refuses_before_any_child() -> None:
    job = tj(podOverrides={"volumes": [{"name": "root", "hostPath": {"path": "/"}}]})
    blocked, children = admission(job, shape(), Settings())
    assert children == [] and blocked is not None and blocked["phase"] == "Failed"
    failed = next(c for c in blocked["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "InvalidSpec"
    assert "spec.podOverrides.volumes[0].hostPath" in failed["message"]


def test_shape_env_is_added_but_never_replaces_the_operators() -> None:
    env = [{"name": "VLM_DIST_TIMEOUT_S", "value": "60"}, {"name": "HOME", "value": "/evil"}]
    objs = trainer_workload(tj(), shape(podPolicy={"env": env}), "pvc://x", "img")
    c = objs[-1]["spec"]["template"]["spec"]["containers"][0]
    names = [e["name"] for e in c["env"]]
    assert names.count("HOME") == 1 and {"name": "HOME", "value": "/tmp"} in c["env"]
    assert {"name": "VLM_DIST_TIMEOUT_S", "value": "60"} in c["env"]
    # An admin may use reserved names.
    TrainingShape.model_validate(without_status(shape(podPolicy={"env": env})))


# --- ownership ----------------------------------------------------------------------------------


def test_only_an_object_controlled_by_the_same_uid_is_ours() -> None:
    want = {"kind": "Job", "metadata": {"name": "run1", "ownerReferences": [owner_ref(TJ)]}}
    mine = copy.deepcopy(want)
    kube.check_owned(mine, want)
    foreign = {"kind": "Job", "metadata": {"name": "run1"}}
    with pytest.raises(kube.ForeignObject) as e:
        kube.check_owned(foreign, want)
    assert not e.value.earlier and "Job run1" in str(e.value)
    earlier = copy.deepcopy(want)
    earlier["metadata"]["ownerReferences"][0]["uid"] = "old-uid"
    with pytest.raises(kube.ForeignObject) as e:
        kube.check_owned(earlier, want)
    assert e.value.earlier  # an earlier TrainerJob of this name: wait for the GC, do not fail
    not_controller = copy.deepcopy(want)
    not_controller["metadata"]["ownerReferences"][0]["controller"] = False
    with pytest.raises(kube.ForeignObject):
        kube.check_owned(not_controller, want)


# --- identity and promotion ---------------------------------------------------------------------


def _checkpoint(uri: str, uid: str = "tj-1") -> dict[str, Any]:
    ref = {"apiVersion": "vlmtrain.dev/v1alpha1", "kind": "TrainerJob", "name": "run1", "uid": uid}
    return {
        "metadata": {"name": "run1-final", "namespace": "team-a", "ownerReferences": [ref]},
        "spec": {"trainerJob": "run1", "final": True, "uri": uri},
    }


def test_promotion_needs_the_owner_uid_and_a_uri_under_the_jobs_folder() -> None:
    good = "pvc://ckpts/team-a/run1-tj-1/checkpoints/final"
    assert not_owned(_checkpoint(good), tj(), "pvc://default") is None
    assert "not owned" in not_owned(_checkpoint(good, uid="other"), tj(), "pvc://default")
    for uri in (
        "pvc://ckpts/team-a/run1/checkpoints/final",  # the name-only folder of an earlier job
        "pvc://ckpts/team-a/run1-tj-2/checkpoints/final",
        "pvc://ckpts/team-a/run1-tj-1/checkpoints/../../other/checkpoints/final",
        "pvc://other/team-a/run1-tj-1/checkpoints/final",
    ):
        assert "is not under" in not_owned(_checkpoint(uri), tj(), "pvc://default"), uri
    assert "does not exist" in not_owned(_checkpoint(good), None, "pvc://default")


def test_resume_ignores_checkpoints_of_another_uid(tmp_path: Path) -> None:
    from vlm_trainer import checkpoint as ckpt

    def save(step: int, uid: str) -> None:
        ckpt.write_checkpoint(
            tmp_path,
            ckpt.step_name(step),
            lambda out: (out / "w.bin").write_bytes(b"w"),
            {"job": "run1", "job_uid": uid},
            step,
        )

    save(2, "new")
    save(4, "old")
    assert ckpt.latest_verified(tmp_path, log=lambda m: None, job_uid="new").name == "step-000002"
    assert "job uid old" in ckpt.usable(tmp_path / "step-000004", "new")
    assert ckpt.latest_verified(tmp_path, log=lambda m: None, job_uid="other") is None
    assert ckpt.usable(tmp_path / "step-000004", None) is None  # outside Kubernetes: any


def test_prune_keeps_what_may_not_be_deleted(tmp_path: Path) -> None:
    from vlm_trainer import checkpoint as ckpt

    for step in (1, 2, 3, 4):
        ckpt.write_checkpoint(
            tmp_path, ckpt.step_name(step), lambda out: (out / "w").write_bytes(b"w"), {}, step
        )
    asked: list[str] = []

    def may_delete(p: Path) -> bool:
        asked.append(p.name)
        return p.name != "step-000001"  # say its Checkpoint has a promotion requested

    removed = ckpt.prune(tmp_path, 2, may_delete)
    assert asked == ["step-000001", "step-000002"] and [p.name for p in removed] == ["step-000002"]
    assert sorted(p.name for _, p in ckpt.list_steps(tmp_path)) == [
        "step-000001",
        "step-000003",
        "step-000004",
    ]


def test_promotion_never_replaces_an_existing_model(tmp_path: Path) -> None:
    from vlm_trainer.promote import ModelExists, _existing

    out = tmp_path / "model"
    src = tmp_path / "ckpts" / "final"
    assert _existing(src, out, overwrite=False) is None  # free
    out.mkdir()
    (out / "promoted.json").write_text(json.dumps({"source_checkpoint": "/elsewhere"}))
    with pytest.raises(ModelExists, match="overwrite"):
        _existing(src, out, overwrite=False)
    assert _existing(src, out, overwrite=True) is None
    # A retried promotion of this very checkpoint that had already renamed its output: done.
    (out / "promoted.json").write_text(json.dumps({"source_checkpoint": str(src), "files": {}}))
    assert _existing(src, out, overwrite=False)["output"] == str(out)


def test_shapes_without_a_policy_hash_as_before() -> None:
    # Unset means the closed defaults and is not written out, so status.version (a hash of
    # the spec) of every existing shape stays what it was and running jobs keep their pin.
    spec = TrainingShape.model_validate(without_status(SHAPE)).spec
    assert spec.pod_policy is None and "podPolicy" not in spec.to_api()
