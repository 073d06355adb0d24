"""One handle on "a cluster to test against": the local control plane plus the pod runner, or an
existing cluster when `USE_EXISTING_CLUSTER=true` (then `$KUBECONFIG` is used as it is and nothing
is started or stopped).

`LocalCluster.start(dir)` is what the pytest fixture, `make cluster-up` and `make demo` call.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.cluster.launcher import (
    PYTHONPATH,
    ControlPlane,
    spawn,
    start_control_plane,
    stop_process,
)
from tests.cluster.s3 import S3Server, start_s3

TRAINER_IMAGE_GLOB = "*vlm-trainer*"  # images the pod runner runs as the project's own CLIs
OPERATOR_IMAGE_GLOB = "*vlm-operator*"


@dataclass
class LocalCluster:
    kubeconfig: Path
    kubectl_bin: str
    workdir: Path | None = None
    control_plane: ControlPlane | None = None
    runner: subprocess.Popen | None = None
    helm_bin: str | None = None
    s3: S3Server | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        path = f"{Path(self.kubectl_bin).parent}:{os.environ.get('PATH', '')}"
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig), "PATH": path}

    @property
    def pvc_root(self) -> Path | None:
        """Where the pod runner keeps PersistentVolume data (None on an existing cluster)."""
        return self.workdir / "runner" / "pvc" if self.workdir else None

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this cluster; raises CalledProcessError (with stderr) on failure."""
        p = subprocess.run(
            [self.kubectl_bin, *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env,
        )
        if check and p.returncode != 0:
            raise subprocess.CalledProcessError(p.returncode, p.args, p.stdout, p.stderr)
        return p

    @classmethod
    def existing(cls) -> LocalCluster:
        kubeconfig = Path(os.environ.get("KUBECONFIG", Path.home() / ".kube" / "config"))
        return cls(kubeconfig=kubeconfig, kubectl_bin=shutil.which("kubectl") or "kubectl")

    @classmethod
    def start(cls, workdir: Path, nodes: int = 2, gpus: int = 4, s3: bool = False) -> LocalCluster:
        """Control plane + pod runner in `workdir` (with `s3`, also the S3 server: see
        `start_object_store`); stops whatever started if a later part fails."""
        cp = start_control_plane(workdir)
        cluster = cls(
            kubeconfig=cp.kubeconfig,
            kubectl_bin=str(cp.binaries.kubectl),
            workdir=workdir,
            control_plane=cp,
            helm_bin=str(cp.binaries.helm) if cp.binaries.helm else None,
        )
        try:
            cluster.runner = start_pod_runner(cp.kubeconfig, workdir / "runner", nodes, gpus)
            cluster.wait_nodes_ready(nodes)
            if s3:
                cluster.start_object_store()
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def wait_nodes_ready(self, count: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        jsonpath = '{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\\n"}{end}'
        while time.monotonic() < deadline:
            out = self.kubectl("get", "nodes", "-o", f"jsonpath={jsonpath}", check=False).stdout
            if out.split().count("True") >= count:
                return
            time.sleep(0.3)
        raise TimeoutError(f"{count} Ready nodes did not appear within {timeout}s")

    def start_object_store(self) -> S3Server:
        """SeaweedFS's S3 gateway with its state in `<workdir>/s3`; its endpoint, credentials
        and bucket go to `<workdir>/s3.env` (AWS_* and VLM_S3_BUCKET lines)."""
        assert self.workdir is not None, "an existing cluster brings its own object store"
        self.s3 = start_s3(self.workdir / "s3")
        self.s3.write_env(self.workdir / "s3.env")
        return self.s3

    def stop(self) -> None:
        if self.s3 is not None:
            self.s3.stop()
            self.s3 = None
        if self.runner is not None:
            stop_process(self.runner, grace=15)
            self.runner = None
        if self.control_plane is not None:
            self.control_plane.stop()
            self.control_plane = None


def start_pod_runner(kubeconfig: Path, state_dir: Path, nodes: int, gpus: int) -> subprocess.Popen:
    """The fake kubelet as a child process; returns once it printed `pod-runner ready`."""
    state_dir.mkdir(parents=True, exist_ok=True)
    log = state_dir / "pod-runner.log"
    venv_bin = str(Path(sys.executable).parent)
    argv = [
        sys.executable,
        "-m",
        "tests.cluster.pod_runner",
        "--kubeconfig",
        str(kubeconfig),
        "--state-dir",
        str(state_dir),
        "--nodes",
        str(nodes),
        "--gpus",
        str(gpus),
        "--entrypoint",
        f"{TRAINER_IMAGE_GLOB}=vlm-trainer",
        "--entrypoint",
        f"{OPERATOR_IMAGE_GLOB}=vlm-operator",
        "--path-prefix",
        venv_bin,
    ]
    env = {**os.environ, "PYTHONPATH": PYTHONPATH}
    p = spawn(argv, log, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if "pod-runner ready" in log.read_text(errors="replace"):
            return p
        if p.poll() is not None:
            raise RuntimeError(f"pod runner exited {p.returncode}:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    stop_process(p)
    raise TimeoutError(f"pod runner not ready in 60s (log: {log})")
