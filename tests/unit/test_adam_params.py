"""The seed's AdamParams (beta1, beta2, eps, weight decay) from the TrainerJob API to the
trainer's config and into torch's AdamW."""

from __future__ import annotations

import copy

import pytest
import yaml
from vlm_operator.builders.config import validate_for_trainer
from vlm_operator.builders.job import trainer_workload

from tests.unit.manifests import SHAPE, TJ

pytestmark = pytest.mark.unit


def _config(hp: dict) -> dict:
    job = copy.deepcopy(TJ)
    job["spec"]["hyperparameters"] = hp
    objs = {o["kind"]: o for o in trainer_workload(job, SHAPE, "pvc://c", "img:1")}
    return yaml.safe_load(objs["ConfigMap"]["data"]["config.yaml"])


def test_adam_params_reach_the_trainer_config() -> None:
    hp = {"adamBeta1": 0.8, "adamBeta2": 0.95, "adamEps": 1e-6, "weightDecay": 0.01}
    cfg = _config(hp)
    assert (cfg["adam_beta1"], cfg["adam_beta2"], cfg["adam_eps"]) == (0.8, 0.95, 1e-6)
    assert cfg["weight_decay"] == 0.01
    assert validate_for_trainer("sft", cfg) is None


def test_adam_defaults_are_the_trainers() -> None:
    from vlm_trainer.config import SFTConfig

    cfg = _config({})
    trainer = SFTConfig(base_model="m", dataset="d", log_path="l")
    assert cfg["adam_beta1"] == trainer.adam_beta1 and cfg["adam_beta2"] == trainer.adam_beta2
    assert cfg["adam_eps"] == trainer.adam_eps


def test_adamw_gets_the_configured_betas_and_eps() -> None:
    import torch
    from vlm_trainer.config import SFTConfig
    from vlm_trainer.recipes.base import Recipe

    recipe = Recipe.__new__(Recipe)
    recipe.cfg = SFTConfig(
        base_model="m", dataset="d", log_path="l", adam_beta1=0.7, adam_beta2=0.9, adam_eps=1e-5
    )
    recipe.model = torch.nn.Linear(4, 4)
    group = recipe._build_optimizer().param_groups[0]
    assert group["betas"] == (0.7, 0.9) and group["eps"] == 1e-5
