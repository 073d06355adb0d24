"""A shuffled, seekable stream of rendered training samples with an exact position.

The file is indexed once (byte offsets only, see ``LineIndex``); each epoch visits the records
in a permutation drawn from ``(seed, epoch)`` with its own generator, so the order never depends
on the global RNG or on what happened before. The position is ``(epoch, cursor)`` where
``cursor`` counts records of the epoch's permutation already consumed (skipped ones included):
saving it in a checkpoint and starting again from it reproduces the remaining batches exactly.

What a sample is depends on the mode: SFT yields a ``Rendered`` conversation, DPO a ``Pair``
(both sides rendered; a pair is skipped when either side is), RL a ``Prompt`` (the prompt
rendered for generation plus the record's other fields, for the reward function). ``Pair`` and
``Prompt`` carry the record's position in the file, ``index``, a stable key across epochs.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .jsonl import DataInvalidError, DataIssue, LineIndex, Mode, parse_line
from .render import Rendered, Renderer, RenderError, SkipRecord


@dataclass
class Pair:
    """A DPO record: both sides rendered for training."""

    chosen: Rendered
    rejected: Rendered
    index: int  # record number in file order


@dataclass
class Prompt:
    """An RL record: the prompt rendered for generation and the fields a reward may read."""

    prompt: Rendered
    index: int
    fields: dict = field(default_factory=dict)


class RecordStream:
    def __init__(
        self,
        path: str | Path,
        renderer: Renderer,
        seed: int,
        shuffle: bool = True,
        mode: Mode = "sft",
    ):
        self.path = Path(path)
        self.renderer = renderer
        self.seed = seed
        self.shuffle = shuffle
        self.mode = mode
        self.index = LineIndex(self.path, renderer.limits.max_line_bytes)
        self.skipped = 0  # records dropped by truncation, counted over the whole run

    def __len__(self) -> int:
        return len(self.index)

    def order(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(len(self.index)))
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.index), generator=g).tolist()

    def samples(self, epoch: int, cursor: int = 0) -> Iterator[tuple[int, Rendered]]:
        """Yield ``(cursor_after, sample)`` from position ``cursor`` of epoch ``epoch``."""
        order = self.order(epoch)
        with open(self.path, "rb") as f:
            for pos in range(cursor, len(order)):
                line, raw = self.index.read(f, order[pos])
                sample = self._render(line, raw, order[pos])
                if sample is not None:
                    yield pos + 1, sample

    def _render(self, line: int, raw: bytes, index: int) -> Rendered | Pair | Prompt | None:
        record, issues = parse_line(
            raw,
            file=str(self.path),
            line=line,
            mode=self.mode,
            limits=self.renderer.limits,
            decode_images=False,  # rendering decodes them; errors surface there
        )
        if record is None:
            raise DataInvalidError(issues, 1, len(self.index))
        try:
            if self.mode == "dpo":
                r = self.renderer
                return Pair(r.render(record.chosen), r.render(record.rejected), index)
            if self.mode == "rl":
                return Prompt(self._prompt(record.conversation), index, record.extra)
            return self.renderer.render(record.conversation)
        except SkipRecord:
            self.skipped += 1
            return None
        except Exception as e:  # RenderError, ImageError, or the processor's own on odd data
            raise DataInvalidError(
                [DataIssue(str(self.path), line, "", str(e))], 1, len(self.index)
            ) from e

    def _prompt(self, conv) -> Rendered:
        """An RL prompt must leave room for at least one generated token in max_seq_len
        (prompts are never truncated: that could cut the question or an image)."""
        prompt = self.renderer.render_prompt(conv)
        limit = self.renderer.max_seq_len
        if prompt.num_tokens >= limit:
            reason = f"prompt of {prompt.num_tokens} tokens leaves no room in max_seq_len={limit}"
            if self.renderer.on_truncation == "error":
                raise RenderError(reason)
            raise SkipRecord(reason)
        return prompt
