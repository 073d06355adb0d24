"""Fixtures of the fault-injection suite: the trainer tests' tiny model and demo data, the
integration tests' cluster and operator, and `record`, which appends one JSON line per injected
fault to `$VLM_FAULTS_REPORT` (when set) for docs/reliability.md."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import pytest

from tests.faults.trainer_runs import data, reference  # noqa: F401
from tests.integration.conftest import demo_assets, demo_ns, operator  # noqa: F401
from tests.trainer.conftest import _torch_threads, demo_data, tiny_model  # noqa: F401


@pytest.fixture
def record(request: pytest.FixtureRequest) -> Callable[..., None]:
    def write(**fields: Any) -> None:
        path = os.environ.get("VLM_FAULTS_REPORT")
        if path:
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"test": request.node.name, **fields}) + "\n")

    return write
