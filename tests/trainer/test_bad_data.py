"""Bad data: ``validate-data`` lists every bad line with its reason; ``sft`` fails before
training with the same messages and writes no checkpoint."""

from __future__ import annotations

import json

import pytest
from vlm_trainer.demo_data import bad_sft_lines

from tests.trainer.helpers import run_cli, write_config

pytestmark = pytest.mark.trainer


@pytest.fixture(scope="module")
def bad_file(tmp_path_factory):
    lines = bad_sft_lines()
    path = tmp_path_factory.mktemp("bad") / "bad.jsonl"
    path.write_text("\n".join(line for line, _ in lines) + "\n")
    expected = {i + 1: why for i, (_, why) in enumerate(lines) if why}
    assert len(expected) >= 10 and len(expected) < len(lines)  # good lines mixed in
    return path, expected


def issue_lines(output: str, path) -> dict[int, str]:
    found: dict[int, str] = {}
    for text in output.splitlines():
        if text.startswith(f"{path}:"):
            line = int(text.split(":")[1])
            found[line] = found.get(line, "") + text
    return found


def test_validate_data_lists_every_bad_line(bad_file, tiny_model):
    path, expected = bad_file
    out = run_cli("validate-data", str(path), "--model", str(tiny_model))
    assert out.returncode == 1
    found = issue_lines(out.stdout, path)
    assert set(found) == set(expected)
    for line, why in expected.items():
        assert why in found[line], (line, why, found[line])
    assert f"{len(expected)} of {len(expected) + 2} records invalid" in out.stderr


def test_sft_fails_before_training_with_the_same_messages(bad_file, tiny_model, tmp_path):
    path, expected = bad_file
    cfg = write_config(tmp_path / "cfg.yaml", base_model=tiny_model, dataset=path,
                       log_path=tmp_path / "log", save_every_steps=1)  # fmt: skip
    out = run_cli("sft", "--config", str(cfg))
    assert out.returncode == 65
    validated = run_cli("validate-data", str(path))
    assert issue_lines(out.stdout, path) == issue_lines(validated.stdout, path)
    assert set(issue_lines(out.stdout, path)) == set(expected)
    assert not (tmp_path / "log" / "checkpoints").exists()
    assert '"event": "start"' not in out.stdout  # no training step was ever started


def test_eval_dataset_is_validated_too(bad_file, tiny_model, demo_data, tmp_path):
    path, _ = bad_file
    cfg = write_config(tmp_path / "cfg.yaml", base_model=tiny_model,
                       dataset=demo_data / "sft_train.jsonl", eval_dataset=path,
                       log_path=tmp_path / "log")  # fmt: skip
    out = run_cli("sft", "--config", str(cfg))
    assert out.returncode == 65 and f"{path}:2: not valid JSON" in out.stdout


def test_good_file_summary_with_token_statistics(demo_data, tiny_model):
    out = run_cli("validate-data", str(demo_data / "sft_eval.jsonl"), "--model", str(tiny_model))
    assert out.returncode == 0, out.stdout + out.stderr
    summary = json.loads(out.stdout)
    assert (summary["records"], summary["bad_records"], summary["images"]) == (40, 0, 40)
    assert summary["tokens"]["min"] > 40 and summary["weighted_tokens"]["min"] >= 2


def test_over_long_records_error_or_skip(demo_data, tiny_model, tmp_path):
    data = str(demo_data / "sft_eval.jsonl")
    strict = run_cli("validate-data", data, "--model", str(tiny_model), "--max-seq-len", "20",
                     "--on-truncation", "error")  # fmt: skip
    assert strict.returncode == 1
    assert len(issue_lines(strict.stdout, data)) == 40
    assert "no assistant token" in strict.stdout
    lenient = run_cli("validate-data", data, "--model", str(tiny_model), "--max-seq-len", "20")
    assert lenient.returncode == 0
    assert json.loads(lenient.stdout)["skipped_too_long"] == 40


def test_config_errors_exit_2(tmp_path):
    cfg = write_config(tmp_path / "cfg.yaml", base_model="m", dataset="d", log_path="l",
                       learning_rte=1)  # fmt: skip
    out = run_cli("sft", "--config", str(cfg))
    assert out.returncode == 78 and "learning_rte: Extra inputs are not permitted" in out.stderr


def test_without_prevalidation_the_first_bad_line_stops_training(bad_file, tiny_model, tmp_path):
    path, expected = bad_file
    cfg = write_config(tmp_path / "cfg.yaml", base_model=tiny_model, dataset=path,
                       log_path=tmp_path / "log", validate_before_training=False)  # fmt: skip
    out = run_cli("sft", "--config", str(cfg))
    assert out.returncode == 65
    found = issue_lines(out.stdout, path)
    assert len(found) == 1 and set(found) <= set(expected), out.stdout[-2000:]
