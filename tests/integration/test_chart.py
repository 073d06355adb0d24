"""The Helm chart on a real kube-apiserver: the rendered manifests pass a server-side dry run,
`helm install`, `helm upgrade` and `helm uninstall` do what they say, and the operator's
ServiceAccount can make exactly the calls the operator makes (`kubectl auth can-i` as that
identity) and nothing that reads Secrets.

The Deployment is not waited on: whether its pod starts depends on the pod runner knowing the
operator image; the end-to-end test runs the operator under the chart's identity.

Every release gets its own name and namespace; cluster-scoped objects (ClusterRole, binding,
shapes) carry the release name, so tests sharing the session cluster do not collide.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.launcher import free_port
from tests.cluster.local import LocalCluster
from tests.unit.chart import ALL_ON, CHART, find, one, template, values_file
from tests.unit.test_chart_rbac import LEASE, OPERATOR, PER_JOB_ROLE

pytestmark = pytest.mark.integration

CRD_NAMES = [
    "trainingshapes.vlmtrain.dev",
    "trainerjobs.vlmtrain.dev",
    "checkpoints.vlmtrain.dev",
]


@pytest.fixture(scope="module")
def chart_crds(cluster: LocalCluster) -> LocalCluster:
    """The chart's CRDs, applied once and serving."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CHART / "crds"))
    cluster.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s", *[f"crd/{n}" for n in CRD_NAMES]
    )
    return cluster


