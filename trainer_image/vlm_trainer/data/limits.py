"""Limits on what one dataset line may cost, checked before the cost is paid.

A dataset is user input: one line must not be able to exhaust memory, CPU or the interpreter's
stack. Every limit is a trainer config key (same name; defaults below) and every breach is a
``DataIssue`` (``file:line: json.path: reason``), never a Python exception:

- ``max_line_bytes`` (32 MiB): checked while streaming, a longer line is skipped in 1 MiB
  chunks and never held in memory whole;
- ``max_json_depth`` (32): nesting of objects/lists; a record of this trainer needs 7 at most.
  A line nested beyond the interpreter's recursion limit is reported too (``RecursionError``
  is caught), with the column where it passes ``max_json_depth``;
- ``max_json_int_digits`` (100): integers are kept as digit strings until counted, so a
  5,000-digit integer costs nothing (Python's own ``int()`` refuses above 4,300 digits with a
  ``ValueError`` and is quadratic below that);
- ``max_images_per_record`` (64), ``max_image_pixels`` (50 Mpx per image) and
  ``max_record_pixels`` (100 Mpx, all images of a record together, i.e. ~300 MB decoded RGB):
  sizes come from the PNG/JPEG header, before any pixel is decoded (decompression bombs).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True)
class DataLimits:
    max_line_bytes: int = 32 << 20
    max_json_depth: int = 32
    max_json_int_digits: int = 100
    max_images_per_record: int = 64
    max_image_pixels: int = 50_000_000
    max_record_pixels: int = 100_000_000

    @classmethod
    def from_config(cls, cfg: Any) -> DataLimits:
        """The limits a trainer config sets (its keys have the same names)."""
        return cls(**{f.name: getattr(cfg, f.name) for f in fields(cls)})
