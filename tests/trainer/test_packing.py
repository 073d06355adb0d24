"""Padding-free packing equals padding: same loss, same gradients, on the tiny Qwen3-VL.

The samples mix images of different sizes (so different mRoPE grids), a sample with two images
and text-only samples; the packed row is one sequence of all of them, the padded batch one row
each. Both run the real model (SDPA on CPU), so a packed row whose attention crossed samples,
whose positions were not per sample, or whose images were misassigned would differ.
"""

from __future__ import annotations

import json
import random

import pytest
import torch
from vlm_trainer.data.collate import collate, model_inputs
from vlm_trainer.data.images import encode_data_url
from vlm_trainer.data.jsonl import parse_line
from vlm_trainer.data.packing import add_position_ids, find_rope_index, pack
from vlm_trainer.data.render import Renderer
from vlm_trainer.demo_data import colour_image
from vlm_trainer.losses import num_target_tokens, sft_loss

pytestmark = pytest.mark.trainer


def conversation(sizes: list[tuple[int, int]], answer: str, rng: random.Random):
    content = [{"type": "text", "text": "Describe the picture."}]
    for w, h in sizes:
        url = encode_data_url(colour_image("red", rng, 64).resize((w, h)))
        content.append({"type": "image_url", "image_url": {"url": url}})
    line = {"messages": [{"role": "user", "content": content if sizes else content[0]["text"]},
                         {"role": "assistant", "content": answer}]}  # fmt: skip
    record, issues = parse_line(json.dumps(line), file="t", line=1)
    assert record is not None, issues
    return record.conversation


@pytest.fixture(scope="module")
def samples(tiny_processor):
    rng = random.Random(0)
    renderer = Renderer(tiny_processor, max_seq_len=1024)
    specs = [
        ([(64, 64)], "red"),
        ([], "The quick brown fox jumps over the lazy dog."),
        ([(96, 160)], "a square and a circle"),
        ([(32, 48), (128, 64)], "first second"),
        ([], "yes"),
    ]
    return renderer, [renderer.render(conversation(s, a, rng)) for s, a in specs]


def loss_and_grads(model, batch, denom) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    inputs = model_inputs(batch, "cpu")
    logits = model(**inputs, use_cache=False).logits
    loss = sft_loss(logits, inputs["input_ids"], batch["weights"], denom)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return float(loss.detach()), grads


def test_packed_batch_equals_padded_batch(tiny_model, samples):
    from transformers import AutoModelForImageTextToText

    renderer, rendered = samples
    model = AutoModelForImageTextToText.from_pretrained(tiny_model, dtype=torch.float32)
    model.train()
    padded = collate(rendered, renderer.pad_token_id, renderer.image_token_id)
    packed = add_position_ids(pack(rendered, renderer.image_token_id), find_rope_index(model))
    assert packed["input_ids"].shape == (1, sum(s.num_tokens for s in rendered))
    assert packed["input_ids"].numel() < padded["input_ids"].numel()  # padding really saved
    denom = num_target_tokens(padded["weights"])
    assert num_target_tokens(packed["weights"]) == denom > 0

    loss_pad, g_pad = loss_and_grads(model, padded, denom)
    loss_pack, g_pack = loss_and_grads(model, packed, denom)
    print(f"\nloss padded {loss_pad:.8f} packed {loss_pack:.8f}")
    assert abs(loss_pad - loss_pack) <= 1e-5
    assert g_pad.keys() == g_pack.keys() and any("visual" in n for n in g_pad)
    worst = max(float((g_pad[n] - g_pack[n]).abs().max()) for n in g_pad)
    print(f"largest gradient difference {worst:.2e}")
    assert worst <= 1e-5


def test_positions_restart_per_sample_and_follow_the_image_grid(tiny_model, samples):
    from transformers import AutoModelForImageTextToText

    renderer, rendered = samples
    model = AutoModelForImageTextToText.from_pretrained(tiny_model, dtype=torch.float32)
    packed = add_position_ids(pack(rendered, renderer.image_token_id), find_rope_index(model))
    pos = packed["position_ids"]
    assert pos.shape == (4, 1, packed["input_ids"].shape[1])
    start = 0
    for s in rendered:
        n = s.num_tokens
        assert pos[0, 0, start : start + n].tolist() == list(range(n))  # text positions
        if s.num_images == 0:  # text only: the three mRoPE rows are the text positions
            assert (pos[1:, 0, start : start + n] == torch.arange(n)).all()
        else:  # an image's tokens share a temporal position and spread over height and width
            img = s.input_ids == renderer.image_token_id
            hw = pos[2:, 0, start : start + n][:, img]
            assert hw[0].unique().numel() > 1 and hw[1].unique().numel() > 1
        start += n


