"""Local sentiment: VADER's compound score (a rule-based lexicon, no model, no network)."""

from __future__ import annotations

from typing import Any


class VaderSentiment:
    """SentimentProvider with vaderSentiment; about 0.1 ms per sentence, so it runs inline
    (pure Python: a thread would not help). Used alone or as the fallback for Groq."""

    name = "local"

    def __init__(self) -> None:
        self._analyzer: Any = None

    def warm_up(self) -> None:
        """Read the lexicons now (~0.1 s) rather than on the first score."""
        if self._analyzer is None:
            from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

            self._analyzer = SentimentIntensityAnalyzer()

    def score(self, text: str) -> float:
        """The compound score of `text` in [-1, 1]; 0.0 for text without sentiment."""
        self.warm_up()
        return float(self._analyzer.polarity_scores(text)["compound"])
