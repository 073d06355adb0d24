"""Rendering, checked by hand against the Qwen chat format (not against the renderer's own
prefix logic): the expected sequence is built segment by segment with the weight each segment
must have, then compared token for token with what the renderer produced."""

from __future__ import annotations

import json
import random

import pytest
import torch
from PIL import Image
from vlm_trainer.data.images import encode_data_url
from vlm_trainer.data.jsonl import parse_line
from vlm_trainer.data.render import Renderer, RenderError, SkipRecord
from vlm_trainer.demo_data import colour_image

pytestmark = pytest.mark.trainer

PAD = "<|image_pad|>"


def img_url(w: int, h: int, colour=(200, 30, 30)) -> str:
    return encode_data_url(Image.new("RGB", (w, h), colour))


def conversation(record: dict):
    rec, issues = parse_line(json.dumps(record), file="t", line=1)
    assert not issues, issues
    return rec.conversation


def expected(tokenizer, segments: list[tuple[str, int]]) -> tuple[list[int], list[float]]:
    """Tokenize each (text, weight) segment on its own; segments split at special tokens."""
    ids, weights = [], []
    for text, w in segments:
        seg = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += seg
        weights += [float(w)] * len(seg)
    return ids, weights


# A 64x64 image -> a 4x4 patch grid (patch 16) -> 16 patches -> 4 tokens after the 2x2 merge;
# a 96x64 (w x h) image -> 4x6 grid -> 24 patches -> 6 tokens.
MULTI = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Compare"},
                {"type": "image_url", "image_url": {"url": img_url(64, 64)}},
                {"type": "image_url", "image_url": {"url": img_url(96, 64, (0, 0, 255))}},
                {"type": "text", "text": " now"},
            ],
        },
        {"role": "assistant", "content": "red blue"},
        {"role": "user", "content": "Sure?"},
        {"role": "assistant", "content": [{"type": "text", "text": "yes"}]},
    ]
}


def multi_segments(first_weight: int) -> list[tuple[str, int]]:
    return [
        ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nCompare", 0),
        ("<|vision_start|>" + PAD * 4 + "<|vision_end|>", 0),
        ("<|vision_start|>" + PAD * 6 + "<|vision_end|>", 0),
        (" now<|im_end|>\n<|im_start|>assistant\n", 0),
        ("red blue<|im_end|>", first_weight),
        ("\n<|im_start|>user\nSure?<|im_end|>\n<|im_start|>assistant\n", 0),
        ("yes<|im_end|>", 1),
        ("\n", 0),
    ]


def test_system_multi_turn_several_images(tiny_processor):
    r = Renderer(tiny_processor).render(conversation(MULTI))
    ids, weights = expected(tiny_processor.tokenizer, multi_segments(first_weight=1))
    assert r.input_ids.tolist() == ids
    assert r.weights.tolist() == weights
    # Image tokens are never trained on; the trained tokens are exactly the two answers,
    # each with its end-of-turn token.
    image_positions = r.input_ids == tiny_processor.image_token_id
    assert int(image_positions.sum()) == 10 and not r.weights[image_positions].any()
    trained = tiny_processor.tokenizer.decode(r.input_ids[r.weights == 1])
    assert trained == "red blue<|im_end|>yes<|im_end|>"
    assert r.image_grid_thw.tolist() == [[1, 4, 4], [1, 4, 6]]
    assert r.pixel_values.shape == (16 + 24, 3 * 2 * 16 * 16)


def test_last_assistant_only(tiny_processor):
    r = Renderer(tiny_processor, train_on="last_assistant").render(conversation(MULTI))
    ids, weights = expected(tiny_processor.tokenizer, multi_segments(first_weight=0))
    assert r.input_ids.tolist() == ids
    assert r.weights.tolist() == weights


def test_string_content_single_image_matches_processor(tiny_processor):
    """The token ids equal what the HF processor itself produces for the same chat."""
    rng = random.Random(1)
    url = encode_data_url(colour_image("green", rng))
    record = {
        "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": "What colour?"}]},
            {"role": "assistant", "content": "green"},
        ]
    }  # fmt: skip
    conv = conversation(record)
    r = Renderer(tiny_processor).render(conv)
    text = tiny_processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour?"}]},
         {"role": "assistant", "content": "green"}],
        tokenize=False,
    )  # fmt: skip
    from vlm_trainer.data.images import open_image

    ref = tiny_processor(
        text=[text], images=[open_image(conv.images[0], 10**8)], return_tensors="pt"
    )
    assert r.input_ids.tolist() == ref["input_ids"][0].tolist()
    assert torch.equal(r.pixel_values, ref["pixel_values"])
    assert torch.equal(r.image_grid_thw, ref["image_grid_thw"])


