"""The memory model and the shape admission it drives (Ready=False/DoesNotFit)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from vlm_operator.api import TrainingShapeSpec
from vlm_operator.reconcile.shape import desired_status
from vlm_operator.reconcile.shape_fit import does_not_fit, quantity_bytes
from vlm_trainer import memory_model as mm

pytestmark = pytest.mark.unit

EXAMPLE = Path(__file__).parents[2] / "examples" / "shapes" / "qwen3-vl-8b-65k.yaml"
QWEN8B = mm.KNOWN["Qwen/Qwen3-VL-8B-Instruct"]


def example(**spec) -> dict:
    body = yaml.safe_load(EXAMPLE.read_text())
    body["metadata"]["generation"] = 3
    body["spec"] |= spec
    return body


def ready(body: dict) -> dict:
    (cond,) = desired_status(body)["conditions"]
    return cond


def test_the_65k_example_fits_4_x_80gb_and_4_x_141gb() -> None:
    for memory in ("79Gi", "140Gi"):
        cond = ready(example(gpuMemory=memory))
        assert (cond["status"], cond["reason"]) == ("True", "Valid"), cond["message"]
    p80 = mm.predict(QWEN8B, mm.Setup(seq_len=65536, gpus=4))
    assert p80["total"] < 79 and p80["full_logits_loss"] > 79  # fits only with the chunked loss
    unchunked = mm.predict(QWEN8B, mm.Setup(seq_len=65536, gpus=4, chunked_loss=False))
    assert unchunked["total"] > 140


def test_too_few_gpus_is_refused_with_the_numbers() -> None:
    body = example(gpuMemory="80Gi", gpusPerNode=1)
    cond = ready(body)
    assert (cond["status"], cond["reason"]) == ("False", "DoesNotFit")
    assert "full fine-tuning at maxContext 65536 on 1 GPU(s)" in cond["message"]
    assert "states 65.3" in cond["message"] and "gpuMemory is 80.0 GiB" in cond["message"]
    assert "version" not in desired_status(body)  # jobs keep waiting for a shape that fits
    # LoRA needs far less: without full fine-tuning, 2 GPUs of 80 GB take the same context.
    assert (
        ready(example(gpuMemory="80Gi", gpusPerNode=2, allowFullFineTune=False))["reason"]
        == "Valid"
    )
    assert ready(example(gpuMemory="80Gi", gpusPerNode=2))["reason"] == "DoesNotFit"


def test_model_size_overrides_the_table_and_unknown_models_are_not_checked() -> None:
    huge = {"parameters": 70_000_000_000, "hiddenSize": 8192, "intermediateSize": 28672,
            "layers": 80, "vocabSize": 152064}  # fmt: skip
    assert ready(example(gpuMemory="141Gi", modelSize=huge))["reason"] == "DoesNotFit"
    unknown = TrainingShapeSpec.model_validate(
        {"baseModel": "org/unknown", "maxContext": 65536, "gpusPerNode": 1, "gpuMemory": "1Gi"}
    )
    assert does_not_fit(unknown) is None  # no architecture: nothing to predict with
    no_memory = TrainingShapeSpec.model_validate(
        {"baseModel": "Qwen/Qwen3-VL-8B-Instruct", "maxContext": 65536, "gpusPerNode": 1}
    )
    assert does_not_fit(no_memory) is None


def test_prediction_terms_scale_as_documented() -> None:
    a = mm.predict(QWEN8B, mm.Setup(seq_len=8192, gpus=4))
    b = mm.predict(QWEN8B, mm.Setup(seq_len=16384, gpus=4))
    c = mm.predict(QWEN8B, mm.Setup(seq_len=8192, gpus=8))
    assert b["checkpoints"] == pytest.approx(2 * a["checkpoints"], rel=1e-3)
    assert b["full_logits_loss"] == pytest.approx(2 * a["full_logits_loss"], rel=1e-3)
    assert c["states"] == pytest.approx(a["states"] / 2, rel=1e-3)
    assert b["loss"] < 1.2 * a["loss"]  # the chunked loss barely grows with the length
    assert mm.architecture_for("Qwen/Qwen3-VL-8B-Thinking") == QWEN8B


@pytest.mark.parametrize(
    ("q", "n"), [("80Gi", 80 * 2**30), ("141G", 141e9), ("1e3", 1000.0), (512, 512.0)]
)
def test_quantity_bytes(q, n) -> None:
    assert quantity_bytes(q) == n
