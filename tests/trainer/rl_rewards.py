"""A user reward function for the RL tests (``reward: tests.trainer.rl_rewards:distinct_chars``)."""

from __future__ import annotations


def distinct_chars(completion: str, fields: dict) -> float:
    """Dense and deterministic: distinct characters of the completion, a tenth each, up to 1.
    Even an untrained model's samples differ in it, so every group has a signal."""
    return min(1.0, len(set(completion)) / 10)
