"""The Argo CD health checks in deploy/argocd/, run for real: each health.lua is executed by a Lua
interpreter (lupa, Lua 5.1 like Argo CD's gopher-lua, with the same libraries withheld) on the
objects in testdata/, and must give the status and message its health_test.yaml expects (the
layout Argo CD's own resource_customizations use). Fixtures are checked against the API models,
every condition the operator can write gives a valid status, and the argocd-cm patch and
docs/gitops.md carry the Lua files verbatim.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from vlm_operator.api import Checkpoint, Reason, TrainerJob, TrainingShape, new_condition
from vlm_operator.api.conditions import CHECKPOINT_CONDITIONS, JOB_CONDITIONS, SHAPE_CONDITIONS

lupa = pytest.importorskip("lupa", reason="lupa is in the dev extra (pip install -e .[dev])")

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
ARGO = REPO / "deploy" / "argocd"
KINDS = {"TrainerJob": TrainerJob, "Checkpoint": Checkpoint, "TrainingShape": TrainingShape}
STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}


def lua_runtime() -> Any:
    """Lua 5.1 when lupa ships it (Argo CD's gopher-lua implements 5.1), else lupa's default."""
    try:
        import lupa.lua51 as module
    except ImportError:
        module = lupa
    return module.LuaRuntime(unpack_returned_tuples=True)


def health(kind: str, obj: dict[str, Any]) -> tuple[str, str]:
    """Run <kind>/health.lua on ``obj`` the way Argo CD does: ``obj`` is a global, the script's
    return value is the health table; no io/os/require (Argo CD does not open them)."""
    lua = lua_runtime()
    g = lua.globals()
    for name in ("io", "os", "require", "dofile", "loadfile", "load", "loadstring", "package"):
        g[name] = None
    g.obj = lua.table_from(obj, recursive=True)
    hs = lua.execute((ARGO / "vlmtrain.dev" / kind / "health.lua").read_text())
    assert hs is not None, "the script returned nothing"
    return hs["status"], hs["message"]


def cases() -> Iterator[Any]:
    for kind in KINDS:
        spec = yaml.safe_load((ARGO / "vlmtrain.dev" / kind / "health_test.yaml").read_text())
        for case in spec["tests"]:
            yield pytest.param(kind, case, id=f"{kind}-{Path(case['inputPath']).stem}")


@pytest.mark.parametrize(("kind", "case"), list(cases()))
def test_health_check_gives_the_expected_status(kind: str, case: dict[str, Any]) -> None:
    obj = yaml.safe_load((ARGO / "vlmtrain.dev" / kind / case["inputPath"]).read_text())
    assert health(kind, obj) == (case["healthStatus"]["status"], case["healthStatus"]["message"])


@pytest.mark.parametrize(("kind", "case"), list(cases()))
def test_fixtures_are_valid_objects(kind: str, case: dict[str, Any]) -> None:
    """The test inputs are what the API accepts and the operator writes, not made-up shapes."""
    obj = yaml.safe_load((ARGO / "vlmtrain.dev" / kind / case["inputPath"]).read_text())
    assert obj["kind"] == kind
    KINDS[kind].model_validate(obj)


def test_every_state_the_argo_docs_name_is_covered() -> None:
    seen: dict[str, set[str]] = {}
    for kind in KINDS:
        spec = yaml.safe_load((ARGO / "vlmtrain.dev" / kind / "health_test.yaml").read_text())
        seen[kind] = {c["healthStatus"]["status"] for c in spec["tests"]}
    assert seen["TrainerJob"] == {"Healthy", "Progressing", "Degraded", "Suspended"}
    assert seen["Checkpoint"] == {"Healthy", "Progressing", "Degraded"}
    assert seen["TrainingShape"] == {"Healthy", "Progressing", "Degraded"}


BASES: dict[str, dict[str, Any]] = {
    "TrainerJob": {
        "metadata": {"name": "j", "namespace": "ns", "generation": 1},
        "spec": {"shape": "s", "mode": "sft", "dataset": {"uri": "pvc://d/x.jsonl"}},
    },
    "Checkpoint": {
        "metadata": {"name": "c", "namespace": "ns", "generation": 1},
        "spec": {
            "trainerJob": "j",
            "step": 1,
            "uri": "pvc://c/j/1",
            "type": "full",
            "baseModel": "a/b",
            "promote": {"outputModel": "m"},
        },
    },
    "TrainingShape": {
        "metadata": {"name": "s", "generation": 1},
        "spec": {"baseModel": "a/b", "maxContext": 1024},
    },
}
CONDITIONS = {
    "TrainerJob": JOB_CONDITIONS,
    "Checkpoint": CHECKPOINT_CONDITIONS,
    "TrainingShape": SHAPE_CONDITIONS,
}


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("message", ["", "some details"])
def test_any_single_condition_gives_a_status_and_a_message(kind: str, message: str) -> None:
    """Robustness: whatever condition the operator writes (every type, status and reason, with
    or without a message), the script returns a valid status and says something."""
    for ctype in CONDITIONS[kind]:
        for status in ("True", "False", "Unknown"):
            for reason in Reason:
                obj = {
                    "apiVersion": "vlmtrain.dev/v1alpha1",
                    "kind": kind,
                    **BASES[kind],
                    "status": {
                        "observedGeneration": 1,
                        "conditions": [
                            new_condition(ctype, status, reason, message, observed_generation=1)
                        ],
                    },
                }
                got, said = health(kind, obj)
                assert got in STATUSES, (ctype, status, reason, got)
                assert said, (ctype, status, reason)


def test_failed_wins_over_everything_else_for_a_job() -> None:
    obj = {
        "apiVersion": "vlmtrain.dev/v1alpha1",
        "kind": "TrainerJob",
        **BASES["TrainerJob"],
        "status": {
            "conditions": [
                new_condition("Suspended", True, Reason.SUSPENDED, "spec.suspend is true"),
                new_condition("Failed", True, Reason.DEADLINE_EXCEEDED, "ran for 3600s"),
            ]
        },
    }
    assert health("TrainerJob", obj) == ("Degraded", "DeadlineExceeded: ran for 3600s")


# --- the argocd-cm patch and the docs carry the scripts verbatim -------------------------------


def test_argocd_cm_patch_embeds_each_script() -> None:
    cm = yaml.safe_load((ARGO / "argocd-cm.yaml").read_text())
    assert cm["kind"] == "ConfigMap"
    assert cm["metadata"] == {
        "name": "argocd-cm",
        "namespace": "argocd",
        "labels": {"app.kubernetes.io/name": "argocd-cm", "app.kubernetes.io/part-of": "argocd"},
    }
    expected = {
        f"resource.customizations.health.vlmtrain.dev_{kind}": (
            ARGO / "vlmtrain.dev" / kind / "health.lua"
        ).read_text()
        for kind in KINDS
    }
    assert cm["data"] == expected


def test_gitops_doc_shows_the_argocd_cm_patch_verbatim() -> None:
    doc = (REPO / "docs" / "gitops.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", doc, re.S)
    patch = (ARGO / "argocd-cm.yaml").read_text()
    assert patch in blocks, "docs/gitops.md must include deploy/argocd/argocd-cm.yaml verbatim"
