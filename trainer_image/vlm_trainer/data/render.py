"""Chat template -> token ids + per-token loss weights + image tensors.

How it works, for any Qwen-VL-style processor (Qwen2-VL, Qwen2.5-VL, Qwen3-VL):

1. The conversation goes through the processor's own chat template (so training sees exactly
   the text the model sees at inference), with each image as a ``{"type": "image"}`` part that
   the template renders as ``<|vision_start|><|image_pad|><|vision_end|>``.
2. Assistant spans are found by rendering prefixes: for assistant message ``i`` the span runs
   from the end of ``messages[:i]`` + generation prompt (``<|im_start|>assistant\\n``) to the end
   of ``messages[:i+1]`` minus trailing whitespace, i.e. through the end-of-turn token
   ``<|im_end|>`` but not the newline after it (the model stops at ``<|im_end|>``; it never
   generates that newline). Templates whose prefixes are not stable are refused with a clear
   error rather than silently mis-masked.
3. The text is tokenized once with character offsets; a token gets weight 1 when it lies in an
   assistant span (all assistant turns, or only the last with ``train_on: last_assistant``),
   else 0: system, user and template tokens are context only.
4. Each ``<|image_pad|>`` is expanded to the image's token count (grid t*h*w / merge^2) from
   the image processor, with weight 0.

``weights[t]`` says whether token ``t`` is a training *target*; the loss shifts (logits at
``t-1`` predict token ``t``). Truncation at ``max_seq_len`` keeps whole images or none: a cut
through an image span, or one leaving no weighted token, is a ``SkipRecord`` (counted by the
caller) or a ``RenderError`` depending on ``on_truncation``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from .images import open_image
from .jsonl import Conversation, Message
from .limits import DataLimits


class RenderError(ValueError):
    """The record cannot be rendered (the caller adds file:line)."""


class SkipRecord(Exception):
    """The record is dropped from training (over-long); the caller counts it."""


@dataclass
class Rendered:
    input_ids: torch.Tensor  # (L,) int64
    weights: torch.Tensor  # (L,) float32, 1 = token is a training target
    pixel_values: torch.Tensor | None  # (patches, C*T*P*P) or None without images
    image_grid_thw: torch.Tensor | None  # (images, 3) int64

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.numel())

    @property
    def num_weighted(self) -> int:
        return int(self.weights.sum().item())

    @property
    def num_images(self) -> int:
        return 0 if self.image_grid_thw is None else int(self.image_grid_thw.shape[0])


class Renderer:
    """Renders conversations with one processor; cheap to keep for the whole run."""

    def __init__(
        self,
        processor,
        max_seq_len: int = 4096,
        train_on: Literal["all_assistant", "last_assistant"] = "all_assistant",
        on_truncation: Literal["skip", "error"] = "skip",
        max_image_pixels: int = 50_000_000,
        limits: DataLimits | None = None,  # what a dataset line may cost; wins over the above
    ):
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.image_processor = getattr(processor, "image_processor", None)
        self.chat_template = getattr(processor, "chat_template", None) or getattr(
            self.tokenizer, "chat_template", None
        )
        if not self.chat_template:
            raise RenderError("the processor has no chat template")
        self.max_seq_len = max_seq_len
        self.train_on = train_on
        self.on_truncation = on_truncation
        self.limits = limits or DataLimits(max_image_pixels=max_image_pixels)
        self.max_image_pixels = self.limits.max_image_pixels
        tid = self.tokenizer.convert_tokens_to_ids
        self.image_token_id = getattr(processor, "image_token_id", None) or tid("<|image_pad|>")
        self.vision_start_id = tid("<|vision_start|>")
        self.vision_end_id = tid("<|vision_end|>")
        self.pad_token_id = self.tokenizer.pad_token_id
        if self.pad_token_id is None:
            self.pad_token_id = self.tokenizer.eos_token_id
        self.merge_size = getattr(self.image_processor, "merge_size", 2)
        # open_image already returns RGB: skip the processor's own per-image RGB copy.
        convert = hasattr(self.image_processor, "do_convert_rgb")
        self.image_kwargs = {"do_convert_rgb": False} if convert else {}

    # -- public -------------------------------------------------------------------------------
    def render(self, conv: Conversation) -> Rendered:
        """Tokens and weights for training on the assistant turns of ``conv``."""
        msgs = [_template_message(m) for m in conv.messages]
        full = self._text(msgs, add_generation_prompt=False)
        turns = [i for i, m in enumerate(conv.messages) if m.role == "assistant"]
        if self.train_on == "last_assistant":
            turns = turns[-1:]
        spans = [self._assistant_span(msgs, i, full) for i in turns]
        return self._finish(full, spans, conv)

    def render_prompt(self, conv: Conversation) -> Rendered:
        """Tokens for generation: ``conv`` plus the generation prompt, all weights 0."""
        msgs = [_template_message(m) for m in conv.messages]
        return self._finish(self._text(msgs, add_generation_prompt=True), [], conv, truncate=False)

    # -- steps --------------------------------------------------------------------------------
    def _text(self, msgs: list[dict], add_generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            msgs,
            chat_template=self.chat_template,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
        )

    def _assistant_span(self, msgs: list[dict], i: int, full: str) -> tuple[int, int]:
        start_text = self._text(msgs[:i], add_generation_prompt=True) if i else ""
        # The last message's prefix is the whole conversation: one template render saved.
        last = i == len(msgs) - 1
        end_text = full if last else self._text(msgs[: i + 1], add_generation_prompt=False)
        if not (full.startswith(end_text) and end_text.startswith(start_text)):
            raise RenderError(
                f"the chat template is not prefix-stable at message {i}: cannot locate the "
                "assistant tokens (templates that rewrite earlier turns are not supported)"
            )
        return len(start_text), len(end_text.rstrip())

    def _finish(
        self, text: str, spans: list[tuple[int, int]], conv: Conversation, truncate: bool = True
    ) -> Rendered:
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        weights = [0.0] * len(ids)
        for t, (s, _e) in enumerate(offsets):
            if any(a <= s < b for a, b in spans):
                weights[t] = 1.0

        images = conv.images
        n_pads = sum(1 for i in ids if i == self.image_token_id)
        if n_pads != len(images):
            raise RenderError(
                f"the chat template rendered {n_pads} image placeholders for {len(images)} images "
                "(images are only rendered in user messages)"
            )
        pixel_values = grid = None
        if images:
            pil = [open_image(b, self.max_image_pixels) for b in images]
            out = self.image_processor(images=pil, return_tensors="pt", **self.image_kwargs)
            pixel_values, grid = out["pixel_values"], out["image_grid_thw"].long()
            ids, weights = self._expand_images(ids, weights, grid)

        input_ids = torch.tensor(ids, dtype=torch.long)
        w = torch.tensor(weights, dtype=torch.float32)
        if truncate and len(ids) > self.max_seq_len:
            input_ids, w, pixel_values, grid = self._truncate(input_ids, w, pixel_values, grid)
        if truncate and spans and not w.any():
            self._refuse("no assistant token to train on")
        return Rendered(input_ids, w, pixel_values, grid)

    def _expand_images(self, ids: list[int], weights: list[float], grid: torch.Tensor):
        counts = (grid.prod(-1) // self.merge_size**2).tolist()
        out_ids: list[int] = []
        out_w: list[float] = []
        k = 0
        for tok, w in zip(ids, weights, strict=True):
            if tok == self.image_token_id:
                out_ids.extend([tok] * counts[k])
                out_w.extend([0.0] * counts[k])
                k += 1
            else:
                out_ids.append(tok)
                out_w.append(0.0 if tok in (self.vision_start_id, self.vision_end_id) else w)
        return out_ids, out_w

    def _truncate(self, ids, w, pixel_values, grid):
        cut, total = self.max_seq_len, len(ids)
        starts = (ids == self.vision_start_id).nonzero().flatten().tolist()
        ends = (ids == self.vision_end_id).nonzero().flatten().tolist()
        kept_images = 0
        for s, e in zip(starts, ends, strict=False):
            if e < cut:
                kept_images += 1
            elif s < cut:
                self._refuse(
                    f"{total} tokens > max_seq_len={self.max_seq_len} and the cut would split "
                    f"an image (tokens {s}..{e})"
                )
        ids, w = ids[:cut], w[:cut]
        if grid is not None:
            if kept_images == 0:
                pixel_values = grid = None
            else:
                patches = int(grid[:kept_images].prod(-1).sum())
                pixel_values, grid = pixel_values[:patches], grid[:kept_images]
        if not w.any():
            self._refuse(
                f"{total} tokens > max_seq_len={self.max_seq_len} and the first {cut} hold no "
                "assistant token to train on"
            )
        return ids, w, pixel_values, grid

    def _refuse(self, reason: str) -> None:
        if self.on_truncation == "error":
            raise RenderError(reason)
        raise SkipRecord(reason)


def _template_message(m: Message) -> dict:
    """A message as HF chat templates expect it; images become ``{"type": "image"}``."""
    if isinstance(m.content, str):
        return {"role": m.role, "content": m.content}
    parts = [
        {"type": "image"} if p.kind == "image" else {"type": "text", "text": p.text}
        for p in m.content
    ]
    return {"role": m.role, "content": parts}
