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

Pruning: ``in_use`` says whether an unfinished job depends on a Checkpoint, for the operator's
pruning to skip it. The trainer's own ``keepLast`` pruning of a job that is still running cannot
see other jobs: start from a final Checkpoint (never pruned) or a promoted model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ROOT_MODEL_ANNOTATION = "vlmtrain.dev/root-model"
PROCESSOR_ANNOTATION = "vlmtrain.dev/processor"


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


def in_use(checkpoint: dict[str, Any], jobs: list[dict[str, Any]]) -> bool:
    """Whether a TrainerJob that has not finished depends on ``checkpoint`` (its initFrom):
    pruning must keep it. Matched by UID where the job recorded one, else by name."""
    meta = checkpoint["metadata"]
    for tj in jobs:
        status = tj.get("status") or {}
        if status.get("phase") in ("Succeeded", "Failed"):
            continue
        used = status.get("initFrom") or {}
        if used.get("uid"):
            if used["uid"] == meta.get("uid"):
                return True
        elif (tj["spec"].get("initFrom") or {}).get("checkpoint") == meta["name"]:
            return True
    return False
