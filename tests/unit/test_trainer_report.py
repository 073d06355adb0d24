"""Local progress reporting: metrics.jsonl, stdout JSON lines or a TTY progress bar."""

from __future__ import annotations

import io
import json

import pytest
from vlm_trainer.report import LocalReporter, MultiReporter

pytestmark = pytest.mark.unit

STEP = {"step": 1, "loss": 2.5, "lr": 1e-4, "tokens_per_second": 1234.5}


def lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_json_lines_on_a_pipe(tmp_path):
    out = io.StringIO()
    r = LocalReporter(tmp_path, stream=out, tty=False)
    r.on_start({"total_steps": 2})
    r.on_step(STEP)
    r.on_step({**STEP, "step": 2})
    r.on_eval({"step": 2, "eval_loss": 1.0})
    r.on_done({"final_checkpoint": "x"})
    printed = [json.loads(x) for x in out.getvalue().splitlines()]
    assert [p["event"] for p in printed] == ["start", "train", "train", "eval", "done"]
    assert [m["event"] for m in lines(tmp_path / "metrics.jsonl")] == ["train", "train", "eval"]
    assert lines(tmp_path / "metrics.jsonl")[0] == {"event": "train", **STEP}


def test_progress_bar_on_a_terminal(tmp_path):
    out = io.StringIO()
    r = LocalReporter(tmp_path, stream=out, tty=True)
    r.on_start({"total_steps": 4})
    r.on_step({**STEP, "step": 2})
    text = out.getvalue()
    assert "\r[###############...............] 2/4 loss 2.5000" in text
    assert "1,234 tok/s" in text or "1,235 tok/s" in text
    assert len(lines(tmp_path / "metrics.jsonl")) == 1  # the file gets every step regardless
    assert text.endswith("ETA --:--")  # one step seen: no rate yet


def test_progress_bar_eta_from_the_step_rate(tmp_path, monkeypatch):
    import vlm_trainer.report as report

    clock = iter([100.0, 130.0])  # step 1 at t=100, step 2 at t=130: 30 s per step
    monkeypatch.setattr(report.time, "monotonic", lambda: next(clock))
    out = io.StringIO()
    r = LocalReporter(tmp_path, stream=out, tty=True)
    r.on_start({"total_steps": 10})
    r.on_step({**STEP, "step": 1})
    r.on_step({**STEP, "step": 2})
    assert out.getvalue().endswith("ETA 04:00")  # 8 steps left x 30 s


def test_resume_drops_metrics_of_lost_steps(tmp_path):
    r = LocalReporter(tmp_path, stream=io.StringIO(), tty=False)
    for s in range(1, 6):
        r.on_step({**STEP, "step": s})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"event": "train", "step": 6, "lo')  # a line cut by SIGKILL
    LocalReporter(tmp_path, stream=io.StringIO(), tty=False).on_start({"resumed_step": 3})
    assert [m["step"] for m in lines(tmp_path / "metrics.jsonl")] == [1, 2, 3]
    LocalReporter(tmp_path, stream=io.StringIO(), tty=False).on_start({"resumed_step": None})
    assert lines(tmp_path / "metrics.jsonl") == []  # started over without a checkpoint


def test_a_failing_reporter_does_not_stop_the_others(tmp_path, capsys):
    class Broken:
        def on_step(self, metrics):
            raise RuntimeError("api down")

    good = LocalReporter(tmp_path, stream=io.StringIO(), tty=False)
    MultiReporter([Broken(), good]).on_step(STEP)
    assert len(lines(tmp_path / "metrics.jsonl")) == 1
    assert "Broken.on_step failed: api down" in capsys.readouterr().err
