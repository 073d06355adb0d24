"""spec.initFrom resolution and admission, and promote.select: best, as pure functions."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml
from vlm_operator.reconcile import best, init_from
from vlm_operator.reconcile.job import admission
from vlm_operator.settings import Settings

from tests.unit.manifests import SHAPE, TJ

pytestmark = pytest.mark.unit
BASE = SHAPE["spec"]["baseModel"]


def ckpt(name: str, step: int, *, type_: str = "full", verified: bool | None = True,
         ev: dict | None = None, final: bool = False, root: str = BASE,
         promoted: str | None = None, owner_uid: str = "tj-1") -> dict[str, Any]:  # fmt: skip
    status: dict[str, Any] = {} if verified is None else {"verified": verified}
    if ev is not None:
        status["eval"] = {"metrics": ev}
    if promoted:
        status["promotion"] = {"outputModel": promoted, "uri": f"pvc://models/team-a/{promoted}"}
    return {
        "metadata": {
            "name": name,
            "uid": f"uid-{name}",
            "annotations": {init_from.ROOT_MODEL_ANNOTATION: root},
            "ownerReferences": [{"uid": owner_uid}],
        },
        "spec": {"trainerJob": "run1", "step": step, "final": final, "type": type_,
                 "uri": f"pvc://ckpts/team-a/run1/checkpoints/{name}", "baseModel": BASE},
        "status": status,
    }  # fmt: skip


def job(**spec: Any) -> dict[str, Any]:
    t = copy.deepcopy(TJ)
    t["spec"].update(spec)
    t["spec"]["hyperparameters"] = {"loraRank": 0} | spec.get("hyperparameters", {})
    return t


def test_resolve_checkpoint_waits_until_it_exists_and_verifies() -> None:
    assert "not found" in init_from.resolve({"checkpoint": "a"}, [])
    pending = ckpt("a", 5, verified=None)
    assert "not verified" in init_from.resolve({"checkpoint": "a"}, [pending])
    src = init_from.resolve({"checkpoint": "a"}, [ckpt("a", 5)])
    assert src.uri.endswith("/a") and src.uid == "uid-a" and src.type == "full"


def test_resolve_model_finds_the_promoted_checkpoint() -> None:
    cks = [ckpt("a", 5), ckpt("b", 9, promoted="sft-model")]
    src = init_from.resolve({"model": "sft-model"}, cks)
    assert src.checkpoint == "b" and src.uri == "pvc://models/team-a/sft-model"
    assert "no Checkpoint" in init_from.resolve({"model": "other"}, cks)


def test_admission_renders_the_source_as_base_model() -> None:
    src = init_from.resolve({"checkpoint": "a"}, [ckpt("a", 5)])
    blocked, children = admission(job(initFrom={"checkpoint": "a"}), SHAPE, Settings(), src)
    assert blocked is None
    cm = next(c for c in children if c["kind"] == "ConfigMap")
    cfg = yaml.safe_load(cm["data"]["config.yaml"])
    assert cfg["base_model"] == "/mnt/pvc/ckpts/team-a/run1/checkpoints/a"
    assert cfg["tokenizer_model"] == BASE and "init_adapter" not in cfg
    env = {e["name"]: e.get("value") for e in children[-1]["spec"]["template"]["spec"][
        "containers"][0]["env"]}  # fmt: skip
    assert env["VLM_BASE_MODEL"] == src.uri and env["VLM_ROOT_MODEL"] == BASE


def test_a_lora_source_is_merged_into_its_base_for_a_full_job() -> None:
    src = init_from.resolve({"checkpoint": "a"}, [ckpt("a", 5, type_="lora")])
    blocked, children = admission(job(initFrom={"checkpoint": "a"}), SHAPE, Settings(), src)
    assert blocked is None
    cfg = yaml.safe_load(children[-2]["data"]["config.yaml"])
    assert cfg["base_model"] == BASE and cfg["init_adapter"].endswith("/checkpoints/a")
    lora_job = job(initFrom={"checkpoint": "a"}, hyperparameters={"loraRank": 8})
    blocked, _ = admission(lora_job, SHAPE, Settings(), src)
    assert blocked["phase"] == "Failed" and "spec.initFrom.checkpoint" in str(blocked)


def test_a_source_of_another_model_is_invalid_spec() -> None:
    src = init_from.resolve({"checkpoint": "a"}, [ckpt("a", 5, root="Qwen/Other-VL")])
    blocked, children = admission(job(initFrom={"checkpoint": "a"}), SHAPE, Settings(), src)
    cond = next(c for c in blocked["conditions"] if c["type"] == "Admitted")
    assert cond["reason"] == "InvalidSpec" and "spec.initFrom.checkpoint" in cond["message"]
    assert "Qwen/Other-VL" in cond["message"] and children == []


def test_a_pruned_checkpoint_is_not_a_source() -> None:
    ck = ckpt("a", 5)
    ck["metadata"]["annotations"]["vlmtrain.dev/pruned"] = "2026-01-01T00:00:00Z"
    assert "was pruned" in init_from.resolve({"checkpoint": "a"}, [ck])


def test_marks_are_per_job_and_stale_once_the_job_is_gone_or_finished() -> None:
    ck = ckpt("a", 5)
    ck["metadata"]["resourceVersion"] = "41"
    assert init_from.resolve({"checkpoint": "a"}, [ck]).resource_version == "41"
    jobs = []
    for uid, name in (("u1", "dpo"), ("u2", "rl"), ("u3", "gone")):
        t = job(initFrom={"checkpoint": "a"})
        t["metadata"].update(uid=uid, name=name)
        patch = init_from.mark(t)
        assert patch == {"metadata": {"annotations": {f"vlmtrain.dev/in-use-by.{uid}": name}}}
        ck["metadata"]["annotations"].update(patch["metadata"]["annotations"])
        jobs.append(t)
    assert init_from.marks(ck) == {"u1": "dpo", "u2": "rl", "u3": "gone"}
    jobs[0]["status"] = {"phase": "Running"}
    jobs[1]["status"] = {"phase": "Succeeded"}
    assert init_from.stale_marks(ck, jobs[:2]) == ["u2", "u3"]  # finished, deleted
    unmark = init_from.unmark(["u2", "u3"])["metadata"]["annotations"]
    assert unmark == {"vlmtrain.dev/in-use-by.u2": None, "vlmtrain.dev/in-use-by.u3": None}
    assert init_from.stale_marks(ckpt("b", 1), jobs) == []  # no marks: nothing to drop


def _best_job(mode: str = "min", metric: str = "eval_loss") -> dict[str, Any]:
    t = job(promote={"outputModel": "m", "select": "best", "metric": metric, "mode": mode})
    t["status"] = {"phase": "Succeeded"}
    return t


def test_best_waits_for_verification_then_picks_the_best_not_the_final() -> None:
    cks = [ckpt("s5", 5, ev={"eval_loss": 2.0}), ckpt("s10", 10, ev={"eval_loss": 0.5}),
           ckpt("fin", 20, ev={"eval_loss": 1.5}, final=True, verified=None)]  # fmt: skip
    assert best.choose(_best_job(), cks) is None  # fin still being verified
    cks[-1]["status"]["verified"] = True
    chosen = best.choose(_best_job(), cks)
    assert chosen["checkpoint"] == "s10" and chosen["value"] == 0.5
    assert "lowest eval_loss" in chosen["reason"] and "3 verified" in chosen["reason"]
    assert best.choose(_best_job("max"), cks)["checkpoint"] == "s5"


def test_best_ignores_failed_foreign_and_metricless_checkpoints() -> None:
    cks = [ckpt("broken", 5, ev={"eval_loss": 0.1}, verified=False),
           ckpt("foreign", 6, ev={"eval_loss": 0.2}, owner_uid="someone-else"),
           ckpt("s10", 10, ev={"eval_loss": 0.9}), ckpt("fin", 20, ev={"eval_loss": 0.9},
           final=True)]  # fmt: skip
    chosen = best.choose(_best_job(), cks)
    assert chosen["checkpoint"] == "s10"  # ties go to the earlier step
    none = best.choose(_best_job(metric="eval_exact_match"), cks)
    assert none["checkpoint"] == "fin" and "no verified checkpoint" in none["reason"]


def test_best_neither_waits_for_nor_chooses_a_pruned_checkpoint() -> None:
    """keepLast may prune a snapshot before it is verified: it never will be, so waiting for
    it would never end; its files are gone, so it cannot be chosen either."""
    marked = ckpt("s5", 5, ev={"eval_loss": 0.1}, verified=None)
    marked["metadata"]["annotations"] = {"vlmtrain.dev/pruned": "2026-12-01T00:00:00Z"}
    pruned = ckpt("s10", 10, ev={"eval_loss": 0.2})
    pruned["status"]["phase"] = "Pruned"
    cks = [marked, pruned, ckpt("s15", 15, ev={"eval_loss": 0.5}),
           ckpt("fin", 20, ev={"eval_loss": 0.9}, final=True)]  # fmt: skip
    chosen = best.choose(_best_job(), cks)
    assert chosen is not None and chosen["checkpoint"] == "s15"
    assert "2 verified" in chosen["reason"]


def test_eval_status_from_the_verify_result() -> None:
    metrics = {"eval_loss": 0.5, "eval_exact_match": 1}
    info = {"sizeBytes": 1, "eval": {"step": 5, "headline": "eval_loss", "mode": "min",
                                     "metrics": metrics}}  # fmt: skip
    ev = best.eval_status(info)["eval"]
    assert ev == {"step": 5, "metric": "eval_loss", "value": 0.5, "mode": "min",
                  "metrics": {"eval_loss": 0.5, "eval_exact_match": 1.0}}  # fmt: skip
    assert best.eval_status({"sizeBytes": 1}) == {}
