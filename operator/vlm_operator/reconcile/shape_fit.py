"""Does a TrainingShape fit its GPUs? The memory model (``vlm_trainer.memory_model``) on the
shape's own numbers; pure, no API calls.

Checked when the shape says how much memory a GPU has (``spec.gpuMemory``) and the model's
architecture is known (``spec.modelSize``, else the table of known Qwen3-VL ids in
``memory_model.KNOWN``), on GPUs (``gpusPerNode > 0``) in bf16 (``precision`` auto or bf16):
training one sequence of ``maxContext`` tokens per GPU, FSDP2 over every GPU of the shape
(``gpusPerNode x nodes``), with gradient checkpointing and the chunked loss. Full fine-tuning
is checked when ``allowFullFineTune``, LoRA at ``maxLoraRank`` when that is above 0; the first
configuration that does not fit is returned as a message with the per-GPU GiB by term.
"""

from __future__ import annotations

import re

from vlm_trainer.memory_model import Architecture, Setup, architecture_for, predict

from vlm_operator.api.shape import Precision, TrainingShapeSpec

_SUFFIX = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
           "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18, "m": 1e-3, "n": 1e-9,
           "u": 1e-6, "": 1}  # fmt: skip
_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([a-zA-Z]*)$")


def quantity_bytes(q: int | str) -> float:
    """A Kubernetes quantity (``80Gi``, ``141G``, ``1e11``) as a number of bytes."""
    m = _QUANTITY.match(str(q).strip())
    if not m or m.group(2) not in _SUFFIX:
        raise ValueError(f"{q!r} is not a Kubernetes quantity")
    return float(m.group(1)) * _SUFFIX[m.group(2)]


def shape_architecture(spec: TrainingShapeSpec) -> Architecture | None:
    if spec.model_size is not None:
        m = spec.model_size
        return Architecture(m.parameters, m.hidden_size, m.intermediate_size, m.layers,
                            m.vocab_size, m.tied_embeddings)  # fmt: skip
    return architecture_for(spec.base_model)


def does_not_fit(spec: TrainingShapeSpec) -> str | None:
    """A message when a configuration the shape allows is predicted not to fit, else None."""
    arch = shape_architecture(spec)
    if spec.gpu_memory is None or arch is None or spec.gpus_per_node == 0:
        return None
    if spec.precision == Precision.FP32:
        return None  # the model assumes bf16 weights; fp32 on GPUs is not sized here
    gpu_gib = quantity_bytes(spec.gpu_memory) / 2**30
    ranks = ([0] if spec.allow_full_fine_tune else []) + (
        [spec.max_lora_rank] if spec.max_lora_rank else []
    )
    for rank in ranks:
        p = predict(arch, Setup(seq_len=spec.max_context, gpus=spec.total_gpus, lora_rank=rank))
        if p["total"] > gpu_gib:
            what = "full fine-tuning" if rank == 0 else f"LoRA rank {rank}"
            shown = {k: v for k, v in p.items() if k not in ("total", "full_logits_loss")}
            terms = ", ".join(f"{k} {v}" for k, v in shown.items())
            return (
                f"{what} at maxContext {spec.max_context} on {spec.total_gpus} GPU(s) needs "
                f"{p['total']} GiB per GPU, gpuMemory is {gpu_gib:.1f} GiB ({terms} GiB; "
                "docs/memory-model.md)"
            )
    return None
