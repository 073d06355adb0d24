"""Peak RSS of the trainer when the dataset grows 10x (it should stay flat: streaming).

Builds the tiny model and a file of ``--records`` 448x448 JPEG records, and a second file with
the same lines 10 times over. For each file, in a fresh process, measures the peak RSS
(``wait4`` rusage) of ``vlm-trainer validate-data --model`` (reads, decodes and renders every
record) and of ``vlm-trainer sft`` (validates and renders the whole file before training, then
``--steps`` optimizer steps). Loading a file whole would add at least its size to the peak.

Usage: ``.venv/bin/python benchmarks/trainer_memory.py [--records 200] [--steps 10]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from tiny_model import build_tiny_model  # benchmarks/ is on sys.path when run as a script

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def peak_rss_mb(argv: list[str]) -> float:
    """Run ``argv`` and return its peak resident set size in MiB (Linux: ru_maxrss is KiB)."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{argv} failed ({proc.returncode}): {proc.stderr.read()[-2000:]!r}")
    return round(usage.ru_maxrss / 1024, 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=200)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import yaml
    from trainer_data_pipeline import write_dataset

    tmp = Path(tempfile.mkdtemp(prefix="bench-mem-"))
    model = build_tiny_model(tmp / "tiny")
    small, big = tmp / "x1.jsonl", tmp / "x10.jsonl"
    write_dataset(small, args.records)
    lines = small.read_bytes()
    big.write_bytes(lines * 10)
    cli = [sys.executable, "-m", "vlm_trainer.cli"]
    result: dict = {"records_x1": args.records, "steps": args.steps}
    for name, data in (("x1", small), ("x10", big)):
        result[f"file_mb_{name}"] = round(data.stat().st_size / 2**20, 1)
        result[f"validate_peak_rss_mb_{name}"] = peak_rss_mb(
            [*cli, "validate-data", str(data), "--model", str(model)]
        )
        cfg = tmp / f"{name}.yaml"
        cfg.write_text(yaml.safe_dump({
            "base_model": str(model), "dataset": str(data), "log_path": str(tmp / f"log-{name}"),
            "batch_size": 4, "max_steps": args.steps, "num_threads": args.threads,
            "max_seq_len": 1024,
        }))  # fmt: skip
        result[f"sft_peak_rss_mb_{name}"] = peak_rss_mb([*cli, "sft", "--config", str(cfg)])
    for what in ("validate", "sft"):
        a, b = result[f"{what}_peak_rss_mb_x1"], result[f"{what}_peak_rss_mb_x10"]
        result[f"{what}_rss_growth_mb"] = round(b - a, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
