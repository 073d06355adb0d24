"""The run workflow through the operator: SFT -> DPO (initFrom its final Checkpoint) -> RL
(initFrom the DPO job's promoted model), each starting from the previous weights; and
promote.select: best promoting the best-evaluated snapshot of a run whose last one overfits.

"Starts from the previous weights" is shown by the first step's metrics against a control job
of the same mode started from the shape's base model: DPO's first-step log-probability of the
chosen answers (its loss is ln 2 whatever the start, since the policy equals the reference), RL's
first-step completion length (a model that learnt the task answers one word and stops; the
random base model rambles to maxCompletionTokens) and reward.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cluster.local import LocalCluster
from tests.integration.operator_env import (
    DEMO_CLAIM,
    Operator,
    apply,
    checkpoint_settled,
    condition,
    finished,
    get,
    run_folder,
    trainer_job,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DATA = f"pvc://{DEMO_CLAIM}/data"
RL = {"rl": {"completionsPerPrompt": 4, "maxCompletionTokens": 8, "reward": "exact_match"}}


def first_step(cluster: LocalCluster, ns: str, name: str) -> dict:
    """The first training step's metrics, read from the job's metrics.jsonl on the claim."""
    log = run_folder(cluster, ns, get(cluster, "trainerjob", name, "-n", ns)) / "metrics.jsonl"
    for line in log.read_text().splitlines():
        m = json.loads(line)
        if m.get("event") == "train" and m.get("step") == 1:
            return m
    raise AssertionError(f"no step 1 in {log}")


def succeeded(cluster: LocalCluster, ns: str, name: str, timeout: float = 600) -> dict:
    tj = finished(cluster, ns, name, timeout=timeout)
    assert tj["status"]["phase"] == "Succeeded", json.dumps(tj["status"], indent=1)
    return tj


def test_sft_then_dpo_then_rl_each_from_the_previous_weights(
    cluster: LocalCluster, demo_ns: str, operator: Operator, demo_assets: Path
) -> None:
    ns = demo_ns
    short = {"learningRate": 0.001, "batchSize": 4, "maxSteps": 2, "maxSeqLen": 256}
    jobs = [
        trainer_job(
            "chain-sft",
            evalDataset={"uri": f"{DATA}/sft_eval.jsonl"},
            hyperparameters={
                "learningRate": 0.003,
                "batchSize": 8,
                "maxSteps": 30,
                "maxSeqLen": 256,
                "loraRank": 0,
            },
            checkpointing={"everySteps": 0},
        ),
        # Applied at once: each waits (InitFromNotReady) until its source is there.
        trainer_job(
            "chain-dpo",
            mode="dpo",
            dataset={"uri": f"{DATA}/dpo_train.jsonl"},
            initFrom={"checkpoint": "chain-sft-final"},
            hyperparameters=short | {"loraRank": 0},
            checkpointing={"everySteps": 0},
            promote={"outputModel": "chain-dpo-model"},
        ),
        trainer_job(
            "chain-rl",
            mode="rl",
            dataset={"uri": f"{DATA}/rl_train.jsonl"},
            initFrom={"model": "chain-dpo-model"},
            hyperparameters=short | {"loraRank": 8, **RL},
            checkpointing={"everySteps": 0},
        ),
        # Controls: the same first steps from the shape's base model.
        trainer_job(
            "base-dpo",
            mode="dpo",
            dataset={"uri": f"{DATA}/dpo_train.jsonl"},
            hyperparameters=short | {"maxSteps": 1},
            checkpointing={"everySteps": 0},
        ),
        trainer_job(
            "base-rl",
            mode="rl",
            dataset={"uri": f"{DATA}/rl_train.jsonl"},
            hyperparameters=short | {"maxSteps": 1, "loraRank": 8, **RL},
            checkpointing={"everySteps": 0},
        ),
    ]
    for job in jobs:
        apply(cluster, ns, job)

    def waiting(name: str) -> dict | None:
        c = condition(get(cluster, "tj", name, "-n", ns), "Admitted")
        return c if c and c["reason"] == "InitFromNotReady" else None

    assert (
        "chain-sft-final" in wait_for("chain-dpo to wait", lambda: waiting("chain-dpo"))["message"]
    )
    succeeded(cluster, ns, "chain-sft")
    # While chain-dpo runs, its source is marked in use (kept from keepLast pruning) ...
    mark = "vlmtrain.dev/in-use-by." + get(cluster, "tj", "chain-dpo", "-n", ns)["metadata"]["uid"]

    def source_mark() -> str | None:
        ck = get(cluster, "ckpt", "chain-sft-final", "-n", ns)
        return (ck["metadata"].get("annotations") or {}).get(mark) if ck else None

    assert wait_for("chain-sft-final marked in use", source_mark, timeout=300) == "chain-dpo"
    for name in ("base-dpo", "base-rl"):
        succeeded(cluster, ns, name)
    dpo = succeeded(cluster, ns, "chain-dpo")
    # ... and no longer once it has finished.
    wait_for("the in-use mark to go", lambda: source_mark() is None, timeout=60)
    sft_final = get(cluster, "ckpt", "chain-sft-final", "-n", ns)
    assert dpo["status"]["initFrom"] == {
        "checkpoint": "chain-sft-final",
        "uid": sft_final["metadata"]["uid"],
        "uri": sft_final["spec"]["uri"],
    }
    assert sft_final["status"]["eval"]["metric"] == "eval_loss"
    promoted = checkpoint_settled(cluster, ns, "chain-dpo-final")
    assert promoted["status"]["phase"] == "Promoted", json.dumps(promoted["status"], indent=1)
    rl = succeeded(cluster, ns, "chain-rl")
    assert rl["status"]["initFrom"]["checkpoint"] == "chain-dpo-final"
    rl_final = get(cluster, "ckpt", "chain-rl-final", "-n", ns)
    assert rl_final["spec"]["baseModel"] == promoted["status"]["promotion"]["uri"]

    dpo1, base_dpo1 = first_step(cluster, ns, "chain-dpo"), first_step(cluster, ns, "base-dpo")
    rl1, base_rl1 = first_step(cluster, ns, "chain-rl"), first_step(cluster, ns, "base-rl")
    print(f"\nDPO step 1 chosen_logp: from SFT {dpo1['chosen_logp']:.3f}, "
          f"from base {base_dpo1['chosen_logp']:.3f}; RL step 1 completion length / reward: "
          f"from DPO {rl1['completion_length']:.2f} / {rl1['reward_mean']:.2f}, from base "
          f"{base_rl1['completion_length']:.2f} / {base_rl1['reward_mean']:.2f}")  # fmt: skip
    assert dpo1["chosen_logp"] > base_dpo1["chosen_logp"] + 5  # nats: far likelier answers
    assert rl1["completion_length"] < base_rl1["completion_length"]
    assert rl1["reward_mean"] >= base_rl1["reward_mean"]


def overfit_data(demo_assets: Path, claim_root: Path) -> None:
    """Four images labelled with the wrong colour (train) and their true colours (eval): the
    model first learns the answer format, then memorises the wrong labels."""
    by_colour: dict[str, dict] = {}
    for line in (demo_assets / "data" / "sft_train.jsonl").read_text().splitlines():
        rec = json.loads(line)
        by_colour.setdefault(rec["messages"][-1]["content"], rec)
    colours = sorted(by_colour)[:4]
    truth = [by_colour[c] for c in colours]
    wrong = [json.loads(json.dumps(r)) for r in truth]
    for i, rec in enumerate(wrong):
        rec["messages"][-1]["content"] = colours[(i + 1) % len(colours)]
    for name, recs in (("overfit_train.jsonl", wrong), ("overfit_eval.jsonl", truth)):
        (claim_root / "data" / name).write_text("".join(json.dumps(r) + "\n" for r in recs))


def test_promote_best_picks_the_best_evaluated_snapshot_not_the_overfit_final(
    cluster: LocalCluster, demo_ns: str, operator: Operator, demo_assets: Path
) -> None:
    ns, name = demo_ns, "overfit"
    overfit_data(demo_assets, cluster.pvc_root / ns / DEMO_CLAIM)
    apply(cluster, ns, trainer_job(
        name,
        dataset={"uri": f"{DATA}/overfit_train.jsonl"},
        evalDataset={"uri": f"{DATA}/overfit_eval.jsonl"},
        hyperparameters={"learningRate": 0.01, "lrSchedule": "constant", "batchSize": 4,
                         "epochs": 100, "maxSteps": 25, "maxSeqLen": 256, "loraRank": 0},
        checkpointing={"everySteps": 5, "keepLast": 1},
        promote={"outputModel": "overfit-best", "select": "best", "metric": "eval_loss",
                 "mode": "min"},
    ))  # fmt: skip
    succeeded(cluster, ns, name)

    def chosen() -> dict | None:
        return (
            (get(cluster, "tj", name, "-n", ns) or {}).get("status", {}).get("selectedCheckpoint")
        )

    selected = wait_for("the best checkpoint to be chosen", chosen, timeout=240)
    cks = {c["metadata"]["name"]: c for c in get(cluster, "ckpt", "-n", ns)["items"]
           if c["spec"]["trainerJob"] == name}  # fmt: skip
    losses = {n: c["status"]["eval"]["metrics"]["eval_loss"] for n, c in cks.items()
              if c["status"].get("verified")}  # fmt: skip
    print(f"\neval_loss of the verified checkpoints: {losses}; chose {selected}")
    best = min(losses, key=losses.get)
    assert selected["checkpoint"] == best != f"{name}-final"
    assert losses[f"{name}-final"] > losses[best]  # the final one overfits
    assert "lowest eval_loss" in selected["reason"]
    promoted = checkpoint_settled(cluster, ns, best)
    assert promoted["status"]["promotion"]["outputModel"] == "overfit-best"
    final = get(cluster, "ckpt", f"{name}-final", "-n", ns)
    assert final["status"]["phase"] == "Available"  # not promoted
    events = get(cluster, "events", "-n", ns, "--field-selector",
                 f"involvedObject.name={name},reason=CheckpointSelected")  # fmt: skip
    assert events["items"] and best in events["items"][0]["message"]
    table = cluster.kubectl("get", "ckpt", best, "-n", ns).stdout
    assert "EVAL" in table.splitlines()[0] and f"{losses[best]:.4g}"[:4] in table
