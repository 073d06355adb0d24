"""The recipes' hidden-state chunked losses against the full-logits losses, on the tiny model.

For SFT, DPO and RL, one real batch (images of different sizes and a text-only sample) goes
through the model twice: once as before (``model(...).logits`` into ``losses.py``) and once as
the recipes now do it (``head.forward_hidden`` into ``chunked_loss.py``, a few positions per
chunk). The loss must agree within 1e-6 relative and every parameter's gradient within 1e-5,
for full fine-tuning and for LoRA (peft). The model has a 2,000-token vocabulary
(``make_tiny_model(vocab_size=2000)``), so a chunk of 7 positions covers a small part of
the targets, and the appended tokens are really in every softmax.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.trainer]

CHUNK = 7


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    from vlm_trainer.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny2k") / "model", vocab_size=2000)


@pytest.fixture(scope="module")
def samples(model_dir, demo_data):
    """Six rendered SFT samples: four with images (64 to 96 px), two text-only."""
    from PIL import Image
    from transformers import AutoProcessor
    from vlm_trainer.data.images import encode_data_url
    from vlm_trainer.data.jsonl import parse_line
    from vlm_trainer.data.render import Renderer

    renderer = Renderer(AutoProcessor.from_pretrained(model_dir), 512)
    lines = (demo_data / "sft_train.jsonl").read_text().splitlines()[:4]
    recs = [json.loads(x) for x in lines]
    big = encode_data_url(Image.new("RGB", (96, 64), (10, 200, 30)))
    recs[1]["messages"][0]["content"].append({"type": "image_url", "image_url": {"url": big}})
    recs += [{"messages": [{"role": "user", "content": "Say blue."},
                           {"role": "assistant", "content": "blue, then a longer answer"}]},
             {"messages": [{"role": "user", "content": "Count."},
                           {"role": "assistant", "content": "0 1 2 3"}]}]  # fmt: skip
    out = []
    for i, rec in enumerate(recs):
        record, issues = parse_line(json.dumps(rec), file="t", line=i + 1, mode="sft")
        assert record is not None, issues
        out.append(renderer.render(record.conversation))
    return renderer, out


def load(model_dir: Path, lora: bool):
    from transformers import AutoModelForImageTextToText
    from vlm_trainer.config import SFTConfig
    from vlm_trainer.model import apply_lora

    model = AutoModelForImageTextToText.from_pretrained(model_dir)
    if lora:
        cfg = SFTConfig(base_model=str(model_dir), dataset="x", log_path="x", lora_rank=4)
        model = apply_lora(model, cfg)
        for name, p in model.named_parameters():  # non-zero B: adapters change the output
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.05, generator=torch.Generator().manual_seed(1))
    return model.train()


def batch_of(renderer, samples):
    from vlm_trainer.data.collate import collate, model_inputs

    b = collate(samples, renderer.pad_token_id, renderer.image_token_id)
    return model_inputs(b, "cpu"), b["weights"]


def value_and_grads(model, loss_fn) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = loss_fn()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return float(loss.detach()), grads


def assert_same(full, chunked) -> None:
    (v_full, g_full), (v_chunk, g_chunk) = full, chunked
    assert abs(v_chunk - v_full) <= 1e-6 * max(abs(v_full), 1e-12), (v_chunk, v_full)
    assert g_full.keys() == g_chunk.keys() and len(g_full) > 2
    for name, g in g_full.items():
        diff = float((g_chunk[name] - g).abs().max())
        assert diff <= 1e-5 * max(1.0, float(g.abs().max())), (name, diff)
    assert any(float(g.abs().max()) > 0 for g in g_full.values())


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_sft_chunked_equals_full_logits(model_dir, samples, lora):
    from vlm_trainer import chunked_loss, losses
    from vlm_trainer.head import forward_hidden

    renderer, rendered = samples
    model = load(model_dir, lora)
    inputs, w = batch_of(renderer, rendered)
    ids, denom = inputs["input_ids"], losses.num_target_tokens(w) + 3  # as if accumulated

    def full():
        return losses.sft_loss(model(**inputs).logits, ids, w, denom)

    def chunked():
        hidden, head = forward_hidden(model, inputs)
        assert hidden.shape[-1] == 64 and head.shape == (2000, 64)
        return chunked_loss.sft_loss(hidden, head, ids, w, denom, chunk=CHUNK)

    assert_same(value_and_grads(model, full), value_and_grads(model, chunked))
    # The head is itself again after forward_hidden: full-vocabulary logits come back.
    assert model(**inputs).logits.shape[-1] == 2000


def test_dpo_chunked_equals_full_logits(model_dir, samples):
    from vlm_trainer import chunked_loss, losses
    from vlm_trainer.head import forward_hidden

    renderer, rendered = samples
    model = load(model_dir, lora=False)
    inputs, w = batch_of(renderer, rendered)  # rows 0-2 "chosen", 3-5 "rejected"
    ids = inputs["input_ids"]
    ref = torch.tensor([-30.0, -41.0, -12.0, -35.0, -38.0, -20.0])

    def dpo(seq):
        loss, _, _ = losses.dpo_losses(seq[:3], seq[3:], ref[:3], ref[3:], 0.1, "sigmoid")
        return loss.mean()

    def full():
        return dpo(losses.sequence_logprobs(model(**inputs).logits, ids, w))

    def chunked():
        hidden, head = forward_hidden(model, inputs)
        return dpo(chunked_loss.sequence_logprobs(hidden, head, ids, w, chunk=CHUNK))

    assert_same(value_and_grads(model, full), value_and_grads(model, chunked))


def test_rl_chunked_equals_full_logits(model_dir, samples):
    """Token log-probs at temperature 0.7, PPO-clip with a stale ``old_logp`` (the ratio is not
    1, some tokens clip) and the k3 KL to a reference, as ``recipes/rl.py`` combines them."""
    from vlm_trainer import chunked_loss, losses
    from vlm_trainer.head import forward_hidden

    renderer, rendered = samples
    model = load(model_dir, lora=False)
    inputs, w = batch_of(renderer, rendered)
    ids, mask, temperature = inputs["input_ids"], w[:, 1:], 0.7
    adv = torch.tensor([1.0, -0.5, 0.3, -1.2, 0.8, 0.1])
    with torch.no_grad():
        base = losses.token_logprobs(model(**inputs).logits / temperature, ids)
    noise = torch.randn(base.shape, generator=torch.Generator().manual_seed(0))
    old, ref = base + 0.3 * noise, base - 0.2 * noise.abs()

    def rl(logp):
        per_token, clipped = losses.ppo_clip_token_loss(logp, old, adv, 0.2, 0.28)
        assert bool((clipped.float() * mask).sum() > 0)
        per_token = per_token + 0.05 * losses.k3_kl(logp, ref)
        return (per_token * mask).sum() / mask.sum()

    def full():
        return rl(losses.token_logprobs(model(**inputs).logits / temperature, ids))

    def chunked():
        hidden, head = forward_hidden(model, inputs)
        return rl(chunked_loss.token_logprobs(hidden, head, ids, w, 1 / temperature, CHUNK))

    assert_same(value_and_grads(model, full), value_and_grads(model, chunked))


def test_vocab_size_appends_tokens_and_keeps_the_encoding(model_dir, tiny_model):
    """``make-tiny-model --vocab-size``: the appended tokens never change how text encodes,
    and the model's embedding and head have one row per token."""
    from transformers import AutoConfig, AutoTokenizer

    big, small = AutoTokenizer.from_pretrained(model_dir), AutoTokenizer.from_pretrained(tiny_model)
    text = "<|im_start|>user\nWhat colour is this image? 42 purple<|im_end|>"
    assert len(big) == 2000 and len(small) == 320
    assert big(text).input_ids == small(text).input_ids
    assert big.convert_tokens_to_ids("<|extra_1999|>") == 1999
    cfg = AutoConfig.from_pretrained(model_dir).text_config
    assert cfg.vocab_size == 2000 and cfg.max_position_embeddings >= 8192


def test_liger_loss_without_cuda_is_a_config_error(tmp_path, tiny_model, demo_data):
    """``loss_kernel: liger`` needs CUDA and liger-kernel: refused before any model loads."""
    from vlm_trainer.config import ConfigError, SFTConfig
    from vlm_trainer.recipes.sft import SFTRecipe

    cfg = SFTConfig(base_model=str(tiny_model), dataset=str(demo_data / "sft_eval.jsonl"),
                    log_path=str(tmp_path / "log"), device="cpu", loss_kernel="liger")  # fmt: skip
    with pytest.raises(ConfigError, match="loss_kernel: liger needs CUDA"):
        SFTRecipe(cfg).setup()
