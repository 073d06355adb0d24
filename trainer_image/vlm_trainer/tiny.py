"""An offline tiny Qwen3-VL: randomly initialised model, trained BPE tokenizer, chat template.

``vlm-trainer make-tiny-model DIR`` writes a directory that loads exactly like a real checkpoint
(``AutoProcessor`` / ``AutoModelForImageTextToText.from_pretrained``), so tests and the demo
exercise the same code path as production, with no network:

- model: ``Qwen3VLForConditionalGeneration``, text 64 hidden x 2 layers, vision 1 block x 32
  hidden, patch 16, spatial merge 2 (a 64x64 image becomes 4 image tokens); ~220k parameters;
- tokenizer: byte-level BPE (Qwen2's pre-tokenizer regex) trained on a small built-in corpus,
  with the Qwen special tokens, wrapped as ``Qwen2Tokenizer``;
- ``--vocab-size N`` (``make_tiny_model(vocab_size=N)``; at least the trained 320): the same
  tokenizer with ``N - 320`` tokens appended as plain vocabulary entries (``<|extra_i|>``, ids
  320 ..; no merge produces them, so every text encodes exactly as with 320), and a model whose
  embedding and output head have ``N`` rows. ``--vocab-size 151936`` is Qwen3-VL's vocabulary:
  the loss's memory at the real vocabulary, measurable on CPU;
- positions: rotary, nothing learned per position; ``max_position_embeddings`` is 8,192 so the
  config says 8,192-token sequences are in range (``max_seq_len`` up to 8192);
- processor: ``Qwen3VLProcessor`` with the Qwen2-VL image processor (pixels 32x32 .. 512x512)
  and a chat template with the same shape as Qwen3-VL-Instruct's (``<|im_start|>role\\n ...
  <|im_end|>\\n``; images as ``<|vision_start|><|image_pad|><|vision_end|>``).

Everything is deterministic for a given seed, so two builds are byte-identical.
"""

from __future__ import annotations

import json
from pathlib import Path

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# Qwen3-VL-Instruct's template without tools and videos. System content is text only; images
# are rendered where they appear in user content.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message.role + '\\n' }}"
    "{%- if message.content is string %}{{- message.content }}"
    "{%- else %}{%- for part in message.content %}"
    "{%- if part.type == 'image' or 'image' in part or 'image_url' in part %}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif 'text' in part %}{{- part.text }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

_CORPUS = [
    "What colour is this image? Answer with one word.",
    "red green blue yellow orange purple black white grey brown pink",
    "Describe the picture. Compare these two images. Which one is larger?",
    "You are a helpful assistant. The image shows a square, a circle and a triangle.",
    "The quick brown fox jumps over the lazy dog. 0 1 2 3 4 5 6 7 8 9 10 100",
    "yes no true false left right top bottom first second third answer question",
    "system user assistant: Hello! How can I help you today?",
]


TRAINED_VOCAB = 320
MAX_POSITIONS = 8192


def build_tokenizer(vocab_size: int = TRAINED_VOCAB):
    """Train the byte-level BPE offline (320 tokens) and wrap it as a ``Qwen2Tokenizer``, with
    plain vocabulary entries appended up to ``vocab_size``."""
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, trainers
    from tokenizers.models import BPE
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX, Qwen2Tokenizer

    tok = Tokenizer(BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TRAINED_VOCAB,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    model["vocab"] = append_tokens(model["vocab"], vocab_size)
    return Qwen2Tokenizer(
        vocab=model["vocab"], merges=merges, extra_special_tokens=SPECIAL_TOKENS[1:]
    )


def append_tokens(vocab: dict[str, int], size: int) -> dict[str, int]:
    """``vocab`` with ``<|extra_i|>`` entries appended (ids ``len(vocab)`` ..) up to ``size``.
    Not added tokens: the tokenizer keeps one BPE model, no trie of 150k added tokens."""
    if size < len(vocab):
        raise ValueError(f"vocab size {size} is below the trained tokenizer's {len(vocab)}")
    extra = {f"<|extra_{i}|>": i for i in range(len(vocab), size)}
    return {**vocab, **extra}


def build_processor(tokenizer):
    from transformers import Qwen3VLProcessor
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    vision = {"patch_size": 16, "merge_size": 2, "temporal_patch_size": 2}
    image_processor = Qwen2VLImageProcessor(
        size={"shortest_edge": 32 * 32, "longest_edge": 512 * 512},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        **vision,
    )
    return Qwen3VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=Qwen3VLVideoProcessor(**vision),
        chat_template=CHAT_TEMPLATE,
    )


def build_model(tokenizer, seed: int = 0):
    import torch
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    config = Qwen3VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "max_position_embeddings": MAX_POSITIONS,
            # 8 rotary frequencies per head split over (t, h, w), interleaved as in Qwen3-VL.
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 10000.0,
                "mrope_section": [2, 3, 3],
                "mrope_interleaved": True,
            },
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": 1,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "out_hidden_size": 64,
            "num_position_embeddings": 256,  # a 16x16 learned grid, interpolated per image
            "deepstack_visual_indexes": [0],
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.do_sample = False
    return model


def make_tiny_model(out_dir: str | Path, seed: int = 0, vocab_size: int = TRAINED_VOCAB) -> Path:
    """Build and save the tiny model, tokenizer and processor into ``out_dir``."""
    from transformers.utils import logging

    logging.disable_progress_bar()  # no "Writing model shards" bar in test and demo logs
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(vocab_size)
    build_processor(tokenizer).save_pretrained(out)
    build_model(tokenizer, seed=seed).save_pretrained(out)
    return out
