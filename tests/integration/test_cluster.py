"""The local control plane's real parts, each shown working: schema validation, garbage
collection, Jobs through the scheduler and the pod runner, GPU scheduling, in-cluster auth and RBAC.
"""

from __future__ import annotations

import json
import subprocess
import textwrap
import time

import pytest

from tests.cluster.local import LocalCluster

pytestmark = pytest.mark.integration

CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.smoke.vlmtrain.dev}
spec:
  group: smoke.vlmtrain.dev
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [size]
            properties:
              size: {type: integer, minimum: 1, maximum: 8}
"""


def wait_for(cluster: LocalCluster, what: str, fn, timeout: float = 60.0):
    """Poll `fn()` until it returns something truthy; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := fn():
            return result
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def get_json(cluster: LocalCluster, *args: str) -> dict:
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)


def test_version_reports_the_pinned_release(cluster: LocalCluster) -> None:
    v = json.loads(cluster.kubectl("version", "-o", "json").stdout)["serverVersion"]
    assert v["gitVersion"].startswith("v1.34."), v


def test_crd_schema_rejects_bad_object_with_apiserver_message(
    cluster: LocalCluster, namespace: str
) -> None:
    cluster.kubectl("apply", "-f", "-", input=CRD)
    cluster.kubectl(
        "wait", "--for=condition=Established", "crd/widgets.smoke.vlmtrain.dev", "--timeout=30s"
    )
    bad = "apiVersion: smoke.vlmtrain.dev/v1\nkind: Widget\nmetadata: {name: w}\nspec: {size: 99}\n"
    p = cluster.kubectl("apply", "-n", namespace, "-f", "-", input=bad, check=False)
    assert p.returncode != 0
    assert "spec.size" in p.stderr and "less than or equal to 8" in p.stderr, p.stderr
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=bad.replace("99", "3"))


def test_owner_reference_garbage_collection(cluster: LocalCluster, namespace: str) -> None:
    cluster.kubectl("create", "configmap", "parent", "-n", namespace)
    uid = get_json(cluster, "configmap", "parent", "-n", namespace)["metadata"]["uid"]
    child = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "child",
            "namespace": namespace,
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "ConfigMap", "name": "parent", "uid": uid}
            ],
        },
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(child))
    cluster.kubectl("delete", "configmap", "parent", "-n", namespace)
    wait_for(
        cluster,
        "the garbage collector to delete the child",
        lambda: (
            cluster.kubectl("get", "configmap", "child", "-n", namespace, check=False).returncode
            != 0
        ),
    )


def job(name: str, script: str, **extra) -> str:
    spec = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "main",
                            "image": "busybox",
                            "command": ["sh", "-c", script],
                            "terminationMessagePolicy": "FallbackToLogsOnError",
                            **extra,
                        }
                    ],
                }
            },
        },
    }
    return json.dumps(spec)


def job_condition(cluster: LocalCluster, ns: str, name: str) -> str | None:
    conds = get_json(cluster, "job", name, "-n", ns).get("status", {}).get("conditions") or []
    done = [
        c["type"] for c in conds if c["type"] in ("Complete", "Failed") and c["status"] == "True"
    ]
    return done[0] if done else None


def test_job_pod_runs_to_succeeded(cluster: LocalCluster, namespace: str) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=job("ok", "echo hi; exit 0"))
    assert (
        wait_for(cluster, "Job ok to finish", lambda: job_condition(cluster, namespace, "ok"))
        == "Complete"
    )
    pod = get_json(cluster, "pods", "-n", namespace, "-l", "job-name=ok")["items"][0]
    assert pod["status"]["phase"] == "Succeeded"
    assert pod["spec"]["nodeName"].startswith("fake-gpu-")
    term = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert term["exitCode"] == 0 and term["reason"] == "Completed"


def test_failing_command_reports_exit_code_and_termination_message(
    cluster: LocalCluster, namespace: str
) -> None:
    script = "echo 'data file broken at line 7' > /dev/termination-log; exit 3"
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=job("bad", script))
    assert (
        wait_for(cluster, "Job bad to fail", lambda: job_condition(cluster, namespace, "bad"))
        == "Failed"
    )
    pod = get_json(cluster, "pods", "-n", namespace, "-l", "job-name=bad")["items"][0]
    assert pod["status"]["phase"] == "Failed"
    term = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert term["exitCode"] == 3 and term["reason"] == "Error"
    assert term["message"].strip() == "data file broken at line 7"
    # FallbackToLogsOnError: with no message file the log tail becomes the message.
    cluster.kubectl(
        "apply", "-n", namespace, "-f", "-", input=job("crash", "echo Traceback-ish >&2; exit 1")
    )
    wait_for(cluster, "Job crash to fail", lambda: job_condition(cluster, namespace, "crash"))
    pod = get_json(cluster, "pods", "-n", namespace, "-l", "job-name=crash")["items"][0]
    assert (
        "Traceback-ish" in pod["status"]["containerStatuses"][0]["state"]["terminated"]["message"]
    )


