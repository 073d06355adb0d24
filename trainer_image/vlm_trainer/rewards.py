"""Verifiable rewards for RL: built-in functions and user functions named ``module:function``.

A reward function scores one completion::

    def my_reward(completion: str, fields: dict) -> float: ...

- ``completion``: the generated text, special tokens removed, surrounding whitespace stripped.
- ``fields``: the prompt record's top-level fields other than ``messages`` (the dataset's own
  keys, e.g. ``{"answer": "red"}``), the same dict for every completion of that prompt; do not
  modify it.
- returns a finite number. Any range works (advantages are normalised per group), but the
  built-ins return 0.0 or 1.0 so that the mean reward reads as an accuracy.

Required fields: a reward declares what each prompt record must carry with ``@requires``
(``@requires("answer")``; ``@requires("pattern", "answer")`` means either one), in the
``required_fields`` attribute; ``validate-data --mode rl --reward NAME`` and the RL recipe's
check before training report every record that lacks them (``missing_fields``). A user
function without the attribute requires nothing that can be checked up front.

``reward: mypkg.rewards:score`` imports ``mypkg.rewards`` (it must be importable in the trainer
image, e.g. installed or on ``PYTHONPATH``) and calls ``score``. A missing module, a missing
function, an exception or a non-finite result fails the run with a message naming the function.

Built-ins (the answer is the ``answer`` field; when a completion contains
``<answer>...</answer>`` the text of the last such tag is compared, else the whole completion):

- ``exact_match``: the answer equals the expected one, ignoring case and surrounding whitespace.
- ``regex_match``: the completion matches the record's ``pattern`` field (``re.search``;
  anchor it with ``^...$`` for a full match); falls back to ``answer`` as a literal.
- ``numeric_match``: the last number in the answer equals ``answer`` as a number (relative
  tolerance 1e-6; ``1,000`` and ``1000.0`` match ``1000``).
- ``format_check``: the completion matches the record's ``format`` field (``re.fullmatch``,
  DOTALL), or by default has the shape ``<think>...</think> <answer>...</answer>``.
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable
from typing import Any

RewardFn = Callable[[str, dict], float]

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+]?\.\d+")
_DEFAULT_FORMAT = re.compile(r"\s*<think>.*?</think>\s*<answer>.*?</answer>\s*", re.DOTALL)


class RewardError(ValueError):
    """A reward function that cannot be loaded or returned something unusable."""


def requires(*any_of: str) -> Callable[[Callable], Callable]:
    """Declare that a prompt record needs one of the fields ``any_of``; stackable (every
    decorator is one more requirement)."""

    def mark(fn: Callable) -> Callable:
        fn.required_fields = (tuple(any_of), *getattr(fn, "required_fields", ()))
        return fn

    return mark


def missing_fields(fn: Callable, fields: dict) -> list[str]:
    """One message per requirement of ``fn`` that ``fields`` (a record's top-level fields
    other than ``messages``) does not meet; empty when it meets all."""
    out = []
    for any_of in getattr(fn, "required_fields", ()):
        if not any(k in fields for k in any_of):
            want = " or ".join(repr(k) for k in any_of)
            out.append(f"missing field {want}, which the reward needs")
    return out


def extract_answer(completion: str) -> str:
    """The text of the last ``<answer>...</answer>`` tag, else the whole completion; stripped."""
    tags = _ANSWER_TAG.findall(completion)
    return (tags[-1] if tags else completion).strip()


def _expected(fields: dict, key: str = "answer") -> Any:
    if key not in fields:
        raise RewardError(f"the prompt record has no {key!r} field to compare against")
    return fields[key]


@requires("answer")
def exact_match(completion: str, fields: dict) -> float:
    expected = str(_expected(fields)).strip().casefold()
    return float(extract_answer(completion).casefold() == expected)


@requires("pattern", "answer")
def regex_match(completion: str, fields: dict) -> float:
    if "pattern" in fields:
        return float(re.search(str(fields["pattern"]), completion) is not None)
    return float(str(_expected(fields)) in completion)


def _number(text: str) -> float | None:
    found = _NUMBER.findall(text)
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


@requires("answer")
def numeric_match(completion: str, fields: dict) -> float:
    expected = _expected(fields)
    want = float(expected) if isinstance(expected, int | float) else _number(str(expected))
    if want is None:
        raise RewardError(f"the 'answer' field {expected!r} is not a number")
    got = _number(extract_answer(completion))
    return float(got is not None and math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-9))


def format_check(completion: str, fields: dict) -> float:
    pattern = re.compile(fields["format"], re.DOTALL) if "format" in fields else _DEFAULT_FORMAT
    return float(pattern.fullmatch(completion) is not None)


BUILTIN: dict[str, RewardFn] = {
    "exact_match": exact_match,
    "regex_match": regex_match,
    "numeric_match": numeric_match,
    "format_check": format_check,
}


def load_reward(spec: str) -> RewardFn:
    """A built-in name or ``module:function`` -> a checked reward function."""
    if ":" not in spec:
        if spec not in BUILTIN:
            raise RewardError(
                f"unknown reward {spec!r}: use one of {', '.join(BUILTIN)} or module:function"
            )
        fn = BUILTIN[spec]
    else:
        module_name, _, attr = spec.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise RewardError(f"reward {spec!r}: cannot import {module_name!r}: {e}") from e
        fn = getattr(module, attr, None)
        if not callable(fn):
            raise RewardError(f"reward {spec!r}: {module_name} has no function {attr!r}")
    return _checked(fn, spec)


def _checked(fn: Callable, name: str) -> RewardFn:
    def reward(completion: str, fields: dict) -> float:
        try:
            value = float(fn(completion, fields))
        except RewardError:
            raise
        except Exception as e:  # a user function's bug: name it, keep the cause
            raise RewardError(f"reward {name!r} failed: {type(e).__name__}: {e}") from e
        if not math.isfinite(value):
            raise RewardError(f"reward {name!r} returned {value} (rewards must be finite)")
        return value

    reward.__name__ = getattr(fn, "__name__", name)
    reward.required_fields = getattr(fn, "required_fields", ())
    return reward
