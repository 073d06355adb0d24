"""RL data checks: the built-in rewards declare the fields they need, and ``validate-data
--mode rl`` reports every prompt record without them, with its line (the seed's RL format has
no ``answer``, which the default reward, exact_match, compares against)."""

from __future__ import annotations

import json

import pytest
from PIL import Image
from vlm_trainer.cli import main
from vlm_trainer.data.images import encode_data_url
from vlm_trainer.rewards import load_reward, missing_fields, requires

pytestmark = pytest.mark.unit


def seed_rl_record(**extra) -> str:
    """The seed's 'RL with vision prompts' record (a real PNG instead of the elided one)."""
    url = encode_data_url(Image.new("RGB", (16, 16), "red"))
    text = "Solve the math problem shown in this image. Show your reasoning."
    content = [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": url}}]
    return json.dumps({"messages": [{"role": "user", "content": content}], **extra})


def test_builtins_declare_their_fields() -> None:
    assert missing_fields(load_reward("exact_match"), {"answer": "4"}) == []
    assert "'answer'" in missing_fields(load_reward("numeric_match"), {})[0]
    assert "'pattern' or 'answer'" in missing_fields(load_reward("regex_match"), {})[0]
    assert missing_fields(load_reward("regex_match"), {"pattern": "x"}) == []
    assert missing_fields(load_reward("format_check"), {}) == []

    @requires("answer")
    @requires("units")
    def mine(completion: str, fields: dict) -> float:
        return 0.0

    assert len(missing_fields(mine, {})) == 2 and missing_fields(mine, {"answer": 1}) != []


def test_validate_data_reports_the_seed_format_without_answer(tmp_path, capsys) -> None:
    path = tmp_path / "rl.jsonl"
    path.write_text(seed_rl_record(answer="42") + "\n" + seed_rl_record() + "\n")
    assert main(["validate-data", str(path), "--mode", "rl"]) == 1
    out = capsys.readouterr().out
    assert f"{path}:2: missing field 'answer', which the reward needs (exact_match)" in out
    assert f"{path}:1:" not in out
    # A reward that needs nothing accepts the same file; an unknown one is a config error.
    assert main(["validate-data", str(path), "--mode", "rl", "--reward", "format_check"]) == 0
    assert main(["validate-data", str(path), "--mode", "rl", "--reward", "nope"]) == 78
