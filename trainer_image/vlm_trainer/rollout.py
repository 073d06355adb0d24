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
- Sampling with ``seeds`` (what RL training uses): completion ``j`` of prompt ``i`` draws from
  its own generator seeded by ``sample_seed(seeds[i], j)`` (``SeededSampler``), so what a row
  samples does not depend on which other prompts share its batch, nor on the process it runs
  in: 1 process and N processes sample the same completions, and a resumed run samples what an
  uninterrupted one would. Without ``seeds``, torch's global RNG (saved in checkpoints).
- ``synced``: every rank keeps running decoding steps until all ranks are done (HF's
  ``synced_gpus``), needed under FSDP, where each forward pass all-gathers the weights.
- Each completion becomes a training sample: prompt tokens (weight 0) + completion tokens
  (weight 1), with the prompt's images, ready for ``collate`` and ``losses.token_logprobs``.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import torch
from transformers import LogitsProcessor, TemperatureLogitsWarper, TopPLogitsWarper

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


def sample_seed(*parts: int) -> int:
    """A 63-bit generator seed from integers (e.g. run seed, step, record index)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class SeededSampler(LogitsProcessor):
    """Samples the next token of row ``i`` with its own ``torch.Generator`` (seeded by
    ``seeds[i]``) from ``softmax(scores / temperature)`` restricted to the top-``top_p`` nucleus
    (HF's warpers, so the distribution is the one ``do_sample=True`` samples from), and returns
    scores that are ``-inf`` everywhere but the chosen token: ``generate`` runs greedy
    (``do_sample=False``) and so takes exactly this token. ``suppress`` ids are never chosen
    (applied here too, since the order of custom processors is HF's choice)."""

    def __init__(self, seeds: list[int], temperature: float, top_p: float, suppress: list[int]):
        self.generators = [torch.Generator().manual_seed(s) for s in seeds]
        self.warpers = [TemperatureLogitsWarper(temperature)]
        if top_p < 1.0:
            self.warpers.append(TopPLogitsWarper(top_p))
        self.suppress = suppress

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = scores.float().clone()
        scores[:, self.suppress] = -float("inf")
        for warp in self.warpers:
            scores = warp(input_ids, scores)
        cdf = scores.softmax(-1).cumsum(-1)
        u = torch.stack([torch.rand((), generator=g) for g in self.generators]).to(cdf.device)
        # The first token whose cdf exceeds u * total: it has a non-zero probability.
        chosen = (cdf <= (u * cdf[:, -1]).unsqueeze(-1)).sum(-1).clamp_max(cdf.shape[-1] - 1)
        out = torch.full_like(scores, -float("inf"))
        out[torch.arange(len(chosen), device=out.device), chosen] = 0.0
        return out


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
    seeds: list[int] | None = None,
    synced: bool = False,
) -> list[list[Completion]]:
    """``n`` sampled completions for each prompt (``greedy``: one deterministic one each).
    ``seeds``: one per prompt, for per-completion generators (see the module docstring)."""
    t0 = time.perf_counter()
    tok = renderer.tokenizer
    stop = stop_token_ids(tok)
    repeated = [p.prompt for p in prompts for _ in range(n)]
    batch = collate(repeated, renderer.pad_token_id, renderer.image_token_id, left_pad=True)
    device = next(model.parameters()).device
    inputs = model_inputs(batch, device)
    # Never generate past max_seq_len: the training forward pass must hold the whole sequence.
    room = renderer.max_seq_len - max(p.prompt.num_tokens for p in prompts)
    suppress = media_token_ids(renderer)
    if greedy:
        sampling: dict = {"do_sample": False}
    elif seeds is not None:
        row_seeds = [sample_seed(s, j) for s in seeds for j in range(n)]
        sampler = SeededSampler(row_seeds, temperature, top_p, suppress)
        sampling = {"do_sample": False, "logits_processor": [sampler]}
    else:
        sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0}
    was_training = model.training
    model.eval()  # no dropout while sampling; the rollout is the policy itself
    try:
        out = model.generate(
            **inputs,
            max_new_tokens=max(1, min(max_new_tokens, room)),
            eos_token_id=stop,
            pad_token_id=renderer.pad_token_id,
            use_cache=True,
            suppress_tokens=suppress,
            synced_gpus=synced,
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
