"""The Helm chart without a cluster: lint, what `helm template` renders with the defaults and with
every optional value on, the operator's runtime contract (args, env, ports, image), the pod's
hardening, values.yaml documentation and values.schema.json.

Expectations are written from the operator's contract (issue 7 and the lead's brief), not copied
from the templates, so a template regression fails here.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from vlm_operator.api.common import DOT_DOT_RE, LOCATION_RE

from tests.unit.chart import ALL_ON, CHART, REPO, find, helm, one, template, values_file

pytestmark = pytest.mark.unit

APP_VERSION = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
SCHEMA = json.loads((CHART / "values.schema.json").read_text())
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())


@pytest.fixture(scope="module")
def defaults(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return template(tmp_path_factory.mktemp("defaults"))


@pytest.fixture(scope="module")
def all_on(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return template(tmp_path_factory.mktemp("all-on"), ALL_ON)


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["operator"]
    return pod["containers"][0]


def env_of(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}


# --- lint and what renders ----------------------------------------------------------------------


@pytest.mark.parametrize("values", [None, ALL_ON], ids=["defaults", "all-on"])
def test_helm_lint_is_clean(tmp_path: Path, values: dict[str, Any] | None) -> None:
    args = ["lint", "--strict", str(CHART)]
    if values:
        args += ["--values", str(values_file(tmp_path, values))]
    out = helm(*args).stdout
    assert "0 chart(s) failed" in out
    assert "[WARNING]" not in out and "[ERROR]" not in out


def test_defaults_render_only_the_core_objects(defaults: list[dict[str, Any]]) -> None:
    kinds = sorted(d["kind"] for d in defaults)
    assert kinds == sorted(
        ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Service", "Deployment"]
    )
    assert not find(defaults, "ServiceMonitor")  # off by default, and then not rendered at all
    assert not find(defaults, "TrainingShape")


def test_all_on_renders_every_optional_object(all_on: list[dict[str, Any]]) -> None:
    monitor = one(all_on, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kps"
    endpoint = monitor["spec"]["endpoints"][0]
    assert endpoint == {
        "port": "metrics",
        "path": "/metrics",
        "interval": "30s",
        "scrapeTimeout": "10s",
    }
    service = one(all_on, "Service")
    assert monitor["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]

    shapes = {s["metadata"]["name"]: s for s in find(all_on, "TrainingShape")}
    assert set(shapes) == {"tiny-cpu-from-values", "qwen3-vl-8b-from-values"}
    tiny = shapes["tiny-cpu-from-values"]
    assert tiny["apiVersion"] == "vlmtrain.dev/v1alpha1"
    assert tiny["spec"] == ALL_ON["shapes"][0]["spec"]
    assert tiny["metadata"]["labels"]["tier"] == "demo"
    assert "namespace" not in tiny["metadata"]  # cluster-scoped

    # Two replicas: a Role for their Lease in the release namespace, no kopf peering object.
    assert one(all_on, "Role")["metadata"]["name"] == "vlm-vlm-trainer-operator-leader-election"
    assert not find(all_on, "KopfPeering") and not find(all_on, "ClusterKopfPeering")


def test_replicas_elect_a_leader_on_a_lease(tmp_path: Path) -> None:
    docs = template(tmp_path, {"replicaCount": 3})
    args = container(docs)["args"]
    assert "--leader-elect" in args and "--standalone" in args
    assert "--lease-name=vlm-vlm-trainer-operator" in args
    assert "--lease-seconds=15" in args
    assert one(docs, "Deployment")["spec"]["strategy"]["type"] == "RollingUpdate"
    role = one(docs, "Role")
    assert role["rules"] == [
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "verbs": ["get", "create", "update"],
        }
    ]


def test_network_policy_flag_reaches_the_operator(tmp_path: Path) -> None:
    on = env_of(container(template(tmp_path)))
    assert on["VLM_NETWORK_POLICY"] == "true"  # on by default
    off = env_of(container(template(tmp_path, {"networkPolicy": {"enabled": False}})))
    assert off["VLM_NETWORK_POLICY"] == "false"


def test_network_policy_flag_is_a_boolean(tmp_path: Path) -> None:
    bad = helm(
        "template",
        "vlm",
        str(CHART),
        "--set",
        "networkPolicy.enabled=maybe",
        check=False,
    )
    assert bad.returncode != 0 and "networkPolicy" in bad.stderr


def test_namespaced_objects_name_the_release_namespace(all_on: list[dict[str, Any]]) -> None:
    cluster_scoped = {"ClusterRole", "ClusterRoleBinding", "TrainingShape"}
    for doc in all_on:
        if doc["kind"] in cluster_scoped:
            assert "namespace" not in doc["metadata"], doc["kind"]
        else:
            assert doc["metadata"]["namespace"] == "vlm-system", doc["kind"]


def test_every_object_carries_the_standard_labels(all_on: list[dict[str, Any]]) -> None:
    for doc in all_on:
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == "vlm", doc["kind"]
        assert labels["app.kubernetes.io/managed-by"] == "Helm", doc["kind"]
        assert labels["app.kubernetes.io/part-of"] == "vlm-trainer-operator", doc["kind"]


# --- the operator's runtime contract -----------------------------------------------------------


def test_defaults_follow_the_operator_contract(defaults: list[dict[str, Any]]) -> None:
    c = container(defaults)
    assert c["image"] == f"vlmtrain/vlm-operator:{APP_VERSION}"
    assert "command" not in c  # the image's entrypoint (vlm-operator) runs
    assert c["args"] == [
        "--all-namespaces",
        "--standalone",
        "--liveness=http://0.0.0.0:8080/healthz",
        "--metrics-port=9090",
    ]
    assert env_of(c) == {
        "VLM_TRAINER_IMAGE": f"vlmtrain/vlm-trainer:{APP_VERSION}",
        "VLM_CHECKPOINT_STORAGE": "pvc://vlm-checkpoints",
        "VLM_MODEL_STORAGE": "pvc://vlm-models/models",
        "VLM_LOG_FORMAT": "json",
        "VLM_NETWORK_POLICY": "true",
        "VLM_OPERATOR_NAMESPACE": {"fieldRef": {"fieldPath": "metadata.namespace"}},
    }
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"health": 8080, "metrics": 9090}
    deployment = one(defaults, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    # One standalone kopf at a time: a rolling update would briefly run two.
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == one(defaults, "ServiceAccount")["metadata"]["name"]


def test_all_on_values_reach_the_container(all_on: list[dict[str, Any]]) -> None:
    c = container(all_on)
    assert c["image"] == "vlmtrain/vlm-operator@sha256:" + "a" * 64
    assert c["args"] == [
        "--namespace=team-a",
        "--namespace=team-b",
        "--standalone",
        "--leader-elect",
        "--lease-name=vlm-leader",
        "--lease-seconds=20",
        "--liveness=http://0.0.0.0:18080/healthz",
        "--metrics-port=19090",
        "--verbose",
    ]
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {
        "health": 18080,
        "metrics": 19090,
    }
    assert c["livenessProbe"]["httpGet"]["port"] == "health"
    env = env_of(c)
    assert env["VLM_TRAINER_IMAGE"] == "vlmtrain/vlm-trainer:0.1.0-cuda"
    assert env["VLM_CHECKPOINT_STORAGE"] == "pvc://ckpt/team-a"
    assert env["VLM_MODEL_STORAGE"] == "file:///models"
    assert env["VLM_LOG_FORMAT"] == "text"
    assert env["HTTPS_PROXY"] == "http://proxy:3128"
    deployment = one(all_on, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]
    assert pod["metadata"]["labels"]["team"] == "ml-platform"
    assert pod["metadata"]["annotations"] == {"example.com/owner": "ml-platform"}
    spec = pod["spec"]
    assert spec["serviceAccountName"] == "vlm-op"
    assert spec["imagePullSecrets"] == [{"name": "registry"}]
    assert spec["priorityClassName"] == "ml-platform-critical"
    assert spec["nodeSelector"] == ALL_ON["nodeSelector"]
    assert spec["tolerations"] == ALL_ON["tolerations"]
    assert spec["affinity"] == ALL_ON["affinity"]
    assert spec["securityContext"]["runAsUser"] == 1000
    assert one(all_on, "ServiceAccount", "vlm-op")["metadata"]["annotations"] == {
        "example.com/role": "trainer"
    }


def test_metrics_service_selects_the_operator_pods(defaults: list[dict[str, Any]]) -> None:
    service = one(defaults, "Service")
    assert service["metadata"]["name"] == "vlm-vlm-trainer-operator-metrics"
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"}
    ]
    pod_labels = one(defaults, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    selector = one(defaults, "Deployment")["spec"]["selector"]["matchLabels"]
    assert service["spec"]["selector"] == selector


# --- hardening ------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["defaults", "all_on"])
def test_pod_is_hardened(which: str, request: pytest.FixtureRequest) -> None:
    docs = request.getfixturevalue(which)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["runAsGroup"] > 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "hostNetwork" not in pod and "hostPID" not in pod and "hostIPC" not in pod
    c = container(docs)
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["privileged"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["runAsNonRoot"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    # A writable /tmp on an emptyDir, since the root filesystem is read-only.
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]
    assert c["resources"]["limits"]["memory"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    for probe in ("livenessProbe", "readinessProbe"):
        get = c[probe]["httpGet"]
        assert get["path"] == "/healthz"
        assert get["port"] == "health"
        assert ports[get["port"]] == (18080 if which == "all_on" else 8080)


def test_security_context_is_not_configurable_away(tmp_path: Path) -> None:
    """Only the uid/gid are values; the schema refuses anything else under securityContext."""
    bad = {"securityContext": {"runAsUser": 1000, "readOnlyRootFilesystem": False}}
    p = helm("template", "x", str(CHART), "--values", str(values_file(tmp_path, bad)), check=False)
    assert p.returncode != 0
    assert "readOnlyRootFilesystem" in p.stderr


# --- values.yaml and values.schema.json --------------------------------------------------------


def test_chart_versions_match_the_project() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert chart["apiVersion"] == "v2"
    assert chart["appVersion"] == project["version"] == "0.1.0"


def _schema_at(path: list[str]) -> dict[str, Any] | None:
    node: dict[str, Any] | None = SCHEMA
    for part in path:
        if node is None or "properties" not in node:
            return None
        node = node["properties"].get(part)
    return node


def test_every_value_is_commented() -> None:
    """Each key of values.yaml that the schema describes field by field (so not the insides of
    free-form maps such as resources.requests) has a comment line right above it."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, str]] = []
    missing = []
    for i, line in enumerate(lines):
        m = re.match(r"^( *)([A-Za-z][A-Za-z0-9_]*):", line)
        if not m:
            continue
        indent, key = len(m.group(1)), m.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        parent = [k for _, k in stack]
        stack.append((indent, key))
        parent_schema = _schema_at(parent)
        if parent_schema is None or "properties" not in parent_schema:
            continue  # inside a free-form value
        if not lines[i - 1].strip().startswith("#"):
            missing.append(".".join([*parent, key]))
    assert not missing, f"values.yaml keys without a comment: {missing}"


