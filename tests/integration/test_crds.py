"""The generated CRDs on a real kube-apiserver: structural, examples apply, invalid manifests
rejected with the field named, immutability, defaults, status, printer columns, explain.

Every verdict here is the apiserver's; nothing is mocked. Uses the session ``cluster`` fixture
(tests/conftest.py) and a fresh ``namespace`` per test. Cluster-scoped objects (shapes) get
names unique to the test run and are deleted afterwards, so other tests in the session are not
disturbed; example shapes keep their names and are only deleted when this test created them.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from vlm_operator.api import (
    JobPhase,
    Progress,
    TrainerJobSpec,
    TrainerJobStatus,
    TrainingShapeSpec,
    new_condition,
)
from vlm_operator.api.job import Hyperparameters

from tests.unit.test_api_validation import BASES, INVALID_CASES, Case, merge

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CRD_DIR = REPO / "crds"
EXAMPLES = sorted((REPO / "examples").rglob("*.yaml"))
CRD_NAMES = ["trainingshapes.vlmtrain.dev", "trainerjobs.vlmtrain.dev", "checkpoints.vlmtrain.dev"]


@pytest.fixture(scope="module")
def crds(cluster):
    """Install the CRDs once and wait until they serve (and publish OpenAPI for explain)."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_DIR))
    cluster.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s", *[f"crd/{n}" for n in CRD_NAMES]
    )
    return cluster


@pytest.fixture
def namespace(quiet_namespace: str) -> str:
    """These tests write TrainerJob status by hand: no operator may reconcile their objects
    (the session's operator, started by an earlier module, watches only `t-*`)."""
    return quiet_namespace


def kubectl_json(cluster, *args: str) -> dict[str, Any]:
    return json.loads(cluster.kubectl(*args, "-o", "json").stdout)


def as_yaml(obj: dict[str, Any]) -> str:
    return yaml.safe_dump(obj, sort_keys=False)


def test_crds_are_structural_and_accepted(crds) -> None:
    for name in CRD_NAMES:
        crd = kubectl_json(crds, "get", "crd", name)
        conds = {c["type"]: c for c in crd["status"]["conditions"]}
        assert conds["Established"]["status"] == "True", conds
        assert conds["NamesAccepted"]["status"] == "True", conds
        # The apiserver sets NonStructuralSchema=True on a schema it cannot prune or default.
        assert conds.get("NonStructuralSchema", {}).get("status") != "True", conds


def test_examples_apply(crds, namespace: str) -> None:
    kinds = {}
    for path in EXAMPLES:
        for doc in yaml.safe_load_all(path.read_text()):
            kinds[doc["metadata"]["name"]] = doc["kind"]
    existing_shapes = set(crds.kubectl("get", "ts", "-o", "name", check=False).stdout.split())
    args = ["apply", "-n", namespace, "-R", "-f", str(REPO / "examples")]
    dry = crds.kubectl(*args, "--dry-run=server").stdout
    assert dry.count("(server dry run)") == len(kinds), dry
    try:
        out = crds.kubectl(*args).stdout
        for name, kind in kinds.items():
            assert f"{kind.lower()}.vlmtrain.dev/{name}" in out, out
        listed = crds.kubectl("get", "vlmtrain", "-n", namespace, "-o", "name").stdout
        for name, kind in kinds.items():
            if kind != "TrainingShape":  # cluster-scoped: not listed per namespace
                assert f"{kind.lower()}.vlmtrain.dev/{name}" in listed, listed
        # Applying again changes nothing (GitOps tools rely on it).
        again = crds.kubectl(*args).stdout
        assert again.count("unchanged") == len(kinds), again
    finally:
        for name, kind in kinds.items():
            if kind == "TrainingShape" and f"trainingshape.vlmtrain.dev/{name}" not in (
                existing_shapes
            ):
                crds.kubectl("delete", "ts", name, "--wait=false", check=False)


def test_base_manifests_are_accepted(crds, namespace: str) -> None:
    # Each invalid case changes one thing in one of these; they must be valid themselves.
    for kind, make in sorted(BASES.items()):
        body = make()
        out = crds.kubectl(
            "create", "-n", namespace, "--dry-run=server", "-f", "-", input=as_yaml(body)
        )
        assert "created (server dry run)" in out.stdout, (kind, out.stdout)


