"""Predicted peak GPU memory of one training process: FSDP2, bf16, checkpointing, chunked loss.

Pure arithmetic, no torch: the operator imports it for shape admission and the GPU benchmark
prints its prediction next to the measured peak. ``docs/memory-model.md`` derives every term;
in short, per GPU with ``G`` GPUs sharing the model (FSDP2 over every GPU of the shape), one
sequence of ``L`` tokens per micro-batch, ``P`` parameters:

- states: bf16 weights ``2P/G``; full fine-tuning adds bf16 gradients ``2P/G`` and AdamW's two
  bf16 moments ``4P/G`` (the trainer keeps optimizer state in the parameter dtype); LoRA adds
  16 bytes per adapter parameter, unsharded, and keeps the frozen base sharded;
- unsharded working set (``G > 1``): the root unit (embedding + output head, bf16) stays
  gathered from forward to the end of backward, plus two decoder layers (the one running, the
  one being prefetched) and the output head's bf16 gradient; nothing for one process, which
  the trainer does not wrap;
- activations with gradient checkpointing: every layer's input ``L x h`` (bf16) kept, plus one
  layer recomputed in backward: ``L x (A_h h + A_i i)`` bf16 values (attention by a fused
  kernel, so no ``L x L`` matrix; ``A_h``, ``A_i`` below, counted from the Qwen3 decoder layer);
- vision tower: ``image_tokens`` merged tokens are 4 patches each; checkpointed block inputs
  plus one block recomputed, and the visual features handed to the language model;
- loss (``chunked_loss.py``): the selected hidden states, one chunk of float32 logits (about
  3 copies live in backward) and the float32 accumulator of the head's gradient. The
  full-logits alternative is ``L x V x 16`` bytes (bf16 logits, float32 copy, log-softmax,
  their gradients), reported for comparison;
- fixed: CUDA context, NCCL buffers and allocator slack (``OVERHEAD_GIB``), and
  ``FRAGMENTATION`` on top of the activations.

The peak is states + working set + checkpoints + vision + the larger of (one layer recomputed,
the loss), times nothing else: the loss's backward ends before the last layer's recompute
starts. Numbers are GiB (2**30 bytes).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

GIB = 2**30
OVERHEAD_GIB = 3.0  # CUDA context (~0.5), NCCL buffers (~1), caching-allocator slack
FRAGMENTATION = 1.10  # on activations: the caching allocator's blocks are never a perfect fit
# bf16 values live per token while one decoder layer is recomputed and back-propagated:
# residual, 2 RMSNorm outputs, q, attention output, o_proj output, their gradients (~10 x h),
# and gate, up, act(gate), act(gate) * up, plus 2 gradients of that width (~6 x i).
A_H, A_I = 10, 6
CHUNK_LOGIT_COPIES = 3  # float32 logits, softmax, the bf16 gradient (counted as float32)
CUDA_CHUNK_ELEMENTS = 2**26  # chunked_loss.CUDA_CHUNK_ELEMENTS (this module imports no torch)


@dataclass(frozen=True)
class Architecture:
    """What the memory model needs to know about a model (a Qwen3-VL-style decoder + ViT)."""

    parameters: int  # every parameter, vision tower included
    hidden_size: int
    intermediate_size: int
    layers: int
    vocab_size: int
    tied_embeddings: bool = False
    vision_hidden: int = 1152
    vision_intermediate: int = 4304
    vision_depth: int = 27


# Released configs (config.json of the Hugging Face repositories).
KNOWN: dict[str, Architecture] = {
    "Qwen/Qwen3-VL-8B-Instruct": Architecture(8_767_123_696, 4096, 12288, 36, 151_936),
}


def architecture_for(model_id: str) -> Architecture | None:
    """The table's entry for a hub id (``-Instruct`` and ``-Thinking`` share sizes)."""
    base = model_id.removesuffix("-Thinking").removesuffix("-Instruct")
    return KNOWN.get(model_id) or KNOWN.get(f"{base}-Instruct")


@dataclass(frozen=True)
class Setup:
    """One training process's situation."""

    seq_len: int
    gpus: int  # FSDP2 shards over every GPU of the job
    lora_rank: int = 0  # 0 = full fine-tuning
    image_tokens: int | None = None  # merged image tokens per sequence; default seq_len / 4
    chunked_loss: bool = True
    target_fraction: float = 0.5  # share of the sequence that are loss targets


def lora_parameters(a: Architecture, rank: int) -> int:
    """Adapter parameters on q, k, v, o, gate, up, down of every layer (k, v as q: an upper
    bound for grouped-query attention)."""
    per_layer = 4 * rank * 2 * a.hidden_size + 3 * rank * (a.hidden_size + a.intermediate_size)
    return per_layer * a.layers


def predict(a: Architecture, s: Setup) -> dict[str, float]:
    """Per-GPU GiB by term, and ``total``."""
    h, i, L, V = a.hidden_size, a.intermediate_size, s.seq_len, a.vocab_size
    heads = V * h * (1 if a.tied_embeddings else 2)  # embedding and output head
    layer = 4 * h * h + 3 * h * i  # one decoder layer's weights (upper bound with GQA)
    if s.lora_rank:
        states = 2 * a.parameters / s.gpus + 16 * lora_parameters(a, s.lora_rank)
        head_grad = 0.0
    else:
        states = 8 * a.parameters / s.gpus
        head_grad = 2 * V * h
    # One process is not wrapped (distributed.py): no gathered copies, the head's gradient
    # is already among the states.
    working = 2 * heads + 2 * 2 * layer + head_grad if s.gpus > 1 else 0.0
    checkpoints = 2 * L * h * a.layers
    recompute = 2 * L * (A_H * h + A_I * i)
    image = L // 4 if s.image_tokens is None else s.image_tokens
    hv, patches = a.vision_hidden, 4 * image
    vision = 2 * patches * hv * a.vision_depth  # checkpointed block inputs
    vision += 2 * patches * (A_H * hv + A_I * a.vision_intermediate)  # one block recomputed
    vision += 2 * image * h * 4  # merged features + 3 DeepStack levels
    targets = int(L * s.target_fraction)
    chunk = max(1, min(targets, CUDA_CHUNK_ELEMENTS // V))
    chunked = 2 * targets * h + 2 * L * h + 4 * chunk * V * CHUNK_LOGIT_COPIES
    chunked += 0 if s.lora_rank else 4 * V * h  # float32 accumulator of the head's gradient
    full = 16 * L * V
    loss = chunked if s.chunked_loss else full
    activations = FRAGMENTATION * (checkpoints + vision + max(recompute, loss))
    parts = {
        "states": states / GIB,
        "working_set": working / GIB,
        "checkpoints": checkpoints / GIB,
        "layer_recompute": recompute / GIB,
        "vision": vision / GIB,
        "loss": loss / GIB,
        "full_logits_loss": full / GIB,
        "overhead": OVERHEAD_GIB,
    }
    parts["total"] = (states + working) / GIB + activations / GIB + OVERHEAD_GIB
    return {k: round(v, 2) for k, v in parts.items()}


def fits(a: Architecture, s: Setup, gpu_gib: float) -> tuple[bool, dict[str, float]]:
    """``(fits, prediction)``: whether the predicted peak is within ``gpu_gib``."""
    p = predict(a, s)
    return p["total"] <= gpu_gib, p


def describe(a: Architecture, s: Setup) -> dict:
    return {"architecture": asdict(a), "setup": asdict(s)}