def _keys(node: dict[str, Any], schema: dict[str, Any], path: str = "") -> list[str]:
    out = []
    for key, value in node.items():
        sub = schema.get("properties", {}).get(key)
        out.append(f"{path}{key}")
        if isinstance(value, dict) and sub and "properties" in sub:
            out += _keys(value, sub, f"{path}{key}.")
    return out


def _schema_keys(schema: dict[str, Any], path: str = "") -> list[str]:
    out = []
    for key, sub in schema.get("properties", {}).items():
        out.append(f"{path}{key}")
        if "properties" in sub:
            out += _schema_keys(sub, f"{path}{key}.")
    return out


def test_schema_and_values_describe_the_same_keys() -> None:
    in_values = set(_keys(VALUES, SCHEMA))
    in_schema = set(_schema_keys(SCHEMA)) - {"global"}
    assert in_values == in_schema


def test_schema_storage_rules_are_the_api_rules() -> None:
    """storage.* take the same URIs as TrainerJob.spec.checkpointing.storage (one regex)."""
    for key in ("checkpoints", "models"):
        node = SCHEMA["properties"]["storage"]["properties"][key]
        assert node["pattern"] == LOCATION_RE
        assert node["not"] == {"pattern": DOT_DOT_RE}


BAD_VALUES = [
    ({"logFormat": "xml"}, "/logFormat"),
    ({"storage": {"checkpoints": "s3://bucket/ckpt"}}, "/storage/checkpoints"),
    ({"storage": {"models": "pvc://models/../etc"}}, "/storage/models"),
    ({"replicaCount": 0}, "/replicaCount"),
    ({"securityContext": {"runAsUser": 0}}, "/securityContext/runAsUser"),
    ({"image": {"digest": "sha256:nothex"}}, "/image/digest"),
    ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    ({"watchNamespaces": ["Team_A"]}, "/watchNamespaces/0"),
    ({"metrics": {"service": {"port": 70000}}}, "/metrics/service/port"),
    ({"ports": {"health": 0}}, "/ports/health"),
    ({"metrics": {"serviceMonitor": {"interval": "often"}}}, "/metrics/serviceMonitor/interval"),
    ({"shapes": [{"name": "no-spec"}]}, "/shapes/0"),
    (
        {"shapes": [{"name": "Bad_Name", "spec": {"baseModel": "a/b", "maxContext": 16}}]},
        "/shapes/0/name",
    ),
    ({"replicas": 2}, "replicas"),  # a typo of replicaCount
]


