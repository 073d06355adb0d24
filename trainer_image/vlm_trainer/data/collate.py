"""Batching rendered samples into model inputs.

Right padding (left for generation) with the tokenizer's pad id (weight 0, attention 0).
Images of all samples are concatenated in sample order, which is the order the Qwen-VL models
consume them: the model scatters image features into the ``<|image_pad|>`` positions of the
flattened batch, and ``mm_token_type_ids`` (1 on image tokens) drives the multimodal rotary
positions.
"""

from __future__ import annotations

import torch

from .render import Rendered


def collate(
    samples: list[Rendered], pad_token_id: int, image_token_id: int, left_pad: bool = False
) -> dict:
    """Return ``input_ids``, ``attention_mask``, ``mm_token_type_ids``, ``weights`` and, when any
    sample has images, ``pixel_values`` and ``image_grid_thw``. ``left_pad`` is for generation
    (every prompt then ends at the last column)."""
    if not samples:
        raise ValueError("cannot collate an empty batch")
    length = max(s.num_tokens for s in samples)
    n = len(samples)
    input_ids = torch.full((n, length), pad_token_id, dtype=torch.long)
    attention = torch.zeros((n, length), dtype=torch.long)
    weights = torch.zeros((n, length), dtype=torch.float32)
    for i, s in enumerate(samples):
        cols = slice(length - s.num_tokens, length) if left_pad else slice(0, s.num_tokens)
        input_ids[i, cols] = s.input_ids
        attention[i, cols] = 1
        weights[i, cols] = s.weights
    batch = {
        "input_ids": input_ids,
        "attention_mask": attention,
        "mm_token_type_ids": (input_ids == image_token_id).long() * attention,
        "weights": weights,
    }
    return add_images(batch, samples)


def add_images(batch: dict, samples: list[Rendered]) -> dict:
    """``batch`` with ``pixel_values`` and ``image_grid_thw`` of every sample that has images,
    concatenated in sample order (the order the model consumes them); unchanged if none has."""
    with_images = [s for s in samples if s.pixel_values is not None]
    if with_images:
        batch["pixel_values"] = torch.cat([s.pixel_values for s in with_images])
        batch["image_grid_thw"] = torch.cat([s.image_grid_thw for s in with_images])
    return batch


#: Batch keys the model does not take: loss weights, and a packed batch's sample lengths.
NON_MODEL_KEYS = ("weights", "seq_lens")


def model_inputs(batch: dict, device: torch.device | str) -> dict:
    """The batch without the loss-only keys, moved to ``device`` (padded or packed, see
    ``packing.py``)."""
    return {k: v.to(device) for k, v in batch.items() if k not in NON_MODEL_KEYS}


def num_tokens(batch: dict) -> int:
    """Real (non-padding) tokens of a padded or packed batch."""
    mask = batch.get("attention_mask")
    return int(batch["input_ids"].numel() if mask is None else mask.sum())


def num_samples(batch: dict) -> int:
    """Samples in a padded (one per row) or packed (``seq_lens``) batch."""
    lens = batch.get("seq_lens")
    return int(batch["input_ids"].shape[0] if lens is None else lens.numel())
