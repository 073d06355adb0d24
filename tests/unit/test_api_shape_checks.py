"""What CEL cannot check (a job against its shape) and the shape's version hash."""

from __future__ import annotations

import pytest
from vlm_operator.api import (
    TrainerJobSpec,
    TrainingShapeSpec,
    max_seq_len,
    shape_version,
    shape_violations,
)

pytestmark = pytest.mark.unit


def shape(**kw) -> TrainingShapeSpec:
    return TrainingShapeSpec.model_validate({"baseModel": "org/m", "maxContext": 4096, **kw})


def job(**hp) -> TrainerJobSpec:
    return TrainerJobSpec.model_validate(
        {"shape": "s", "mode": hp.pop("mode", "sft"), "dataset": {"uri": "file:///d.jsonl"},
         "hyperparameters": hp}
    )  # fmt: skip


def test_a_fitting_job_has_no_violations() -> None:
    assert shape_violations(job(loraRank=16, maxSeqLen=4096), shape(), "s") == []


@pytest.mark.parametrize(
    ("job_kw", "shape_kw", "field"),
    [
        ({"loraRank": 64}, {"maxLoraRank": 32}, "spec.hyperparameters.loraRank"),
        ({"loraRank": 0}, {"allowFullFineTune": False}, "spec.hyperparameters.loraRank"),
        ({"maxSeqLen": 8192}, {}, "spec.hyperparameters.maxSeqLen"),
        ({"mode": "rl"}, {"modes": ["sft", "dpo"]}, "spec.mode"),
    ],
)
def test_each_violation_names_the_field(job_kw, shape_kw, field) -> None:
    (problem,) = shape_violations(job(**job_kw), shape(**shape_kw), "big")
    assert problem.startswith(field + ":") and "big" in problem


def test_violations_add_up() -> None:
    problems = shape_violations(
        job(mode="dpo", loraRank=512, maxSeqLen=10_000), shape(modes=["sft"]), "s"
    )
    assert len(problems) == 3


def test_max_seq_len_defaults_to_the_shape() -> None:
    assert max_seq_len(job(), shape()) == 4096
    assert max_seq_len(job(maxSeqLen=1024), shape()) == 1024


def test_shape_version_ignores_spelling_but_not_content() -> None:
    a = shape(gpusPerNode=4, tolerations=[{"key": "gpu", "operator": "Exists"}])
    # Defaults written out, keys in another order: same shape, same version.
    b = TrainingShapeSpec.model_validate(
        {"tolerations": [{"operator": "Exists", "key": "gpu"}], "gpusPerNode": 4, "nodes": 1,
         "maxContext": 4096, "precision": "auto", "baseModel": "org/m"}
    )  # fmt: skip
    assert shape_version(a) == shape_version(b)
    assert shape_version(a) != shape_version(shape(gpusPerNode=8))
    assert len(shape_version(a)) == 16
