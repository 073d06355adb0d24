"""A TrainingShape and a TrainerJob as the apiserver returns them (uid, generation, a Ready
shape), for unit tests of the builders and of admission."""

from __future__ import annotations

from typing import Any

SHAPE: dict[str, Any] = {
    "apiVersion": "vlmtrain.dev/v1alpha1",
    "kind": "TrainingShape",
    "metadata": {"name": "big", "uid": "s-1", "generation": 1},
    "spec": {
        "baseModel": "Qwen/Qwen3-VL-8B-Instruct",
        "maxContext": 65536,
        "gpusPerNode": 4,
        "nodes": 1,
        "maxLoraRank": 64,
    },
    "status": {"version": "abc", "conditions": [{"type": "Ready", "status": "True"}]},
}
TJ: dict[str, Any] = {
    "apiVersion": "vlmtrain.dev/v1alpha1",
    "kind": "TrainerJob",
    "metadata": {"name": "run1", "namespace": "team-a", "uid": "tj-1", "generation": 1},
    "spec": {
        "shape": "big",
        "mode": "sft",
        "dataset": {"uri": "pvc://data/sets/train.jsonl"},
        "hyperparameters": {"learningRate": 1e-5, "loraRank": 16},
        "checkpointing": {"everySteps": 10, "storage": "pvc://ckpts"},
    },
}
