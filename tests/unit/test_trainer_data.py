"""Dataset reading and validation: every kind of bad record names its line, path and reason."""

from __future__ import annotations

import base64
import io
import json
import random

import pytest
from PIL import Image
from vlm_trainer.data.images import ImageError, decode_data_url, encode_data_url, open_image
from vlm_trainer.data.jsonl import LineIndex, iter_lines, parse_line
from vlm_trainer.data.validate import validate_file
from vlm_trainer.demo_data import bad_sft_lines, colour_prompt, make_demo_data, sft_record

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def bad_lines():
    return bad_sft_lines()


def test_bad_file_lists_every_bad_line_with_its_reason(tmp_path, bad_lines):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(line for line, _ in bad_lines) + "\n")
    summary = validate_file(path)
    expected_bad = {i + 1: why for i, (_, why) in enumerate(bad_lines) if why}
    assert len(expected_bad) >= 10
    assert summary.records == len(bad_lines)
    assert summary.bad_records == len(expected_bad)
    reported = {}
    for issue in summary.issues:
        reported.setdefault(issue.line, []).append(str(issue))
    assert set(reported) == set(expected_bad), "good lines flagged or bad lines missed"
    for line, why in expected_bad.items():
        text = " | ".join(reported[line])
        assert why in text, f"line {line}: expected {why!r} in {text!r}"
        assert text.startswith(f"{path}:{line}: ")
    with pytest.raises(Exception, match=f"{len(expected_bad)} of {len(bad_lines)} records"):
        summary.raise_if_invalid()


def test_json_paths_point_at_the_field(bad_lines):
    line = json.dumps({"messages": [
        {"role": "user", "content": [{"type": "text", "text": "a"},
                                     {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]},
        {"role": "assistant", "content": "b"}]})  # fmt: skip
    _, issues = parse_line(line, file="data.jsonl", line=7)
    assert [i.path for i in issues] == ["messages[0].content[1].image_url.url"]
    assert str(issues[0]).startswith("data.jsonl:7: messages[0].content[1].image_url.url: remote")
    assert "convert" in issues[0].reason and "base64" in issues[0].reason


def test_all_issues_of_one_record_are_reported():
    line = json.dumps({"messages": [{"role": "bot", "content": "a"}, {"role": "user"}]})
    _, issues = parse_line(line, file="f", line=1)
    assert [i.path for i in issues] == ["messages[0].role", "messages[1].content"]


def test_good_records_parse_with_parts_in_order():
    rng = random.Random(0)
    rec = sft_record("blue", rng)
    rec["messages"].insert(0, {"role": "system", "content": [{"type": "text", "text": "S"}]})
    record, issues = parse_line(json.dumps(rec), file="f", line=1)
    assert not issues
    conv = record.conversation
    assert [m.role for m in conv.messages] == ["system", "user", "assistant"]
    assert len(conv.images) == 1 and conv.images[0][:8] == b"\x89PNG\r\n\x1a\n"
    assert conv.messages[2].text == "blue"


def test_modes_dpo_and_rl(tmp_path):
    make_demo_data(tmp_path, n_train=8, n_eval=4)
    assert validate_file(tmp_path / "dpo_train.jsonl", "dpo").ok
    assert validate_file(tmp_path / "rl_train.jsonl", "rl").ok
    # An SFT file is not a DPO file and vice versa; an RL prompt must end with the user.
    dpo_as_sft = validate_file(tmp_path / "dpo_train.jsonl", "sft")
    assert dpo_as_sft.bad_records == 8 and "use --mode dpo" in str(dpo_as_sft.issues[0])
    sft_as_rl = validate_file(tmp_path / "sft_train.jsonl", "rl")
    assert "messages[1].role: last message must be 'user'" in str(sft_as_rl.issues[0])
    sft_as_dpo = validate_file(tmp_path / "sft_train.jsonl", "dpo")
    assert {i.path for i in sft_as_dpo.issues} == {"chosen", "rejected"}
    rl = parse_line((tmp_path / "rl_train.jsonl").read_text().splitlines()[0], file="f", line=1,
                    mode="rl")[0]  # fmt: skip
    assert rl.extra["answer"] in {"red", "green", "blue", "yellow"}


def test_empty_file_and_missing_file(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    s = validate_file(empty)
    assert s.records == 0 and not s.ok
    with pytest.raises(Exception, match="no records"):
        s.raise_if_invalid()
    missing = validate_file(tmp_path / "nope.jsonl")
    assert not missing.ok and "no such file" in str(missing.issues[0])


def test_line_index_skips_blank_lines_and_seeks(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_bytes(b'{"a": 1}\n\n{"a": 2}\r\n   \n{"a": 3}')
    idx = LineIndex(p)
    assert list(idx.lines) == [1, 3, 5]
    with open(p, "rb") as f:
        assert [json.loads(idx.read(f, i)[1])["a"] for i in (2, 0, 1)] == [3, 1, 2]
    assert [ln for ln, _, _ in iter_lines(p)] == [1, 3, 5]


def test_an_overlong_line_is_skipped_in_chunks_and_the_rest_keeps_its_place(tmp_path):
    from vlm_trainer.data.jsonl import Overlong

    p = tmp_path / "x.jsonl"
    p.write_bytes(b'{"a": 1}\n' + b"x" * 3_000_000 + b'\n\n{"a": 3}\n' + b"y" * 5000)
    idx = LineIndex(p, max_line_bytes=4096)
    assert list(idx.lines) == [1, 2, 4, 5]
    with open(p, "rb") as f:
        assert idx.read(f, 1)[1] == Overlong(3_000_001, 4096)  # size includes the newline
        assert json.loads(idx.read(f, 2)[1]) == {"a": 3}
        assert idx.read(f, 3)[1] == Overlong(5000, 4096)  # last line, no newline
    _, issues = parse_line(Overlong(3_000_001, 4096), file="f", line=2)
    assert str(issues[0]) == "f:2: line is 3000001 bytes, above max_line_bytes=4096"


def test_data_urls():
    png = encode_data_url(Image.new("RGB", (3, 2)))
    assert decode_data_url(png)[:4] == b"\x89PNG"
    assert decode_data_url(png.replace("image/png", "image/jpg"))  # alias accepted
    for url, why in [
        ("https://example.com/a.png", "convert it to a base64 data URL"),
        ("file:///a.png", "expected a data:image/png;base64"),
        ("data:image/png;base64", "no ','"),
        ("data:image/png,abcd", "must be base64-encoded"),
        ("data:image/webp;base64,AAAA", "unsupported image type 'image/webp'"),
        ("data:image/png;base64,", "empty image data"),
        ("data:image/png;base64,a$b=", "invalid base64"),
    ]:
        with pytest.raises(ImageError, match=why.replace("(", r"\(")):
            decode_data_url(url)


def test_open_image_limits_and_modes():
    buf = io.BytesIO()
    Image.new("RGBA", (10, 10), (1, 2, 3, 4)).save(buf, format="PNG")
    img = open_image(buf.getvalue(), max_pixels=100)
    assert img.mode == "RGB" and img.size == (10, 10)
    with pytest.raises(ImageError, match="above max_image_pixels=99"):
        open_image(buf.getvalue(), max_pixels=99)
    jpeg = base64.b64decode(colour_prompt("red", random.Random(0), fmt="JPEG")["content"][1]
                            ["image_url"]["url"].split(",", 1)[1])  # fmt: skip
    assert open_image(jpeg, 10**6).size == (64, 64)
    with pytest.raises(ImageError, match="cannot decode JPEG"):
        open_image(jpeg[: len(jpeg) // 2], 10**6)
