"""docs/reference.md is generated from the models and kept in sync (like the CRD drift test),
and says what the API says: every field of every kind, with its type, default and rules.

Expectations below are picked by hand from the models' documented behaviour, not copied from the
generator's output, so a generator regression fails here.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from pydantic import BaseModel
from vlm_operator.api import KINDS, Reason

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
REFERENCE = REPO / "docs" / "reference.md"


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_reference", REPO / "hack/gen_reference.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen = load_generator()


def table_rows(text: str) -> dict[str, dict[str, list[str]]]:
    """Kind -> field path -> [type, default, description, validation], from the Markdown."""
    out: dict[str, dict[str, list[str]]] = {}
    kind = ""
    for line in text.splitlines():
        if line.startswith("## "):
            kind = line[3:].strip()
            out.setdefault(kind, {})
        m = re.match(r"^\| `([^`]+)` \| (.*) \|$", line)
        if m and kind:
            cells = re.split(r"(?<!\\)\| ", m.group(2) + " ")
            out[kind][m.group(1)] = [c.strip() for c in cells]
    return out


ROWS = table_rows(REFERENCE.read_text())


def test_checked_in_reference_matches_the_models() -> None:
    assert REFERENCE.read_text() == gen.generate(), "run `python hack/gen_reference.py`"


def test_check_mode_detects_a_stale_file_and_write_mode_fixes_it(tmp_path: Path) -> None:
    out = tmp_path / "reference.md"
    out.write_text(gen.generate().replace("learningRate", "learningrate", 1))
    stale = out.read_text()
    assert gen.main(["--out", str(out), "--check"]) == 1
    assert out.read_text() == stale  # --check writes nothing
    assert gen.main(["--out", str(out)]) == 0
    assert gen.main(["--out", str(out), "--check"]) == 0
    out.unlink()
    assert gen.main(["--out", str(out), "--check"]) == 1


def model_paths(model: type[BaseModel], prefix: str) -> Iterator[str]:
    """Every field path of a pydantic model, by alias, independently of the CRD schema."""
    for name, field in model.model_fields.items():
        alias = field.alias or name
        path = f"{prefix}.{alias}"
        yield path
        if path.endswith("status.conditions"):
            continue  # documented once, in the Conditions section
        yield from nested_paths(field.annotation, path)


def nested_paths(annotation: Any, path: str) -> Iterator[str]:
    args = getattr(annotation, "__args__", ()) or ()
    origin = getattr(annotation, "__origin__", None)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        if annotation.model_config.get("extra") == "allow" and path.endswith("volumes[]"):
            yield from (f"{path}.name",)  # free-form core/v1 Volume: only name is typed
            return
        yield from model_paths(annotation, path)
    elif origin is list:
        yield from nested_paths(args[0], f"{path}[]")
    elif origin is dict:
        if isinstance(args[1], type) and issubclass(args[1], BaseModel):
            yield from model_paths(args[1], f"{path}.{{key}}")
    else:
        for arg in args:  # Optional[X], Annotated[X, ...]
            yield from nested_paths(arg, path)


@pytest.mark.parametrize("model", KINDS, ids=[m.KIND.kind for m in KINDS])
def test_every_field_of_every_kind_is_documented(model: type[BaseModel]) -> None:
    rows = ROWS[model.KIND.kind]
    for part in ("spec", "status"):
        annotation = model.model_fields[part].annotation
        for path in set(nested_paths(annotation, part)):
            assert path in rows, f"{model.KIND.kind}: {path} missing from docs/reference.md"
            assert rows[path][2], f"{model.KIND.kind}: {path} has no description"


def test_rows_carry_types_defaults_and_rules() -> None:
    job, shape, ckpt = ROWS["TrainerJob"], ROWS["TrainingShape"], ROWS["Checkpoint"]
    lr = job["spec.hyperparameters.learningRate"]
    assert lr[0] == "number" and lr[1] == "`1e-05`" and "> 0" in lr[3] and "≤ 1" in lr[3]
    assert job["spec.mode"][3].startswith("required; one of `sft`, `dpo`, `rl`")
    assert "CEL: mode is immutable" in job["spec.mode"][3]
    assert (
        "CEL: hyperparameters.dpo is only allowed when mode is dpo"
        in job["spec.hyperparameters.dpo"][3]
    )
    assert "at most 52 characters" in job["metadata.name"][3]
    assert job["spec.podOverrides.env"][0] == "[]object"
    assert "list keyed by `name`" in job["spec.podOverrides.env"][3]
    assert shape["spec.gpuResource"][1] == "`nvidia.com/gpu`"
    assert shape["spec.modes"][1] == '`["sft", "dpo", "rl"]`'
    assert "no duplicates" in shape["spec.modes"][3]
    assert shape["spec.nodeSelector"][0] == "map[string]string"
    assert shape["spec.shmSize"][0] == "integer or string"
    assert "&lt;claim&gt;" in shape["spec.baseModel"][2]  # shown, not swallowed as HTML
    assert ckpt["status.promotion.promotedAt"][0] == "string (date-time)"
    assert ckpt["spec.uri"][3].startswith("required")


def test_conditions_and_every_reason_are_documented() -> None:
    text = REFERENCE.read_text()
    for field in ("type", "status", "reason", "message", "lastTransitionTime"):
        assert f"| `conditions[].{field}` |" in text
    for reason in Reason:
        assert re.search(rf"^\| `{reason}` \| \S", text, re.M), reason


def test_readme_troubleshooting_table_lists_every_reason_and_is_current() -> None:
    readme = (REPO / "README.md").read_text()
    assert gen.with_readme_reasons(readme) == readme, "run `python hack/gen_reference.py`"
    section = readme[readme.index(gen.README_START) : readme.index(gen.README_END)]
    for reason in Reason:
        assert f"| `{reason}` |" in section, reason
