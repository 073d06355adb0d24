"""Starts a real local Kubernetes control plane: etcd, apiserver, controller-manager, scheduler.

Supported: one cluster per call on free loopback ports in a working folder; RBAC + Node
authorization, service-account token signing (TokenRequest works), an admin identity in the
`system:masters` group written to `<dir>/kubeconfig`. No kubelet: `tests.cluster.pod_runner`
plays it. Binaries come from `hack/k8s/build.sh` (built once, cached by version) unless the
envtest variables `KUBEBUILDER_ASSETS`, `TEST_ASSET_KUBE_APISERVER`, `TEST_ASSET_ETCD`,
`TEST_ASSET_KUBECTL` point at existing ones. Every child process gets PR_SET_PDEATHSIG, so even a
SIGKILLed test run leaves no orphan.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.cluster.pki import Pki, make_pki

REPO = Path(__file__).resolve().parents[2]
# This checkout's packages ahead of the venv's editable install, so that a second checkout (a git
# worktree) sharing the cached venv runs its own code in tests, the operator and every pod.
PYTHONPATH = os.pathsep.join(str(p) for p in (REPO, REPO / "operator", REPO / "trainer_image"))
BUILD_SCRIPT = REPO / "hack" / "k8s" / "build.sh"
SERVICE_CIDR = "10.96.0.0/16"


def _die_with_parent() -> None:
    """preexec_fn: deliver SIGKILL to the child when the thread that spawned it exits."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def spawn(argv: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start a child that dies with us, its output appended to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            preexec_fn=_die_with_parent,
            start_new_session=True,
        )


def stop_process(p: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM the process group, then SIGKILL after `grace` seconds."""
    if p.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(p.pid, signal.SIGTERM)
    try:
        p.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Binaries:
    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kube_scheduler: Path
    kubectl: Path
    helm: Path | None


def find_binaries() -> Binaries:
    """Resolve the control-plane binaries, building or fetching missing ones (cached)."""
    built = Path(
        subprocess.run(["bash", str(BUILD_SCRIPT)], check=True, capture_output=True, text=True)
        .stdout.strip()
        .splitlines()[-1]
    )
    assets = (
        Path(os.environ["KUBEBUILDER_ASSETS"]) if os.environ.get("KUBEBUILDER_ASSETS") else None
    )

    def pick(name: str, env_var: str) -> Path:
        if os.environ.get(env_var):
            return Path(os.environ[env_var])
        if assets and (assets / name).exists():
            return assets / name
        return built / name

    helm = built / "helm"
    return Binaries(
        etcd=pick("etcd", "TEST_ASSET_ETCD"),
        kube_apiserver=pick("kube-apiserver", "TEST_ASSET_KUBE_APISERVER"),
        kube_controller_manager=pick(
            "kube-controller-manager", "TEST_ASSET_KUBE_CONTROLLER_MANAGER"
        ),
        kube_scheduler=pick("kube-scheduler", "TEST_ASSET_KUBE_SCHEDULER"),
        kubectl=pick("kubectl", "TEST_ASSET_KUBECTL"),
        helm=helm if helm.exists() else None,
    )


def write_kubeconfig(
    path: Path,
    server: str,
    ca: Path,
    cert: Path | None = None,
    key: Path | None = None,
    token: str | None = None,
    user: str = "admin",
) -> Path:
    """A kubeconfig with one cluster/context, authenticated by client cert or bearer token."""
    cred = (
        f"    token: {token}\n"
        if token
        else (f"    client-certificate: {cert}\n    client-key: {key}\n")
    )
    path.write_text(
        "apiVersion: v1\nkind: Config\n"
        f"clusters:\n- name: local\n  cluster:\n    server: {server}\n"
        f"    certificate-authority: {ca}\n"
        f"users:\n- name: {user}\n  user:\n{cred}"
        f"contexts:\n- name: local\n  context:\n    cluster: local\n    user: {user}\n"
        "current-context: local\n"
    )
    return path


@dataclass
class ControlPlane:
    """A running control plane; `stop()` (or the context manager) tears it all down."""

    workdir: Path
    binaries: Binaries
    pki: Pki
    port: int
    kubeconfig: Path
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    argv: dict[str, list[str]] = field(default_factory=dict)

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def run(self, name: str, argv: list[str]) -> None:
        """Start one component (its log: logs/<name>.log); `restart` uses the same argv."""
        self.argv[name] = argv
        self.procs[name] = spawn(argv, self.workdir / "logs" / f"{name}.log")

    def restart(self, name: str, down_s: float = 0.0) -> None:
        """Stop a component (SIGTERM), leave it down `down_s` seconds, start it again; for the
        API server, return once it is ready again (fault-injection tests)."""
        stop_process(self.procs.pop(name))
        time.sleep(down_s)
        self.run(name, self.argv[name])
        if name == "kube-apiserver":
            _wait(
                "kube-apiserver /readyz after a restart",
                lambda: _get(f"{self.server}/readyz", self.pki)[0] == 200,
                self.procs,
                self.workdir,
                90,
            )

    def stop(self) -> None:
        for name in reversed(list(self.procs)):
            stop_process(self.procs.pop(name))

    def __enter__(self) -> ControlPlane:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _get(url: str, pki: Pki, timeout: float = 2.0) -> tuple[int, str]:
    ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
    ctx.load_cert_chain(str(pki.admin_cert), str(pki.admin_key))
    try:
        with urllib.request.urlopen(url, context=ctx, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _wait(what: str, ok, procs: dict[str, subprocess.Popen], workdir: Path, timeout: float) -> None:
    """Poll `ok()` until true; fail fast (with the log tail) if a component died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, p in procs.items():
            if p.poll() is not None:
                tail = (workdir / "logs" / f"{name}.log").read_text()[-3000:]
                raise RuntimeError(
                    f"{name} exited with {p.returncode} while waiting for {what}:\n{tail}"
                )
        with contextlib.suppress(OSError):
            if ok():
                return
        time.sleep(0.2)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what} (logs in {workdir}/logs)")


