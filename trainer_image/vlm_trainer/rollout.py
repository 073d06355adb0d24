"""RL rollouts: sample completions of image prompts with ``model.generate``.

Supported and assumed:

- Each prompt is a rendered ``Prompt`` (``data/stream.py``) with zero or more images. For a
  group of ``n`` completions the prompt's ``Rendered`` is *repeated* n times before collating,
  so every generated row carries its own copy of its image patches in sample order. We do not
  use ``num_return_sequences``: expanding ``pixel_values`` / ``image_grid_thw`` per sample is
  model-specific and silently wrong when images differ in size or some prompts have none.
- Prompts are left-padded so that they all end at the last column; generation stops at
  ``<|im_end|>`` (or EOS) or after ``max_new_tokens``. A completion keeps its stop token (the
  model must learn to stop) and drops everything after it (padding).
- Image/video placeholder tokens are suppressed during sampling (``media_token_ids``).
- Sampling uses torch's global RNG, which checkpoints save and restore: a resumed run
  samples exactly the completions an uninterrupted one would.
- Each completion becomes a training sample: prompt tokens (weight 0) + completion tokens
  (weight 1), with the prompt's images, ready for ``collate`` and ``losses.token_logprobs``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from .data.collate import collate, model_inputs
from .data.render import Rendered, Renderer
from .data.stream import Prompt
from .evaluate import stop_token_ids


@dataclass
class Completion:
    sample: Rendered  # prompt + completion; weights mark the completion tokens
    text: str  # decoded completion, special tokens removed, stripped
    num_tokens: int  # generated tokens kept, stop token included
    stopped: bool  # ended with a stop token (False: cut at max_new_tokens)


@dataclass
class RolloutStats:
    seconds: float = 0.0
    generated_tokens: int = 0  # kept completion tokens
    sequences: int = 0


def with_completion(prompt: Rendered, completion_ids: torch.Tensor) -> Rendered:
    """The training sample of one completion: prompt (weight 0) then completion (weight 1)."""
    ids = torch.cat([prompt.input_ids, completion_ids])
    weights = torch.cat(
        [torch.zeros(prompt.num_tokens), torch.ones(completion_ids.numel())]
    ).float()
    return Rendered(ids, weights, prompt.pixel_values, prompt.image_grid_thw)


def trim_completion(row: torch.Tensor, stop_ids: list[int]) -> tuple[torch.Tensor, bool]:
    """Generated ids up to and including the first stop token; ``(ids, stopped)``."""
    hits = torch.isin(row, torch.tensor(stop_ids, device=row.device)).nonzero()
    if len(hits):
        return row[: int(hits[0]) + 1], True
    return row, False


def media_token_ids(renderer: Renderer) -> list[int]:
    """Image/video placeholder and boundary tokens: never sampled. A generated
    ``<|image_pad|>`` has no pixels behind it and would break the training forward pass
    ("image features and image tokens do not match")."""
    tok = renderer.tokenizer
    names = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")
    ids = {renderer.image_token_id, renderer.vision_start_id, renderer.vision_end_id}
    ids |= {tok.convert_tokens_to_ids(n) for n in names}
    unk = tok.unk_token_id
    return sorted(i for i in ids if isinstance(i, int) and i >= 0 and i != unk)


@torch.no_grad()
def rollout(
    model,
    renderer: Renderer,
    prompts: list[Prompt],
    n: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    greedy: bool = False,
    stats: RolloutStats | None = None,
) -> list[list[Completion]]:
    """``n`` sampled completions for each prompt (``greedy``: one deterministic one each)."""
    t0 = time.perf_counter()
    tok = renderer.tokenizer
    stop = stop_token_ids(tok)
    repeated = [p.prompt for p in prompts for _ in range(n)]
    batch = collate(repeated, renderer.pad_token_id, renderer.image_token_id, left_pad=True)
    device = next(model.parameters()).device
    inputs = model_inputs(batch, device)
    # Never generate past max_seq_len: the training forward pass must hold the whole sequence.
    room = renderer.max_seq_len - max(p.prompt.num_tokens for p in prompts)
    sampling = (
        {"do_sample": False}
        if greedy
        else {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0}
    )
    was_training = model.training
    model.eval()  # no dropout while sampling; the rollout is the policy itself
    try:
        out = model.generate(
            **inputs,
            max_new_tokens=max(1, min(max_new_tokens, room)),
            eos_token_id=stop,
            pad_token_id=renderer.pad_token_id,
            use_cache=True,
            suppress_tokens=media_token_ids(renderer),
            **sampling,
        )
    finally:
        model.train(was_training)
    new = out[:, inputs["input_ids"].shape[1] :].cpu()
    groups: list[list[Completion]] = []
    kept = 0
    for i, prompt in enumerate(repeated):
        ids, stopped = trim_completion(new[i], stop)
        kept += ids.numel()
        text = tok.decode(ids, skip_special_tokens=True).strip()
        if i % n == 0:
            groups.append([])
        groups[-1].append(Completion(with_completion(prompt, ids), text, ids.numel(), stopped))
    if stats is not None:
        stats.seconds += time.perf_counter() - t0
        stats.generated_tokens += kept
        stats.sequences += len(repeated)
    return groups
