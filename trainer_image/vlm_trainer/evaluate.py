"""Generation-based evaluation: greedy answers scored by exact match.

For each ``{"messages": [...]}`` record the prompt is every message before the last assistant
message; the model answers greedily (stopping at ``<|im_end|>`` or the tokenizer's EOS) and the
answer counts as correct when it equals the last assistant message's text after stripping
surrounding whitespace. Prompts are generated in left-padded batches. ``generate`` is reusable
(RL rollouts, the promote check).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .data.collate import collate, model_inputs
from .data.jsonl import Conversation, iter_lines, parse_line
from .data.render import Renderer
from .data.validate import validate_file


def stop_token_ids(tokenizer) -> list[int]:
    ids = [tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.eos_token_id]
    return sorted({i for i in ids if isinstance(i, int) and i >= 0})


@torch.no_grad()
def generate(
    model, renderer: Renderer, prompts: list[Conversation], max_new_tokens: int = 32, **gen_kwargs
) -> list[str]:
    """Greedy (unless ``gen_kwargs`` say otherwise) completions of ``prompts``, decoded."""
    tok = renderer.tokenizer
    samples = [renderer.render_prompt(p) for p in prompts]
    batch = collate(samples, renderer.pad_token_id, renderer.image_token_id, left_pad=True)
    device = next(model.parameters()).device
    inputs = model_inputs(batch, device)
    out = model.generate(
        **inputs,
        max_new_tokens=max_new_tokens,
        do_sample=gen_kwargs.pop("do_sample", False),
        eos_token_id=stop_token_ids(tok),
        pad_token_id=renderer.pad_token_id,
        **gen_kwargs,
    )
    new_tokens = out[:, inputs["input_ids"].shape[1] :]
    return [t.strip() for t in tok.batch_decode(new_tokens, skip_special_tokens=True)]


def split_last_assistant(conv: Conversation) -> tuple[Conversation, str]:
    """``(prompt, expected answer)``: the messages before the last assistant one, and its text."""
    last = max(i for i, m in enumerate(conv.messages) if m.role == "assistant")
    return Conversation(conv.messages[:last]), conv.messages[last].text


def evaluate_file(
    model,
    processor,
    data: str | Path,
    batch_size: int = 8,
    max_new_tokens: int = 32,
    limit: int | None = None,
    max_mismatches: int = 5,
) -> dict:
    """Exact-match accuracy of greedy answers on an SFT-format JSONL file."""
    summary = validate_file(data, "sft")
    summary.raise_if_invalid()
    renderer = Renderer(processor, max_seq_len=1 << 30)
    lines, expected, predictions = [], [], []
    prompts: list[Conversation] = []  # one batch at a time: the file is streamed
    for line, _, raw in iter_lines(data):
        record, _ = parse_line(raw, file=str(data), line=line, decode_images=False)
        prompt, answer = split_last_assistant(record.conversation)
        lines.append(line)
        prompts.append(prompt)
        expected.append(answer.strip())
        if len(prompts) == batch_size:
            predictions += generate(model, renderer, prompts, max_new_tokens)
            prompts = []
        if limit and len(lines) >= limit:
            break
    if prompts:
        predictions += generate(model, renderer, prompts, max_new_tokens)
    correct = [p == e for p, e in zip(predictions, expected, strict=True)]
    mismatches = [
        {"line": ln, "expected": e, "got": p}
        for ln, e, p, ok in zip(lines, expected, predictions, correct, strict=True)
        if not ok
    ]
    return {
        "data": str(data),
        "records": len(correct),
        "correct": sum(correct),
        "accuracy": sum(correct) / max(len(correct), 1),
        "mismatches": mismatches[:max_mismatches],
    }


def single_answer_records(data: str | Path) -> list[tuple[Conversation, str]] | None:
    """``(prompt, answer)`` per record when every record has exactly one assistant message
    (a question with one expected answer); None otherwise (exact match would mean nothing)."""
    out = []
    for line, _, raw in iter_lines(data):
        record, _ = parse_line(raw, file=str(data), line=line, decode_images=False)
        if record is None:
            return None
        conv = record.conversation
        if sum(m.role == "assistant" for m in conv.messages) != 1:
            return None
        prompt, answer = split_last_assistant(conv)
        out.append((prompt, answer.strip()))
    return out


def exact_match_accuracy(
    model, renderer: Renderer, records: list[tuple[Conversation, str]], batch_size: int, **gen
) -> float:
    """Share of greedy answers equal to the expected ones (whitespace-stripped)."""
    was_training = model.training
    model.eval()
    correct = 0
    for i in range(0, len(records), batch_size):
        chunk = records[i : i + batch_size]
        max_new = max(len(renderer.tokenizer.encode(a)) for _, a in chunk) + 2
        answers = generate(model, renderer, [p for p, _ in chunk], max_new, **gen)
        correct += sum(got == want for got, (_, want) in zip(answers, chunk, strict=True))
    model.train(was_training)
    return correct / max(len(records), 1)
