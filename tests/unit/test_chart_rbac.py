"""The chart's RBAC is exactly the operator's API use: no wildcard, no Secret, no escalation
verb, and everything the operator puts into the per-job Role it creates (RBAC only lets a subject
grant what it holds itself).

The expected access is derived, not written out: the operator's own calls are the table
`kube.ACCESS` (every request goes through it, an unlisted call raises), kopf's are the watches
registered in main.py (list, watch) plus `main.KOPF_ACCESS`, and the per-job Role is what
`builders.rbac.trainer_rbac` builds. The comparison runs both ways: the chart grants nothing the
operator does not call, and everything it calls.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import kopf
import pytest
import vlm_operator.main as operator_main
from vlm_operator import kube
from vlm_operator.builders.rbac import trainer_rbac

from tests.unit.chart import REPO, find, one, template

pytestmark = pytest.mark.unit

Access = set[tuple[str, str, str]]  # (apiGroup, resource, verb)


def grants(*groups_resources_verbs: tuple[str, list[str], list[str]]) -> Access:
    return {(g, r, v) for g, rs, vs in groups_resources_verbs for r in rs for v in vs}


def group_resource(key: str) -> tuple[str, str]:
    """kube.ACCESS key ('Kind' or 'Kind/sub') -> (apiGroup, resource)."""
    kind, _, sub = key.partition("/")
    prefix, plural, _ = kube.KINDS[kind]
    group = "" if prefix.startswith("/api/") else prefix.split("/")[2]
    return group, f"{plural}/{sub}" if sub else plural


def kube_access(*, lease: bool) -> Access:
    return {
        (*group_resource(key), verb)
        for key, verbs in kube.ACCESS.items()
        if (key == "Lease") == lease
        for verb in verbs
    }


def kopf_access() -> Access:
    watched = {
        (h.selector.group or "", h.selector.any_name)
        for h in kopf.get_default_registry()._watching.get_all_handlers()
    }
    assert len(watched) == 5, watched  # our three kinds, Jobs, pods: main.py's decorators
    return {(g, r, v) for g, r in watched for v in ("list", "watch")} | set(
        operator_main.KOPF_ACCESS
    )


def role_access(role: dict[str, Any]) -> Access:
    return {
        (g, r, v)
        for rule in role["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }


_JOB = {
    "apiVersion": "vlmtrain.dev/v1alpha1",
    "kind": "TrainerJob",
    "metadata": {"name": "j", "namespace": "ns", "uid": "u"},
    "spec": {"shape": "s"},
}
#: What the operator grants each job's trainer in the Role it creates (resourceNames aside).
PER_JOB_ROLE: Access = role_access(next(o for o in trainer_rbac(_JOB) if o["kind"] == "Role"))
NETWORK_POLICY: Access = grants(
    ("networking.k8s.io", ["networkpolicies"], ["get", "create", "patch"])
)
#: The operator's whole cluster-wide API use, derived as the module doc says.
OPERATOR: Access = kube_access(lease=False) | kopf_access() | PER_JOB_ROLE
LEASE: Access = kube_access(lease=True)


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
    granted = access(one(single, "ClusterRole")["rules"])
    assert not granted - OPERATOR, f"granted but never called: {sorted(granted - OPERATOR)}"
    assert not OPERATOR - granted, f"called but not granted: {sorted(OPERATOR - granted)}"


def test_without_network_policies_the_cluster_role_drops_them(tmp_path: Path) -> None:
    docs = template(tmp_path, {"networkPolicy": {"enabled": False}})
    assert access(one(docs, "ClusterRole")["rules"]) == OPERATOR - NETWORK_POLICY


def test_replicas_get_only_their_lease_in_the_release_namespace(
    single: list[dict[str, Any]], peered: list[dict[str, Any]]
) -> None:
    assert not find(single, "Role")
    assert access(one(peered, "ClusterRole")["rules"]) == OPERATOR
    role, binding = one(peered, "Role"), one(peered, "RoleBinding")
    assert role["metadata"]["namespace"] == "vlm-system"
    assert access(role["rules"]) == LEASE
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"][0]["name"] == one(peered, "ServiceAccount")["metadata"]["name"]


#: kube.<function> -> the verb it sends (the first argument is the kind, where it is a literal).
_CALL_VERBS = {"get": "get", "list_objects": "list", "json_patch": "patch", "delete": "delete"}


def test_every_literal_call_site_is_in_the_access_table() -> None:
    """A cheap static check before any cluster: kube.get("Kind", ...) and friends in the
    operator's code name a (kind, verb) that kube.ACCESS has (apply/create take the kind from
    the object: their builders' kinds are covered by the integration tests through `_check`)."""
    found = 0
    for path in (REPO / "operator" / "vlm_operator").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "kube"
                and node.func.attr in _CALL_VERBS
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                continue
            kind, verb = node.args[0].value, _CALL_VERBS[node.func.attr]
            assert verb in kube.ACCESS.get(kind, ()), f"{path.name}: kube.{node.func.attr}({kind})"
            found += 1
    assert found >= 10  # the scan really sees the reconcilers' calls


def test_an_unlisted_call_is_refused_before_it_is_sent() -> None:
    with pytest.raises(PermissionError, match="delete Pod"):
        kube.delete("Pod", "ns", "p")


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


def test_every_child_kind_may_be_read_created_and_applied() -> None:
    """kube.apply reads a child before writing it (ownership by UID), creates it when absent
    and server-side applies it otherwise: ACCESS must allow all three for every kind that
    admission makes (a missing verb fails only at run time, inside a reconcile)."""
    from vlm_operator.reconcile.job import admission
    from vlm_operator.settings import Settings

    from tests.unit.manifests import SHAPE, TJ

    blocked, children = admission(TJ, SHAPE, Settings(network_policy=True))
    assert blocked is None, blocked
    kinds = {c["kind"] for c in children} - {"Job"}  # the Job is created once, never applied
    assert {"ConfigMap", "Role", "RoleBinding", "ServiceAccount", "NetworkPolicy"} <= kinds
    for kind in kinds:
        assert {"get", "create", "patch"} <= kube.ACCESS[kind], kind
    assert {"get", "create"} <= kube.ACCESS["Job"]