def test_prompt_rendering_for_generation(tiny_processor):
    conv = conversation(MULTI)
    conv.messages = conv.messages[:2]
    r = Renderer(tiny_processor).render_prompt(conv)
    text = tiny_processor.tokenizer.decode(r.input_ids)
    assert text.endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert not r.weights.any()


# -- truncation -----------------------------------------------------------------------------------

# Token layout of TWO_IMAGES (first user turn 2 images of 4 tokens each, answer, second turn):
TWO_IMAGES = {
    "messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": img_url(64, 64)}},
                                     {"type": "text", "text": "Colour?"}]},
        {"role": "assistant", "content": "red"},
        {"role": "user", "content": [{"type": "text", "text": "And this?"},
                                     {"type": "image_url", "image_url": {"url": img_url(64, 64)}}]},
        {"role": "assistant", "content": "blue"},
    ]
}  # fmt: skip


def positions(r, token_id):
    return (r.input_ids == token_id).nonzero().flatten().tolist()


def test_truncation_keeps_whole_images_and_drops_later_ones(tiny_processor):
    tok = tiny_processor.tokenizer
    full = Renderer(tiny_processor).render(conversation(TWO_IMAGES))
    second_start = positions(full, tok.convert_tokens_to_ids("<|vision_start|>"))[1]
    # Cut right before the second image: the first answer stays, the second image goes.
    r = Renderer(tiny_processor, max_seq_len=second_start).render(conversation(TWO_IMAGES))
    assert r.num_tokens == second_start
    assert r.input_ids.tolist() == full.input_ids[:second_start].tolist()
    assert r.image_grid_thw.tolist() == [[1, 4, 4]]
    assert r.pixel_values.shape[0] == 16
    assert tok.decode(r.input_ids[r.weights == 1]) == "red<|im_end|>"


@pytest.mark.parametrize("policy,exc", [("skip", SkipRecord), ("error", RenderError)])
def test_truncation_never_cuts_an_image(tiny_processor, policy, exc):
    full = Renderer(tiny_processor).render(conversation(TWO_IMAGES))
    start = positions(full, tiny_processor.tokenizer.convert_tokens_to_ids("<|vision_start|>"))[1]
    for cut in (start + 1, start + 3, start + 5):  # inside the second image's span
        with pytest.raises(exc, match="split an image"):
            Renderer(tiny_processor, max_seq_len=cut, on_truncation=policy).render(
                conversation(TWO_IMAGES)
            )


def test_truncation_leaving_no_answer_is_refused(tiny_processor):
    full = Renderer(tiny_processor).render(conversation(TWO_IMAGES))
    first_answer = int(full.weights.nonzero()[0])
    with pytest.raises(SkipRecord, match="no assistant token"):
        Renderer(tiny_processor, max_seq_len=first_answer).render(conversation(TWO_IMAGES))


# -- other templates ------------------------------------------------------------------------------

# Qwen2-VL style: a default system prompt when the chat has none, and the end-of-turn token
# emitted inside each content branch (written for this test).
QWEN2_STYLE = (
    "{% for m in messages %}"
    "{% if loop.first and m['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}<|im_end|>\n"
    "{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif 'text' in c %}{{ c['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def with_template(processor, template):
    import copy

    p = copy.deepcopy(processor)
    p.chat_template = template
    return p


def test_a_template_with_a_default_system_prompt(tiny_processor):
    proc = with_template(tiny_processor, QWEN2_STYLE)
    conv = conversation(TWO_IMAGES)
    r = Renderer(proc).render(conv)
    tok = tiny_processor.tokenizer
    text = tok.decode(r.input_ids)
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")
    assert tok.decode(r.input_ids[r.weights == 1]) == "red<|im_end|>blue<|im_end|>"


def test_templates_that_rewrite_earlier_turns_are_refused(tiny_processor):
    # Renders only the last assistant turn's text: prefixes change as the chat grows.
    last_only = "{% if loop.last %}{{ m['content'] }}{% endif %}<|im_end|>"
    template = QWEN2_STYLE.replace("{{ m['content'] }}<|im_end|>", last_only)
    with pytest.raises(RenderError, match="not prefix-stable at message 1"):
        Renderer(with_template(tiny_processor, template)).render(conversation(TWO_IMAGES))
