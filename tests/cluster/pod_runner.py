"""A fake kubelet: registers GPU Nodes and runs the pods bound to them as local processes.

Supported: N Nodes (`fake-gpu-0`...) with `nvidia.com/gpu` capacity, kept Ready through node
status heartbeats and Leases; for every pod the real scheduler binds to them: volumes and env
(see `pod_spec`), each container run by `pod_exec` in its own mount namespace, init containers
in order, status Pending -> Running -> Succeeded/Failed with containerStatuses, exit codes,
reasons and the termination message (file, or the log tail under FallbackToLogsOnError),
restartPolicy Never/OnFailure/Always, and deletion: SIGTERM, SIGKILL after the grace period, then
the final delete a kubelet makes. It also binds Pending PersistentVolumeClaims to hostPath PVs
under its state folder (a tiny local provisioner), since there is no storage driver.
Security, as a kubelet enforces it (see `pod_spec.container_identity` and `pod_exec`): each
container runs as its `runAsUser`/`runAsGroup` with its supplementary groups (fsGroup included),
no_new_privs under `allowPrivilegeEscalation: false`; `runAsNonRoot` on a container that would
run as root leaves the pod Pending with CreateContainerConfigError; under
`readOnlyRootFilesystem` every mount but the container's writable volumes (and /dev, /proc) is
read-only in its mount namespace, so a write elsewhere fails with EROFS as on a real node;
volumes get the kubelet's ownership (emptyDir 0777, fsGroup group-owned and setgid).
The image: there is none, so the project, its virtualenv and Python (on this machine under
/root, which only root may enter) stand in for it. As an image would have them, they are made
readable to any user: in each container's mount namespace a tmpfs (mode 755) covers the first
non-searchable folder above them (/root) and only those folders are bound back into it, so a
non-root container reaches them and nothing else of /root (caches, credentials). Like the
project's images (operator/Dockerfile, trainer_image/Dockerfile), /etc/passwd and /etc/group
know the user `vlm` (uid and gid 65532): the host's files plus that entry, bound read-only.
Not supported: probes, resource enforcement, image pulls; processes share the host's network
(every pod IP is 127.0.0.1).

Run: `python -m tests.cluster.pod_runner --kubeconfig K --state-dir D [--nodes 2 --gpus 4]`.
It prints `pod-runner ready` once its nodes are registered.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from tests.cluster import pod_spec
from tests.cluster.launcher import PYTHONPATH, _die_with_parent

log = logging.getLogger("pod-runner")
MAX_MESSAGE = 4096
FALLBACK_LINES, FALLBACK_BYTES = 80, 2048
HEARTBEAT_S = 5.0
IMAGE_USER = 65532  # the non-root user of the project's images (`vlm`)


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_micro() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Api(pod_spec.ApiReader):
    """The few API calls the runner makes, on the plain kubernetes client with dict bodies."""

    def __init__(self, api_client: client.ApiClient, state_dir: Path) -> None:
        self.core = client.CoreV1Api(api_client)
        self.coord = client.CoordinationV1Api(api_client)
        self.state_dir = state_dir
        self.host = api_client.configuration.host

    def _get(self, fn, *args: Any) -> dict[str, Any] | None:
        try:
            return fn(*args, _preload_content=False).json()
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def config_map(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._get(self.core.read_namespaced_config_map, name, namespace)

    def secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._get(self.core.read_namespaced_secret, name, namespace)

    def pvc_host_path(self, namespace: str, claim: str) -> str | None:
        pvc = self._get(self.core.read_namespaced_persistent_volume_claim, claim, namespace)
        if not pvc or not pvc["spec"].get("volumeName"):
            return None
        pv = self._get(self.core.read_persistent_volume, pvc["spec"]["volumeName"])
        return ((pv or {}).get("spec", {}).get("hostPath") or {}).get("path")

    def token(self, pod: dict[str, Any], audience: str | None, seconds: int) -> str:
        meta = pod["metadata"]
        spec: dict[str, Any] = {
            "expirationSeconds": max(seconds, 600),
            "boundObjectRef": {
                "kind": "Pod",
                "apiVersion": "v1",
                "name": meta["name"],
                "uid": meta["uid"],
            },
        }
        if audience:
            spec["audiences"] = [audience]
        sa = pod["spec"].get("serviceAccountName") or "default"
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
        r = self.core.create_namespaced_service_account_token(sa, meta["namespace"], body)
        return r.status.token

    def patch_pod_status(self, pod: dict[str, Any], status: dict[str, Any]) -> None:
        meta = pod["metadata"]
        with contextlib.suppress(ApiException):
            self.core.patch_namespaced_pod_status(
                meta["name"], meta["namespace"], {"status": status}
            )


class PodWorker(threading.Thread):
    """Runs one pod from bind to termination; `request_stop()` is called on deletion."""

    def __init__(self, runner: PodRunner, pod: dict[str, Any]) -> None:
        super().__init__(daemon=True, name=f"pod-{pod['metadata']['name']}")
        self.runner, self.pod = runner, pod
        meta = pod["metadata"]
        self.key = f"{meta['namespace']}/{meta['name']}"
        self.dir = (
            runner.state_dir / "pods" / f"{meta['namespace']}_{meta['name']}_{meta['uid'][:8]}"
        )
        self.deleted = threading.Event()
        self.procs: dict[str, subprocess.Popen] = {}
        self.statuses: dict[str, dict[str, Any]] = {}
        self.init_statuses: dict[str, dict[str, Any]] = {}
        self.start_time = now()

    # -- status -------------------------------------------------------------------------------
    def _report(self, phase: str, ready: bool = False, reason: str | None = None) -> None:
        conds = [
            {"type": "PodScheduled", "status": "True"},
            {
                "type": "Initialized",
                "status": str(phase != "Pending" or not self.pod["spec"].get("initContainers")),
            },
            {"type": "ContainersReady", "status": str(ready)},
            {"type": "Ready", "status": str(ready)},
        ]
        for c in conds:
            c["lastTransitionTime"] = now()
        status: dict[str, Any] = {
            "phase": phase,
            "hostIP": pod_spec.POD_IP,
            "hostIPs": [{"ip": pod_spec.POD_IP}],
            "podIP": pod_spec.POD_IP,
            "podIPs": [{"ip": pod_spec.POD_IP}],
            "startTime": self.start_time,
            "conditions": conds,
            "containerStatuses": list(self.statuses.values()),
        }
        if self.init_statuses:
            status["initContainerStatuses"] = list(self.init_statuses.values())
        if reason:
            status["reason"] = reason
        self.runner.api.patch_pod_status(self.pod, status)

    def _container_status(
        self, c: dict[str, Any], state: dict[str, Any], restarts: int = 0
    ) -> dict[str, Any]:
        running = "running" in state
        return {
            "name": c["name"],
            "image": c.get("image", ""),
            "imageID": f"fake://{c.get('image', '')}",
            "containerID": f"fake://{self.dir.name}/{c['name']}",
            "ready": running,
            "started": running,
            "restartCount": restarts,
            "state": state,
        }

    # -- lifecycle ----------------------------------------------------------------------------
    def run(self) -> None:
        try:
            self._run()
        except Exception:
            log.exception("pod %s: runner error", self.key)
            self._report("Failed", reason="RunnerError")
        finally:
            if self.deleted.is_set():
                self.finalize_delete()

    def _prepare(self) -> tuple[dict[str, Path], dict[str, str]] | None:
        """Materialise volumes; on a config error report it and retry, as a kubelet does."""
        while not self.deleted.is_set():
            try:
                spec = self.pod["spec"]
                for c in [*(spec.get("initContainers") or []), *spec["containers"]]:
                    pod_spec.container_identity(self.pod, c)  # runAsNonRoot refusals
                fs_group = (spec.get("securityContext") or {}).get("fsGroup")
                vols = {}
                for v in spec.get("volumes") or []:
                    path = pod_spec.materialise_volume(v, self.pod, self.runner.api, self.dir)
                    pod_spec.set_volume_ownership(v, path, fs_group)
                    vols[v["name"]] = path
                return vols, self.runner.service_env()
            except pod_spec.PodConfigError as e:
                waiting = {"waiting": {"reason": "CreateContainerConfigError", "message": str(e)}}
                for c in self.pod["spec"]["containers"]:
                    self.statuses[c["name"]] = self._container_status(c, waiting)
                self._report("Pending")
                self.deleted.wait(2.0)
        return None

    def _run(self) -> None:
        spec = self.pod["spec"]
        prepared = self._prepare()
        if prepared is None:
            return
        vols, service_env = prepared
        self.statuses.clear()
        for ic in spec.get("initContainers") or []:
            self.init_statuses[ic["name"]] = self._container_status(
                ic, {"waiting": {"reason": "PodInitializing"}}
            )
        for c in spec["containers"]:
            self.statuses[c["name"]] = self._container_status(
                c, {"waiting": {"reason": "ContainerCreating"}}
            )
        self._report("Pending")
        for ic in spec.get("initContainers") or []:
            code = self._run_container(
                ic,
                vols,
                service_env,
                self.init_statuses,
                restart="OnFailure" if spec.get("restartPolicy") != "Never" else "Never",
            )
            if code != 0 or self.deleted.is_set():
                self._report("Failed" if not self.deleted.is_set() else "Pending")
                return
        threads = [
            threading.Thread(
                target=self._run_container,
                args=(c, vols, service_env, self.statuses, spec.get("restartPolicy", "Always")),
                daemon=True,
            )
            for c in spec["containers"]
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        codes = [
            s["state"].get("terminated", {}).get("exitCode", 1) for s in self.statuses.values()
        ]
        self._report("Succeeded" if all(c == 0 for c in codes) else "Failed")

    def _run_container(
        self,
        c: dict[str, Any],
        vols: dict[str, Path],
        service_env: dict[str, str],
        statuses: dict[str, dict[str, Any]],
        restart: str,
    ) -> int:
        name = c["name"]
        restarts = 0
        while True:
            try:
                env = self.runner.base_env() | pod_spec.container_env(
                    self.pod, c, self.runner.api, service_env
                )
                argv = pod_spec.container_argv(c, env, self.runner.entrypoints)
            except pod_spec.PodConfigError as e:
                statuses[name] = self._container_status(
                    c,
                    {
                        "terminated": {
                            "exitCode": 128,
                            "reason": "CreateContainerConfigError",
                            "message": str(e),
                            "finishedAt": now(),
                        }
                    },
                )
                return 128
            code, started, message, reason = self._exec(c, argv, env, vols, statuses, restarts)
            term = {"exitCode": code, "reason": reason, "startedAt": started, "finishedAt": now()}
            if message:
                term["message"] = message
            statuses[name] = self._container_status(c, {"terminated": term}, restarts)
            again = not self.deleted.is_set() and (
                restart == "Always" or (restart == "OnFailure" and code != 0)
            )
            if not again:
                return code
            restarts += 1
            statuses[name]["lastState"] = {"terminated": term}
            self._report("Running")
            self.deleted.wait(min(10.0, 0.5 * 2**restarts))  # CrashLoopBackOff, shortened

    def _exec(
        self,
        c: dict[str, Any],
        argv: list[str],
        env: dict[str, str],
        vols: dict[str, Path],
        statuses: dict[str, dict[str, Any]],
        restarts: int,
    ) -> tuple[int, str, str, str]:
        name = c["name"]
        cdir = self.dir / "containers" / name
        cdir.mkdir(parents=True, exist_ok=True)
        msg_file = cdir / "termination-log"
        msg_file.write_text("")
        msg_file.chmod(0o666)  # as the kubelet does: any container user writes its message
        (cdir / "hosts").write_text(pod_spec.hosts_file(self.pod))
        mounts = [*pod_spec.container_mounts(c, vols)]
        mounts.append(
            pod_spec.Mount(
                str(msg_file), c.get("terminationMessagePath", "/dev/termination-log"), False
            )
        )
        mounts.append(pod_spec.Mount(str(cdir / "hosts"), "/etc/hosts", True))
        mounts += [pod_spec.Mount(str(f), t, True) for t, f in self.runner.image_etc.items()]
        sa_mounted = any(m.target == pod_spec.SA_MOUNT for m in mounts)
        if sa_mounted:  # in-cluster config looks for these two variables
            env.setdefault("KUBERNETES_SERVICE_HOST", "127.0.0.1")
        spec_file = cdir / f"exec-{restarts}.json"
        spec_file.write_text(
            json.dumps(
                {
                    "argv": argv,
                    "env": env,
                    "cwd": c.get("workingDir"),
                    "mounts": [m.__dict__ for m in mounts],
                    "keep": self.runner.keep_visible,
                    "identity": pod_spec.container_identity(self.pod, c).__dict__,
                }
            )
        )
        log_path = cdir / "log"
        started = now()
        with open(log_path, "ab") as out:
            p = subprocess.Popen(
                [
                    "unshare",
                    "--mount",
                    "--",
                    sys.executable,
                    "-m",
                    "tests.cluster.pod_exec",
                    str(spec_file),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=str(self.runner.repo),
                env={**os.environ, "PYTHONPATH": PYTHONPATH},
                preexec_fn=_die_with_parent,
                start_new_session=True,
            )
        self.procs[name] = p
        is_init = statuses is self.init_statuses
        statuses[name] = self._container_status(c, {"running": {"startedAt": started}}, restarts)
        self._report("Pending" if is_init else "Running", ready=not is_init)
        log.info("pod %s container %s started pid %d: %s", self.key, name, p.pid, argv)
        code = p.wait()
        if code < 0:  # killed by a signal: report as a runtime does (128 + signal)
            code = 128 - code
        message = msg_file.read_text()[:MAX_MESSAGE]
        if (
            not message.strip()
            and code != 0
            and c.get("terminationMessagePolicy") == "FallbackToLogsOnError"
        ):
            tail = log_path.read_bytes().splitlines()[-FALLBACK_LINES:]
            message = b"\n".join(tail)[-FALLBACK_BYTES:].decode(errors="replace")
        reason = "Completed" if code == 0 else "Error"
        log.info("pod %s container %s exited %d", self.key, name, code)
        return code, started, message, reason

    def request_stop(self, grace: float) -> None:
        """Deletion: SIGTERM every container, SIGKILL whatever is left after `grace` seconds."""
        if self.deleted.is_set():
            return
        self.deleted.set()

        def kill() -> None:
            for p in list(self.procs.values()):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGTERM)
            deadline = time.monotonic() + grace
            for p in list(self.procs.values()):
                try:
                    p.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(p.pid, signal.SIGKILL)

        threading.Thread(target=kill, daemon=True).start()

    def finalize_delete(self) -> None:
        """The kubelet's last word on a deleted pod: remove it now (uid-guarded)."""
        meta = self.pod["metadata"]
        body = {"gracePeriodSeconds": 0, "preconditions": {"uid": meta["uid"]}}
        try:
            self.runner.api.core.delete_namespaced_pod(meta["name"], meta["namespace"], body=body)
        except ApiException as e:
            if e.status not in (404, 409):
                log.warning("pod %s: final delete failed: %s", self.key, e)


