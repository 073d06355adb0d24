"""The Flux CEL health checks in deploy/flux/ evaluated by the apiserver's own CEL (cel-go, the
library Flux uses), on the same test objects as the Argo CD Lua checks, and both tools must reach
the same verdict: Argo CD Healthy = Flux Current, Degraded = Failed, anything else = InProgress.

How an expression is evaluated: a ValidatingAdmissionPolicy holds it (with `object.` in front of
the object's fields) and denies a server-side dry-run create of a probe object when it is false.
The probe kind keeps unknown fields and has no status subresource, so the fixture's status is
there on create; the apiserver sets `metadata.generation` to 1 on create, so the fixture's
generation travels in `fixture.generation` instead (untyped, like every field Flux sees). An
expression that errors (a field that is not there yet) counts as not true, as Flux keeps waiting
on it.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.local import LocalCluster

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
ARGO = REPO / "deploy" / "argocd" / "vlmtrain.dev"
FLUX = REPO / "deploy" / "flux" / "kustomization-health.yaml"
GROUP = "celprobe.vlmtrain.test"

PROBE_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": f"probes.{GROUP}"},
    "spec": {
        "group": GROUP,
        "scope": "Namespaced",
        "names": {
            "kind": "Probe",
            "plural": "probes",
            "singular": "probe",
            "listKind": "ProbeList",
        },
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            # The fields the expressions read are declared: once the apiserver
                            # has the schema, CEL type-checks against it, and a field it cannot
                            # see in a preserve-unknown-fields object is a compile error.
                            "fixture": {
                                "type": "object",
                                "properties": {"generation": {"type": "integer"}},
                                "x-kubernetes-preserve-unknown-fields": True,
                            },
                            "spec": {
                                "type": "object",
                                "properties": {
                                    "promote": {
                                        "type": "object",
                                        "x-kubernetes-preserve-unknown-fields": True,
                                    }
                                },
                                "x-kubernetes-preserve-unknown-fields": True,
                            },
                            "status": {
                                "type": "object",
                                "properties": {
                                    "observedGeneration": {"type": "integer"},
                                    "phase": {"type": "string"},
                                    "conditions": {
                                        "type": "array",
                                        "items": {
                                            "type": "object",
                                            "properties": {
                                                k: {"type": "string"}
                                                for k in ("type", "status", "reason", "message")
                                            },
                                            "x-kubernetes-preserve-unknown-fields": True,
                                        },
                                    },
                                },
                                "x-kubernetes-preserve-unknown-fields": True,
                            },
                        },
                    }
                },
            }
        ],
    },
}


def to_admission_cel(expr: str) -> str:
    """A Flux expression (fields of the object as variables) as a policy expression."""
    expr = re.sub(r"(?<![\w.])metadata\.generation\b", "object.fixture.generation", expr)
    return re.sub(r"(?<![\w.'])(status|spec)\b", r"object.\1", expr)


def flux_checks() -> dict[str, dict[str, str]]:
    kustomization = yaml.safe_load(FLUX.read_text())
    out = {}
    for check in kustomization["spec"]["healthCheckExprs"]:
        assert check["apiVersion"] == "vlmtrain.dev/v1alpha1"
        out[check["kind"]] = {k: check[k] for k in ("inProgress", "failed", "current")}
    return out


def policy(name: str, expression: str) -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": name},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {
                    "resourceRules": [
                        {
                            "apiGroups": [GROUP],
                            "apiVersions": ["v1"],
                            "operations": ["CREATE"],
                            "resources": ["probes"],
                        }
                    ]
                },
                "validations": [{"expression": expression, "message": f"{name} is false"}],
            },
        },
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": name},
            "spec": {
                "policyName": name,
                "validationActions": ["Deny"],
                "matchResources": {"objectSelector": {"matchLabels": {"celprobe": name}}},
            },
        },
    ]


def probe(name: str, namespace: str, check: str, fixture: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/v1",
        "kind": "Probe",
        "metadata": {"name": name, "namespace": namespace, "labels": {"celprobe": check}},
        "fixture": {"generation": fixture["metadata"].get("generation", 1)},
        "spec": fixture.get("spec", {}),
        **({"status": fixture["status"]} if "status" in fixture else {}),
    }


def dry_run_denials(cluster: LocalCluster, objects: list[dict[str, Any]]) -> str:
    p = cluster.kubectl(
        "create", "--dry-run=server", "-o", "name", "-f", "-",
        input=yaml.safe_dump_all(objects), check=False, timeout=120,
    )  # fmt: skip
    return p.stderr


@pytest.fixture(scope="module")
def policies(cluster: LocalCluster) -> dict[tuple[str, str], str]:
    """One admission policy per (kind, Flux state) expression, active."""
    cluster.kubectl("apply", "-f", "-", input=json.dumps(PROBE_CRD))
    cluster.kubectl("wait", "--for=condition=Established", f"crd/probes.{GROUP}")
    # Policies are type-checked against the published OpenAPI schema, which lags behind
    # Established; a policy created before it appears is checked against nothing and warns.
    deadline = time.monotonic() + 30
    while (
        '"Probe"'
        not in cluster.kubectl("get", "--raw", f"/openapi/v3/apis/{GROUP}/v1", check=False).stdout
    ):
        assert time.monotonic() < deadline, "the probe CRD's schema was never published"
        time.sleep(0.3)
    names: dict[tuple[str, str], str] = {}
    objects: list[dict[str, Any]] = []
    for kind, exprs in flux_checks().items():
        for state, expr in exprs.items():
            name = f"flux-{kind.lower()}-{state.lower()}"
            names[kind, state] = name
            objects += policy(name, to_admission_cel(expr))
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(objects))
    yield names
    cluster.kubectl("delete", "-f", "-", input=yaml.safe_dump_all(objects), check=False)


def wait_active(cluster: LocalCluster, namespace: str, names: list[str]) -> None:
    """Policies take effect a moment after creation: wait until each denies a probe that makes
    every expression fail (no status, no spec)."""
    deadline = time.monotonic() + 30
    while True:
        empty = {"metadata": {"generation": 1}}
        objs = [probe(f"warm-{n}", namespace, n, empty) for n in names]
        denied = dry_run_denials(cluster, objs)
        if all(f"warm-{n}" in denied or f"{n} is false" in denied for n in names):
            return
        assert time.monotonic() < deadline, f"policies not active after 30s: {denied}"
        time.sleep(0.5)


def flux_verdict(inprogress: bool, failed: bool, current: bool) -> str:
    if inprogress:
        return "InProgress"
    if failed:
        return "Failed"
    return "Current" if current else "InProgress"


ARGO_TO_FLUX = {"Healthy": "Current", "Degraded": "Failed"}


def test_flux_and_argo_cd_agree_on_every_fixture(
    cluster: LocalCluster, policies: dict[tuple[str, str], str], namespace: str
) -> None:
    wait_active(cluster, namespace, list(policies.values()))
    cases = []  # (kind, fixture name, expected Flux verdict)
    objects = []
    for kind in ("TrainerJob", "Checkpoint", "TrainingShape"):
        tests = yaml.safe_load((ARGO / kind / "health_test.yaml").read_text())["tests"]
        for case in tests:
            fixture = yaml.safe_load((ARGO / kind / case["inputPath"]).read_text())
            stem = Path(case["inputPath"]).stem
            expected = ARGO_TO_FLUX.get(case["healthStatus"]["status"], "InProgress")
            cases.append((kind, stem, expected))
            for state in ("inProgress", "failed", "current"):
                name = f"{kind.lower()}-{stem}-{state.lower()}"
                objects.append(probe(name, namespace, policies[kind, state], fixture))
    denied = dry_run_denials(cluster, objects)
    errors = []
    for kind, stem, expected in cases:
        truth = {
            state: f'"{kind.lower()}-{stem}-{state.lower()}"' not in denied
            and f"/{kind.lower()}-{stem}-{state.lower()}" not in denied
            for state in ("inProgress", "failed", "current")
        }
        got = flux_verdict(truth["inProgress"], truth["failed"], truth["current"])
        if got != expected:
            errors.append(f"{kind}/{stem}: Flux {got} ({truth}), Argo CD means {expected}")
    assert not errors, "\n".join(errors) + "\n" + denied


def test_expressions_compile(cluster: LocalCluster, policies: dict[tuple[str, str], str]) -> None:
    """The apiserver type-checks policy expressions on create and reports errors in status."""
    deadline = time.monotonic() + 20
    for name in policies.values():
        while True:
            vap = json.loads(
                cluster.kubectl("get", "validatingadmissionpolicy", name, "-o", "json").stdout
            )
            status = vap.get("status") or {}
            if status.get("observedGeneration") == vap["metadata"]["generation"]:
                break
            assert time.monotonic() < deadline, f"{name} not type-checked"
            time.sleep(0.3)
        warnings = (status.get("typeChecking") or {}).get("expressionWarnings") or []
        assert not warnings, (name, warnings)
