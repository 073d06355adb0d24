"""Trainer config: YAML + key=value overrides, cookbook key names, and no torch import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from vlm_trainer.config import ConfigError, SFTConfig, load_config, local_path, parse_overrides

pytestmark = pytest.mark.unit


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "cfg.yaml"
    p.write_text(text)
    return p


def test_yaml_and_overrides(tmp_path):
    p = write(
        tmp_path, "base_model: m\ndataset: file:///data/x.jsonl\nlog_path: /logs\nepochs: 2\n"
    )
    cfg = load_config(SFTConfig, p, ["epochs=5", "learning_rate=2e-4", "lora_rank=8",
                                     "freeze_vision=true", "job_name=my-job"])  # fmt: skip
    assert (cfg.epochs, cfg.learning_rate, cfg.lora_rank, cfg.freeze_vision) == (5, 2e-4, 8, True)
    assert cfg.job_name == "my-job"
    assert local_path(cfg.dataset) == Path("/data/x.jsonl")
    assert cfg.checkpoints_path == Path("/logs/checkpoints")
    assert cfg.processor_path == "m"  # tokenizer_model defaults to base_model


def test_every_cookbook_key_is_accepted(tmp_path):
    keys = dict(base_model="m", tokenizer_model="t", dataset="d", eval_dataset="e", log_path="l",
                max_seq_len=1024, epochs=1, batch_size=2, gradient_accumulation_steps=4,
                learning_rate=1e-5, lora_rank=0, lora_alpha=16, warmup_steps=3, weight_decay=0.1,
                adam_beta1=0.9, adam_beta2=0.95, adam_eps=1e-8, grad_clip_norm=1.0,
                save_every_steps=50, keep_last=2, seed=7, freeze_vision=True,
                train_on="last_assistant", lr_schedule="linear", gradient_checkpointing=True,
                on_truncation="error", checkpoint_dir="/ckpt")  # fmt: skip
    cfg = SFTConfig.model_validate(keys)
    assert cfg.model_dump(include=set(keys)) == keys
    assert cfg.checkpoints_path == Path("/ckpt")


@pytest.mark.parametrize(
    "override,fragment",
    [
        ("learning_rte=1", "learning_rte: Extra inputs are not permitted"),
        ("learning_rate=-1", "learning_rate: Input should be greater than 0"),
        ("train_on=everything", "train_on: Input should be 'all_assistant' or 'last_assistant'"),
        ("epochs", "expected key=value"),
        ("tokens_per_batch=100", "tokens_per_batch (100) must be at least max_seq_len (4096)"),
    ],
)
def test_errors_name_the_key(tmp_path, override, fragment):
    p = write(tmp_path, "base_model: m\ndataset: d\nlog_path: l\n")
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        load_config(SFTConfig, p, [override])


def test_missing_required_keys_and_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="base_model: Field required"):
        load_config(SFTConfig, write(tmp_path, "dataset: d\nlog_path: l\n"))
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(SFTConfig, write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match="No such file"):
        load_config(SFTConfig, tmp_path / "nope.yaml")


def test_remote_dataset_uris_are_refused():
    with pytest.raises(ConfigError, match="only local paths"):
        local_path("s3://bucket/x.jsonl")
    assert local_path("file:///a%20b/x.jsonl") == Path("/a b/x.jsonl")


def test_overrides_are_yaml_values():
    assert parse_overrides(["a=1", "b=true", "c=x", "d=[1, 2]", "e="]) == {
        "a": 1, "b": True, "c": "x", "d": [1, 2], "e": None}  # fmt: skip


def test_config_module_does_not_import_torch():
    """The operator imports vlm_trainer.config and must stay torch-free."""
    code = "import sys, vlm_trainer.config; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