@pytest.mark.parametrize("case", INVALID_CASES, ids=lambda c: c.id)
def test_invalid_manifest_rejected_naming_the_field(crds, case: Case) -> None:
    # Server-side dry run runs the same admission (schema, CEL, strict fields) as a real create.
    p = crds.kubectl(
        "create",
        "-n",
        "default",
        "--dry-run=server",
        "-f",
        "-",
        input=as_yaml(case.manifest()),
        check=False,
    )
    assert p.returncode != 0, f"{case.id}: accepted\n{p.stdout}"
    assert case.field in p.stderr, f"{case.id}: {case.field!r} not in\n{p.stderr}"


def _job(name: str, shape: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "vlmtrain.dev/v1alpha1",
        "kind": "TrainerJob",
        "metadata": {"name": name},
        "spec": {"shape": shape, "mode": "sft", "dataset": {"uri": "pvc://data/t.jsonl"}, **spec},
    }


def _patch(cluster, namespace: str, target: str, patch: dict, *extra: str, check: bool = False):
    return cluster.kubectl(
        "patch",
        "-n",
        namespace,
        target,
        "--type",
        "merge",
        "-p",
        json.dumps(patch),
        *extra,
        check=check,
    )


IMMUTABLE_PATCHES = [
    ({"spec": {"shape": "other"}}, "spec.shape", "shape is immutable"),
    ({"spec": {"mode": "dpo"}}, "spec.mode", "mode is immutable"),
    ({"spec": {"dataset": {"uri": "pvc://data/other.jsonl"}}}, "spec.dataset", "immutable"),
    ({"spec": {"hyperparameters": {"learningRate": 0.5}}}, "spec.hyperparameters", "immutable"),
    ({"spec": {"checkpointing": {"everySteps": 7}}}, "spec.checkpointing", "immutable"),
    ({"spec": {"evalDataset": {"uri": "file:///e.jsonl"}}}, "spec.evalDataset", "added or removed"),
    ({"spec": {"podOverrides": {"env": [{"name": "A", "value": "1"}]}}}, "spec.podOverrides", ""),
    ({"spec": {"queueName": "q"}}, "spec.queueName", "added or removed"),
]


def test_updates(crds, namespace: str) -> None:
    name = "upd"
    crds.kubectl("create", "-n", namespace, "-f", "-", input=as_yaml(_job(name, "any-shape")))
    target = f"trainerjob/{name}"
    for patch, field, words in IMMUTABLE_PATCHES:
        p = _patch(crds, namespace, target, patch)
        assert p.returncode != 0, f"{patch} accepted"
        assert field in p.stderr and words in p.stderr, p.stderr
    # What may change: suspend, retries, deadlines, TTL, and adding promote.
    ok = {
        "spec": {
            "suspend": True,
            "backoffLimit": 5,
            "activeDeadlineSeconds": 3600,
            "ttlSecondsAfterFinished": 60,
            "promote": {"outputModel": "upd-model"},
        }
    }
    _patch(crds, namespace, target, ok, check=True)
    spec = kubectl_json(crds, "get", "-n", namespace, target)["spec"]
    # The apiserver fills promote's defaults (select final, metric eval_loss, mode min).
    assert spec["suspend"] is True and spec["promote"]["outputModel"] == "upd-model"
    assert spec["promote"]["select"] == "final"
    # promote is set once: changing or removing it is refused.
    for bad in ({"spec": {"promote": {"outputModel": "other"}}}, {"spec": {"promote": None}}):
        p = _patch(crds, namespace, target, bad)
        assert p.returncode != 0 and "spec.promote" in p.stderr, p.stderr

    # Checkpoints: everything but promote is fixed.
    ckpt = merge(BASES["Checkpoint"](), {"metadata": {"name": "c1"}})
    crds.kubectl("create", "-n", namespace, "-f", "-", input=as_yaml(ckpt))
    for patch, field in (
        ({"spec": {"step": 11}}, "spec.step"),
        ({"spec": {"uri": "pvc://ckpt/elsewhere"}}, "spec.uri"),
        ({"spec": {"type": "full"}}, "spec.type"),
        ({"spec": {"metrics": {"loss": 1.0}}}, "spec.metrics"),
    ):
        p = _patch(crds, namespace, "checkpoint/c1", patch)
        assert p.returncode != 0 and field in p.stderr, (patch, p.stderr)
    _patch(
        crds, namespace, "checkpoint/c1", {"spec": {"promote": {"outputModel": "m1"}}}, check=True
    )


