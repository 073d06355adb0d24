"""Rendering in DataLoader worker processes, overlapping with the training step.

``PrefetchStream`` wraps a ``RecordStream``: ``samples(epoch, cursor)`` yields the very same
``(cursor_after, sample)`` sequence, but reading, JSON parsing, image decoding, the chat template
and the image processor run in ``workers`` background processes (torch ``DataLoader``), up to
``prefetch`` samples ahead of training. Consequences, all by design:

- Order and resume are unchanged: each worker renders a disjoint, interleaved share of the
  epoch's positions (worker ``k`` takes positions ``cursor + k``, ``cursor + k + workers``, ...)
  and the loader returns them in position order; ``cursor_after`` is still the position after
  the sample the recipe consumed, never after what was prefetched.
- ``skipped`` (records dropped by truncation) travels with each item, so the count the recipe
  checkpoints is the count up to the consumed sample.
- Memory stays flat in the dataset size: a worker holds the file's line index (16 bytes a
  record) and at most ``prefetch`` rendered samples.

Only SFT samples (``Rendered``) are prefetched; DPO and RL read in the training process.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .render import Rendered
from .stream import RecordStream


class _Positions(IterableDataset):
    """One epoch's samples from ``cursor`` on, split round-robin over the loader's workers."""

    def __init__(self, stream: RecordStream, epoch: int, cursor: int):
        self.stream, self.epoch, self.cursor = stream, epoch, cursor

    def __iter__(self):
        info = get_worker_info()
        k, n = (info.id, info.num_workers) if info else (0, 1)
        torch.set_num_threads(1)  # a worker is one core; the training process keeps its threads
        order = self.stream.order(self.epoch)
        with open(self.stream.path, "rb") as f:
            for pos in range(self.cursor + k, len(order), n):
                line, raw = self.stream.index.read(f, order[pos])
                before = self.stream.skipped
                # None = skipped; the delta is this worker's, the consumer adds them up.
                sample = self.stream._render(line, raw, order[pos])
                yield pos + 1, sample, self.stream.skipped - before


def _as_is(item):
    return item


class PrefetchStream:
    """A ``RecordStream`` whose samples are rendered ahead in ``workers`` processes."""

    def __init__(self, stream: RecordStream, workers: int, prefetch: int = 16):
        if workers < 1:
            raise ValueError("PrefetchStream needs at least one worker")
        self.stream, self.workers = stream, workers
        self.prefetch = max(1, prefetch // workers)

    def __len__(self) -> int:
        return len(self.stream)

    def order(self, epoch: int) -> list[int]:
        return self.stream.order(epoch)

    @property
    def skipped(self) -> int:
        return self.stream.skipped

    @skipped.setter
    def skipped(self, value: int) -> None:
        self.stream.skipped = value

    def samples(self, epoch: int, cursor: int = 0) -> Iterator[tuple[int, Rendered]]:
        loader = DataLoader(
            _Positions(self.stream, epoch, cursor),
            batch_size=None,  # items as they are: the recipe forms the batches
            num_workers=self.workers,
            prefetch_factor=self.prefetch,
            collate_fn=_as_is,
        )
        for cursor_after, sample, skipped in loader:
            self.stream.skipped += skipped
            if sample is not None:
                yield cursor_after, sample
