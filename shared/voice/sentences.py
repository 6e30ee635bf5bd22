"""Streamed LLM tokens → sentences (or long clauses) for TTS, each as soon as it ends.

A sentence ends at `.`, `!`, `?`, `;` or `…` (with any closing quotes or brackets) followed
by whitespace, or at a newline. So "3.5", "9:30" and "1,000" never split, and a terminator
at the very end of the text so far waits for the next token (one token, a few ms).
A period after a title ("Dr.", "Mrs.") or an initial ("J.") or inside "e.g."/"i.e." does not
end a sentence; after "a.m."/"p.m."/"etc." it does only when a capital follows.
A clause that has grown to `min_clause_chars` is also cut at its next comma, so a long first
sentence starts speaking earlier; text with no break at all is cut at `max_chars`.
"""

from __future__ import annotations

import re

_END = re.compile("[.!?;\u2026]+[\"'\u201d\u2019)\\]]*(?=\\s)|\n")
_COMMA = re.compile(r",(?=\s)")
_LAST_WORD = re.compile(r"(\S+)\.$")
_NEVER_ENDS = frozenset(
    {"dr", "mr", "mrs", "ms", "mx", "prof", "st", "sr", "jr", "mt", "vs", "e.g", "i.e", "approx"}
)
_MAY_END = frozenset({"a.m", "p.m", "etc", "inc", "ltd", "co", "corp"})


class SentenceSplitter:
    """Feed tokens in order; take complete sentences from `feed`, the rest from `flush`."""

    def __init__(self, min_clause_chars: int = 40, max_chars: int = 250) -> None:
        self.min_clause_chars = min_clause_chars
        self.max_chars = max_chars
        self._buffer = ""

    def feed(self, token: str) -> list[str]:
        """The sentences that `token` completed (often none), stripped, in order."""
        self._buffer += token
        sentences = []
        while (cut := self._next_cut()) is not None:
            sentence, self._buffer = self._buffer[:cut].strip(), self._buffer[cut:].lstrip()
            if sentence:
                sentences.append(sentence)
        return sentences

    def flush(self) -> str:
        """Whatever remains (stripped, possibly empty); the splitter is then empty."""
        rest, self._buffer = self._buffer.strip(), ""
        return rest

    def _next_cut(self) -> int | None:
        text = self._buffer
        for match in _END.finditer(text):
            if match.group() == "\n" or self._ends_sentence(text, match):
                return match.end()
        for match in _COMMA.finditer(text):
            if match.start() >= self.min_clause_chars:
                return match.end()
        if len(text) > self.max_chars:
            space = text.rfind(" ", 0, self.max_chars)
            return space if space > 0 else self.max_chars
        return None

    def _ends_sentence(self, text: str, match: re.Match[str]) -> bool:
        if not match.group().startswith(".") or match.group().startswith(".."):
            return True
        word_match = _LAST_WORD.search(text, 0, match.start() + 1)
        word = word_match.group(1).lstrip("\"'\u201c\u2018([").lower() if word_match else ""
        if word in _NEVER_ENDS or (len(word) == 1 and word.isalpha()):
            return False
        if word in _MAY_END:
            return _next_is_capital(text, match.end())
        return True


def _next_is_capital(text: str, start: int) -> bool:
    # Undecided (False) until the next word has arrived; flush() covers the end of the text.
    rest = text[start:].lstrip()
    return bool(rest) and (rest[0].isupper() or rest[0].isdigit())