def test_shape_spec_is_mutable(crds) -> None:
    name = f"mut-{secrets.token_hex(3)}"
    shape = {
        "apiVersion": "vlmtrain.dev/v1alpha1",
        "kind": "TrainingShape",
        "metadata": {"name": name},
        "spec": {"baseModel": "org/model", "maxContext": 4096},
    }
    crds.kubectl("create", "-f", "-", input=as_yaml(shape))
    try:
        p = crds.kubectl(
            "patch", "ts", name, "--type", "merge", "-p", '{"spec":{"maxContext":8192,"nodes":2}}'
        )
        assert p.returncode == 0
        # Defaults were applied on create and agree with the model's.
        got = kubectl_json(crds, "get", "ts", name)["spec"]
        want = TrainingShapeSpec.model_validate(
            {**shape["spec"], "maxContext": 8192, "nodes": 2}
        ).to_api()
        assert got == want
    finally:
        crds.kubectl("delete", "ts", name, "--wait=false", check=False)


def test_apiserver_defaults_equal_model_defaults(crds, namespace: str) -> None:
    for mode in ("sft", "dpo", "rl"):
        body = _job(f"def-{mode}", "s", mode=mode)
        if mode != "sft":
            body["spec"]["hyperparameters"] = {mode: {}}  # defaults inside the mode's block too
        crds.kubectl("create", "-n", namespace, "-f", "-", input=as_yaml(body))
        got = kubectl_json(crds, "get", "-n", namespace, f"tj/def-{mode}")["spec"]
        want = TrainerJobSpec.model_validate(body["spec"]).to_api()
        assert got == want, mode
    assert Hyperparameters().learning_rate == got["hyperparameters"]["learningRate"]


def test_status_subresource_printer_columns_and_wait(crds, namespace: str) -> None:
    body = _job("cols", "tiny-cpu", mode="dpo")
    crds.kubectl("create", "-n", namespace, "-f", "-", input=as_yaml(body))
    status = TrainerJobStatus(
        observed_generation=1,
        phase=JobPhase.RUNNING,
        conditions=[
            new_condition("Admitted", True, "ShapeResolved", observed_generation=1),
            new_condition("Running", True, "Training", "step 30/120", observed_generation=1),
        ],
        shape_version="abc123",
        progress=Progress(
            step=30,
            total_steps=120,
            percent=25,
            epoch=0.5,
            loss=0.75,
            tokens_per_second=1234.5,
            eta_seconds=90,
            updated_at="2025-01-01T00:00:00Z",
        ),
        latest_checkpoint="cols-step-000030",
        attempts=1,
        start_time="2025-01-01T00:00:00Z",
    ).to_api()
    _patch(crds, namespace, "tj/cols", {"status": status}, "--subresource=status", check=True)
    got = kubectl_json(crds, "get", "-n", namespace, "tj/cols")["status"]
    assert got == status  # nothing pruned: the models and the schema agree
    # status sent to the main resource is ignored (it is a subresource).
    _patch(crds, namespace, "tj/cols", {"status": {"phase": "Failed"}}, check=True)
    assert kubectl_json(crds, "get", "-n", namespace, "tj/cols")["status"]["phase"] == "Running"
    # A status the schema does not allow is refused.
    bad = _patch(crds, namespace, "tj/cols", {"status": {"phase": "Done"}}, "--subresource=status")
    assert bad.returncode != 0 and "status.phase" in bad.stderr, bad.stderr

    table = crds.kubectl("get", "tj", "-n", namespace).stdout.splitlines()
    assert table[0].split() == ["NAME", "PHASE", "MODE", "SHAPE", "PROGRESS", "CHECKPOINT", "AGE"]
    assert table[1].split()[:6] == ["cols", "Running", "dpo", "tiny-cpu", "25", "cols-step-000030"]
    wide = crds.kubectl("get", "tj", "-n", namespace, "-o", "wide").stdout.splitlines()
    assert "STEP" in wide[0].split() and "LOSS" in wide[0].split()
    assert "0.75" in wide[1].split()

    done = set_done(status)
    _patch(crds, namespace, "tj/cols", {"status": done}, "--subresource=status", check=True)
    crds.kubectl("wait", "-n", namespace, "--for=condition=Succeeded", "tj/cols", "--timeout=20s")