@pytest.mark.parametrize(("values", "where"), BAD_VALUES, ids=[w for _, w in BAD_VALUES])
def test_schema_rejects_bad_values(tmp_path: Path, values: dict[str, Any], where: str) -> None:
    p = helm(
        "template", "x", str(CHART), "--values", str(values_file(tmp_path, values)), check=False
    )
    assert p.returncode != 0, f"accepted {values}"
    assert where in p.stderr, p.stderr


def test_service_account_name_is_required_when_not_created(tmp_path: Path) -> None:
    values = {"serviceAccount": {"create": False}}
    p = helm(
        "template", "x", str(CHART), "--values", str(values_file(tmp_path, values)), check=False
    )
    assert p.returncode != 0
    assert "serviceAccount.name is required" in p.stderr
    docs = template(tmp_path, {"serviceAccount": {"create": False, "name": "existing"}})
    assert not find(docs, "ServiceAccount")
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "existing"
    assert one(docs, "ClusterRoleBinding")["subjects"][0]["name"] == "existing"


def test_notes_tell_the_user_what_to_do_next() -> None:
    out = helm("install", "vlm", str(CHART), "--dry-run=client", "--namespace", "ml").stdout
    notes = out[out.index("NOTES:") :]
    assert "rollout status deployment/vlm-vlm-trainer-operator" in notes
    assert "kubectl get trainingshapes" in notes
    assert 'PersistentVolumeClaim "vlm-checkpoints"' in notes
    assert 'PersistentVolumeClaim "vlm-models"' in notes
    assert "kubectl get trainerjobs" in notes and "--for=condition=Succeeded" in notes
    assert "kubectl get checkpoints" in notes and "outputModel" in notes
    assert "keeps the CRDs" in notes
