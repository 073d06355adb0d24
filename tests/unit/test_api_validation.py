"""Invalid manifests, one broken field each, and the pydantic models' verdict on them.

``INVALID_CASES`` is shared with ``tests/integration/test_crds.py``, where the apiserver must
reject every case with a message naming ``field``. Here the models must reject them too (where
``python`` is True; pydantic's lax mode accepts a few spellings the apiserver does not, and
those cases say so), so a spec the operator validates in Python fails the same way ``kubectl
apply`` does.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import pytest
from pydantic import ValidationError
from vlm_operator.api import Checkpoint, TrainerJob, TrainingShape

pytestmark = pytest.mark.unit

DELETE = object()  # a patch value that removes the key


def base_shape() -> dict[str, Any]:
    return {
        "apiVersion": "vlmtrain.dev/v1alpha1",
        "kind": "TrainingShape",
        "metadata": {"name": "case-shape"},
        "spec": {"baseModel": "Qwen/Qwen3-VL-8B-Instruct", "maxContext": 4096, "gpusPerNode": 1},
    }


def base_job() -> dict[str, Any]:
    return {
        "apiVersion": "vlmtrain.dev/v1alpha1",
        "kind": "TrainerJob",
        "metadata": {"name": "case-job"},
        "spec": {
            "shape": "case-shape",
            "mode": "sft",
            "dataset": {"uri": "pvc://data/train.jsonl"},
        },
    }


def base_checkpoint() -> dict[str, Any]:
    return {
        "apiVersion": "vlmtrain.dev/v1alpha1",
        "kind": "Checkpoint",
        "metadata": {"name": "case-job-step-000010"},
        "spec": {
            "trainerJob": "case-job",
            "step": 10,
            "type": "lora",
            "baseModel": "Qwen/Qwen3-VL-8B-Instruct",
            "uri": "pvc://ckpt/case-job/step-000010",
        },
    }


BASES = {"TrainingShape": base_shape, "TrainerJob": base_job, "Checkpoint": base_checkpoint}
MODELS = {"TrainingShape": TrainingShape, "TrainerJob": TrainerJob, "Checkpoint": Checkpoint}


def merge(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """JSON-merge-patch-like: dicts merge, DELETE removes, anything else replaces."""
    out = copy.deepcopy(target)
    for key, value in patch.items():
        if value is DELETE:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@dataclass(frozen=True)
class Case:
    id: str
    kind: str
    patch: dict[str, Any]
    field: str  # the path the apiserver's message must name
    python: bool = True  # whether pydantic rejects it too
    notes: str = ""

    def manifest(self) -> dict[str, Any]:
        return merge(BASES[self.kind](), self.patch)


def _hp(**kw: Any) -> dict[str, Any]:
    return {"spec": {"hyperparameters": kw}}


J, S, C = "TrainerJob", "TrainingShape", "Checkpoint"
INVALID_CASES: list[Case] = [
    # --- TrainerJob: enums and required fields
    Case("job-mode-unknown", J, {"spec": {"mode": "ppo"}}, "spec.mode"),
    Case("job-dataset-missing", J, {"spec": {"dataset": DELETE}}, "spec.dataset"),
    Case("job-shape-bad-name", J, {"spec": {"shape": "Big_Shape"}}, "spec.shape"),
    Case("job-dataset-format", J, {"spec": {"dataset": {"format": "csv"}}}, "spec.dataset.format"),
    # --- TrainerJob: hyperparameter ranges
    Case("job-lr-zero", J, _hp(learningRate=0), "spec.hyperparameters.learningRate"),
    Case("job-lr-negative", J, _hp(learningRate=-1.0e-4), "spec.hyperparameters.learningRate"),
    Case("job-lora-rank-negative", J, _hp(loraRank=-1), "spec.hyperparameters.loraRank"),
    Case("job-batch-size-zero", J, _hp(batchSize=0), "spec.hyperparameters.batchSize"),
    Case("job-epochs-zero", J, _hp(epochs=0), "spec.hyperparameters.epochs"),
    Case(
        "job-grad-accum-zero",
        J,
        _hp(gradientAccumulationSteps=0),
        "spec.hyperparameters.gradientAccumulationSteps",
    ),
    Case("job-max-seq-len-tiny", J, _hp(maxSeqLen=8), "spec.hyperparameters.maxSeqLen"),
    Case("job-warmup-negative", J, _hp(warmupSteps=-1), "spec.hyperparameters.warmupSteps"),
    Case("job-weight-decay-negative", J, _hp(weightDecay=-0.1), "spec.hyperparameters.weightDecay"),
    Case("job-adam-beta1-one", J, _hp(adamBeta1=1.0), "spec.hyperparameters.adamBeta1"),
    Case("job-adam-beta2-negative", J, _hp(adamBeta2=-0.1), "spec.hyperparameters.adamBeta2"),
    Case("job-adam-eps-zero", J, _hp(adamEps=0), "spec.hyperparameters.adamEps"),
    Case(
        "job-init-from-both",
        J,
        {"spec": {"initFrom": {"checkpoint": "a-final", "model": "m"}}},
        "spec.initFrom",
    ),
    Case("job-init-from-empty", J, {"spec": {"initFrom": {}}}, "spec.initFrom"),
    Case(
        "job-promote-best-without-eval",
        J,
        {"spec": {"promote": {"outputModel": "m", "select": "best"}}},
        "spec.promote.select",
    ),
    Case(
        "job-promote-mode",
        J,
        {"spec": {"promote": {"outputModel": "m", "mode": "lowest"}}},
        "spec.promote.mode",
    ),
    Case("job-lr-schedule", J, _hp(lrSchedule="step"), "spec.hyperparameters.lrSchedule"),
    Case(
        "job-unknown-field",
        J,
        _hp(learningrate=1.0e-4),
        "spec.hyperparameters.learningrate",
        notes="kubectl's strict field validation",
    ),
    # --- TrainerJob: cross-field rules
    Case("job-lora-alpha-full-ft", J, _hp(loraAlpha=32), "spec.hyperparameters.loraAlpha"),
    Case(
        "job-warmup-over-max-steps",
        J,
        _hp(warmupSteps=100, maxSteps=10),
        "spec.hyperparameters.warmupSteps",
    ),
    Case("job-dpo-with-sft", J, _hp(dpo={"beta": 0.1}), "spec.hyperparameters.dpo"),
    Case(
        "job-packing-with-dpo",
        J,
        {"spec": {"mode": "dpo", "hyperparameters": {"tokensPerBatch": 8192}}},
        "spec.hyperparameters.tokensPerBatch",
    ),
    Case("job-packing-tiny", J, _hp(tokensPerBatch=8), "spec.hyperparameters.tokensPerBatch"),
    Case(
        "job-rl-with-dpo",
        J,
        {"spec": {"mode": "dpo", "hyperparameters": {"rl": {"temperature": 0.7}}}},
        "spec.hyperparameters.rl",
    ),
    # --- TrainerJob: DPO and RL settings
    Case(
        "job-dpo-loss-type",
        J,
        {"spec": {"mode": "dpo", "hyperparameters": {"dpo": {"lossType": "kto"}}}},
        "spec.hyperparameters.dpo.lossType",
    ),
    Case(
        "job-dpo-beta-zero",
        J,
        {"spec": {"mode": "dpo", "hyperparameters": {"dpo": {"beta": 0}}}},
        "spec.hyperparameters.dpo.beta",
    ),
    Case(
        "job-rl-group-of-one",
        J,
        {"spec": {"mode": "rl", "hyperparameters": {"rl": {"completionsPerPrompt": 1}}}},
        "spec.hyperparameters.rl.completionsPerPrompt",
    ),
    Case(
        "job-rl-top-p",
        J,
        {"spec": {"mode": "rl", "hyperparameters": {"rl": {"topP": 1.5}}}},
        "spec.hyperparameters.rl.topP",
    ),
    Case(
        "job-rl-clip-high-below-clip",
        J,
        {"spec": {"mode": "rl", "hyperparameters": {"rl": {"epsClip": 0.2, "epsClipHigh": 0.1}}}},
        "spec.hyperparameters.rl.epsClipHigh",
    ),
    Case(
        "job-rl-reward-name",
        J,
        {"spec": {"mode": "rl", "hyperparameters": {"rl": {"reward": "rm -rf /"}}}},
        "spec.hyperparameters.rl.reward",
    ),
    # --- TrainerJob: URIs
    Case(
        "job-uri-s3", J, {"spec": {"dataset": {"uri": "s3://bucket/x.jsonl"}}}, "spec.dataset.uri"
    ),
    Case(
        "job-uri-https", J, {"spec": {"dataset": {"uri": "https://h/x.jsonl"}}}, "spec.dataset.uri"
    ),
    Case("job-uri-claim-only", J, {"spec": {"dataset": {"uri": "pvc://data"}}}, "spec.dataset.uri"),
    Case(
        "job-uri-bad-claim", J, {"spec": {"dataset": {"uri": "pvc://Data_1/x"}}}, "spec.dataset.uri"
    ),
    Case(
        "job-uri-dot-dot",
        J,
        {"spec": {"dataset": {"uri": "pvc://data/../x.jsonl"}}},
        "spec.dataset.uri",
    ),
    Case(
        "job-eval-uri-relative",
        J,
        {"spec": {"evalDataset": {"uri": "data/eval.jsonl"}}},
        "spec.evalDataset.uri",
    ),
    Case(
        "job-storage-gs",
        J,
        {"spec": {"checkpointing": {"storage": "gs://bucket/ckpt"}}},
        "spec.checkpointing.storage",
    ),
    Case(
        "job-every-steps-negative",
        J,
        {"spec": {"checkpointing": {"everySteps": -1}}},
        "spec.checkpointing.everySteps",
    ),
    # --- TrainerJob: names and the rest
    Case(
        "job-output-model-upper",
        J,
        {"spec": {"promote": {"outputModel": "My_Model"}}},
        "spec.promote.outputModel",
    ),
    Case(
        "job-output-model-too-long",
        J,
        {"spec": {"promote": {"outputModel": "m" * 64}}},
        "spec.promote.outputModel",
    ),
    Case(
        "job-output-model-leading-dash",
        J,
        {"spec": {"promote": {"outputModel": "-model"}}},
        "spec.promote.outputModel",
    ),
    Case("job-name-too-long", J, {"metadata": {"name": "j" * 53}}, "metadata.name"),
    Case("job-name-leading-digit", J, {"metadata": {"name": "1-job"}}, "metadata.name"),
    Case("job-backoff-negative", J, {"spec": {"backoffLimit": -1}}, "spec.backoffLimit"),
    Case(
        "job-deadline-zero", J, {"spec": {"activeDeadlineSeconds": 0}}, "spec.activeDeadlineSeconds"
    ),
    Case(
        "job-suspend-string",
        J,
        {"spec": {"suspend": "yes"}},
        "spec.suspend",
        python=False,
        notes="pydantic's lax mode reads 'yes' as True; the apiserver wants a boolean",
    ),
    Case(
        "job-env-value-and-value-from",
        J,
        {
            "spec": {
                "podOverrides": {
                    "env": [
                        {
                            "name": "API_TOKEN",
                            "value": "x",
                            "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}},
                        }
                    ]
                }
            }
        },
        "spec.podOverrides.env[0].valueFrom",
    ),
    Case(
        "job-env-duplicate",
        J,
        {"spec": {"podOverrides": {"env": [{"name": "A", "value": "1"}, {"name": "A"}]}}},
        "spec.podOverrides.env[1]",
    ),
    Case(
        "job-env-reserved-ld-preload",
        J,
        {"spec": {"podOverrides": {"env": [{"name": "LD_PRELOAD", "value": "/x.so"}]}}},
        "spec.podOverrides.env[0].name",
    ),
    Case(
        "job-env-reserved-checkpoint-uri",
        J,
        {"spec": {"podOverrides": {"env": [{"name": "A"}, {"name": "VLM_CHECKPOINT_URI"}]}}},
        "spec.podOverrides.env[1].name",
    ),
    Case(
        "job-toleration-without-key",
        J,
        {"spec": {"podOverrides": {"tolerations": [{"operator": "Exists"}]}}},
        "spec.podOverrides.tolerations",
    ),
    Case(
        "job-system-priority-class",
        J,
        {"spec": {"podOverrides": {"priorityClassName": "system-node-critical"}}},
        "spec.podOverrides.priorityClassName",
    ),
    Case(
        "job-mount-unknown-volume",
        J,
        {"spec": {"podOverrides": {"volumeMounts": [{"name": "cache", "mountPath": "/cache"}]}}},
        "spec.podOverrides.volumeMounts",
    ),
    # --- TrainingShape
    Case("shape-max-context-missing", S, {"spec": {"maxContext": DELETE}}, "spec.maxContext"),
    Case("shape-gpus-negative", S, {"spec": {"gpusPerNode": -1}}, "spec.gpusPerNode"),
    Case("shape-nodes-zero", S, {"spec": {"nodes": 0}}, "spec.nodes"),
    Case("shape-base-model-url", S, {"spec": {"baseModel": "https://hf.co/x"}}, "spec.baseModel"),
    Case("shape-precision", S, {"spec": {"precision": "fp8"}}, "spec.precision"),
    Case("shape-modes-empty", S, {"spec": {"modes": []}}, "spec.modes"),
    Case("shape-modes-duplicate", S, {"spec": {"modes": ["sft", "sft"]}}, "spec.modes[1]"),
    Case(
        "shape-gpu-in-resources",
        S,
        {"spec": {"resources": {"limits": {"nvidia.com/gpu": 4}}}},
        "spec.resources",
    ),
    Case(
        "shape-memory-not-quantity",
        S,
        {"spec": {"resources": {"requests": {"memory": "lots"}}}},
        "spec.resources.requests.memory",
    ),
    Case(
        "shape-toleration-exists-with-value",
        S,
        {"spec": {"tolerations": [{"key": "gpu", "operator": "Exists", "value": "x"}]}},
        "spec.tolerations[0].value",
    ),
    Case(
        "shape-toleration-no-key-with-equal",
        S,
        {"spec": {"tolerations": [{"value": "x", "effect": "NoSchedule"}]}},
        "spec.tolerations[0].key",
    ),
    # --- Checkpoint
    Case("ckpt-type-unknown", C, {"spec": {"type": "merged"}}, "spec.type"),
    Case("ckpt-step-negative", C, {"spec": {"step": -1}}, "spec.step"),
    Case("ckpt-uri-ftp", C, {"spec": {"uri": "ftp://host/ckpt"}}, "spec.uri"),
    Case("ckpt-base-model-url", C, {"spec": {"baseModel": "http://x/y"}}, "spec.baseModel"),
    Case("ckpt-job-missing", C, {"spec": {"trainerJob": DELETE}}, "spec.trainerJob"),
    Case(
        "ckpt-output-model-upper",
        C,
        {"spec": {"promote": {"outputModel": "UPPER"}}},
        "spec.promote.outputModel",
    ),
]


def test_table_is_big_enough_and_unique() -> None:
    assert len(INVALID_CASES) >= 25
    assert len({c.id for c in INVALID_CASES}) == len(INVALID_CASES)


@pytest.mark.parametrize("kind", sorted(BASES))
def test_base_manifests_are_valid(kind: str) -> None:
    MODELS[kind].model_validate(BASES[kind]())


@pytest.mark.parametrize("case", [c for c in INVALID_CASES if c.python], ids=lambda c: c.id)
def test_models_reject(case: Case) -> None:
    with pytest.raises(ValidationError) as err:
        MODELS[case.kind].model_validate(case.manifest())
    # The error names the field: in its location (field-level checks) or its message (rules
    # spanning fields, whose messages start with the field's name).
    leaf = case.field.rsplit(".", 1)[-1].split("[")[0]
    assert leaf.lower() in str(err.value).lower(), str(err.value)


@pytest.mark.parametrize("case", [c for c in INVALID_CASES if not c.python], ids=lambda c: c.id)
def test_lax_cases_are_really_accepted_by_pydantic(case: Case) -> None:
    # If pydantic starts rejecting one of these, flip its `python` flag.
    MODELS[case.kind].model_validate(case.manifest())