def test_packed_sft_run_trains_every_record_once_per_epoch(tmp_path, tiny_model, demo_data):
    from vlm_trainer.config import SFTConfig
    from vlm_trainer.recipes import sft

    from tests.trainer.helpers import read_jsonl

    budget = 256
    cfg = SFTConfig(base_model=str(tiny_model), dataset=str(demo_data / "sft_eval.jsonl"),
                    log_path=str(tmp_path / "log"), max_seq_len=128, tokens_per_batch=budget,
                    gradient_accumulation_steps=2, epochs=2, learning_rate=1e-3,
                    num_threads=2)  # fmt: skip
    summary = sft.main(cfg)
    steps = [m for m in read_jsonl(tmp_path / "log" / "metrics.jsonl") if m["event"] == "train"]
    # The planned step count is the one the loop made, and every record was trained once an
    # epoch (40 eval records x 2 epochs), in micro-batches that respect the token budget.
    assert summary["steps"] == len(steps) == steps[-1]["total_steps"]
    assert sum(m["samples"] for m in steps) == 80
    assert all(m["tokens"] <= 2 * budget for m in steps)
    assert max(m["samples"] for m in steps) > 2 * 2  # several samples per row
    assert steps[-1]["loss"] < steps[0]["loss"]


@pytest.mark.slow
def test_packed_run_with_data_workers_resumes_exactly(tmp_path, tiny_model, demo_data):
    """SIGKILL after a checkpoint of a packed run whose records are rendered in DataLoader
    workers: the sample that overflowed the last micro-batch (held for the next step) is
    re-read on resume, and the final weights are bit-identical."""
    import signal

    from safetensors.torch import load_file

    from tests.trainer.helpers import read_jsonl, run_cli, write_config

    data = tmp_path / "train.jsonl"
    data.write_text("\n".join((demo_data / "sft_train.jsonl").read_text().splitlines()[:40]))

    def config(name):
        return write_config(tmp_path / f"{name}.yaml", job_name=name, base_model=tiny_model,
                            dataset=data, log_path=tmp_path / name, max_seq_len=128,
                            tokens_per_batch=200, gradient_accumulation_steps=2, epochs=2,
                            learning_rate=2e-3, save_every_steps=2, seed=3, num_threads=1,
                            data_workers=2)  # fmt: skip

    def run(name, **env):
        return run_cli("sft", "--config", str(config(name)), env=env)

    assert run("whole").returncode == 0
    killed = run("killed", VLM_TRAINER_FAULT="after_checkpoint:2")
    assert killed.returncode == -signal.SIGKILL
    resumed = run("killed")
    assert resumed.returncode == 0 and "resumed from" in resumed.stderr, resumed.stderr[-2000:]
    a = load_file(tmp_path / "whole" / "checkpoints" / "final" / "model.safetensors")
    b = load_file(tmp_path / "killed" / "checkpoints" / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    def losses(name):
        rows = read_jsonl(tmp_path / name / "metrics.jsonl")
        return [(m["step"], m["loss"], m["samples"]) for m in rows if m["event"] == "train"]

    assert losses("whole") == losses("killed") and len(losses("whole")) > 2
    assert sum(s for _, _, s in losses("whole")) == 80  # 40 records x 2 epochs, none lost


@pytest.mark.slow
def test_two_processes_packed_match_one_process(tmp_path, tiny_model, demo_data):
    """Under torchrun each rank packs its share of the global micro-batch into its own row; as
    packing is invariant to how samples are grouped into rows, the loss curve is the
    one-process packed curve."""
    from tests.trainer.helpers import (
        assert_close_curves,
        read_jsonl,
        run_cli,
        torchrun_ok,
        write_config,
    )

    data = tmp_path / "train.jsonl"
    data.write_text("\n".join((demo_data / "sft_train.jsonl").read_text().splitlines()[:40]))

    def config(name):
        return write_config(tmp_path / f"{name}.yaml", job_name=name, base_model=tiny_model,
                            dataset=data, log_path=tmp_path / name, max_seq_len=128,
                            tokens_per_batch=300, epochs=1, learning_rate=2e-3, seed=3,
                            num_threads=1)  # fmt: skip

    out = run_cli("sft", "--config", str(config("one")))
    assert out.returncode == 0, out.stderr[-3000:]
    torchrun_ok(config("two"))

    def curve(name):
        rows = read_jsonl(tmp_path / name / "metrics.jsonl")
        return [(m["step"], m["loss"]) for m in rows if m["event"] == "train"]

    assert len(curve("one")) >= 4
    assert_close_curves(curve("one"), curve("two"), tol=1e-5)