@pytest.fixture(scope="module")
def helm_env(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """helm against the test cluster, with its own config and cache folders."""
    home = tmp_path_factory.mktemp("helm-home")
    return {
        **cluster.env,
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_DATA_HOME": str(home / "data"),
    }


def run_helm(
    cluster: LocalCluster, env: dict[str, str], *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    from tests.unit.chart import helm_bin

    p = subprocess.run(
        [cluster.helm_bin or helm_bin(), *args],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    if check and p.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{p.stdout}\n{p.stderr}")
    return p


def get(cluster: LocalCluster, *args: str) -> dict[str, Any] | None:
    p = cluster.kubectl("get", *args, "-o", "json", check=False)
    if p.returncode != 0:
        assert "NotFound" in p.stderr, p.stderr
        return None
    return json.loads(p.stdout)


def wait_gone(cluster: LocalCluster, refs: list[tuple[str, ...]], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    left = list(refs)
    while left:
        left = [r for r in left if get(cluster, *r) is not None]
        assert not left or time.monotonic() < deadline, f"still present: {left}"
        time.sleep(0.3)


# --- server-side dry run ------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["defaults", "all-on"])
def test_rendered_chart_passes_a_server_side_dry_run(
    chart_crds: LocalCluster, namespace: str, tmp_path: Path, variant: str
) -> None:
    """Every object the chart renders is accepted by the apiserver's validation and admission
    (CRD schemas and CEL rules for the shapes included) without being stored. The ServiceMonitor
    is left out: the local cluster has no prometheus-operator CRDs."""
    values: dict[str, Any] = {}
    if variant == "all-on":
        values = {**ALL_ON, "watchNamespaces": [namespace]}
        values["shapes"] = [
            {**s, "name": f"{s['name']}-{namespace}"} for s in ALL_ON["shapes"]
        ]  # unique per run: shapes are cluster-scoped
    docs = template(tmp_path, values, release=f"dry-{namespace}", namespace=namespace)
    if variant == "all-on":
        assert find(docs, "ServiceMonitor") and find(docs, "Role")
    docs = [d for d in docs if d["kind"] != "ServiceMonitor"]
    manifest = yaml.safe_dump_all(docs, sort_keys=False)
    out = chart_crds.kubectl(
        "apply",
        "--server-side",
        "--dry-run=server",
        "--field-manager=helm-test",
        "-f",
        "-",
        input=manifest,
    ).stdout
    for doc in docs:
        kind = doc["kind"].lower()
        assert f"{kind}" in out.lower() and doc["metadata"]["name"] in out, (kind, out)
    # A dry run stores nothing.
    assert (
        get(chart_crds, "deployment", f"dry-{namespace}-vlm-trainer-operator", "-n", namespace)
        is None
    )


def test_dry_run_reports_an_invalid_shape_from_values(
    chart_crds: LocalCluster, namespace: str, tmp_path: Path
) -> None:
    """values.schema.json only checks a shape's outline; the CRD (and its CEL) checks the rest."""
    shape = {"name": f"bad-{namespace}", "spec": {"baseModel": "a/b", "maxContext": 8}}
    docs = template(tmp_path, {"shapes": [shape]}, release=f"bad-{namespace}", namespace=namespace)
    manifest = yaml.safe_dump(one(docs, "TrainingShape"))
    p = chart_crds.kubectl(
        "apply", "--server-side", "--dry-run=server", "-f", "-", input=manifest, check=False
    )
    assert p.returncode != 0
    assert "spec.maxContext" in p.stderr


# --- install, upgrade, permissions, uninstall ---------------------------------------------------


@pytest.fixture
def release(
    chart_crds: LocalCluster, namespace: str, helm_env: dict[str, str], tmp_path: Path
) -> Iterator[dict[str, Any]]:
    """An installed release watching only its own namespace, with one shape from values.

    All pods of the local cluster share the host's network, so the operator's ports are free
    ones: once the pod runner starts the operator image, it must not collide with another
    operator listening on 8080/9090."""
    name = f"rel-{namespace}"
    ports = {"health": free_port(), "metrics": free_port()}
    values = {
        "watchNamespaces": [namespace],
        "ports": ports,
        "shapes": [
            {
                "name": f"shape-{namespace}",
                "spec": {
                    "baseModel": "pvc://vlm-demo/models/tiny",
                    "maxContext": 1024,
                    "gpusPerNode": 0,
                },
            }
        ],
    }
    path = values_file(tmp_path, values)
    run_helm(chart_crds, helm_env, "install", name, str(CHART), "-n", namespace, "-f", str(path))
    info = {
        "name": name,
        "namespace": namespace,
        "fullname": f"{name}-vlm-trainer-operator",
        "shape": f"shape-{namespace}",
        "values": path,
        "ports": ports,
    }
    yield info
    run_helm(chart_crds, helm_env, "uninstall", name, "-n", namespace, check=False)


def container_env(deployment: dict[str, Any]) -> dict[str, Any]:
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}


def can_i(cluster: LocalCluster, user: str, verb: str, resource: str, *scope: str) -> bool:
    """`kubectl auth can-i` as ``user``; ``resource`` is plural[.group][/subresource] (kubectl
    itself reads TYPE/NAME there, so a subresource goes to --subresource)."""
    base, _, sub = resource.partition("/")
    extra = [f"--subresource={sub}"] if sub else []
    p = cluster.kubectl("auth", "can-i", verb, base, *extra, f"--as={user}", *scope, check=False)
    answer = p.stdout.strip()
    assert answer in {"yes", "no"}, (verb, resource, p.stdout, p.stderr)
    return answer == "yes"


def resource_arg(group: str, resource: str) -> str:
    """plural[.group][/subresource] for ``can_i``."""
    base, _, sub = resource.partition("/")
    name = f"{base}.{group}" if group else base
    return f"{name}/{sub}" if sub else name


def check_all(
    cluster: LocalCluster, user: str, access: set[tuple[str, str, str]], *scope: str
) -> dict[tuple[str, str, str], bool]:
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = pool.map(
            lambda a: can_i(cluster, user, a[2], resource_arg(a[0], a[1]), *scope), sorted(access)
        )
        return dict(zip(sorted(access), answers, strict=True))


def test_install_upgrade_uninstall(
    chart_crds: LocalCluster, release: dict[str, Any], helm_env: dict[str, str], tmp_path: Path
) -> None:
    cluster, ns, full = chart_crds, release["namespace"], release["fullname"]

    # install: every object exists, as rendered.
    deployment = get(cluster, "deployment", full, "-n", ns)
    assert deployment is not None
    assert container_env(deployment)["VLM_LOG_FORMAT"] == "json"
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    assert c["args"][:2] == [f"--namespace={ns}", "--standalone"]
    health, metrics = release["ports"]["health"], release["ports"]["metrics"]
    assert f"--liveness=http://0.0.0.0:{health}/healthz" in c["args"]
    assert f"--metrics-port={metrics}" in c["args"]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == full
    assert get(cluster, "serviceaccount", full, "-n", ns) is not None
    assert get(cluster, "service", f"{full}-metrics", "-n", ns) is not None
    assert get(cluster, "clusterrole", full) is not None
    assert get(cluster, "clusterrolebinding", full) is not None
    shape = get(cluster, "trainingshape", release["shape"])
    assert shape is not None and shape["spec"]["maxContext"] == 1024
    assert shape["spec"]["gpuResource"] == "nvidia.com/gpu"  # CRD defaults applied
    generation = deployment["metadata"]["generation"]

    # upgrade: changed values reach the objects.
    upgraded = {
        "watchNamespaces": [ns],
        "ports": release["ports"],
        "logFormat": "text",
        "storage": {"checkpoints": "pvc://other-claim/ckpt"},
        "replicaCount": 2,
        "shapes": [
            {
                "name": release["shape"],
                "spec": {
                    "baseModel": "pvc://vlm-demo/models/tiny",
                    "maxContext": 2048,
                    "gpusPerNode": 0,
                },
            }
        ],
    }
    path = values_file(tmp_path, upgraded)
    run_helm(cluster, helm_env, "upgrade", release["name"], str(CHART), "-n", ns, "-f", str(path))
    deployment = get(cluster, "deployment", full, "-n", ns)
    assert deployment is not None
    assert deployment["metadata"]["generation"] > generation
    env = container_env(deployment)
    assert env["VLM_LOG_FORMAT"] == "text"
    assert env["VLM_CHECKPOINT_STORAGE"] == "pvc://other-claim/ckpt"
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    shape = get(cluster, "trainingshape", release["shape"])
    assert shape is not None and shape["spec"]["maxContext"] == 2048
    # Two replicas elect a leader: the operator's identity may read, create and renew its Lease
    # in the release namespace (and only there).
    user = f"system:serviceaccount:{ns}:{full}"
    answers = check_all(cluster, user, LEASE, "-n", ns)
    assert all(answers.values()), [a for a, ok in answers.items() if not ok]
    answers = check_all(cluster, user, LEASE, "-n", "kube-node-lease")
    assert not any(answers.values()), [a for a, ok in answers.items() if ok]

    # uninstall: everything but the CRDs goes.
    run_helm(cluster, helm_env, "uninstall", release["name"], "-n", ns, "--wait", "--timeout=60s")
    wait_gone(
        cluster,
        [
            ("deployment", full, "-n", ns),
            ("serviceaccount", full, "-n", ns),
            ("service", f"{full}-metrics", "-n", ns),
            ("role", f"{full}-leader-election", "-n", ns),
            ("clusterrole", full),
            ("clusterrolebinding", full),
            ("trainingshape", release["shape"]),
        ],
    )
    for crd in CRD_NAMES:
        assert get(cluster, "crd", crd) is not None, f"{crd} was removed"
    assert (
        run_helm(cluster, helm_env, "status", release["name"], "-n", ns, check=False).returncode
        != 0
    )


def test_service_account_can_do_exactly_what_the_operator_does(
    chart_crds: LocalCluster, release: dict[str, Any]
) -> None:
    cluster, ns, full = chart_crds, release["namespace"], release["fullname"]
    user = f"system:serviceaccount:{ns}:{full}"

    # Everything the operator does, cluster-wide (it watches all namespaces by default).
    answers = check_all(cluster, user, OPERATOR, "--all-namespaces")
    assert all(answers.values()), [a for a, ok in answers.items() if not ok]
    # The Lease only with several replicas.
    answers = check_all(cluster, user, LEASE, "--all-namespaces")
    assert not any(answers.values()), [a for a, ok in answers.items() if ok]

    # Nothing else: no Secrets anywhere, no wildcard, no escalation, no writes it does not make.
    denied = [
        ("list", "secrets", "--all-namespaces"),
        ("get", "secrets", "-n", ns),
        ("watch", "secrets", "-n", "kube-system"),
        ("*", "*", "--all-namespaces"),
        ("create", "pods", "-n", ns),
        ("delete", "pods", "-n", ns),
        ("create", "pods/exec", "-n", ns),
        ("get", "pods/log", "-n", ns),
        ("update", "trainerjobs.vlmtrain.dev", "-n", ns),
        ("delete", "trainerjobs.vlmtrain.dev", "-n", ns),
        ("create", "trainerjobs.vlmtrain.dev", "-n", ns),
        ("delete", "checkpoints.vlmtrain.dev", "-n", ns),
        ("create", "trainingshapes.vlmtrain.dev"),
        ("update", "trainerjobs.vlmtrain.dev/status", "-n", ns),
        ("create", "clusterroles.rbac.authorization.k8s.io"),
        ("create", "clusterrolebindings.rbac.authorization.k8s.io"),
        ("escalate", "roles.rbac.authorization.k8s.io", "-n", ns),
        ("bind", "roles.rbac.authorization.k8s.io", "-n", ns),
        ("impersonate", "serviceaccounts", "-n", ns),
        ("create", "serviceaccounts/token", "-n", ns),
        ("create", "customresourcedefinitions.apiextensions.k8s.io"),
        ("delete", "namespaces"),
        ("patch", "nodes"),
    ]
    with ThreadPoolExecutor(max_workers=8) as pool:
        allowed = [
            d
            for d, ok in zip(
                denied, pool.map(lambda d: can_i(cluster, user, *d), denied), strict=True
            )
            if ok
        ]
    assert not allowed, f"the operator's ServiceAccount may also {allowed}"


def test_service_account_can_create_the_per_job_role(
    chart_crds: LocalCluster, release: dict[str, Any]
) -> None:
    """RBAC lets a subject grant only what it holds: the operator's identity can create the
    per-job Role and RoleBinding it needs, and cannot create one that reads Secrets."""
    cluster, ns, full = chart_crds, release["namespace"], release["fullname"]
    user = f"system:serviceaccount:{ns}:{full}"
    by_resource: dict[str, list[str]] = {}
    for _, resource, verb in sorted(PER_JOB_ROLE):
        by_resource.setdefault(resource, []).append(verb)
    rules = [
        {
            "apiGroups": ["vlmtrain.dev"],
            "resources": [resource],
            "verbs": verbs,
            **({"resourceNames": ["job-a"]} if resource.startswith("trainerjobs") else {}),
        }
        for resource, verbs in by_resource.items()
    ]
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "job-a-trainer", "namespace": ns},
        "rules": rules,
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "job-a-trainer", "namespace": ns},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": "job-a-trainer",
        },
        "subjects": [{"kind": "ServiceAccount", "name": "job-a", "namespace": ns}],
    }
    account = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": "job-a", "namespace": ns},
    }
    manifest = yaml.safe_dump_all([account, role, binding])
    cluster.kubectl("create", f"--as={user}", "-f", "-", input=manifest)
    assert can_i(
        cluster,
        "system:serviceaccount:" + ns + ":job-a",
        "create",
        "checkpoints.vlmtrain.dev",
        "-n",
        ns,
    )

    greedy = {**role, "metadata": {"name": "reads-secrets", "namespace": ns}}
    greedy["rules"] = [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]
    p = cluster.kubectl(
        "create", f"--as={user}", "-f", "-", input=yaml.safe_dump(greedy), check=False
    )
    assert p.returncode != 0
    assert "forbidden" in p.stderr.lower()


def test_pod_template_passes_restricted_pod_security(
    chart_crds: LocalCluster, namespace: str, tmp_path: Path
) -> None:
    """The Deployment's pods meet the `restricted` Pod Security Standard: a namespace that
    enforces it accepts the Deployment without warnings (server-side dry run)."""
    chart_crds.kubectl(
        "label",
        "namespace",
        namespace,
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/warn=restricted",
    )
    docs = template(tmp_path, release=f"pss-{namespace}", namespace=namespace)
    manifest = yaml.safe_dump(one(docs, "Deployment"))
    p = chart_crds.kubectl("apply", "--server-side", "--dry-run=server", "-f", "-", input=manifest)
    assert "would violate" not in p.stderr, p.stderr
