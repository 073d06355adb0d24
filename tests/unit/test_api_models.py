"""The pydantic models: examples, aliases, defaults, status, and no heavy imports."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from vlm_operator.api import (
    Checkpoint,
    JobPhase,
    Mode,
    Progress,
    TrainerJob,
    TrainerJobSpec,
    TrainerJobStatus,
    TrainingShape,
    new_condition,
)

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").rglob("*.yaml"))
MODELS = {"TrainingShape": TrainingShape, "TrainerJob": TrainerJob, "Checkpoint": Checkpoint}


def load_examples() -> dict[str, list]:
    by_kind: dict[str, list] = {}
    for path in EXAMPLES:
        for doc in yaml.safe_load_all(path.read_text()):
            by_kind.setdefault(doc["kind"], []).append(MODELS[doc["kind"]].model_validate(doc))
    return by_kind


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: str(p.relative_to(REPO)))
def test_example_validates(path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        MODELS[doc["kind"]].model_validate(doc)


def test_examples_cover_what_the_issue_asks_for() -> None:
    ex = load_examples()
    shapes = {s.metadata.name: s.spec for s in ex["TrainingShape"]}
    big = shapes["qwen3-vl-8b-65k"]
    assert big.base_model == "Qwen/Qwen3-VL-8B-Instruct"
    assert (big.gpus_per_node, big.max_context) == (4, 65536)
    tiny = shapes["tiny-cpu"]
    assert (tiny.gpus_per_node, tiny.nodes) == (0, 1)
    assert {j.spec.mode for j in ex["TrainerJob"]} == {Mode.SFT, Mode.DPO, Mode.RL}
    assert any(c.spec.promote is not None for c in ex["Checkpoint"])
    # Every job runs on a shape the examples define.
    assert {j.spec.shape for j in ex["TrainerJob"]} <= set(shapes)


def _strings(node):
    if isinstance(node, dict):
        for v in node.values():
            yield from _strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v)
    elif isinstance(node, str):
        yield node


def test_examples_write_floats_portably() -> None:
    # PyYAML (YAML 1.1) reads 2e-4 as a string, kubectl reads it as a number: examples must mean
    # the same to both, so no value may be a string that looks like a number.
    number = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")
    for path in EXAMPLES:
        for doc in yaml.safe_load_all(path.read_text()):
            for value in _strings(doc):
                quoted = f'"{value}"' in path.read_text()
                assert quoted or not number.match(value), f"{path.name}: {value!r}"


def test_camel_case_on_the_wire_snake_case_in_python() -> None:
    spec = TrainerJobSpec.model_validate(
        {"shape": "s", "mode": "rl", "dataset": {"uri": "file:///d.jsonl"},
         "hyperparameters": {"loraRank": 8, "rl": {"completionsPerPrompt": 4}}}
    )  # fmt: skip
    assert spec.hyperparameters.lora_rank == 8
    assert spec.rl_settings().completions_per_prompt == 4
    wire = spec.to_api()
    assert wire["hyperparameters"]["loraRank"] == 8
    assert wire["hyperparameters"]["rl"]["completionsPerPrompt"] == 4
    assert "lora_rank" not in wire["hyperparameters"]
    # Python names work on input too (the operator builds objects this way).
    same = TrainerJobSpec(shape="s", mode="rl", dataset={"uri": "file:///d.jsonl"})
    assert same.mode == Mode.RL


def test_defaults_a_user_can_rely_on() -> None:
    spec = TrainerJobSpec.model_validate(
        {"shape": "s", "mode": "dpo", "dataset": {"uri": "pvc://data/x.jsonl"}}
    )
    hp = spec.hyperparameters
    assert hp.learning_rate > 0 and hp.epochs == 1 and hp.batch_size >= 1
    assert hp.lora_rank == 0  # full fine-tune unless asked
    assert hp.dpo is None and spec.dpo_settings().beta == 0.1
    assert spec.dpo_settings().loss_type == "sigmoid"
    assert spec.checkpointing.every_steps > 0
    assert spec.suspend is False and spec.backoff_limit >= 0
    assert spec.to_api()["dataset"]["format"] == "jsonl"


def test_shape_helpers() -> None:
    shape = TrainingShape.model_validate(
        yaml.safe_load((REPO / "examples/shapes/qwen3-vl-8b-65k.yaml").read_text())
    )
    assert shape.spec.processor_ref == "Qwen/Qwen3-VL-8B-Instruct"
    assert shape.spec.total_gpus == 4
    assert shape.spec.gpu_resource == "nvidia.com/gpu"


def test_status_round_trip() -> None:
    status = TrainerJobStatus(
        phase=JobPhase.RUNNING,
        observed_generation=2,
        conditions=[new_condition("Running", True, "Training", observed_generation=2)],
        progress=Progress(step=10, total_steps=100, percent=10, loss=1.25, epoch=0.1),
        latest_checkpoint="job-step-000010",
        attempts=1,
    )
    wire = status.to_api()
    assert wire["progress"]["totalSteps"] == 100
    assert wire["conditions"][0]["lastTransitionTime"].endswith("Z")
    assert TrainerJobStatus.model_validate(wire) == status


def test_status_tolerates_unknown_fields_spec_does_not() -> None:
    TrainerJobStatus.model_validate({"phase": "Running", "fromTheFuture": 1})
    with pytest.raises(ValueError):
        TrainerJobSpec.model_validate(
            {"shape": "s", "mode": "sft", "dataset": {"uri": "file:///x"}, "typo": 1}
        )


def test_whole_object_from_the_api() -> None:
    body = yaml.safe_load((REPO / "examples/jobs/sft.yaml").read_text())
    body["metadata"].update(namespace="ns", uid="u-1", generation=1, managedFields=[{}])
    body["status"] = {"phase": "Pending"}
    job = TrainerJob.model_validate(body)
    assert job.metadata.namespace == "ns" and job.status.phase == JobPhase.PENDING
    assert job.to_api()["apiVersion"] == "vlmtrain.dev/v1alpha1"


def test_models_import_without_kubernetes_or_torch() -> None:
    code = (
        "import sys, vlm_operator.api, vlm_operator.crdgen; "
        "bad = {'torch', 'kubernetes', 'kopf'} & set(sys.modules); "
        "sys.exit(f'imported {bad}' if bad else 0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