def test_pod_asking_for_too_many_gpus_stays_pending(cluster: LocalCluster, namespace: str) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "greedy"},
        "spec": {
            "containers": [
                {
                    "name": "m",
                    "image": "busybox",
                    "command": ["true"],
                    "resources": {"limits": {"nvidia.com/gpu": 64}},
                }
            ]
        },
    }
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(pod))

    def unschedulable() -> str | None:
        conds = (
            get_json(cluster, "pod", "greedy", "-n", namespace).get("status", {}).get("conditions")
            or []
        )
        return next((c.get("message") for c in conds if c.get("reason") == "Unschedulable"), None)

    message = wait_for(cluster, "the scheduler's verdict", unschedulable)
    assert "Insufficient nvidia.com/gpu" in message
    assert get_json(cluster, "pod", "greedy", "-n", namespace)["status"]["phase"] == "Pending"


IN_POD = textwrap.dedent(
    """
    import json, os
    from kubernetes import client, config
    config.load_incluster_config()
    v1 = client.CoreV1Api()
    me = os.environ["POD_NAME"]
    out = {"config": open("/etc/demo/greeting.txt").read()}
    pods = v1.list_namespaced_pod(os.environ["NS"], field_selector=f"metadata.name={me}")
    out["pods"] = [p.metadata.name for p in pods.items]
    try:
        v1.list_namespaced_secret(os.environ["NS"])
        out["secrets"] = "allowed"
    except client.ApiException as e:
        out["secrets"] = e.status
    open("/dev/termination-log", "w").write(json.dumps(out))
    """
)


def test_pod_reads_configmap_and_uses_its_service_account(
    cluster: LocalCluster, namespace: str
) -> None:
    ns = namespace
    cluster.kubectl(
        "create", "configmap", "demo", "-n", ns, "--from-literal=greeting.txt=hello pod"
    )
    cluster.kubectl("create", "serviceaccount", "reader", "-n", ns)
    cluster.kubectl("create", "role", "pod-reader", "-n", ns, "--verb=get,list", "--resource=pods")
    cluster.kubectl(
        "create",
        "rolebinding",
        "reader",
        "-n",
        ns,
        "--role=pod-reader",
        f"--serviceaccount={ns}:reader",
    )
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "reader"},
        "spec": {
            "serviceAccountName": "reader",
            "restartPolicy": "Never",
            # An emptyDir at /tmp comes first: it must not hide the other volumes' sources,
            # which the runner keeps under its state folder (often itself under /tmp).
            "volumes": [
                {"name": "tmp", "emptyDir": {}},
                {"name": "cfg", "configMap": {"name": "demo"}},
            ],
            "containers": [
                {
                    "name": "m",
                    "image": "python",
                    "command": ["python", "-c", IN_POD],
                    "volumeMounts": [
                        {"name": "tmp", "mountPath": "/tmp"},
                        {"name": "cfg", "mountPath": "/etc/demo", "readOnly": True},
                    ],
                    "env": [
                        {
                            "name": "POD_NAME",
                            "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
                        },
                        {
                            "name": "NS",
                            "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
                        },
                    ],
                    "terminationMessagePolicy": "FallbackToLogsOnError",
                }
            ],
        },
    }
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(pod))

    def finished() -> dict | None:
        p = get_json(cluster, "pod", "reader", "-n", ns)
        return p if p["status"].get("phase") in ("Succeeded", "Failed") else None

    p = wait_for(cluster, "the reader pod", finished)
    term = p["status"]["containerStatuses"][0]["state"]["terminated"]
    assert p["status"]["phase"] == "Succeeded", term
    out = json.loads(term["message"])
    assert out == {"config": "hello pod", "pods": ["reader"], "secrets": 403}


