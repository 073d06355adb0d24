"""spec.initFrom: which weights a TrainerJob starts from, resolved from the namespace's
Checkpoints; and which Checkpoints running jobs depend on (kept from pruning).

Supported sources, both in the job's namespace:

- ``checkpoint: <name>``: a Checkpoint whose files verified (``status.verified``). A full
  checkpoint becomes the trainer's ``base_model``; a LoRA checkpoint is merged into its own
  ``spec.baseModel`` when the trainer loads it (``init_adapter``), so the new job must be a full
  fine-tune (loraRank 0): a new adapter on top of a merged one would have no base on storage to
  be promoted against. Promote the LoRA checkpoint and use ``model`` to stack instead.
- ``model: <name>``: the Checkpoint promoted to that output model (``status.promotion``); its
  folder is a standalone HF model and becomes ``base_model``.

Lineage: the trainer annotates each Checkpoint with the root model (the shape's baseModel its
chain started from) and the processor; admission requires both to be the job's shape's, so the
architecture and the tokenizer always match. A missing or not-yet-verified source makes the job
wait (``InitFromNotReady``), a mismatch fails it (``InvalidSpec`` naming the field). Pure: the
caller lists the Checkpoints.

Pruning: before a job's children exist, the operator marks its ``checkpoint`` source with the
annotation ``vlmtrain.dev/in-use-by.<job UID>`` (``mark``; one key per job, so a merge patch adds
or drops one job's mark without touching another's). The patch is conditional on the
resourceVersion ``resolve`` read, so it cannot land on a Checkpoint the source job's trainer
marked pruned meanwhile; the trainer's ``keepLast`` pruning (vlm_trainer.kube_report.may_prune)
keeps the files of a Checkpoint with any such mark. The operator drops the mark when the job
reaches Succeeded or Failed; a mark whose job was deleted (or finished without dropping it) is
dropped on the next reconcile of the Checkpoint (``stale_marks``), at the latest at the
operator's periodic resync. A ``model`` source is a promoted model's own folder: never pruned,
never marked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vlm_operator.builders.labels import PRUNED_ANNOTATION

ROOT_MODEL_ANNOTATION = "vlmtrain.dev/root-model"
PROCESSOR_ANNOTATION = "vlmtrain.dev/processor"
# + the dependent TrainerJob's UID; the value is its name, for people reading the object.
# vlm_trainer.kube_report.IN_USE_PREFIX is the same string (the trainer image has no operator).
IN_USE_PREFIX = "vlmtrain.dev/in-use-by."


@dataclass(frozen=True)
class InitSource:
    """A resolved spec.initFrom."""

    field: str  # spec.initFrom.checkpoint or spec.initFrom.model, for messages
    checkpoint: str
    uid: str
    uri: str  # the weights: the checkpoint's folder or the promoted model's
    type: str  # full or lora
    adapter_base: str  # a LoRA checkpoint's base model (merged into at load)
    root_model: str
    processor: str
    resource_version: str = ""  # the Checkpoint as read: ``mark`` is conditional on it

    def status(self) -> dict[str, str]:
        return {"checkpoint": self.checkpoint, "uid": self.uid, "uri": self.uri}


def _source(field: str, ck: dict[str, Any], uri: str, type_: str) -> InitSource:
    ann = ck["metadata"].get("annotations") or {}
    base = ck["spec"].get("baseModel", "")
    return InitSource(
        field=field,
        checkpoint=ck["metadata"]["name"],
        uid=ck["metadata"].get("uid", ""),
        uri=uri,
        type=type_,
        adapter_base=base,
        root_model=ann.get(ROOT_MODEL_ANNOTATION, base),
        processor=ann.get(PROCESSOR_ANNOTATION, ""),
        resource_version=ck["metadata"].get("resourceVersion", ""),
    )


def resolve(init: dict[str, Any], checkpoints: list[dict[str, Any]]) -> InitSource | str:
    """The source ``spec.initFrom`` names among ``checkpoints`` (the job's namespace), or
    why the job has to wait for it."""
    if name := init.get("checkpoint"):
        field = "spec.initFrom.checkpoint"
        ck = next((c for c in checkpoints if c["metadata"]["name"] == name), None)
        if ck is None:
            return f"{field}: Checkpoint {name} not found"
        if not (ck.get("status") or {}).get("verified"):
            return f"{field}: Checkpoint {name} is not verified yet"
        if PRUNED_ANNOTATION in (ck["metadata"].get("annotations") or {}):
            # Its files are (being) deleted by its job's keepLast: waits until it is recreated.
            return f"{field}: Checkpoint {name} was pruned (its files are deleted)"
        return _source(field, ck, ck["spec"]["uri"], ck["spec"].get("type", "full"))
    model, field = init.get("model"), "spec.initFrom.model"
    for ck in checkpoints:
        promotion = (ck.get("status") or {}).get("promotion") or {}
        if promotion.get("outputModel") == model and promotion.get("uri"):
            return _source(field, ck, promotion["uri"], "full")
    return f"{field}: no Checkpoint has been promoted to model {model}"


def violations(src: InitSource, lora_rank: int, shape: dict[str, Any], shape_name: str) -> list:
    """What makes ``src`` unusable on this shape; one message per problem, naming the field."""
    sh = shape["spec"]
    problems = []
    if src.root_model != sh["baseModel"]:
        problems.append(
            f"{src.field}: Checkpoint {src.checkpoint} descends from {src.root_model}, but "
            f"TrainingShape {shape_name}'s baseModel is {sh['baseModel']}"
        )
    want_processor = sh.get("processor") or sh["baseModel"]
    if src.processor and src.processor != want_processor:
        problems.append(
            f"{src.field}: Checkpoint {src.checkpoint} was trained with processor "
            f"{src.processor}, but TrainingShape {shape_name} uses {want_processor}"
        )
    if src.type == "lora" and lora_rank:
        problems.append(
            f"{src.field}: Checkpoint {src.checkpoint} is a LoRA adapter, which is merged into "
            "its base at load; a LoRA job cannot stack on it (set loraRank 0, or promote it "
            "and use spec.initFrom.model)"
        )
    return problems


def mark(job: dict[str, Any]) -> dict[str, Any]:
    """The merge patch that marks a Checkpoint as the source of ``job``."""
    meta = job["metadata"]
    return {"metadata": {"annotations": {IN_USE_PREFIX + meta["uid"]: meta["name"]}}}


def unmark(job_uids: list[str]) -> dict[str, Any]:
    """The merge patch that drops these jobs' marks (a missing key is a no-op)."""
    return {"metadata": {"annotations": dict.fromkeys(IN_USE_PREFIX + u for u in job_uids)}}


def marks(checkpoint: dict[str, Any]) -> dict[str, str]:
    """The jobs that marked ``checkpoint`` as their source: UID -> name."""
    ann = checkpoint["metadata"].get("annotations") or {}
    return {k.removeprefix(IN_USE_PREFIX): v for k, v in ann.items() if k.startswith(IN_USE_PREFIX)}


def stale_marks(checkpoint: dict[str, Any], jobs: list[dict[str, Any]]) -> list[str]:
    """The UIDs marked on ``checkpoint`` whose job no longer needs it: deleted (not among
    ``jobs``, the namespace's TrainerJobs listed after the Checkpoint was read, so a job that
    marked it is always there) or finished."""
    live = {
        tj["metadata"]["uid"]
        for tj in jobs
        if (tj.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
    }
    return sorted(uid for uid in marks(checkpoint) if uid not in live)
