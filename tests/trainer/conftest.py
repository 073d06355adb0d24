"""Fixtures for the trainer tests: one tiny model and one demo dataset per test session.

Everything is built locally (``make-tiny-model``, ``make-demo-data``); nothing is downloaded
(``HF_HUB_OFFLINE=1``). Torch uses at most two threads: the machine is shared.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session", autouse=True)
def _torch_threads():
    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from vlm_trainer.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny_processor(tiny_model):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_model)


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> Path:
    from vlm_trainer.demo_data import make_demo_data

    out = tmp_path_factory.mktemp("demo")
    make_demo_data(out, n_train=200, n_eval=40)
    return out
