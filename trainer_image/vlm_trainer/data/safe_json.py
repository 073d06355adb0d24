"""JSON parsing with limits: one dataset line can neither exhaust the stack nor the CPU.

``load_json(text, limits, add_issue)`` is ``json.loads`` that never raises: integers longer
than ``max_json_int_digits`` are kept as their digit count (never converted: Python's ``int()``
is quadratic and refuses above 4,300 digits), NaN/Infinity and overflowing floats are marked,
a line nested beyond the interpreter's recursion limit is caught (``RecursionError``) and
reported with the column where it passes ``max_json_depth``; then one iterative walk reports
depth, digits, non-finite numbers and lone surrogates, each with its JSON path. It returns
``UNUSABLE`` when the line cannot be used (the reasons went to ``add_issue(path, reason)``).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any

from .limits import DataLimits

AddIssue = Callable[[str, str], None]


class _TooManyDigits:
    """An integer literal kept as its digit count: it is reported, never converted."""

    def __init__(self, digits: int):
        self.digits = digits


class _NotFinite:
    """NaN, Infinity or a float literal that overflows: not JSON (RFC 8259), not trainable."""

    def __init__(self, literal: str):
        self.literal = literal


UNUSABLE = object()


def load_json(text: str, limits: DataLimits, add_issue: AddIssue) -> Any:
    """``json.loads`` that never raises and never converts a huge integer; then every limit is
    checked on the tree. ``UNUSABLE`` (with issues) when the line cannot be used."""

    def parse_int(s: str) -> int | _TooManyDigits:
        digits = len(s) - s.startswith("-")
        return int(s) if digits <= limits.max_json_int_digits else _TooManyDigits(digits)

    def parse_float(s: str) -> float | _NotFinite:
        f = float(s)
        return f if math.isfinite(f) else _NotFinite(s[:20])

    try:
        obj = json.loads(
            text, parse_int=parse_int, parse_float=parse_float, parse_constant=_NotFinite
        )
    except json.JSONDecodeError as e:
        add_issue("", f"not valid JSON: {e.msg} (column {e.colno})")
        return UNUSABLE
    except RecursionError:
        column = _depth_column(text, limits.max_json_depth)
        add_issue(
            "",
            f"nested more than max_json_depth={limits.max_json_depth} levels deep "
            f"(column {column}; too deep for the parser)",
        )
        return UNUSABLE
    return obj if _check_tree(obj, limits, add_issue) else UNUSABLE


def _check_tree(obj: Any, limits: DataLimits, add_issue: AddIssue, max_reports: int = 5) -> bool:
    """Depth, integer digits, non-finite numbers and strings that are not valid Unicode (a lone
    ``\\ud800`` escape: the tokenizer cannot encode it), each with its JSON path (iterative: no
    recursion however deep; at most ``max_reports`` issues for one line). True when clean."""
    stack: list[tuple[Any, str, int]] = [(obj, "", 1)]
    reported = 0
    while stack and reported < max_reports:
        value, path, depth = stack.pop()
        reason = None
        if isinstance(value, dict | list) and depth > limits.max_json_depth:
            reason = f"nested more than max_json_depth={limits.max_json_depth} levels deep"
        elif isinstance(value, _TooManyDigits):
            reason = (
                f"integer of {value.digits} digits, above "
                f"max_json_int_digits={limits.max_json_int_digits}"
            )
        elif isinstance(value, _NotFinite):
            reason = f"number {value.literal!r} is not finite (NaN/Infinity are not JSON)"
        elif isinstance(value, str) and (bad := _SURROGATE.search(value)):
            reason = (
                f"lone surrogate \\u{ord(bad.group()):04x} at character {bad.start()}: not text"
            )
        if reason:
            add_issue(path, reason)
            reported += 1
        elif isinstance(value, dict):
            children = [(v, f"{path}.{k}" if path else str(k)) for k, v in value.items()]
            stack.extend((v, p, depth + 1) for v, p in reversed(children))
        elif isinstance(value, list):
            items = reversed(list(enumerate(value)))
            stack.extend((v, f"{path}[{i}]", depth + 1) for i, v in items)
    return reported == 0


_SURROGATE = re.compile("[\ud800-\udfff]")
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def _depth_column(text: str, limit: int) -> int:
    """1-based column of the bracket that opens level ``limit + 1`` (strings skipped)."""
    depth = 0
    for m in _TOKEN.finditer(text):
        c = m.group()
        if c in "[{":
            depth += 1
            if depth > limit:
                return m.start() + 1
        elif c in "]}":
            depth -= 1
    return 0