class PodRunner:
    """Registers the nodes and dispatches pod events to workers."""

    def __init__(
        self,
        kubeconfig: str,
        state_dir: Path,
        nodes: int,
        gpus: int,
        entrypoints: dict[str, list[str]],
        path_prefix: list[str],
    ) -> None:
        api_client = config.new_client_from_config(config_file=kubeconfig)
        self.state_dir = state_dir
        self.api = Api(api_client, state_dir)
        self.node_names = [f"fake-gpu-{i}" for i in range(nodes)]
        self.gpus = gpus
        self.entrypoints = entrypoints
        self.path_prefix = path_prefix
        self.repo = Path(__file__).resolve().parents[2]
        # What plays the image's filesystem: the project, its venv and the Python it runs on.
        # Real paths only (a symlinked .venv is reached through its target), outermost only.
        real = sorted(
            {str(p.resolve()) for p in (self.repo, Path(sys.prefix), Path(sys.base_prefix))}
        )
        self.keep_visible = [p for p in real if not any(p.startswith(q + "/") for q in real)]
        self.image_etc = self._image_accounts()
        # Every pod this runner started, by uid, kept after it ends so that late watch events
        # (a stale "Pending") never start it twice.
        self.workers: dict[str, PodWorker] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.port = int(api_client.configuration.host.rsplit(":", 1)[1])

    def _image_accounts(self) -> dict[str, Path]:
        """/etc/passwd and /etc/group as the images have them: the host's plus user `vlm`."""
        folder = self.state_dir / "image-etc"
        folder.mkdir(parents=True, exist_ok=True)
        extra = {
            "passwd": f"vlm:x:{IMAGE_USER}:{IMAGE_USER}::/home/vlm:/usr/sbin/nologin\n",
            "group": f"vlm:x:{IMAGE_USER}:\n",
        }
        out = {}
        for name, line in extra.items():
            host = Path("/etc", name).read_text()
            known = any(ln.split(":")[2:3] == [str(IMAGE_USER)] for ln in host.splitlines())
            (folder / name).write_text(host if known else host.rstrip("\n") + "\n" + line)
            out[f"/etc/{name}"] = folder / name
        return out

    def base_env(self) -> dict[str, str]:
        """What an image would set: PATH (with the project's venv first), HOME, locale."""
        path = ":".join([*self.path_prefix, os.environ.get("PATH", "/usr/bin:/bin")])
        keep = {k: v for k, v in os.environ.items() if k in ("LANG", "LC_ALL", "TZ")}
        return keep | {
            "PATH": path,
            "HOME": "/root",
            "PYTHONUNBUFFERED": "1",
            "HF_HUB_OFFLINE": "1",
            # The image has the project installed; here the checkout under test plays that part.
            "PYTHONPATH": PYTHONPATH,
        }

    def service_env(self) -> dict[str, str]:
        port = str(self.port)
        return {
            "KUBERNETES_SERVICE_HOST": "127.0.0.1",
            "KUBERNETES_SERVICE_PORT": port,
            "KUBERNETES_SERVICE_PORT_HTTPS": port,
        }

    # -- nodes ----------------------------------------------------------------------------------
    def register_nodes(self) -> None:
        for name in self.node_names:
            body = {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": name,
                    "labels": {
                        "kubernetes.io/hostname": name,
                        "kubernetes.io/os": "linux",
                        "kubernetes.io/arch": "amd64",
                        "nvidia.com/gpu.present": "true",
                        "vlmtrain.dev/fake-node": "true",
                    },
                },
            }
            try:
                self.api.core.create_node(body)
            except ApiException as e:
                if e.status != 409:
                    raise
            self._node_status(name)
            self._renew_lease(name)

    def _node_status(self, name: str) -> None:
        cap = {
            "cpu": "16",
            "memory": "64Gi",
            "pods": "110",
            "ephemeral-storage": "100Gi",
            "nvidia.com/gpu": str(self.gpus),
        }
        t = now()
        cond = [
            {
                "type": tp,
                "status": st,
                "reason": rs,
                "message": rs,
                "lastHeartbeatTime": t,
                "lastTransitionTime": t,
            }
            for tp, st, rs in (
                ("Ready", "True", "KubeletReady"),
                ("MemoryPressure", "False", "KubeletHasSufficientMemory"),
                ("DiskPressure", "False", "KubeletHasNoDiskPressure"),
                ("PIDPressure", "False", "KubeletHasSufficientPID"),
            )
        ]
        status = {
            "capacity": cap,
            "allocatable": cap,
            "conditions": cond,
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": name},
            ],
            "nodeInfo": {
                "kubeletVersion": "v1.34.4-fake",
                "containerRuntimeVersion": "fake://1",
                "operatingSystem": "linux",
                "architecture": "amd64",
                "machineID": name,
                "systemUUID": name,
                "bootID": name,
                "kernelVersion": os.uname().release,
                "osImage": "pod-runner",
                "kubeProxyVersion": "",
            },
        }
        self.api.core.patch_node_status(name, {"status": status})

    def _renew_lease(self, name: str) -> None:
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": name, "namespace": "kube-node-lease"},
            "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": now_micro()},
        }
        try:
            self.api.coord.patch_namespaced_lease(name, "kube-node-lease", {"spec": body["spec"]})
        except ApiException as e:
            if e.status != 404:
                raise
            self.api.coord.create_namespaced_lease("kube-node-lease", body)

    def heartbeat_loop(self) -> None:
        beats = 0
        while not self.stopping.wait(HEARTBEAT_S):
            beats += 1
            for name in self.node_names:
                try:
                    self._renew_lease(name)
                    if beats % 2 == 0:
                        self._node_status(name)
                except Exception:
                    log.exception("heartbeat for %s failed", name)

    # -- volumes ---------------------------------------------------------------------------------
    def provision_loop(self) -> None:
        """Bind every Pending PVC to a hostPath PV of the same size (one folder per claim)."""
        while not self.stopping.wait(1.0):
            try:
                for pvc in self.api.core.list_persistent_volume_claim_for_all_namespaces(
                    _preload_content=False
                ).json()["items"]:
                    if pvc["status"].get("phase") != "Pending" or pvc["spec"].get("volumeName"):
                        continue
                    ns, name = pvc["metadata"]["namespace"], pvc["metadata"]["name"]
                    path = self.state_dir / "pvc" / ns / name
                    path.mkdir(parents=True, exist_ok=True)
                    pv = {
                        "apiVersion": "v1",
                        "kind": "PersistentVolume",
                        "metadata": {
                            "name": f"local-{ns}-{name}"[:253],
                            "labels": {"vlmtrain.dev/fake-pv": "true"},
                        },
                        "spec": {
                            "capacity": {
                                "storage": pvc["spec"]["resources"]["requests"]["storage"]
                            },
                            "accessModes": pvc["spec"]["accessModes"],
                            "hostPath": {"path": str(path)},
                            "persistentVolumeReclaimPolicy": "Retain",
                            "storageClassName": pvc["spec"].get("storageClassName") or "",
                            "claimRef": {
                                "namespace": ns,
                                "name": name,
                                "uid": pvc["metadata"]["uid"],
                            },
                        },
                    }
                    with contextlib.suppress(ApiException):
                        self.api.core.create_persistent_volume(pv)
            except Exception:
                log.exception("provisioner pass failed")

    # -- pods ------------------------------------------------------------------------------------
    def _on_pod(self, pod: dict[str, Any]) -> None:
        spec, meta = pod["spec"], pod["metadata"]
        if spec.get("nodeName") not in self.node_names:
            return
        uid = meta["uid"]
        with self.lock:
            worker = self.workers.get(uid)
            if (
                worker is None
                and not meta.get("deletionTimestamp")
                and pod.get("status", {}).get("phase") in (None, "Pending")
            ):
                worker = self.workers[uid] = PodWorker(self, pod)
                worker.start()
                return
        if meta.get("deletionTimestamp"):
            if worker is not None and worker.is_alive():
                worker.request_stop(float(meta.get("deletionGracePeriodSeconds") or 30))
            else:  # nothing running (finished, or never started here): complete the deletion
                (worker or PodWorker(self, pod)).finalize_delete()

    def watch_loop(self) -> None:
        rv = None
        while not self.stopping.is_set():
            try:
                if rv is None:
                    listing = self.api.core.list_pod_for_all_namespaces(
                        _preload_content=False
                    ).json()
                    for pod in listing["items"]:
                        self._on_pod(pod)
                    rv = listing["metadata"]["resourceVersion"]
                w = watch.Watch()
                for ev in w.stream(
                    self.api.core.list_pod_for_all_namespaces,
                    resource_version=rv,
                    timeout_seconds=30,
                    _preload_content=False,
                ):
                    obj = ev["raw_object"]
                    if ev["type"] == "ERROR":
                        rv = None
                        break
                    rv = obj["metadata"]["resourceVersion"]
                    if ev["type"] in ("ADDED", "MODIFIED"):
                        self._on_pod(obj)
                    if self.stopping.is_set():
                        break
            except ApiException as e:
                rv = None
                if e.status != 410:
                    log.warning("pod watch: %s", e)
                    time.sleep(1)
            except Exception:
                if not self.stopping.is_set():
                    log.exception("pod watch failed; relisting")
                    time.sleep(1)
                rv = None

    def fail_orphans(self) -> None:
        """Pods left Running by an earlier runner have no process any more: mark them Failed."""
        for pod in self.api.core.list_pod_for_all_namespaces(_preload_content=False).json()[
            "items"
        ]:
            if (
                pod["spec"].get("nodeName") in self.node_names
                and pod["status"].get("phase") == "Running"
            ):
                self.api.patch_pod_status(
                    pod,
                    {
                        "phase": "Failed",
                        "reason": "NodeRestarted",
                        "message": "the pod runner restarted",
                    },
                )

    def start(self) -> None:
        self.register_nodes()
        self.fail_orphans()
        for loop in (self.heartbeat_loop, self.provision_loop, self.watch_loop):
            threading.Thread(target=loop, daemon=True, name=loop.__name__).start()

    def stop(self) -> None:
        self.stopping.set()
        with self.lock:
            workers = list(self.workers.values())
        for w in workers:
            w.request_stop(2.0)
        for w in workers:
            for p in list(w.procs.values()):
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(5)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kubeconfig", required=True)
    ap.add_argument("--state-dir", required=True, type=Path)
    ap.add_argument("--nodes", type=int, default=2)
    ap.add_argument("--gpus", type=int, default=4)
    ap.add_argument(
        "--entrypoint", action="append", default=[], help="IMAGE_GLOB=CMD (space separated)"
    )
    ap.add_argument(
        "--path-prefix", action="append", default=[], help="folder put first on every pod's PATH"
    )
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if shutil.which("unshare") is None:
        sys.exit("pod-runner needs `unshare` (util-linux) and root for mount namespaces")
    entrypoints = {k: v.split() for k, v in (e.split("=", 1) for e in a.entrypoint)}
    runner = PodRunner(a.kubeconfig, a.state_dir, a.nodes, a.gpus, entrypoints, a.path_prefix)
    runner.start()
    print("pod-runner ready", flush=True)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    runner.stop()


if __name__ == "__main__":
    main()
