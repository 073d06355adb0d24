"""Learning where: SFT on the tiny model learns a task whose answer is a position in the image.

``make_spatial_data``: a black image whose top or bottom half is white (balanced, chance 50%).
Both classes have the same colours in the same amounts, so a pipeline that scrambled patch
order, image positions or (packed) the per-sample mRoPE positions would stay at chance; the
colour tests would not notice. Run padded and packed (``tokens_per_batch``), each on one
thread. The packed budget holds about the padded run's 8 samples (records are ~61 tokens): the
tiny model learns this task abruptly, and with 5 samples a step it does so only in the last
epoch.
"""

from __future__ import annotations

import pytest

from tests.trainer.helpers import read_jsonl, sft_then_eval, write_config

pytestmark = [pytest.mark.trainer, pytest.mark.slow]


@pytest.fixture(scope="module")
def spatial_data(tmp_path_factory):
    from vlm_trainer.demo_data import make_spatial_data

    out = tmp_path_factory.mktemp("spatial")
    make_spatial_data(out, n_train=320, n_eval=40)
    return out


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_sft_learns_which_half_is_white(tmp_path, tiny_model, spatial_data, packed):
    train, eval_ = spatial_data / "spatial_train.jsonl", spatial_data / "spatial_eval.jsonl"
    batching = {"tokens_per_batch": 512} if packed else {"batch_size": 8}
    cfg = write_config(tmp_path / "cfg.yaml", job_name="where", base_model=tiny_model,
                       dataset=train, log_path=tmp_path / "log", max_seq_len=128, epochs=3,
                       learning_rate=3e-3, warmup_steps=5, num_threads=1, **batching)  # fmt: skip
    elapsed, report = sft_then_eval(cfg, tmp_path / "log", eval_, threads=1)
    steps = [m for m in read_jsonl(tmp_path / "log" / "metrics.jsonl") if m["event"] == "train"]
    print(f"\n{'packed' if packed else 'padded'}: {len(steps)} steps, {elapsed:.1f}s, {report}")
    assert report["records"] == 40
    assert report["accuracy"] >= 0.9, report
    assert sum(m["samples"] for m in steps) == 3 * 320  # every record, every epoch
    if packed:  # really packed: several samples per row, no step over the token budget
        assert all(m["tokens"] <= 512 for m in steps) and steps[0]["samples"] > 4
