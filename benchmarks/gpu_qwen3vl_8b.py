"""SFT throughput of a full-size Qwen3-VL-8B-shaped model on one GPU (random weights, no download).

Builds ``Qwen3VLForConditionalGeneration`` from a ``Qwen3VLConfig`` with the released 8B sizes
(text: 36 layers, hidden 4096, MLP 12288, 32 heads / 8 KV heads, vocab 151936; vision: 27
blocks, hidden 1152, patch 16, merge 2, DeepStack at 8/16/24), bf16, SDPA attention, gradient
checkpointing; runs SFT steps (AdamW) on synthetic image+text sequences with the trainer's
loss: the chunked hidden-state loss (``chunked_loss.py``), Liger's fused linear cross-entropy
(``--liger``, default when installed on CUDA) or the old full-logits loss (``--full-logits``),
and prints one JSON line: tokens/s, step time, peak memory, MFU, and the memory model's
prediction (``vlm_trainer/memory_model.py``, one process: nothing sharded) next to the peak.

Full fine-tuning of 8.8B parameters needs ~70 GiB for weights, gradients and bf16 AdamW states
alone, so by default it runs full FT on cards with >= 120 GiB (H200) and LoRA rank 64 on the
language model otherwise (H100 80 GB); ``--lora-rank`` forces either. MFU counts model FLOPs
(no recomputation): 6 N per token for trained weights (4 N with LoRA: no weight gradients),
2 N per vision patch when the tower is frozen, plus causal attention, over the card's dense bf16
peak (989 TFLOP/s for H100/H200 SXM; ``--peak-tflops`` to override).

    python benchmarks/gpu_qwen3vl_8b.py                 # on the GPU; < 5 minutes
    python benchmarks/gpu_qwen3vl_8b.py --seq-len 65536 --steps 3 --no-liger   # the 65k shape
    python benchmarks/gpu_qwen3vl_8b.py --tiny          # CPU smoke test of the same code path

Packing several samples into the row (``--packed``) is the data side of issue 15 and is not
in this script yet.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "trainer_image"))
from vlm_trainer import chunked_loss, liger, losses
from vlm_trainer.head import forward_hidden
from vlm_trainer.memory_model import Architecture, Setup, predict


def qwen3vl_8b_config(tiny: bool):
    from transformers import Qwen3VLConfig

    text = dict(
        hidden_size=4096,
        intermediate_size=12288,
        num_hidden_layers=36,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        vocab_size=151936,
        max_position_embeddings=262144,
        rms_norm_eps=1e-6,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 5_000_000.0,
            "mrope_section": [24, 20, 20],
            "mrope_interleaved": True,
        },
    )
    vision = dict(
        depth=27,
        hidden_size=1152,
        intermediate_size=4304,
        num_heads=16,
        patch_size=16,
        spatial_merge_size=2,
        temporal_patch_size=2,
        out_hidden_size=4096,
        num_position_embeddings=2304,
        deepstack_visual_indexes=[8, 16, 24],
    )
    if tiny:  # same architecture, toy sizes
        text |= dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2)
        text |= dict(num_attention_heads=4, num_key_value_heads=2, head_dim=16)
        text["rope_parameters"] = {**text["rope_parameters"], "mrope_section": [4, 2, 2]}
        vision |= dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2)
        vision |= dict(out_hidden_size=64, deepstack_visual_indexes=[0])
    return Qwen3VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False)


def synthetic_batch(cfg, seq_len: int, image_size: int, batch: int, device) -> dict:
    """``batch`` sequences of ``seq_len`` tokens: a prompt with one ``image_size``² image, then
    text; the second half of each sequence is the (weighted) answer."""
    v = cfg.vision_config
    grid = image_size // v.patch_size
    n_image_tokens = grid * grid // v.spatial_merge_size**2
    assert n_image_tokens + 16 < seq_len, "the image does not fit in the sequence"
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 150_000, (batch, seq_len), generator=g)
    ids[:, 4] = cfg.vision_start_token_id
    ids[:, 5 : 5 + n_image_tokens] = cfg.image_token_id
    ids[:, 5 + n_image_tokens] = cfg.vision_end_token_id
    weights = torch.zeros(batch, seq_len)
    weights[:, seq_len // 2 :] = 1.0
    patch_dim = 3 * v.temporal_patch_size * v.patch_size**2
    pixels = torch.randn(batch * grid * grid, patch_dim, generator=g)
    return {
        "input_ids": ids.to(device),
        "attention_mask": torch.ones_like(ids).to(device),
        "mm_token_type_ids": (ids == cfg.image_token_id).long().to(device),
        "pixel_values": pixels.to(device, torch.bfloat16 if device.type == "cuda" else None),
        "image_grid_thw": torch.tensor([[1, grid, grid]] * batch).to(device),
        "weights": weights.to(device),
        "patches": batch * grid * grid,
    }


def peak_flops(name: str, override: float | None) -> float | None:
    if override:
        return override * 1e12
    if "H100" in name or "H200" in name or "GH200" in name:
        return (756e12 if "PCIe" in name else 989.4e12) if "H100" in name else 989.4e12
    if "A100" in name:
        return 312e12
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="toy sizes on CPU (tests the code path)")
    ap.add_argument("--seq-len", type=int, default=8192)
    ap.add_argument("--image-size", type=int, default=896, help="square image side in pixels")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=8, help="measured steps (after 2 warm-up)")
    ap.add_argument("--lora-rank", type=int, default=None, help="0 = full FT; default by memory")
    ap.add_argument("--no-grad-ckpt", action="store_true")
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument(
        "--liger",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Liger's fused linear cross-entropy (default: when installed, on CUDA)",
    )
    ap.add_argument("--full-logits", action="store_true", help="the old (L, V) logits loss")
    args = ap.parse_args()
    t_start = time.perf_counter()

    from transformers import Qwen3VLForConditionalGeneration

    cuda = torch.cuda.is_available() and not args.tiny
    device = torch.device("cuda" if cuda else "cpu")
    if args.tiny:
        args.seq_len, args.image_size, args.steps = min(args.seq_len, 256), 64, min(args.steps, 3)
    card = torch.cuda.get_device_name() if cuda else "cpu"
    mem_gib = torch.cuda.get_device_properties(0).total_memory / 2**30 if cuda else 0.0
    lora = args.lora_rank if args.lora_rank is not None else (64 if cuda and mem_gib < 120 else 0)

    cfg = qwen3vl_8b_config(args.tiny)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    dtype = torch.bfloat16 if cuda else torch.float32
    with torch.device(device):
        model = Qwen3VLForConditionalGeneration._from_config(cfg, dtype=dtype)
    n_text = sum(p.numel() for n, p in model.named_parameters() if "visual" not in n)
    n_vis = sum(p.numel() for n, p in model.named_parameters() if "visual" in n)
    n_embed = model.get_input_embeddings().weight.numel()
    model.config.use_cache = False
    if lora:
        from peft import LoraConfig, get_peft_model

        targets = r"^(?!.*\bvisual\b).*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$"
        model = get_peft_model(
            model, LoraConfig(r=lora, lora_alpha=2 * lora, target_modules=targets)
        )
    if not args.no_grad_ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if lora:
            model.enable_input_require_grads()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.0)
    batch = synthetic_batch(cfg, args.seq_len, args.image_size, args.batch, device)
    weights, patches = batch.pop("weights"), batch.pop("patches")
    denom = losses.num_target_tokens(weights)
    use_liger = liger.available(device) if args.liger is None else args.liger
    loss_name = "full_logits" if args.full_logits else ("liger" if use_liger else "chunked")

    def step() -> float:
        ids = batch["input_ids"]
        if args.full_logits:
            loss = losses.sft_loss(model(**batch).logits, ids, weights, denom)
        else:
            hidden, head = forward_hidden(model, batch)
            if use_liger:
                loss = liger.weighted_ce_sum(hidden, head, ids, weights)[0] / denom
            else:
                loss = chunked_loss.sft_loss(hidden, head, ids, weights, denom)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for _ in range(2):  # warm-up: allocator, kernels, optimizer state
        step()
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        loss = step()
        sync()
        times.append(time.perf_counter() - t0)
    step_s = sorted(times)[len(times) // 2]
    tokens = args.seq_len * args.batch
    k_text = 4 if lora else 6  # LoRA: forward + input gradients, no weight gradients
    k_vis = 2 if lora else 6  # LoRA leaves the tower frozen: forward only
    t = cfg.text_config
    attn = 6 * t.num_hidden_layers * t.num_attention_heads * t.head_dim * args.seq_len  # causal
    flops = tokens * (k_text * (n_text - n_embed) + attn) + patches * k_vis * n_vis
    peak = peak_flops(card, args.peak_tflops) if cuda else None
    image_tokens = int(batch["mm_token_type_ids"].sum()) // args.batch
    arch = Architecture(n_text + n_vis, t.hidden_size, t.intermediate_size, t.num_hidden_layers,
                        t.vocab_size, vision_hidden=cfg.vision_config.hidden_size,
                        vision_intermediate=cfg.vision_config.intermediate_size,
                        vision_depth=cfg.vision_config.depth)  # fmt: skip
    predicted = predict(arch, Setup(args.seq_len * args.batch, 1, lora, image_tokens * args.batch,
                                    chunked_loss=not args.full_logits))  # fmt: skip
    result = {
        "card": card,
        "mode": f"lora r={lora}" if lora else "full",
        "params_b": round((n_text + n_vis) / 1e9, 3),
        "seq_len": args.seq_len,
        "image_tokens": image_tokens,
        "loss_kernel": loss_name,
        "batch": args.batch,
        "grad_ckpt": not args.no_grad_ckpt,
        "step_time_s": round(step_s, 3),
        "tokens_per_s": round(tokens / step_s, 1),
        "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2) if cuda else None,
        "predicted_peak_gib": predicted["total"],
        "predicted_terms_gib": predicted,
        "mfu": round(flops / step_s / peak, 4) if peak else None,
        "loss": round(loss, 4),
        "wall_s": round(time.perf_counter() - t_start, 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
