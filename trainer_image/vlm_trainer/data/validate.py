"""Whole-file validation: every bad line with its reason, or a summary of a good file.

Used by ``vlm-trainer validate-data`` and by every recipe before training starts, so both
report the very same messages. One pass, one line in memory at a time. With a ``Renderer``
(i.e. a processor) each record is also rendered, which adds token statistics and catches what
only rendering can (over-long records when ``on_truncation: error``, template problems);
records that truncation would drop are counted as ``skipped``.
"""

from __future__ import annotations

from collections.abc import Callable, MutableSequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .images import ImageError
from .jsonl import DataInvalidError, DataIssue, Mode, iter_lines, parse_line
from .limits import DataLimits
from .render import Renderer, RenderError, SkipRecord


@dataclass
class Summary:
    file: str
    mode: str
    records: int = 0
    bad_records: int = 0
    images: int = 0
    skipped_too_long: int = 0
    tokens: dict = field(default_factory=dict)  # min / mean / max / total, rendered only
    weighted_tokens: dict = field(default_factory=dict)
    issues: list[DataIssue] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.bad_records == 0 and self.records > 0

    @property
    def trainable(self) -> int:
        return self.records - self.bad_records - self.skipped_too_long

    def as_dict(self) -> dict:
        d = asdict(self)
        d.pop("issues")
        d["trainable_records"] = self.trainable
        return d

    def raise_if_invalid(self) -> None:
        if self.records == 0:
            raise DataInvalidError([DataIssue(self.file, 0, "", "no records in the file")], 1, 0)
        if self.bad_records:
            raise DataInvalidError(self.issues, self.bad_records, self.records)


class _Stats:
    def __init__(self):
        self.n, self.total, self.lo, self.hi, self.last = 0, 0, None, None, 0

    def add(self, v: int) -> None:
        self.n, self.last = self.n + 1, v
        self.total += v
        self.lo = v if self.lo is None else min(self.lo, v)
        self.hi = v if self.hi is None else max(self.hi, v)

    def as_dict(self) -> dict:
        if not self.n:
            return {}
        return {
            "min": self.lo,
            "mean": round(self.total / self.n, 1),
            "max": self.hi,
            "total": self.total,
        }


def validate_file(
    path: str | Path,
    mode: Mode = "sft",
    renderer: Renderer | None = None,
    max_image_pixels: int = 50_000_000,
    max_issues: int = 1000,
    reward: Callable | None = None,
    lengths: MutableSequence[int] | None = None,
    limits: DataLimits | None = None,
) -> Summary:
    """Check every line of ``path``; bad data never raises (see ``raise_if_invalid``). The
    limits are the renderer's when there is one, else ``limits`` (else the defaults with
    ``max_image_pixels``). With ``reward`` (RL), each prompt record must carry the fields the
    reward declares. With a renderer and a ``lengths`` list, appends each record's rendered
    tokens in file order (0 for a skipped or bad record): packing plans its steps from them."""
    path = Path(path)
    summary = Summary(file=str(path), mode=mode)
    if not path.is_file():
        summary.issues.append(DataIssue(str(path), 0, "", "no such file"))
        summary.bad_records = 1
        return summary
    if renderer is not None:
        limits = renderer.limits
    limits = limits or DataLimits(max_image_pixels=max_image_pixels)
    tokens, weighted = _Stats(), _Stats()
    for line, _, raw in iter_lines(path, limits.max_line_bytes):
        summary.records += 1
        record, issues = parse_line(raw, file=str(path), line=line, mode=mode, limits=limits)
        before = tokens.n
        if record is not None and renderer is not None:
            issues = _render_issues(record, mode, renderer, path, line, tokens, weighted, summary)
        if record is not None and reward is not None and mode == "rl":
            issues = [*issues, *_reward_issues(record, reward, path, line)]
        if lengths is not None:
            lengths.append(tokens.last if tokens.n > before else 0)
        if issues:
            summary.bad_records += 1
            room = max_issues - len(summary.issues)
            summary.issues.extend(issues[: max(room, 0)])
            continue
        summary.images += sum(len(c.images) for c in record.conversations)
    summary.tokens, summary.weighted_tokens = tokens.as_dict(), weighted.as_dict()
    return summary


def _reward_issues(record, reward: Callable, path: Path, line: int) -> list[DataIssue]:
    from ..rewards import missing_fields

    name = getattr(reward, "__name__", "reward")
    return [
        DataIssue(str(path), line, "", f"{msg} ({name})")
        for msg in missing_fields(reward, record.extra)
    ]


def _render_issues(record, mode, renderer, path, line, tokens, weighted, summary) -> list:
    try:
        if mode == "rl":
            rendered = [renderer.render_prompt(record.conversation)]
        else:
            rendered = [renderer.render(c) for c in record.conversations]
    except SkipRecord:
        summary.skipped_too_long += 1
        return []
    except (RenderError, ImageError) as e:
        return [DataIssue(str(path), line, "", str(e))]
    except Exception as e:  # the processor's own error on odd data (e.g. an extreme aspect ratio)
        return [DataIssue(str(path), line, "", f"cannot render: {type(e).__name__}: {e}")]
    for r in rendered:
        tokens.add(r.num_tokens)
        weighted.add(r.num_weighted)
    return []
