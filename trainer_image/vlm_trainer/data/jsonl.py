"""Streaming JSONL reading and record validation for SFT, DPO and RL datasets.

Formats (OpenAI-compatible chat, as in the README):

- SFT: ``{"messages": [...]}`` with at least one assistant message.
- RL:  ``{"messages": [...], ...}`` whose last message is from the user; other top-level fields
  (e.g. ``"answer"``) are kept for reward functions.
- DPO: ``{"chosen": {"messages": [...]}, "rejected": {"messages": [...]}}``, each side ending
  with an assistant message.

A message is ``{"role": "system"|"user"|"assistant", "content": str | [part, ...]}``; a part is
``{"type": "text", "text": str}`` or ``{"type": "image_url", "image_url": {"url": "data:..."}}``.
Images may appear in user messages, several per message (the Qwen chat templates render
them only there). A system message may only
come first (the Qwen chat templates render it only there).

The file is never read whole: ``iter_lines`` yields one line at a time and ``LineIndex`` keeps
only byte offsets, so memory stays flat however large the file. Every problem becomes a
``DataIssue`` naming ``file:line``, a JSON path such as ``messages[1].content[0].image_url.url``,
and the reason.
"""

from __future__ import annotations

import json
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .images import ImageError, decode_data_url, open_image

Mode = Literal["sft", "dpo", "rl"]
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class DataIssue:
    """One problem in one line of a dataset."""

    file: str
    line: int
    path: str  # JSON path inside the record; "" for the whole line
    reason: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}"
        return f"{where}: {self.path}: {self.reason}" if self.path else f"{where}: {self.reason}"


class DataInvalidError(Exception):
    """Raised when a dataset has bad lines; ``issues`` lists them (possibly capped)."""

    def __init__(self, issues: list[DataIssue], bad_lines: int, total_lines: int):
        self.issues = issues
        self.bad_lines = bad_lines
        self.total_lines = total_lines
        super().__init__(self.report())

    def report(self) -> str:
        head = f"{self.bad_lines} of {self.total_lines} records are invalid"
        shown = "\n".join(str(i) for i in self.issues)
        more = len(self.issues) < self.bad_lines
        return head + ":\n" + shown + ("\n... (more issues not shown)" if more else "")


@dataclass
class Part:
    """A text or image piece of a message; images stay encoded bytes until rendering."""

    kind: Literal["text", "image"]
    text: str = ""
    image: bytes = b""


@dataclass
class Message:
    role: str
    content: str | list[Part]

    @property
    def images(self) -> list[bytes]:
        return (
            []
            if isinstance(self.content, str)
            else [p.image for p in self.content if p.kind == "image"]
        )

    @property
    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content if p.kind == "text")


@dataclass
class Conversation:
    messages: list[Message]

    @property
    def images(self) -> list[bytes]:
        return [img for m in self.messages for img in m.images]


@dataclass
class Record:
    """A validated dataset line. ``conversation`` for SFT/RL; ``chosen``/``rejected`` for DPO."""

    line: int
    conversation: Conversation | None = None
    chosen: Conversation | None = None
    rejected: Conversation | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def conversations(self) -> list[Conversation]:
        return [c for c in (self.conversation, self.chosen, self.rejected) if c is not None]


# ------------------------------------------------------------------------------------------------
# Streaming


def iter_lines(path: str | Path) -> Iterator[tuple[int, int, bytes]]:
    """Yield ``(line_number, byte_offset, raw_line)`` for every non-blank line, 1-based."""
    with open(path, "rb") as f:
        offset = 0
        for lineno, raw in enumerate(f, start=1):
            if raw.strip():
                yield lineno, offset, raw
            offset += len(raw)


