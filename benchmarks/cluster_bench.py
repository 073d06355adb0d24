"""Local control plane benchmarks: time to a ready API server, and the pod runner's latency.

Measures, on a warm binary cache:
  * `control_plane_ready_s`: start of etcd to kube-apiserver /readyz plus the default namespace's
    ServiceAccount and root CA (what `make cluster-up` waits for before it starts the runner);
  * `cluster_up_s`: the same plus the pod runner's fake nodes Ready (all of `make cluster-up`);
  * `bound_to_running_s`: for N pods created one after another, the time between the watch seeing
    `spec.nodeName` set (the scheduler's bind) and seeing `status.phase == Running`.

Run: `PYTHONPATH=. .venv/bin/python benchmarks/cluster_bench.py [--pods 20]`; prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

from kubernetes import client, config, watch

from tests.cluster.launcher import start_control_plane
from tests.cluster.local import LocalCluster, start_pod_runner


def pod_latencies(kubeconfig: Path, n: int) -> list[float]:
    api = client.CoreV1Api(config.new_client_from_config(config_file=str(kubeconfig)))
    bound: dict[str, float] = {}
    running: dict[str, float] = {}
    done = threading.Event()

    def watcher() -> None:
        w = watch.Watch()
        for ev in w.stream(api.list_namespaced_pod, "default", timeout_seconds=300):
            p, t = ev["object"], time.monotonic()
            if p.spec.node_name and p.metadata.name not in bound:
                bound[p.metadata.name] = t
            if p.status.phase in ("Running", "Succeeded") and p.metadata.name not in running:
                running[p.metadata.name] = t
            if len(running) == n:
                done.set()
                return

    threading.Thread(target=watcher, daemon=True).start()
    time.sleep(0.5)
    for i in range(n):
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"bench-{i}"},
            "spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "m", "image": "busybox", "command": ["sleep", "1"]}],
            },
        }
        api.create_namespaced_pod("default", body)
        time.sleep(0.2)
    if not done.wait(120):
        raise TimeoutError(f"only {len(running)} of {n} pods reached Running")
    return [running[k] - bound[k] for k in running]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pods", type=int, default=20)
    a = ap.parse_args()
    d = Path(tempfile.mkdtemp(prefix="vlm-bench-"))
    try:
        t0 = time.monotonic()
        cp = start_control_plane(d / "cp")
        ready = time.monotonic() - t0
        cluster = LocalCluster(cp.kubeconfig, str(cp.binaries.kubectl), d, cp)
        try:
            cluster.runner = start_pod_runner(cp.kubeconfig, d / "runner", 2, 4)
            cluster.wait_nodes_ready(2)
            up = time.monotonic() - t0
            lat = sorted(pod_latencies(cp.kubeconfig, a.pods))
        finally:
            cluster.stop()
    finally:
        shutil.rmtree(d, ignore_errors=True)
    print(
        json.dumps(
            {
                "control_plane_ready_s": round(ready, 2),
                "cluster_up_s": round(up, 2),
                "pods": len(lat),
                "bound_to_running_p50_s": round(statistics.median(lat), 3),
                "bound_to_running_max_s": round(lat[-1], 3),
            }
        )
    )


if __name__ == "__main__":
    main()
