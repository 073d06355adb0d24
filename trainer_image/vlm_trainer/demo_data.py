"""Synthetic image datasets for tests, examples and the demo: the answer depends only on the image.

The task: a noisy image whose dominant colour is one of four (red, green, blue, yellow); the
question is always the same text, so a model that ignores the image stays at 25% accuracy.
``make-demo-data DIR`` writes, with a fixed seed:

- ``sft_train.jsonl`` / ``sft_eval.jsonl``: ``{"messages": [user(text+image), assistant(colour)]}``
- ``dpo_train.jsonl`` / ``dpo_eval.jsonl``: chosen = the right colour, rejected = another one
- ``rl_train.jsonl`` / ``rl_eval.jsonl``: the user turn only, plus ``"answer": colour``

``make_spatial_data(DIR)`` writes ``spatial_train.jsonl`` / ``spatial_eval.jsonl``, a task whose
answer is *where* something is in the image (same colours in every class), for the learning
test of image layout and positions.

``bad_sft_lines()`` returns a mix of good lines and many kinds of bad ones, each with the reason
the validator must give; the trainer and operator tests share it.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

from .data.images import encode_data_url

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 70, 220),
    "yellow": (230, 210, 40),
}
QUESTION = "What colour is this image? Answer with one word."


def colour_image(colour: str, rng: random.Random, size: int = 64) -> Image.Image:
    """A ``size``x``size`` image dominated by ``colour``: jittered background, per-pixel noise,
    and a few grey distractor shapes so no two images are alike."""
    base = COLOURS[colour]
    jitter = [max(0, min(255, c + rng.randint(-25, 25))) for c in base]
    img = Image.new("RGB", (size, size), tuple(jitter))
    draw = ImageDraw.Draw(img)
    for _ in range(rng.randint(1, 3)):
        x0, y0 = rng.randint(0, size - 8), rng.randint(0, size - 8)
        w, h = rng.randint(4, size // 3), rng.randint(4, size // 3)
        g = rng.randint(60, 200)
        draw.rectangle([x0, y0, x0 + w, y0 + h], fill=(g, g, g))
    noise = Image.effect_noise((size, size), 20).convert("RGB")
    return Image.blend(img, noise, 0.15)


def colour_prompt(colour: str, rng: random.Random, size: int = 64, fmt: str = "PNG") -> dict:
    url = encode_data_url(colour_image(colour, rng, size), fmt=fmt)
    return {
        "role": "user",
        "content": [
            {"type": "text", "text": QUESTION},
            {"type": "image_url", "image_url": {"url": url}},
        ],
    }


def sft_record(colour: str, rng: random.Random, size: int = 64, fmt: str = "PNG") -> dict:
    return {
        "messages": [
            colour_prompt(colour, rng, size, fmt),
            {"role": "assistant", "content": colour},
        ]
    }


def _balanced_colours(n: int, rng: random.Random) -> list[str]:
    names = list(COLOURS)
    out = [names[i % len(names)] for i in range(n)]
    rng.shuffle(out)
    return out


def write_jsonl(path: str | Path, records) -> int:
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
            n += 1
    return n


def make_demo_data(
    out_dir: str | Path, n_train: int = 200, n_eval: int = 40, size: int = 64, seed: int = 0
) -> dict[str, int]:
    """Write the six demo files into ``out_dir``; returns ``{file name: records}``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    for split, n, split_seed in (("train", n_train, seed), ("eval", n_eval, seed + 10_000)):
        rng = random.Random(split_seed)
        colours = _balanced_colours(n, rng)
        prompts = [(c, colour_prompt(c, rng, size)) for c in colours]
        sft = ({"messages": [p, {"role": "assistant", "content": c}]} for c, p in prompts)
        counts[f"sft_{split}.jsonl"] = write_jsonl(out / f"sft_{split}.jsonl", sft)

        def dpo(prompts=prompts, rng=rng):
            for c, p in prompts:
                wrong = rng.choice([o for o in COLOURS if o != c])
                yield {
                    "chosen": {"messages": [p, {"role": "assistant", "content": c}]},
                    "rejected": {"messages": [p, {"role": "assistant", "content": wrong}]},
                }

        counts[f"dpo_{split}.jsonl"] = write_jsonl(out / f"dpo_{split}.jsonl", dpo())
        rl = ({"messages": [p], "answer": c} for c, p in prompts)
        counts[f"rl_{split}.jsonl"] = write_jsonl(out / f"rl_{split}.jsonl", rl)
    return counts


HALVES = ("top", "bottom")
WHERE_QUESTION = "Which half of the image is white? Answer top or bottom."


