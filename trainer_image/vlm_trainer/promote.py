"""Checkpoint verification and promotion (the operator runs these as short Jobs).

`verify_checkpoint(dir)`: re-hash every file against the manifest; returns the size and file
count. `promote(checkpoint, output, base_model)`: write a standalone HF-format model to `output`:
a full checkpoint is re-saved as it is, a LoRA checkpoint is merged into its base model
(`merge_and_unload`), and the processor files are copied from the checkpoint. The result is
written to a temporary folder next to `output` and renamed into place, with a `promoted.json`
(source checkpoint, step, type, base model, sha256 of every file), so a crash never leaves a
half-written model under the output name. Weights keep the dtype they were saved in.

An existing model under `output` is never replaced silently: without `overwrite` the promotion
stops with ``ModelExists`` before loading anything (the CLI exits 73, EX_CANTCREAT, which the
operator reports as reason ModelExists), unless that model was promoted from this very
checkpoint (a retried promotion Job that had finished its rename), which counts as done.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from vlm_trainer import checkpoint as ckpt


class PromotionError(RuntimeError):
    pass


class ModelExists(PromotionError):
    """The output model exists and the promotion did not ask to overwrite it."""


def _existing(checkpoint: Path, output: Path, overwrite: bool) -> dict[str, Any] | None:
    """The result of an earlier promotion of this checkpoint to `output`, when that is what is
    there; None when `output` is free (or may be replaced); else raise ModelExists."""
    if not output.exists() or overwrite:
        return None
    try:
        info = json.loads((output / "promoted.json").read_text())
    except (OSError, ValueError):
        info = {}
    if info.get("source_checkpoint") == str(checkpoint):
        return {
            "output": str(output),
            "files": len(info.get("files") or {}),
            "type": info.get("type"),
        }
    raise ModelExists(
        f"{output} exists (promoted from {info.get('source_checkpoint', 'elsewhere')}); set "
        "promote.overwrite to replace it"
    )


def verify_checkpoint(path: Path) -> dict[str, Any]:
    if (problem := ckpt.verify(path)) is not None:
        raise PromotionError(f"checkpoint {path} does not verify: {problem}")
    files = [p for p in path.rglob("*") if p.is_file()]
    out: dict[str, Any] = {"sizeBytes": sum(p.stat().st_size for p in files), "files": len(files)}
    if isinstance(ev := (ckpt.read_manifest(path) or {}).get("eval"), dict):
        out["eval"] = ev  # the snapshot's eval metrics: the operator copies them to status.eval
    return out


def promote(
    checkpoint: Path, output: Path, base_model: str | None = None, overwrite: bool = False
) -> dict[str, Any]:
    if (done := _existing(checkpoint, output, overwrite)) is not None:
        return done  # checked before loading anything: a refusal is quick
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    verify_checkpoint(checkpoint)
    manifest = ckpt.read_manifest(checkpoint) or {}
    kind = manifest.get("type", "full")
    if kind == "lora":
        from peft import PeftModel

        base = base_model or manifest.get("base_model")
        if not base:
            raise PromotionError("a LoRA checkpoint needs --base-model (none in its manifest)")
        model = AutoModelForImageTextToText.from_pretrained(base, torch_dtype="auto")
        model = PeftModel.from_pretrained(model, str(checkpoint)).merge_and_unload()
    else:
        model = AutoModelForImageTextToText.from_pretrained(str(checkpoint), torch_dtype="auto")
    processor = AutoProcessor.from_pretrained(str(checkpoint))

    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{output.name}-", dir=output.parent))
    with torch.no_grad():
        model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    files = {
        str(p.relative_to(tmp)): ckpt.sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()
    }
    info = {
        "source_checkpoint": str(checkpoint),
        "job": manifest.get("job"),
        "step": manifest.get("step"),
        "type": kind,
        "base_model": base_model or manifest.get("base_model"),
        "promoted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "files": files,
    }
    (tmp / "promoted.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    if output.exists():  # overwrite: the old model is replaced whole
        old = Path(tempfile.mkdtemp(prefix=f".old-{output.name}-", dir=output.parent))
        os.rename(output, old / output.name)
        os.rename(tmp, output)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, output)
    return {"output": str(output), "files": len(files), "type": kind}
