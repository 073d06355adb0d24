"""What a resumed TrainerJob is checked against: where it stopped, where it started again, and
its final weights next to an uninterrupted run's. Shared by the preemption, suspension and
fault-injection tests; reads the local cluster's pod logs and PVC folders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.cluster.local import LocalCluster
from tests.integration.operator_env import get, json_line, run_folder, wait_for


def progress_step(cluster: LocalCluster, ns: str, name: str) -> int:
    tj = get(cluster, "tj", name, "-n", ns) or {}
    return ((tj.get("status") or {}).get("progress") or {}).get("step") or 0


def wait_step(cluster: LocalCluster, ns: str, name: str, step: int, timeout: float = 240) -> int:
    """Block until the trainer reported at least `step` optimizer steps; returns the step."""
    return wait_for(
        f"{name} at step {step}",
        lambda: (s := progress_step(cluster, ns, name)) >= step and s,
        timeout=timeout,
        interval=0.2,
    )


def trainer_logs(cluster: LocalCluster, ns: str, name: str) -> list[Path]:
    """The trainer container log of every pod the job ran, oldest first."""
    assert cluster.workdir is not None
    pods = cluster.workdir / "runner" / "pods"
    logs = pods.glob(f"{ns}_{name}-*/containers/trainer/log")
    return sorted(logs, key=lambda p: p.stat().st_mtime)


def events(log: Path, kind: str) -> list[dict[str, Any]]:
    return [e for e in map(json_line, log.read_text().splitlines()) if e.get("event") == kind]


def resumed_steps(cluster: LocalCluster, ns: str, name: str) -> list[int]:
    """For each pod in order, the step its trainer resumed from (0: from scratch)."""
    out = []
    for log in trainer_logs(cluster, ns, name):
        starts = events(log, "start")
        assert starts, f"no start event in {log}:\n{log.read_text()[-2000:]}"
        out.append(starts[0].get("resumed_step") or 0)
    return out


def step_checkpoints(cluster: LocalCluster, ns: str, name: str) -> list[str]:
    items = (get(cluster, "ckpt", "-n", ns) or {}).get("items", [])
    return sorted(
        c["metadata"]["name"]
        for c in items
        if c["spec"]["trainerJob"] == name and not c["spec"].get("final")
    )


def final_weights(cluster: LocalCluster, ns: str, name: str) -> dict[str, Any]:
    """The tensors of the job's final checkpoint, read from its PVC folder."""
    from safetensors.torch import load_file

    assert cluster.pvc_root is not None
    folder = run_folder(cluster, ns, get(cluster, "trainerjob", name, "-n", ns))
    found = sorted((folder / "checkpoints" / "final").glob("*.safetensors"))
    assert len(found) == 1, f"final weights of {name} in {folder}: {found}"
    return load_file(str(found[0]))


def assert_same_weights(a: dict[str, Any], b: dict[str, Any]) -> None:
    import torch

    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} of {len(a)} tensors differ, e.g. {differ[:3]}"