def test_deleted_pod_is_terminated_then_removed(cluster: LocalCluster, namespace: str) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "sleeper"},
        "spec": {
            "terminationGracePeriodSeconds": 5,
            "containers": [{"name": "m", "image": "busybox", "command": ["sleep", "600"]}],
        },
    }
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(pod))
    wait_for(
        cluster,
        "sleeper Running",
        lambda: (
            get_json(cluster, "pod", "sleeper", "-n", namespace)["status"].get("phase") == "Running"
        ),
    )
    t0 = time.monotonic()
    cluster.kubectl("delete", "pod", "sleeper", "-n", namespace, "--timeout=30s")
    assert time.monotonic() - t0 < 10  # SIGTERM ends `sleep` at once; no grace-period wait
    gone = subprocess.run(["pgrep", "-f", "sleep 600"], capture_output=True, text=True)
    assert gone.returncode == 1, f"process still running: {gone.stdout}"


# A restricted container reports who it is and what it may write (as JSON, its termination
# message). Writes go to a volume, to /etc and to /tmp (no volume there: the root filesystem).
RESTRICTED = textwrap.dedent(
    """
    import errno, json, os

    def write(path):
        try:
            with open(path, "w") as f:
                f.write("x")
            return "ok"
        except OSError as e:
            return errno.errorcode[e.errno]

    out = {
        "ids": [os.getuid(), os.getgid(), sorted(os.getgroups())],
        "volume": write("/data/probe"),
        "etc": write("/etc/probe"),
        "tmp": write("/tmp/probe-restricted"),
        "volume_gid": os.stat("/data/probe").st_gid,
        "root_home": sorted(os.listdir("/root")),
    }
    open("/dev/termination-log", "w").write(json.dumps(out))
    """
)


def run_pod(cluster: LocalCluster, ns: str, pod: dict) -> dict:
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(pod))

    def finished() -> dict | None:
        p = get_json(cluster, "pod", pod["metadata"]["name"], "-n", ns)
        return p if p["status"].get("phase") in ("Succeeded", "Failed") else None

    return wait_for(cluster, f"pod {pod['metadata']['name']}", finished)


@pytest.mark.parametrize("user", [None, 1000])
def test_read_only_root_filesystem_fails_writes_outside_volumes(
    cluster: LocalCluster, namespace: str, user: int | None
) -> None:
    """Root or not, a write outside the pod's volumes fails with EROFS, as on a real node; the
    container runs as its runAsUser/runAsGroup with fsGroup as a supplementary group, and its
    volume belongs to that group."""
    security = {"runAsUser": user, "runAsGroup": 1000, "fsGroup": 2000} if user else {}
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"ro-{user or 'root'}"},
        "spec": {
            "restartPolicy": "Never",
            "securityContext": security,
            "volumes": [{"name": "data", "emptyDir": {}}],
            "containers": [
                {
                    "name": "m",
                    "image": "python",
                    "command": ["python", "-c", RESTRICTED],
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                    "securityContext": {
                        "readOnlyRootFilesystem": True,
                        "allowPrivilegeEscalation": False,
                    },
                    "terminationMessagePolicy": "FallbackToLogsOnError",
                }
            ],
        },
    }
    p = run_pod(cluster, namespace, pod)
    term = p["status"]["containerStatuses"][0]["state"]["terminated"]
    assert p["status"]["phase"] == "Succeeded", term
    out = json.loads(term["message"])
    assert out["volume"] == "ok"
    assert out["etc"] == out["tmp"] == "EROFS"
    if user:
        assert out["ids"] == [1000, 1000, [2000]]
        assert out["volume_gid"] == 2000  # the fsGroup owns what is written there
    else:
        assert out["ids"][:2] == [0, 0]
    # The image folders only (here: the Python and virtualenv the runner stands in with).
    assert ".ssh" not in out["root_home"] and ".kube" not in out["root_home"]


def test_run_as_non_root_without_a_user_is_refused_on_a_root_image(
    cluster: LocalCluster, namespace: str
) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "nonroot"},
        "spec": {
            "restartPolicy": "Never",
            "securityContext": {"runAsNonRoot": True},
            "containers": [
                {"name": "m", "image": "busybox", "command": ["sh", "-c", "touch /tmp/ran"]}
            ],
        },
    }
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(pod))

    def refused() -> dict | None:
        p = get_json(cluster, "pod", "nonroot", "-n", namespace)
        statuses = p["status"].get("containerStatuses") or []
        waiting = statuses[0]["state"].get("waiting", {}) if statuses else {}
        return waiting if waiting.get("reason") == "CreateContainerConfigError" else None

    waiting = wait_for(cluster, "CreateContainerConfigError", refused)
    assert "runAsNonRoot and image will run as root" in waiting["message"]
    time.sleep(3)  # it stays refused: the kubelet retries, the answer does not change
    p = get_json(cluster, "pod", "nonroot", "-n", namespace)
    assert p["status"]["phase"] == "Pending"
    assert "running" not in p["status"]["containerStatuses"][0]["state"]
