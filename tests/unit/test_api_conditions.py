"""The condition helpers the operator writes status with."""

from __future__ import annotations

import re

import pytest
from vlm_operator.api.conditions import (
    CHECKPOINT_CONDITIONS,
    JOB_CONDITIONS,
    REASON_HELP,
    REASON_RE,
    SHAPE_CONDITIONS,
    Condition,
    ConditionType,
    Reason,
    find_condition,
    is_condition_true,
    new_condition,
    now_rfc3339,
    set_condition,
)

pytestmark = pytest.mark.unit

T0, T1 = "2025-01-01T00:00:00Z", "2025-01-01T01:00:00Z"


def test_new_condition_shape() -> None:
    c = new_condition("Admitted", False, "ShapeNotFound", "no shape x", observed_generation=3)
    assert c["status"] == "False"
    assert c["observedGeneration"] == 3
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", c["lastTransitionTime"])
    assert new_condition("Ready", True, "Valid")["status"] == "True"
    assert new_condition("Ready", "Unknown", "Valid")["status"] == "Unknown"
    assert "observedGeneration" not in new_condition("Ready", True, "Valid")
    with pytest.raises(ValueError):
        new_condition("Ready", "maybe", "Valid")


def test_helper_output_validates_as_condition() -> None:
    c = Condition.model_validate(new_condition(ConditionType.RUNNING, True, Reason.TRAINING))
    assert c.type == "Running" and c.reason == "Training"


def test_set_condition_keeps_transition_time_when_status_is_unchanged() -> None:
    old = [new_condition("Running", True, "JobCreated", now=T0)]
    out = set_condition(old, new_condition("Running", True, "Training", "step 5", now=T1))
    assert out == [
        {
            "type": "Running",
            "status": "True",
            "reason": "Training",
            "message": "step 5",
            "lastTransitionTime": T0,
        }
    ]
    assert old[0]["reason"] == "JobCreated"  # input untouched


def test_set_condition_moves_transition_time_when_status_changes() -> None:
    old = [new_condition("Running", True, "Training", now=T0)]
    out = set_condition(old, new_condition("Running", False, "Completed", now=T1))
    assert out[0]["lastTransitionTime"] == T1 and out[0]["status"] == "False"


def test_set_condition_appends_and_keeps_order() -> None:
    conds = set_condition(None, new_condition("Admitted", True, "ShapeResolved", now=T0))
    conds = set_condition(conds, new_condition("Running", True, "JobCreated", now=T0))
    conds = set_condition(conds, new_condition("Admitted", True, "ShapeResolved", now=T1))
    assert [c["type"] for c in conds] == ["Admitted", "Running"]
    assert find_condition(conds, "Running")["reason"] == "JobCreated"
    assert find_condition(conds, "Failed") is None
    assert is_condition_true(conds, "Admitted")
    assert not is_condition_true(conds, "Succeeded")


def test_every_reason_is_documented_and_well_formed() -> None:
    assert set(REASON_HELP) == set(Reason)
    for reason in Reason:
        assert re.match(REASON_RE, reason.value), reason
        assert REASON_HELP[reason].strip()


def test_condition_types_per_kind() -> None:
    assert {str(t) for t in JOB_CONDITIONS} == {
        "Admitted",
        "Running",
        "Succeeded",
        "Failed",
        "Suspended",
    }
    assert [str(t) for t in SHAPE_CONDITIONS] == ["Ready"]
    assert {str(t) for t in CHECKPOINT_CONDITIONS} == {"Verified", "Promoted"}


def test_condition_rejects_bad_reason() -> None:
    with pytest.raises(ValueError):
        Condition.model_validate(
            {"type": "Ready", "status": "True", "reason": "not camel", "lastTransitionTime": T0}
        )


def test_now_is_utc_seconds() -> None:
    assert now_rfc3339().endswith("Z") and len(now_rfc3339()) == 20
