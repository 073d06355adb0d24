"""``dataLimits``: what one JSONL line of a dataset may cost the trainer, per job within the
shape's bounds.

A TrainerJob may set ``spec.dataLimits`` (a line longer, or a record with more images or pixels,
is a bad line: ``file:line: json.path: reason``, exit 65). Its TrainingShape's
``spec.dataLimits`` are the admin's maxima; where the shape sets none, the trainer's defaults
(``vlm_trainer.data.limits.DataLimits``) are the maxima, so a job can tighten a limit but never
widen it past what the admin allows. The operator checks this at admission (``InvalidSpec``
naming ``spec.dataLimits.<field>``) and writes the effective values into the trainer config.
Nesting depth and integer digits stay at the trainer's fixed defaults: they guard the parser,
not the job's data.
"""

from __future__ import annotations

from pydantic import Field
from vlm_trainer.data.limits import DataLimits as TrainerDefaults

from vlm_operator.api.base import ApiModel

_DEFAULTS = TrainerDefaults()


class DataLimits(ApiModel):
    """Per-line limits of a dataset (unset: the shape's, else the trainer's default)."""

    max_line_bytes: int | None = Field(
        None,
        ge=1024,
        le=1 << 30,
        description=f"Longest JSONL line, in bytes (trainer default {_DEFAULTS.max_line_bytes}); "
        "checked while streaming, a longer line is never read whole.",
    )
    max_images_per_record: int | None = Field(
        None,
        ge=1,
        le=4096,
        description=f"Most images in one record (default {_DEFAULTS.max_images_per_record}).",
    )
    max_image_pixels: int | None = Field(
        None,
        ge=1,
        le=1_000_000_000,
        description="Most pixels of one image, read from its header before decoding (default "
        f"{_DEFAULTS.max_image_pixels}).",
    )
    max_record_pixels: int | None = Field(
        None,
        ge=1,
        le=10_000_000_000,
        description="Most pixels of all images of one record together (default "
        f"{_DEFAULTS.max_record_pixels}).",
    )


def _bounds(shape: DataLimits | None) -> dict[str, int]:
    """Trainer config key -> the admin's maximum."""
    return {
        key: getattr(shape, key, None) or getattr(_DEFAULTS, key) for key in DataLimits.model_fields
    }


def limit_violations(
    job: DataLimits | None, shape: DataLimits | None, shape_name: str
) -> list[str]:
    """One message per job limit above its shape's bound, naming the job's field."""
    if job is None:
        return []
    bounds, problems = _bounds(shape), []
    for key, info in DataLimits.model_fields.items():
        value = getattr(job, key)
        if value is not None and value > bounds[key]:
            where = f"TrainingShape {shape_name}'s dataLimits.{info.alias}"
            if shape is None or getattr(shape, key) is None:
                where = f"the trainer's default (TrainingShape {shape_name} sets no higher bound)"
            problems.append(f"spec.dataLimits.{info.alias}: {value} exceeds {where} {bounds[key]}")
    return problems


def effective_limits(job: DataLimits | None, shape: DataLimits | None) -> dict[str, int]:
    """The trainer config keys to write: the job's value, else the shape's (unset in both: the
    trainer's default applies and nothing is written)."""
    out = {}
    for key in DataLimits.model_fields:
        value = getattr(job, key, None) or getattr(shape, key, None)
        if value is not None:
            out[key] = value
    return out
