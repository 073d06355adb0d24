"""Rendering in DataLoader workers changes nothing but where the work runs: the same samples in
the same order with the same cursors, from the start or from a resume position, and the same
count of skipped records."""

from __future__ import annotations

import json
import random

import pytest
import torch
from vlm_trainer.data.prefetch import PrefetchStream
from vlm_trainer.data.render import Renderer
from vlm_trainer.data.stream import RecordStream
from vlm_trainer.demo_data import sft_record

pytestmark = pytest.mark.trainer


@pytest.fixture()
def data(tmp_path):
    rng = random.Random(0)
    path = tmp_path / "mixed.jsonl"
    with open(path, "w") as f:
        for i in range(23):
            rec = sft_record(["red", "green", "blue"][i % 3], rng, size=32 + 32 * (i % 3))
            if i % 7 == 3:  # too long before the answer: dropped by truncation, counted
                rec["messages"][0]["content"][0]["text"] = "the quick brown fox " * 40
            f.write(json.dumps(rec) + "\n")
    return path


def as_list(stream, epoch, cursor):
    return [
        (c, s.input_ids.tolist(), s.weights.tolist(), s.pixel_values)
        for c, s in stream.samples(epoch, cursor)
    ]


def test_prefetched_samples_equal_the_plain_stream(tiny_processor, data):
    renderer = Renderer(tiny_processor, max_seq_len=64)
    plain = RecordStream(data, renderer, seed=5)
    ahead = PrefetchStream(RecordStream(data, renderer, seed=5), workers=2, prefetch=4)
    for epoch, cursor in ((0, 0), (1, 9)):
        want, got = as_list(plain, epoch, cursor), as_list(ahead, epoch, cursor)
        assert [w[0] for w in want] == [g[0] for g in got] and len(want) >= 10
        for w, g in zip(want, got, strict=True):
            assert w[1:3] == g[1:3] and torch.equal(w[3], g[3])
        assert ahead.skipped == plain.skipped > 0  # counted in the workers, summed here
    assert len(ahead) == len(plain) == 23 and ahead.order(1) == plain.order(1)
