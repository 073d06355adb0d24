"""The chart's ClusterRole is exactly the operator's API use: no wildcard, no Secret, no
escalation verb, and everything the operator puts into the per-job Role it creates (RBAC only
lets a subject grant what it holds itself).

The expected rules are the operator's contract, written out here by hand: if the operator starts
making a new call, this list, templates/clusterrole.yaml and the integration test's `auth can-i`
checks change together.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.unit.chart import one, template

pytestmark = pytest.mark.unit

Access = set[tuple[str, str, str]]  # (apiGroup, resource, verb)


def grants(*groups_resources_verbs: tuple[str, list[str], list[str]]) -> Access:
    return {(g, r, v) for g, rs, vs in groups_resources_verbs for r in rs for v in vs}


WATCH = ["get", "list", "watch"]
MANAGE = [*WATCH, "create", "patch", "delete"]
KINDS = ["trainingshapes", "trainerjobs", "checkpoints"]

#: The operator's API use (the lead's contract for issue 7).
OPERATOR: Access = grants(
    ("vlmtrain.dev", KINDS, [*WATCH, "patch"]),
    ("vlmtrain.dev", [f"{k}/status" for k in KINDS], ["get", "patch"]),
    ("vlmtrain.dev", ["checkpoints"], ["create"]),
    ("batch", ["jobs"], MANAGE),
    ("", ["configmaps", "services", "serviceaccounts"], MANAGE),
    ("", ["pods"], WATCH),
    ("", ["events"], ["create", "patch"]),
    ("events.k8s.io", ["events"], ["create", "patch"]),
    ("rbac.authorization.k8s.io", ["roles", "rolebindings"], MANAGE),
    ("apiextensions.k8s.io", ["customresourcedefinitions"], WATCH),
    ("", ["namespaces"], WATCH),
)
PEERING: Access = grants(("kopf.dev", ["kopfpeerings", "clusterkopfpeerings"], [*WATCH, "patch"]))

#: What the operator grants each job's trainer in the Role it creates (resourceNames aside).
PER_JOB_ROLE: Access = grants(
    ("vlmtrain.dev", ["trainerjobs"], ["get"]),
    ("vlmtrain.dev", ["trainerjobs/status"], ["get", "patch"]),
    ("vlmtrain.dev", ["checkpoints"], ["create", "get", "patch"]),
)


def access(rules: list[dict[str, Any]]) -> Access:
    out: Access = set()
    for rule in rules:
        assert set(rule) <= {"apiGroups", "resources", "verbs"}, rule  # no resourceNames, URLs
        out |= grants(*((g, rule["resources"], rule["verbs"]) for g in rule["apiGroups"]))
    return out


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return template(tmp_path_factory.mktemp("single"))


@pytest.fixture(scope="module")
def peered(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return template(tmp_path_factory.mktemp("peered"), {"replicaCount": 2})


def test_cluster_role_is_exactly_the_operator_contract(single: list[dict[str, Any]]) -> None:
    assert access(one(single, "ClusterRole")["rules"]) == OPERATOR


def test_peering_adds_only_the_kopf_peering_objects(peered: list[dict[str, Any]]) -> None:
    assert access(one(peered, "ClusterRole")["rules"]) == OPERATOR | PEERING


@pytest.mark.parametrize("which", ["single", "peered"])
def test_no_wildcard_anywhere(which: str, request: pytest.FixtureRequest) -> None:
    role = one(request.getfixturevalue(which), "ClusterRole")
    for rule in role["rules"]:
        for key, values in rule.items():
            assert all("*" not in v for v in values), f"wildcard in {key}: {rule}"
        assert "nonResourceURLs" not in rule
    assert "aggregationRule" not in role


@pytest.mark.parametrize("which", ["single", "peered"])
def test_no_secret_access_and_no_escalation_verbs(
    which: str, request: pytest.FixtureRequest
) -> None:
    granted = access(one(request.getfixturevalue(which), "ClusterRole")["rules"])
    assert not {a for a in granted if a[1] == "secrets"}
    assert not {a for a in granted if a[2] in {"bind", "escalate", "impersonate"}}
    # Nothing that reads pod contents or runs code in them.
    assert not {a for a in granted if a[1] in {"pods/exec", "pods/attach", "pods/log", "nodes"}}


def test_operator_holds_everything_its_per_job_role_grants(single: list[dict[str, Any]]) -> None:
    granted = access(one(single, "ClusterRole")["rules"])
    assert not PER_JOB_ROLE - granted, "the operator cannot grant what it lacks"


def test_binding_gives_the_role_to_the_operator_service_account(
    single: list[dict[str, Any]],
) -> None:
    binding = one(single, "ClusterRoleBinding")
    role = one(single, "ClusterRole")
    account = one(single, "ServiceAccount")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": account["metadata"]["name"],
            "namespace": account["metadata"]["namespace"],
        }
    ]


def test_rbac_can_be_left_to_the_cluster_admin(tmp_path: Path) -> None:
    docs = template(tmp_path, {"rbac": {"create": False}})
    assert not [d for d in docs if d["kind"] in {"ClusterRole", "ClusterRoleBinding"}]
