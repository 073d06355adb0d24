"""Operator benchmarks on the local control plane: how fast a TrainerJob gets its batch Job.

Measures, with the real operator process (`vlm-operator`) and suspended TrainerJobs (so no
trainer runs and only the operator's work is timed):
  * `apply_to_job_p50_s` / `_p99_s`: one TrainerJob created at a time, time from the create call
    returning to the watch seeing its batch Job (ADDED);
  * `burst_200_s`: 200 TrainerJobs created back to back, time until all 200 Jobs exist;
  * `operator_peak_rss_mib`: the operator's peak resident memory (VmHWM) at the end.

Run: `PYTHONPATH=. .venv/bin/python benchmarks/operator_bench.py [--sequential 50 --burst 200]`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

from kubernetes import client, config, watch

from tests.cluster.local import LocalCluster
from tests.integration.operator_env import (
    TINY_SHAPE,
    Operator,
    install_crds,
    operator_env,
    trainer_job,
)

NS = "t-bench"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sequential", type=int, default=50)
    ap.add_argument("--burst", type=int, default=200)
    a = ap.parse_args()
    d = Path(tempfile.mkdtemp(prefix="vlm-opbench-"))
    cluster = LocalCluster.start(d / "cluster", nodes=1)
    op = Operator(cluster, d / "operator.log", operator_env(cluster))
    try:
        install_crds(cluster)
        cluster.kubectl("create", "namespace", NS)
        cluster.kubectl("apply", "-f", "-", input=json.dumps(TINY_SHAPE))
        op.start()
        api_client = config.new_client_from_config(config_file=str(cluster.kubeconfig))
        custom, batch = client.CustomObjectsApi(api_client), client.BatchV1Api(api_client)
        seen: dict[str, float] = {}
        cv = threading.Condition()

        def watcher() -> None:
            with contextlib.suppress(Exception):  # the stream breaks when the cluster stops
                for ev in watch.Watch().stream(batch.list_namespaced_job, NS, timeout_seconds=900):
                    with cv:
                        seen.setdefault(ev["object"].metadata.name, time.monotonic())
                        cv.notify_all()

        threading.Thread(target=watcher, daemon=True).start()
        time.sleep(1)

        def create(name: str) -> float:
            body = trainer_job(name, suspend=True)
            custom.create_namespaced_custom_object(
                "vlmtrain.dev", "v1alpha1", NS, "trainerjobs", body
            )
            return time.monotonic()

        def wait_jobs(names: list[str], timeout: float) -> None:
            with cv:
                cv.wait_for(lambda: all(n in seen for n in names), timeout=timeout)
            missing = [n for n in names if n not in seen]
            if missing:
                raise TimeoutError(f"{len(missing)} Jobs missing, e.g. {missing[:3]}\n{op.tail()}")

        lat = []
        for i in range(a.sequential):
            name = f"seq-{i}"
            t = create(name)
            wait_jobs([name], 60)
            lat.append(seen[name] - t)
        lat.sort()
        names = [f"burst-{i}" for i in range(a.burst)]
        t0 = time.monotonic()
        for n in names:
            create(n)
        wait_jobs(names, 600)
        burst = max(seen[n] for n in names) - t0
        hwm = next(
            int(line.split()[1])
            for line in Path(f"/proc/{op.proc.pid}/status").read_text().splitlines()
            if line.startswith("VmHWM")
        )
        print(
            json.dumps(
                {
                    "sequential": len(lat),
                    "apply_to_job_p50_s": round(statistics.median(lat), 3),
                    "apply_to_job_p99_s": round(lat[min(len(lat) - 1, int(0.99 * len(lat)))], 3),
                    f"burst_{a.burst}_s": round(burst, 2),
                    "operator_peak_rss_mib": round(hwm / 1024, 1),
                }
            )
        )
    finally:
        op.stop()
        cluster.stop()
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
