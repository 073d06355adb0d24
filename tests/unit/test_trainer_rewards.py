"""RL rewards (built-ins, module:function, errors) and the DPO/RL config keys."""

from __future__ import annotations

import sys
import types

import pytest
from vlm_trainer.config import DPOConfig, RLConfig, load_config
from vlm_trainer.rewards import RewardError, extract_answer, load_reward

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "name,completion,fields,expected",
    [
        ("exact_match", " Red \n", {"answer": "red"}, 1.0),
        ("exact_match", "red car", {"answer": "red"}, 0.0),
        ("exact_match", "<think>hmm</think><answer>blue</answer>", {"answer": "blue"}, 1.0),
        ("regex_match", "the answer is 42.", {"pattern": r"\b42\b"}, 1.0),
        ("regex_match", "the answer is 420", {"pattern": r"\b42\b"}, 0.0),
        ("regex_match", "I think it is green", {"answer": "green"}, 1.0),
        ("numeric_match", "so x = 1,000.0", {"answer": 1000}, 1.0),
        ("numeric_match", "3.5 then 7", {"answer": "7"}, 1.0),
        ("numeric_match", "<answer>-2.5</answer> not 3", {"answer": -2.5}, 1.0),
        ("numeric_match", "no number", {"answer": 1}, 0.0),
        ("format_check", "<think>a</think>\n<answer>b</answer>", {}, 1.0),
        ("format_check", "<answer>b</answer>", {}, 0.0),
        ("format_check", "A: yes", {"format": r"A: (yes|no)"}, 1.0),
    ],
)
def test_builtin_rewards(name, completion, fields, expected):
    assert load_reward(name)(completion.strip(), fields) == expected


def test_extract_answer_takes_the_last_tag():
    assert extract_answer("<answer>a</answer> <answer> b </answer>") == "b"
    assert extract_answer("  plain ") == "plain"


def test_user_reward_function(monkeypatch):
    mod = types.ModuleType("my_rewards")
    mod.length = lambda completion, fields: min(1.0, len(completion) / fields["target"])
    mod.broken = lambda completion, fields: 1 / 0
    mod.nan = lambda completion, fields: float("nan")
    monkeypatch.setitem(sys.modules, "my_rewards", mod)
    assert load_reward("my_rewards:length")("abc", {"target": 6}) == 0.5
    with pytest.raises(RewardError, match="'my_rewards:broken' failed: ZeroDivisionError"):
        load_reward("my_rewards:broken")("x", {})
    with pytest.raises(RewardError, match="returned nan"):
        load_reward("my_rewards:nan")("x", {})
    with pytest.raises(RewardError, match="has no function 'missing'"):
        load_reward("my_rewards:missing")
    with pytest.raises(RewardError, match="cannot import 'no_such_module_xyz'"):
        load_reward("no_such_module_xyz:f")
    with pytest.raises(RewardError, match="unknown reward 'exact'"):
        load_reward("exact")
    with pytest.raises(RewardError, match="no 'answer' field"):
        load_reward("exact_match")("red", {})


BASE = dict(base_model="m", dataset="d", log_path="l")


def test_dpo_and_rl_config_defaults_match_the_operator():
    dpo = DPOConfig(**BASE)
    assert (dpo.mode, dpo.beta, dpo.dpo_loss, dpo.cache_reference_logprobs) == (
        "dpo",
        0.1,
        "sigmoid",
        False,
    )
    rl = RLConfig(**BASE)
    assert rl.mode == "rl"
    assert (rl.completions_per_prompt, rl.max_completion_tokens, rl.temperature, rl.top_p) == (
        8,
        256,
        1.0,
        1.0,
    )
    assert (rl.kl_beta, rl.eps_clip, rl.eps_clip_high, rl.reward) == (0.0, 0.2, None, "exact_match")


def test_operator_rendered_keys_validate(tmp_path):
    """The keys ``vlm_operator.builders.config`` renders for each mode."""
    DPOConfig(**BASE, beta=0.5, dpo_loss="ipo", cache_reference_logprobs=True, lora_rank=8)
    RLConfig(**BASE, completions_per_prompt=4, max_completion_tokens=32, temperature=0.7,
             top_p=0.9, kl_beta=0.04, eps_clip=0.2, eps_clip_high=0.28,
             reward="my_pkg.rewards:score")  # fmt: skip


@pytest.mark.parametrize(
    "cls,override,fragment",
    [
        (DPOConfig, "dpo_loss=kto", "dpo_loss"),
        (DPOConfig, "beta=0", "beta"),
        (DPOConfig, "kl_beta=0.1", "kl_beta: Extra inputs are not permitted"),
        (RLConfig, "completions_per_prompt=1", "completions_per_prompt"),
        (RLConfig, "eps_clip_high=0.1", "eps_clip_high must be at least eps_clip"),
        (RLConfig, "reward=not valid!", "reward"),
        (RLConfig, "beta=0.1", "beta: Extra inputs are not permitted"),
    ],
)
def test_bad_keys_are_named(tmp_path, cls, override, fragment):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("base_model: m\ndataset: d\nlog_path: l\n")
    with pytest.raises(Exception, match=fragment):
        load_config(cls, cfg, [override])
