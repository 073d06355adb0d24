"""spec.dataLimits: a job tightens the per-line limits within its shape's bounds (else the
trainer's defaults), and the effective values reach the trainer config the pods read."""

from __future__ import annotations

import copy

import pytest
import yaml
from vlm_operator.builders.job import trainer_workload
from vlm_operator.reconcile.job import admission
from vlm_operator.settings import Settings
from vlm_trainer.config import SFTConfig
from vlm_trainer.data.limits import DataLimits as TrainerDefaults

from tests.unit.manifests import SHAPE, TJ

pytestmark = pytest.mark.unit


def _objs(job_limits=None, shape_limits=None):
    tj, shape = copy.deepcopy(TJ), copy.deepcopy(SHAPE)
    if job_limits is not None:
        tj["spec"]["dataLimits"] = job_limits
    if shape_limits is not None:
        shape["spec"]["dataLimits"] = shape_limits
    return tj, shape


def _config(tj, shape) -> dict:
    (config_map,) = [
        o for o in trainer_workload(tj, shape, "pvc://c", "img") if o["kind"] == "ConfigMap"
    ]
    return yaml.safe_load(config_map["data"]["config.yaml"])


def test_a_job_may_tighten_its_limits_and_the_trainer_gets_them() -> None:
    tj, shape = _objs({"maxLineBytes": 4096, "maxImagesPerRecord": 2})
    blocked, _ = admission(tj, shape, Settings())
    assert blocked is None, blocked
    cfg = _config(tj, shape)
    assert cfg["max_line_bytes"] == 4096 and cfg["max_images_per_record"] == 2
    assert "max_record_pixels" not in cfg  # unset everywhere: the trainer's default
    assert SFTConfig.model_validate(cfg).max_line_bytes == 4096  # the trainer accepts them


def test_a_job_may_not_widen_past_its_shape_or_the_trainer_default() -> None:
    tj, shape = _objs({"maxImagesPerRecord": 10}, {"maxImagesPerRecord": 8})
    blocked, children = admission(tj, shape, Settings())
    assert blocked is not None and not children
    (failed,) = [c for c in blocked["conditions"] if c["type"] == "Failed"]
    assert failed["reason"] == "InvalidSpec"
    assert "spec.dataLimits.maxImagesPerRecord: 10 exceeds" in failed["message"]
    assert "maxImagesPerRecord 8" in failed["message"]
    too_long = TrainerDefaults().max_line_bytes + 1
    blocked, _ = admission(*_objs({"maxLineBytes": too_long}), Settings())
    assert blocked is not None and "spec.dataLimits.maxLineBytes" in str(blocked["conditions"])
    assert "the trainer's default" in str(blocked["conditions"])


def test_the_shape_bound_applies_when_the_job_sets_nothing() -> None:
    tj, shape = _objs(None, {"maxRecordPixels": 20_000_000, "maxLineBytes": 1 << 20})
    assert admission(tj, shape, Settings())[0] is None
    cfg = _config(tj, shape)
    assert cfg["max_record_pixels"] == 20_000_000 and cfg["max_line_bytes"] == 1 << 20
    # A shape may widen a limit past the trainer's default; its jobs may then use it.
    wide = TrainerDefaults().max_images_per_record * 2
    assert (
        admission(*_objs({"maxImagesPerRecord": wide}, {"maxImagesPerRecord": wide}), Settings())[0]
        is None
    )
