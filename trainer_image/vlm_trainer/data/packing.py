"""Padding-free packing: several rendered samples in one row, each with its own positions.

Supported: Qwen-VL models whose rope-index function has the signature of Qwen3-VL's
``get_rope_index(input_ids, mm_token_type_ids, image_grid_thw, ...)`` (images only, no video).

How a packed micro-batch is built and why it equals the padded one:

- ``pack`` concatenates the samples' tokens into one row ``(1, T)`` without padding. Images stay
  in sample order, so ``pixel_values`` and ``image_grid_thw`` are exactly the padded batch's (the
  vision tower already attends per image through its own ``cu_seqlens``).
- The first token of every sample gets weight 0 in the row: in a padded batch it is never a
  target (the loss shifts by one), and in a packed row it would be "predicted" by the previous
  sample's last token. So the targets, and the SFT denominator, are the padded batch's.
- ``position_ids`` (``(4, 1, T)``) are computed per sample with the model's *own* rope-index
  function, never a re-implementation: row 0 is the text position (0..n-1 for each sample),
  rows 1-3 the 3-D mRoPE positions (temporal, height, width) that the padded forward computes.
  Qwen3-VL's text model reads row 0 as ``text_position_ids``; with no ``attention_mask``,
  transformers treats a position that does not follow its predecessor as the start of a new
  sequence: SDPA/eager get a block-diagonal causal mask
  (``masking_utils.find_packed_sequence_indices``; tested on CPU against the padded batch), and
  flash-attention 2/3 runs varlen with ``cu_seq_lens`` from the same positions
  (``modeling_flash_attention_utils._is_packed_sequence``; not yet run on a GPU here).
  Attention never crosses samples. On CPU the mask is dense (T x T for the row). That
  detection only runs without a KV cache, so a packed forward passes ``use_cache=False`` (the
  recipes do; the model's ``config.use_cache`` does not reach Qwen3-VL's text config).

``plan_steps`` counts the optimizer steps of an epoch from the rendered lengths, with the same
greedy rule as the recipe uses to fill micro-batches, so the schedule knows its length exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from .collate import add_images
from .render import Rendered


def pack(samples: list[Rendered], image_token_id: int) -> dict:
    """One padding-free row: ``input_ids``, ``mm_token_type_ids``, ``weights`` (1, T),
    ``seq_lens`` (samples,) and, when any sample has images, ``pixel_values`` and
    ``image_grid_thw`` in sample order. ``position_ids`` come from ``add_position_ids``."""
    if not samples:
        raise ValueError("cannot pack an empty batch")
    input_ids = torch.cat([s.input_ids for s in samples]).unsqueeze(0)
    weights = torch.cat([s.weights for s in samples]).unsqueeze(0).clone()
    seq_lens = torch.tensor([s.num_tokens for s in samples], dtype=torch.long)
    starts = torch.cumsum(seq_lens, 0) - seq_lens
    weights[0, starts] = 0.0  # see the module docstring: never a target in the padded batch
    batch = {
        "input_ids": input_ids,
        "mm_token_type_ids": (input_ids == image_token_id).long(),
        "weights": weights,
        "seq_lens": seq_lens,
    }
    return add_images(batch, samples)


def find_rope_index(model) -> Callable:
    """The model's own ``get_rope_index`` (bound), through peft / DDP / FSDP wrappers."""
    for module in model.modules():
        fn = getattr(module, "get_rope_index", None)
        if callable(fn):
            return fn
    raise ValueError(
        f"{type(model).__name__} has no get_rope_index: packing supports Qwen-VL models only"
    )


def position_ids(batch: dict, rope_index: Callable) -> torch.Tensor:
    """``(4, 1, T)`` positions of a packed row: text positions then 3-D mRoPE, per sample."""
    ids, mm = batch["input_ids"][0], batch["mm_token_type_ids"][0]
    grids = batch.get("image_grid_thw")
    out, start, image = [], 0, 0
    for n in batch["seq_lens"].tolist():
        seq, types = ids[start : start + n], mm[start : start + n]
        # Images of this sample: one grid per run of image tokens (each image is one run).
        runs = int(((types[1:] == 1) & (types[:-1] == 0)).sum()) + int(types[0] == 1)
        grid = grids[image : image + runs] if runs else None
        with torch.no_grad():
            mrope, _ = rope_index(seq[None], types[None], image_grid_thw=grid)
        text = torch.arange(n, dtype=mrope.dtype, device=mrope.device).view(1, 1, n)
        out.append(torch.cat([text, mrope], dim=0))
        start, image = start + n, image + runs
    return torch.cat(out, dim=-1)


def add_position_ids(batch: dict, rope_index: Callable) -> dict:
    """``batch`` with ``position_ids`` (for a packed batch; a padded one is returned as is)."""
    if "seq_lens" not in batch:
        return batch
    return {**batch, "position_ids": position_ids(batch, rope_index)}


def fill(lengths: Iterable[int], budget: int) -> Iterable[int]:
    """Sizes (in samples) of the micro-batches that greedy packing makes of ``lengths``: a
    sample that would overflow ``budget`` tokens starts the next micro-batch."""
    count = used = 0
    for n in lengths:
        if count and used + n > budget:
            yield count
            count = used = 0
        count, used = count + 1, used + n
    if count:
        yield count


def plan_steps(lengths: Iterable[int], budget: int, accumulation: int) -> int:
    """Optimizer steps of one epoch: micro-batches of ``fill`` grouped by ``accumulation``."""
    micro = sum(1 for _ in fill(lengths, budget))
    return -(-micro // accumulation)