def start_control_plane(workdir: Path, binaries: Binaries | None = None) -> ControlPlane:
    """Start etcd, kube-apiserver, controller-manager and scheduler; return once usable.

    "Usable" means: /readyz is ok, the `default` namespace has its `default` ServiceAccount and
    its `kube-root-ca.crt` ConfigMap (so pods can be created and can reach the apiserver).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    binaries = binaries or find_binaries()
    pki = make_pki(workdir / "pki")
    etcd_port, etcd_peer, api_port = free_port(), free_port(), free_port()
    cp = ControlPlane(workdir, binaries, pki, api_port, workdir / "kubeconfig")
    try:
        cp.run(
            "etcd",
            [
                str(binaries.etcd),
                f"--data-dir={workdir / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
                f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
                f"--listen-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-cluster=default=http://127.0.0.1:{etcd_peer}",
                "--unsafe-no-fsync",  # a throwaway test store: durability only costs time
                "--log-level=warn",
            ],
        )
        cp.run(
            "kube-apiserver",
            [
                str(binaries.kube_apiserver),
                f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={api_port}",
                f"--cert-dir={workdir / 'apiserver-certs'}",
                f"--tls-cert-file={pki.serving_cert}",
                f"--tls-private-key-file={pki.serving_key}",
                f"--client-ca-file={pki.ca_cert}",
                "--authorization-mode=Node,RBAC",
                f"--service-account-key-file={pki.sa_pub}",
                f"--service-account-signing-key-file={pki.sa_key}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--allow-privileged=true",
                "--enable-priority-and-fairness=false",
                "--v=1",
            ],
        )
        write_kubeconfig(cp.kubeconfig, cp.server, pki.ca_cert, pki.admin_cert, pki.admin_key)
        _wait(
            "kube-apiserver /readyz",
            lambda: _get(f"{cp.server}/readyz", pki)[0] == 200,
            cp.procs,
            workdir,
            90,
        )
        # Both components: the admin kubeconfig for API access and for delegated authn/authz of
        # their own (unused) serving port, a free loopback port, no leader election.
        component = [
            f"--kubeconfig={cp.kubeconfig}",
            f"--authentication-kubeconfig={cp.kubeconfig}",
            f"--authorization-kubeconfig={cp.kubeconfig}",
            "--bind-address=127.0.0.1",
            "--leader-elect=false",
            "--v=1",
        ]
        cp.run(
            "kube-controller-manager",
            [
                str(binaries.kube_controller_manager),
                *component,
                f"--secure-port={free_port()}",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={pki.sa_key}",
                f"--root-ca-file={pki.ca_cert}",
                f"--cluster-signing-cert-file={pki.ca_cert}",
                f"--cluster-signing-key-file={pki.ca_key}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--controllers=*,-nodeipam,-cloud-node-lifecycle,-service-lb-controller",
            ],
        )
        cp.run(
            "kube-scheduler",
            [str(binaries.kube_scheduler), *component, f"--secure-port={free_port()}"],
        )

        def default_namespace_ready() -> bool:
            sa = _get(f"{cp.server}/api/v1/namespaces/default/serviceaccounts/default", pki)[0]
            cm = _get(f"{cp.server}/api/v1/namespaces/default/configmaps/kube-root-ca.crt", pki)[0]
            return sa == 200 and cm == 200

        _wait("default ServiceAccount and root CA", default_namespace_ready, cp.procs, workdir, 60)
    except BaseException:
        cp.stop()
        raise
    return cp
