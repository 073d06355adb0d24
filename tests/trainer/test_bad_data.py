"""Bad data: ``validate-data`` lists every bad line with its reason; ``sft`` fails before
training with the same messages and writes no checkpoint.

The corpus: ``demo_data.bad_sft_lines()`` (every kind the parser catches, limits included) plus
``EXTRA`` below (raw bytes, and kinds only rendering with the processor catches): more than 40
kinds, each asserted with its line number and its ``json.path: reason`` fragment. A line longer
than ``max_line_bytes`` is refused while streaming, without ever being held in memory.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from PIL import Image
from vlm_trainer.data.images import encode_data_url
from vlm_trainer.demo_data import bad_sft_lines

from tests.trainer.helpers import run_cli, write_config

pytestmark = pytest.mark.trainer


def _chat(url: str | None = None, text: str = "What colour?") -> bytes:
    parts = [{"type": "text", "text": text}]
    parts += [{"type": "image_url", "image_url": {"url": url}}] if url else []
    record = {
        "messages": [{"role": "user", "content": parts}, {"role": "assistant", "content": "red"}]
    }
    return json.dumps(record).encode()


# (name, raw line, expected fragment): kinds that need raw bytes or the processor to be seen.
EXTRA = [
    ("latin-1 bytes", b'{"messages": "caf\xe9"}', "not UTF-8 text: invalid continuation byte"),
    (
        "extreme aspect ratio",
        _chat(encode_data_url(Image.new("RGB", (1, 400)))),
        "cannot render: ValueError: absolute aspect ratio must be smaller than 200",
    ),
    ("image token typed as text", _chat(text="see <|image_pad|>"), "1 image placeholders for 0"),
]


@pytest.fixture(scope="module")
def bad_file(tmp_path_factory):
    lines = [(line.encode(), why) for line, why in bad_sft_lines()]
    lines += [(raw, why) for _, raw, why in EXTRA]
    path = tmp_path_factory.mktemp("bad") / "bad.jsonl"
    path.write_bytes(b"\n".join(line for line, _ in lines) + b"\n")
    expected = {i + 1: why for i, (_, why) in enumerate(lines) if why}
    assert len(expected) >= 40 and len(expected) < len(lines)  # good lines mixed in
    assert len(set(expected.values())) == len(expected)  # 40+ different kinds
    return path, expected, len(lines)


def issue_lines(output: str, path) -> dict[int, str]:
    found: dict[int, str] = {}
    for text in output.splitlines():
        if text.startswith(f"{path}:"):
            line = int(text.split(":")[1])
            found[line] = found.get(line, "") + text
    return found


def test_validate_data_lists_every_bad_line(bad_file, tiny_model):
    path, expected, total = bad_file
    out = run_cli("validate-data", str(path), "--model", str(tiny_model))
    assert out.returncode == 1
    found = issue_lines(out.stdout, path)
    assert set(found) == set(expected)
    for line, why in expected.items():
        assert why in found[line], (line, why, found[line])
    assert f"{len(expected)} of {total} records invalid" in out.stderr


def test_sft_fails_before_training_with_the_same_messages(bad_file, tiny_model, tmp_path):
    path, expected, _ = bad_file
    cfg = write_config(tmp_path / "cfg.yaml", base_model=tiny_model, dataset=path,
                       log_path=tmp_path / "log", save_every_steps=1)  # fmt: skip
    out = run_cli("sft", "--config", str(cfg))
    assert out.returncode == 65
    validated = run_cli("validate-data", str(path), "--model", str(tiny_model))
    assert issue_lines(out.stdout, path) == issue_lines(validated.stdout, path)
    found = issue_lines(out.stdout, path)
    assert set(found) == set(expected)
    for line, why in expected.items():
        assert why in found[line], (line, why, found[line])
    assert not (tmp_path / "log" / "checkpoints").exists()
    assert '"event": "start"' not in out.stdout  # no training step was ever started


def test_eval_dataset_is_validated_too(bad_file, tiny_model, demo_data, tmp_path):
    path, _, _ = bad_file
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
    path, expected, _ = bad_file
    cfg = write_config(tmp_path / "cfg.yaml", base_model=tiny_model, dataset=path,
                       log_path=tmp_path / "log", validate_before_training=False)  # fmt: skip
    out = run_cli("sft", "--config", str(cfg))
    assert out.returncode == 65
    found = issue_lines(out.stdout, path)
    assert len(found) == 1 and set(found) <= set(expected), out.stdout[-2000:]


def _peak_rss_mb(*argv: str) -> tuple[subprocess.CompletedProcess, float]:
    """Run ``vlm-trainer ARGV`` in a fresh interpreter; its own peak RSS in MB."""
    code = (
        "import resource, sys; from vlm_trainer.cli import main; rc = main(sys.argv[1:]); "
        "print('PEAK_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); "
        "sys.exit(rc)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=300
    )
    peak = [ln for ln in out.stderr.splitlines() if ln.startswith("PEAK_KB")]
    assert peak, out.stderr[-2000:]
    return out, int(peak[0].split()[1]) / 1024


def test_a_200_mb_line_is_refused_while_streaming(tmp_path, demo_data):
    """Line 2 holds 200 MB: refused with its size, never read whole. At most max_line_bytes
    (32 MiB) of it is held, twice at worst while bytes are joined: the peak RSS stays under
    100 MB above a run without it (reading it whole would add 200 MB, parsing it far more);
    the lines after it keep their numbers."""
    good = (demo_data / "sft_eval.jsonl").read_text().splitlines()[0].encode()
    small, big = tmp_path / "small.jsonl", tmp_path / "big.jsonl"
    small.write_bytes(good + b"\n" + good + b"\n{not json\n")
    with open(big, "wb") as f:
        f.write(good + b"\n" + b'{"messages": "' + b"a" * (200 << 20) + b'"}\n{not json\n')
    base, base_peak = _peak_rss_mb("validate-data", str(small))
    out, peak = _peak_rss_mb("validate-data", str(big))
    assert base.returncode == out.returncode == 1
    assert f"{big}:2: line is {(200 << 20) + 17} bytes, above max_line_bytes=33554432" in out.stdout
    assert f"{big}:3: not valid JSON" in out.stdout
    assert peak < base_peak + 100, (peak, base_peak)
