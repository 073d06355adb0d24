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
only byte offsets, so memory stays flat however large the file; a line longer than
``max_line_bytes`` is never read whole either. Every problem becomes a ``DataIssue`` naming
``file:line``, a JSON path such as ``messages[1].content[0].image_url.url``, and the reason,
whatever goes wrong underneath: the limits of ``limits.py`` (size, nesting, integer digits,
images and pixels per record) are checked before their cost is paid, and any other exception
while checking a line (``MemoryError`` included) still becomes that line's issue.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .images import ImageError, open_image, parse_data_url, probe_image
from .limits import DataLimits
from .safe_json import UNUSABLE, load_json

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


@dataclass(frozen=True)
class Overlong:
    """Stands for a line longer than ``max_line_bytes`` (its content was never kept)."""

    size: int
    limit: int


_CHUNK = 1 << 20


def read_line(f, max_bytes: int) -> bytes | Overlong:
    """The next line of binary file ``f`` (b"" at the end), reading at most ``max_bytes + 1``
    bytes of it into memory; the rest of a longer line is skipped chunk by chunk."""
    raw = f.readline(max_bytes + 1)
    if len(raw) <= max_bytes or raw.endswith(b"\n"):
        return raw
    size = len(raw)
    while chunk := f.readline(_CHUNK):
        size += len(chunk)
        if chunk.endswith(b"\n"):
            break
    return Overlong(size, max_bytes)


def iter_lines(
    path: str | Path, max_line_bytes: int = DataLimits.max_line_bytes
) -> Iterator[tuple[int, int, bytes | Overlong]]:
    """Yield ``(line_number, byte_offset, raw_line)`` for every non-blank line, 1-based; a line
    over ``max_line_bytes`` comes as ``Overlong`` (``parse_line`` reports it)."""
    with open(path, "rb") as f:
        offset, lineno = 0, 0
        while True:
            raw = read_line(f, max_line_bytes)
            if raw == b"":
                return
            lineno += 1
            if isinstance(raw, Overlong) or raw.strip():
                yield lineno, offset, raw
            offset = f.tell()


class LineIndex:
    """Byte offsets and line numbers of the non-blank lines: 16 bytes per record in memory.

    Lets the trainer shuffle and seek without holding records, and resume at an exact position.
    """

    def __init__(self, path: str | Path, max_line_bytes: int = DataLimits.max_line_bytes):
        self.path = Path(path)
        self.max_line_bytes = max_line_bytes
        self.offsets = array("q")
        self.lines = array("q")
        for lineno, offset, _ in iter_lines(self.path, max_line_bytes):
            self.offsets.append(offset)
            self.lines.append(lineno)

    def __len__(self) -> int:
        return len(self.offsets)

    def read(self, f, i: int) -> tuple[int, bytes | Overlong]:
        """``(line_number, raw_line)`` of record ``i`` from an open binary file ``f``."""
        f.seek(self.offsets[i])
        return self.lines[i], read_line(f, self.max_line_bytes)


# ------------------------------------------------------------------------------------------------
# Parsing and validation


class _Issues:
    """Collects the problems of one record; ``add`` never raises so all of them are reported."""

    def __init__(self, file: str, line: int):
        self.file, self.line, self.items = file, line, []

    def add(self, path: str, reason: str) -> None:
        self.items.append(DataIssue(self.file, self.line, path, reason))


def parse_line(
    raw: bytes | str | Overlong,
    *,
    file: str,
    line: int,
    mode: Mode = "sft",
    max_image_pixels: int = 50_000_000,
    decode_images: bool = True,
    limits: DataLimits | None = None,
) -> tuple[Record | None, list[DataIssue]]:
    """Parse and validate one JSONL line. Returns the record (None if invalid) and its issues.

    With ``decode_images`` every image is decoded with Pillow (catches corrupt data); without
    it the data URL, base64 and image header (format, size) are checked (cheap, for streaming).
    ``limits`` defaults to ``DataLimits`` with ``max_image_pixels``. Never raises on bad data:
    any exception while checking the line becomes its issue."""
    limits = limits or DataLimits(max_image_pixels=max_image_pixels)
    issues = _Issues(file, line)
    try:
        record = _parse(raw, mode, limits, decode_images, issues)
    except Exception as e:  # MemoryError, a library's own error on odd input, ...
        record = None
        issues.add("", f"cannot check this line: {type(e).__name__}: {str(e)[:200]}")
    return (None if issues.items else record), issues.items


def _parse(
    raw: bytes | str | Overlong, mode: Mode, limits: DataLimits, decode: bool, issues: _Issues
) -> Record | None:
    if isinstance(raw, Overlong):
        issues.add("", f"line is {raw.size} bytes, above max_line_bytes={raw.limit}")
        return None
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError as e:
        issues.add("", f"not UTF-8 text: {e.reason} at byte {e.start}")
        return None
    obj = load_json(text, limits, issues.add)
    if obj is UNUSABLE:
        return None
    if not isinstance(obj, dict):
        issues.add("", f"expected a JSON object, got {_kind(obj)}")
        return None
    opts = {"limits": limits, "decode_images": decode, "images": 0, "pixels": 0}
    record = Record(line=issues.line)
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
            return None
        conv = _conversation(obj, "", issues, opts)
        if conv is not None and mode == "sft":
            if not any(m.role == "assistant" for m in conv.messages):
                issues.add("messages", "no assistant message: nothing to train on")
        elif conv is not None and mode == "rl":
            _require_last(conv, "user", "messages", issues)
        record.conversation = conv
        record.extra = {k: v for k, v in obj.items() if k != "messages"}
    return record


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
            data = _image(url, upath, issues, opts)
        except ImageError as e:
            issues.add(upath, str(e))
            return None
        return None if data is None else Part("image", image=data)
    if kind is None:
        issues.add(path + ".type", "missing (use 'text' or 'image_url')")
    else:
        issues.add(path + ".type", f"unsupported part type {kind!r}: use 'text' or 'image_url'")
    return None


def _image(url: Any, path: str, issues: _Issues, opts: dict) -> bytes | None:
    """The bytes of one image, after the record-wide limits (counted in ``opts``): images per
    record, then pixels per record from the header, then (``decode_images``) a full decode.
    Each record-wide limit is reported once, at the image that crosses it."""
    limits: DataLimits = opts["limits"]
    opts["images"] += 1
    if opts["images"] > limits.max_images_per_record:
        if opts["images"] == limits.max_images_per_record + 1:
            issues.add(path, f"more than max_images_per_record={limits.max_images_per_record}")
        return None
    declared, data = parse_data_url(url)
    w, h = probe_image(data, declared, limits.max_image_pixels)
    before, opts["pixels"] = opts["pixels"], opts["pixels"] + w * h
    if opts["pixels"] > limits.max_record_pixels:
        if before <= limits.max_record_pixels:
            issues.add(
                path,
                f"the record's images add up to more than max_record_pixels="
                f"{limits.max_record_pixels} pixels (this {w}x{h} image brings them to "
                f"{opts['pixels']})",
            )
        return None
    if opts["decode_images"]:
        open_image(data, limits.max_image_pixels).close()
    return data


def _kind(v: Any) -> str:
    return {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        type(None): "null",
    }.get(type(v), "a number")
