"""The sentiment interface: a score in [-1, 1] (negative … positive)."""

from __future__ import annotations

from typing import Protocol


class SentimentProvider(Protocol):
    name: str

    def score(self, text: str) -> float: ...