def set_done(status: dict[str, Any]) -> dict[str, Any]:
    from vlm_operator.api import set_condition

    conds = set_condition(status["conditions"], new_condition("Succeeded", True, "Completed"))
    return {**status, "phase": "Succeeded", "conditions": conds}


def test_checkpoint_and_shape_columns(crds, namespace: str) -> None:
    ckpt = merge(BASES["Checkpoint"](), {"metadata": {"name": "c-cols"}})
    crds.kubectl("create", "-n", namespace, "-f", "-", input=as_yaml(ckpt))
    status = {
        "phase": "Promoted",
        "verified": True,
        "sizeBytes": 1024,
        "promotion": {
            "outputModel": "colour-sft",
            "uri": "pvc://models/colour-sft",
            "promotedAt": "2025-01-01T00:00:00Z",
        },
        "conditions": [new_condition("Promoted", True, "PromotionSucceeded")],
        "eval": {
            "step": 10,
            "metric": "eval_loss",
            "mode": "min",
            "value": 0.25,
            "metrics": {"eval_loss": 0.25, "eval_exact_match": 0.75},
        },
    }
    _patch(crds, namespace, "ckpt/c-cols", {"status": status}, "--subresource=status", check=True)
    table = crds.kubectl("get", "ckpt", "-n", namespace).stdout.splitlines()
    header = ["NAME", "JOB", "TYPE", "STEP", "PHASE", "EVAL", "OUTPUT", "MODEL", "AGE"]
    assert table[0].split() == header
    row = ["c-cols", "case-job", "lora", "10", "Promoted", "0.25", "colour-sft"]
    assert table[1].split()[:7] == row
    wide = crds.kubectl("get", "ckpt", "-n", namespace, "-o", "wide").stdout.splitlines()
    assert "METRIC" in wide[0].split() and "eval_loss" in wide[1].split()

    name = f"cols-{secrets.token_hex(3)}"
    shape = merge(BASES["TrainingShape"](), {"metadata": {"name": name}})
    crds.kubectl("create", "-f", "-", input=as_yaml(shape))
    try:
        crds.kubectl(
            "patch",
            "ts",
            name,
            "--subresource=status",
            "--type",
            "merge",
            "-p",
            json.dumps(
                {"status": {"version": "v1", "conditions": [new_condition("Ready", True, "Valid")]}}
            ),
        )
        table = crds.kubectl("get", "ts", name).stdout.splitlines()
        assert table[0].split() == ["NAME", "GPUS", "NODES", "CONTEXT", "MODEL", "READY", "AGE"]
        assert table[1].split()[:6] == [name, "1", "1", "4096", "Qwen/Qwen3-VL-8B-Instruct", "True"]
    finally:
        crds.kubectl("delete", "ts", name, "--wait=false", check=False)


def _explain(cluster, path: str) -> str:
    # The apiserver publishes a new CRD's OpenAPI a moment after it is Established.
    deadline = time.monotonic() + 60
    while True:
        p = cluster.kubectl("explain", path, check=False)
        if p.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(1)
    if p.returncode:
        raise subprocess.CalledProcessError(p.returncode, p.args, p.stdout, p.stderr)
    return " ".join(p.stdout.split())


def test_explain_shows_the_models_descriptions(crds) -> None:
    out = _explain(crds, "trainerjob.spec.hyperparameters")
    for alias, info in Hyperparameters.model_fields.items():
        name = info.alias or alias
        assert name in out, name
        first_words = " ".join(info.description.split()[:5])
        assert first_words in out, (name, first_words)
    assert "GROUP: vlmtrain.dev" in out or "vlmtrain.dev" in out
    for path, words in (
        ("trainingshape.spec.maxContext", "Longest sequence in tokens"),
        ("checkpoint.spec.promote.outputModel", "Name of the promoted model"),
        ("tj.spec.hyperparameters.rl.completionsPerPrompt", "GRPO group size"),
        ("trainerjob.spec.initFrom", "Start from a Checkpoint or a promoted model"),
        ("trainerjob.spec.initFrom.checkpoint", "A verified Checkpoint in the job's namespace"),
        ("trainerjob.spec.promote.select", "final: the job's final checkpoint. best:"),
    ):
        assert words in _explain(crds, path), path
