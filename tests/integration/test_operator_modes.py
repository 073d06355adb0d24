"""DPO and RL TrainerJobs through the operator, with LoRA: the real recipes run in pods, write
Checkpoints, and the final LoRA checkpoint is promoted (merged into its base) to a model that
loads and generates. Learning itself is shown by the trainer tests; these runs are short."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cluster.local import LocalCluster
from tests.integration.operator_env import (
    DEMO_CLAIM,
    Operator,
    apply,
    checkpoint_settled,
    finished,
    get,
    trainer_job,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODES = {
    "dpo": {"dpo": {"beta": 0.1, "lossType": "sigmoid"}},
    "rl": {"rl": {"completionsPerPrompt": 4, "maxCompletionTokens": 8, "reward": "exact_match"}},
}


@pytest.mark.parametrize("mode", sorted(MODES))
def test_mode_trains_checkpoints_and_promotes_lora(
    cluster: LocalCluster, demo_ns: str, operator: Operator, demo_assets: Path, mode: str
) -> None:
    ns, name = demo_ns, f"{mode}-e2e"
    hp = {
        "learningRate": 0.001,
        "batchSize": 4,
        "maxSteps": 4,
        "maxSeqLen": 256,
        "loraRank": 8,
        **MODES[mode],
    }
    manifest = trainer_job(
        name,
        mode=mode,
        dataset={"uri": f"pvc://{DEMO_CLAIM}/data/{mode}_train.jsonl"},
        hyperparameters=hp,
        checkpointing={"everySteps": 2},
        promote={"outputModel": f"{mode}-model"},
    )
    apply(cluster, ns, manifest)
    tj = finished(cluster, ns, name, timeout=400)
    assert tj["status"]["phase"] == "Succeeded", json.dumps(tj["status"], indent=1)
    assert tj["status"]["progress"]["step"] == 4
    cks = sorted(c["metadata"]["name"] for c in get(cluster, "ckpt", "-n", ns)["items"])
    assert cks == [f"{name}-final", f"{name}-step-000002"]
    final = checkpoint_settled(cluster, ns, f"{name}-final")
    assert final["status"]["phase"] == "Promoted", json.dumps(final["status"], indent=1)
    assert final["spec"]["type"] == "lora"

    model = cluster.pvc_root / ns / DEMO_CLAIM / "published" / ns / f"{mode}-model"
    assert not (model / "adapter_config.json").exists()  # merged: a standalone model
    cli = str(Path(sys.executable).parent / "vlm-trainer")
    data = str(demo_assets / "data" / "sft_eval.jsonl")
    ev = subprocess.run(
        [cli, "eval", "--model", str(model), "--data", data, "--limit", "4"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ev.returncode == 0, ev.stderr[-3000:]
    assert json.loads(ev.stdout)["records"] == 4