class LineIndex:
    """Byte offsets and line numbers of the non-blank lines: 16 bytes per record in memory.

    Lets the trainer shuffle and seek without holding records, and resume at an exact position.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.offsets = array("q")
        self.lines = array("q")
        for lineno, offset, _ in iter_lines(self.path):
            self.offsets.append(offset)
            self.lines.append(lineno)

    def __len__(self) -> int:
        return len(self.offsets)

    def read(self, f, i: int) -> tuple[int, bytes]:
        """``(line_number, raw_line)`` of record ``i`` from an open binary file ``f``."""
        f.seek(self.offsets[i])
        return self.lines[i], f.readline()


# ------------------------------------------------------------------------------------------------
# Parsing and validation


class _Issues:
    """Collects the problems of one record; ``add`` never raises so all of them are reported."""

    def __init__(self, file: str, line: int):
        self.file, self.line, self.items = file, line, []

    def add(self, path: str, reason: str) -> None:
        self.items.append(DataIssue(self.file, self.line, path, reason))


def parse_line(
    raw: bytes | str,
    *,
    file: str,
    line: int,
    mode: Mode = "sft",
    max_image_pixels: int = 50_000_000,
    decode_images: bool = True,
) -> tuple[Record | None, list[DataIssue]]:
    """Parse and validate one JSONL line. Returns the record (None if invalid) and its issues.

    With ``decode_images`` every image is decoded with Pillow (catches corrupt data and bombs);
    without it only the data URL and base64 are checked (cheap, for quick scans)."""
    issues = _Issues(file, line)
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError as e:
        issues.add("", f"not UTF-8 text: {e.reason} at byte {e.start}")
        return None, issues.items
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        issues.add("", f"not valid JSON: {e.msg} (column {e.colno})")
        return None, issues.items
    if not isinstance(obj, dict):
        issues.add("", f"expected a JSON object, got {_kind(obj)}")
        return None, issues.items

    opts = {"max_image_pixels": max_image_pixels, "decode_images": decode_images}
    record = Record(line=line)
    if mode == "dpo":
        for side in ("chosen", "rejected"):
            if side not in obj:
                issues.add(side, "missing (a DPO record has 'chosen' and 'rejected')")
                continue
            value = obj[side]
            if not isinstance(value, dict):
                issues.add(side, f"expected an object with 'messages', got {_kind(value)}")
                continue
            conv = _conversation(value, side + ".", issues, opts)
            if conv is not None:
                _require_last(conv, "assistant", side + ".messages", issues)
            setattr(record, side, conv)
    else:
        if "messages" not in obj:
            hint = " (this looks like a DPO record: use --mode dpo)" if "chosen" in obj else ""
            issues.add("messages", "missing" + hint)
            return None, issues.items
        conv = _conversation(obj, "", issues, opts)
        if conv is not None and mode == "sft":
            if not any(m.role == "assistant" for m in conv.messages):
                issues.add("messages", "no assistant message: nothing to train on")
        elif conv is not None and mode == "rl":
            _require_last(conv, "user", "messages", issues)
        record.conversation = conv
        record.extra = {k: v for k, v in obj.items() if k != "messages"}
    return (None if issues.items else record), issues.items


def _require_last(conv: Conversation, role: str, path: str, issues: _Issues) -> None:
    last = conv.messages[-1].role
    if last != role:
        what = "the model answers it" if role == "user" else "it is the response being scored"
        issues.add(
            f"{path}[{len(conv.messages) - 1}].role",
            f"last message must be {role!r} ({what}), got {last!r}",
        )


def _conversation(obj: dict, prefix: str, issues: _Issues, opts: dict) -> Conversation | None:
    path = prefix + "messages"
    msgs = obj.get("messages")
    if msgs is None:
        issues.add(path, "missing")
        return None
    if not isinstance(msgs, list):
        issues.add(path, f"expected a list of messages, got {_kind(msgs)}")
        return None
    if not msgs:
        issues.add(path, "empty: a record needs at least one message")
        return None
    before = len(issues.items)
    out = [_message(m, f"{path}[{i}]", i, issues, opts) for i, m in enumerate(msgs)]
    if len(issues.items) > before:
        return None
    return Conversation(messages=[m for m in out if m is not None])


def _message(m: Any, path: str, index: int, issues: _Issues, opts: dict) -> Message | None:
    if not isinstance(m, dict):
        issues.add(path, f"expected a message object, got {_kind(m)}")
        return None
    role = m.get("role")
    if role is None:
        issues.add(path + ".role", "missing")
        return None
    if role not in ROLES:
        issues.add(path + ".role", f"unknown role {role!r}: use one of {', '.join(ROLES)}")
        return None
    if role == "system" and index != 0:
        issues.add(path + ".role", "a system message may only be the first message")
    if "content" not in m or m["content"] is None:
        issues.add(path + ".content", "missing")
        return None
    content = m["content"]
    if isinstance(content, str):
        if role == "assistant" and not content.strip():
            issues.add(path + ".content", "empty assistant message: nothing to train on")
        return Message(role, content)
    if not isinstance(content, list):
        issues.add(path + ".content", f"expected a string or a list of parts, got {_kind(content)}")
        return None
    if not content:
        issues.add(path + ".content", "empty list of parts")
        return None
    parts = [_part(p, f"{path}.content[{j}]", role, issues, opts) for j, p in enumerate(content)]
    if any(p is None for p in parts):
        return None
    msg = Message(role, parts)
    if role == "assistant" and not msg.text.strip():
        issues.add(path + ".content", "empty assistant message: nothing to train on")
    return msg


def _part(p: Any, path: str, role: str, issues: _Issues, opts: dict) -> Part | None:
    if not isinstance(p, dict):
        issues.add(path, f"expected a content part object, got {_kind(p)}")
        return None
    kind = p.get("type")
    if kind == "text":
        text = p.get("text")
        if not isinstance(text, str):
            issues.add(
                path + ".text",
                "missing" if text is None else f"expected a string, got {_kind(text)}",
            )
            return None
        return Part("text", text=text)
    if kind == "image_url":
        if role != "user":
            issues.add(path, f"images are only supported in user messages, not in {role!r} ones")
            return None
        holder = p.get("image_url")
        url = (
            holder.get("url")
            if isinstance(holder, dict)
            else holder
            if isinstance(holder, str)
            else None
        )
        upath = path + ".image_url" + (".url" if isinstance(holder, dict) else "")
        if url is None:
            issues.add(upath, "missing")
            return None
        try:
            data = decode_data_url(url)
            if opts["decode_images"]:
                open_image(data, opts["max_image_pixels"]).close()
        except ImageError as e:
            issues.add(upath, str(e))
            return None
        return Part("image", image=data)
    if kind is None:
        issues.add(path + ".type", "missing (use 'text' or 'image_url')")
    else:
        issues.add(path + ".type", f"unsupported part type {kind!r}: use 'text' or 'image_url'")
    return None


def _kind(v: Any) -> str:
    return {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        type(None): "null",
    }.get(type(v), "a number")