def half_image(half: str, rng: random.Random, size: int = 64) -> Image.Image:
    """A black ``size`` x ``size`` image whose ``top`` or ``bottom`` half is mostly white (a
    white band of random width and offset, plus noise). Both classes have the same colours in
    the same amounts, so only *where* the white is tells the answer: a pipeline that lost the
    image's spatial layout (patch order, positions) cannot learn it. The tiny test model does
    not learn finer layouts (a small dot, left/right) within a test's budget."""
    img = Image.new("RGB", (size, size), (0, 0, 0))
    width = rng.randint(size * 3 // 4, size)
    x0 = rng.randint(0, size - width)
    y0 = HALVES.index(half) * (size // 2)
    ImageDraw.Draw(img).rectangle([x0, y0, x0 + width - 1, y0 + size // 2 - 1], fill="white")
    return Image.blend(img, Image.effect_noise((size, size), 20).convert("RGB"), 0.1)


def make_spatial_data(
    out_dir: str | Path, n_train: int = 320, n_eval: int = 40, size: int = 64, seed: int = 0
) -> dict[str, int]:
    """``spatial_train.jsonl`` / ``spatial_eval.jsonl``: "which half of the image is white",
    balanced (chance is 50%)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    for split, n, split_seed in (("train", n_train, seed), ("eval", n_eval, seed + 10_000)):
        rng = random.Random(split_seed)
        answers = [HALVES[i % 2] for i in range(n)]
        rng.shuffle(answers)

        def records(answers=answers, rng=rng):
            for q in answers:
                url = encode_data_url(half_image(q, rng, size))
                image = {"type": "image_url", "image_url": {"url": url}}
                user = {
                    "role": "user",
                    "content": [{"type": "text", "text": WHERE_QUESTION}, image],
                }
                yield {"messages": [user, {"role": "assistant", "content": q}]}

        counts[f"spatial_{split}.jsonl"] = write_jsonl(out / f"spatial_{split}.jsonl", records())
    return counts


def bad_sft_lines(seed: int = 0) -> list[tuple[str, str | None]]:
    """Lines for a bad-data file: ``(line, expected reason fragment or None for a good line)``.

    Covers the kinds of mistakes seen in real datasets, one per bad line."""
    rng = random.Random(seed)
    good = json.dumps(sft_record("red", rng))
    img = colour_prompt("blue", rng)["content"][1]["image_url"]["url"]

    def user(*parts):
        return {"role": "user", "content": list(parts)}

    def img_part(url):
        return {"type": "image_url", "image_url": {"url": url}}

    ans = {"role": "assistant", "content": "blue"}
    gif = "data:image/gif;base64,R0lGODlhAQABAIAAAAAAAP///ywAAAAAAQABAAACAUwAOw=="
    bomb = encode_data_url(Image.new("1", (12_000, 12_000)))  # ~2 KB PNG, 144 M pixels
    webp_bytes_as_png = "data:image/png;base64," + _webp_b64()
    truncated_jpeg = encode_data_url(colour_image("red", rng, 64), fmt="JPEG")[:-400]
    records: list[tuple[object, str | None]] = [
        (good, None),
        ("{not json", "not valid JSON"),
        ([1, 2, 3], "expected a JSON object"),
        ({"conversation": []}, "messages: missing"),
        ({"messages": []}, "empty"),
        ({"messages": [{"content": "hi"}, ans]}, "messages[0].role: missing"),
        ({"messages": [{"role": "robot", "content": "hi"}, ans]}, "unknown role 'robot'"),
        ({"messages": [user({"type": "text", "text": "hi"})]}, "no assistant message"),
        ({"messages": [user(img_part("https://example.com/cat.jpg")), ans]}, "convert"),
        (
            {"messages": [user(img_part("data:image/png;base64,@@@not-base64@@@")), ans]},
            "invalid base64",
        ),
        (
            {"messages": [user(img_part("data:image/png;base64,aGVsbG8gd29ybGQ=")), ans]},
            "not a decodable image: no PNG or JPEG header",
        ),
        ({"messages": [user(img_part(gif)), ans]}, "unsupported image type 'image/gif'"),
        ({"messages": [user(img_part(webp_bytes_as_png)), ans]}, "not PNG or JPEG"),
        ({"messages": [user(img_part(bomb)), ans]}, "decompression-bomb"),
        (
            {"messages": [user({"type": "video", "video": "x"}), ans]},
            "unsupported part type 'video'",
        ),
        (
            {"messages": [user(img_part(img)), {"role": "assistant", "content": ""}]},
            "empty assistant",
        ),
        (
            {"messages": [user(img_part(img)), {"role": "assistant"}]},
            "messages[1].content: missing",
        ),
        (
            {"messages": [user(img_part(img)), {"role": "system", "content": "x"}, ans]},
            "system message may only",
        ),
        ({"messages": [user({"type": "text"}), ans]}, "messages[0].content[0].text: missing"),
        (
            {"messages": [user({"type": "image_url", "image_url": {}}), ans]},
            "image_url.url: missing",
        ),
        ({"messages": [user(img_part(truncated_jpeg)), ans]}, "cannot decode JPEG"),
        (
            {"messages": [user(img_part(img)), {"role": "assistant", "content": [img_part(img)]}]},
            "only supported in user messages",
        ),
        ({"messages": [user(img_part(img)), ans]}, None),
        *_limit_lines(user, img_part, ans, img),
        *_shape_lines(user, img_part, ans, img),
        (good, None),
    ]
    return [(r if isinstance(r, str) else json.dumps(r), why) for r, why in records]


def _limit_lines(user, img_part, ans, img) -> list[tuple[object, str]]:
    """Lines that break a limit of ``data/limits.py`` (defaults) or lie about their bytes."""
    ok = {"messages": [user(img_part(img)), ans]}
    deep: object = "x"
    for _ in range(40):
        deep = {"a": deep}
    tiny = encode_data_url(Image.new("RGB", (1, 1)))
    big = encode_data_url(Image.new("1", (7000, 5000)))  # 35 Mpx each, a few KB of PNG
    png_as_jpeg = img.replace("image/png", "image/jpeg")
    jpeg = encode_data_url(Image.new("RGB", (16, 16)), fmt="JPEG")
    return [
        ('{"messages": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested more than max_json_depth"),
        ({**ok, "meta": deep}, ".a.a.a: nested more than max_json_depth=32 levels deep"),
        ('{"id": ' + "7" * 5000 + ', "messages": []}', "id: integer of 5000 digits"),
        (json.dumps(ok)[:-1] + ', "score": NaN}', "score: number 'NaN' is not finite"),
        (json.dumps(ok)[:-1] + ', "score": -1e999}', "score: number '-1e999' is not finite"),
        ({"messages": [user(img_part(png_as_jpeg)), ans]}, "url: declared image/jpeg but the data"),
        (
            {"messages": [user(img_part(jpeg.replace("image/jpeg", "image/png"))), ans]},
            "declared image/png but the data is JPEG",
        ),
        (
            {"messages": [user(*[img_part(tiny)] * 65), ans]},
            "messages[0].content[64].image_url.url: more than max_images_per_record=64",
        ),
        (
            {"messages": [user(*[img_part(big)] * 3), ans]},
            "content[2].image_url.url: the record's images add up to more than max_record_pixels",
        ),
        (json.dumps(ok)[:-1] + ', "note": "\\ud800"}', "note: lone surrogate \\ud800"),
    ]


def _shape_lines(user, img_part, ans, img) -> list[tuple[object, str]]:
    """Lines whose JSON is fine but whose shape is not a chat record."""
    text = {"type": "text", "text": "hi"}
    return [
        ("\ufeff" + json.dumps({"messages": [user(text), ans]}), "not valid JSON: Unexpected"),
        (json.dumps({"messages": [user(text), ans]}) + " extra", "not valid JSON: Extra data"),
        ('{"messages": [{"role": "user", "content": "hi"', "not valid JSON: Expecting"),
        ("null", "expected a JSON object, got null"),
        ({"messages": {"role": "user"}}, "messages: expected a list of messages, got an object"),
        ({"messages": ["hi", ans]}, "messages[0]: expected a message object, got a string"),
        ({"messages": [{"role": "user", "content": 3}, ans]}, "messages[0].content: expected a"),
        ({"messages": [{"role": "user", "content": []}, ans]}, "content: empty list of parts"),
        ({"messages": [user("hi"), ans]}, "content[0]: expected a content part object"),
        ({"messages": [user({"type": "text", "text": 5}), ans]}, "text: expected a string, got"),
        ({"messages": [user({"text": "hi"}), ans]}, "messages[0].content[0].type: missing"),
        ({"messages": [user({"type": "image_url", "image_url": 7}), ans]}, "image_url: missing"),
        ({"messages": [user(img_part("data:image/png,AAAA")), ans]}, "must be base64-encoded"),
        ({"messages": [user(img_part("data:image/png;base64")), ans]}, "has no ','"),
        ({"messages": [user(img_part("data:image/png;base64,")), ans]}, "empty image data"),
        ({"messages": [user(img_part(12)), ans]}, "url: expected a string URL, got int"),
        ({"messages": [user(img_part("images/cat.png")), ans]}, "expected a data:image/png"),
        ({"chosen": {"messages": []}, "rejected": {}}, "this looks like a DPO record"),
        (
            {"messages": [{"role": "system", "content": "x"}]},
            "messages: no assistant message: nothing",
        ),
        ({"messages": [{"role": 5, "content": "x"}, ans]}, "messages[0].role: unknown role 5"),
        (
            {
                "messages": [
                    user(img_part(img)),
                    {"role": "assistant", "content": [text | {"text": " "}]},
                ]
            },
            "messages[1].content: empty assistant message",
        ),
    ]


def _webp_b64() -> str:
    import base64
    import io

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buf, format="WEBP")
    return base64.b64encode(buf.getvalue()).decode()
