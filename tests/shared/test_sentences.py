"""The sentence splitter: streamed tokens become speakable sentences as soon as they end."""

from __future__ import annotations

import re

import pytest

from shared.voice.sentences import SentenceSplitter


def tokens(text: str) -> list[str]:
    """LLM-like pieces: words and punctuation runs with their leading space."""
    return re.findall(r"\s*[\w']+|\s*[^\w\s]+|\s+", text)


def split(text: str, **options: int) -> list[str]:
    splitter = SentenceSplitter(**options)
    out = [sentence for token in tokens(text) for sentence in splitter.feed(token)]
    rest = splitter.flush()
    return [*out, rest] if rest else out


def test_a_sentence_is_released_as_soon_as_the_next_token_shows_it_ended() -> None:
    splitter = SentenceSplitter()

    assert splitter.feed("Sure") == []
    assert splitter.feed(".") == []  # "." could still be "...", or a decimal point
    assert splitter.feed(" We") == ["Sure."]
    assert splitter.feed(" open at nine!") == []
    assert splitter.feed(" Anything") == ["We open at nine!"]
    assert splitter.flush() == "Anything"
    assert splitter.flush() == ""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hi there! How are you? Good; thanks.", ["Hi there!", "How are you?", "Good;", "thanks."]),
        ("A cleaning costs 3.5 hundred. Okay?", ["A cleaning costs 3.5 hundred.", "Okay?"]),
        ("We open at 9:30 on Monday. See you.", ["We open at 9:30 on Monday.", "See you."]),
        ("Dr. Smith can see you. Great.", ["Dr. Smith can see you.", "Great."]),
        ("Bring an ID, e.g. a passport. Thanks.", ["Bring an ID, e.g. a passport.", "Thanks."]),
        ("Ask for J. Smith at the desk.", ["Ask for J. Smith at the desk."]),
        ("We close at 5 p.m. on Fridays.", ["We close at 5 p.m. on Fridays."]),
        ("We close at 5 p.m. See you then.", ["We close at 5 p.m.", "See you then."]),
        ('He said "come in." Then he left.', ['He said "come in."', "Then he left."]),
        ("Well... maybe. Sure.", ["Well...", "maybe.", "Sure."]),
        ("It's 1,000 dollars.", ["It's 1,000 dollars."]),
        ("First line\nSecond line", ["First line", "Second line"]),
    ],
)
def test_sentences_end_at_terminators_but_not_in_numbers_abbreviations_or_times(
    text: str, expected: list[str]
) -> None:
    assert split(text) == expected


def test_a_long_clause_is_released_at_a_comma_but_a_short_one_is_not() -> None:
    text = "Our opening hours are Monday to Friday from nine, and Saturday, briefly. Ok."

    assert split(text, min_clause_chars=40) == [
        "Our opening hours are Monday to Friday from nine,",
        "and Saturday, briefly.",
        "Ok.",
    ]
    assert split("Sure, I can help. Yes.") == ["Sure, I can help.", "Yes."]


def test_text_without_any_break_is_cut_at_a_space_once_it_is_too_long() -> None:
    text = " ".join(["word"] * 30)

    parts = split(text, max_chars=50)

    assert all(len(p) <= 50 for p in parts)
    assert " ".join(parts) == text


def test_flush_returns_the_unfinished_rest_and_empties_the_splitter() -> None:
    splitter = SentenceSplitter()
    splitter.feed("Thanks for calling")

    assert splitter.flush() == "Thanks for calling"
    assert splitter.feed(" Bye.") == []
    assert splitter.flush() == "Bye."


def test_every_character_spoken_is_kept_in_order() -> None:
    text = "Hello, Ada! Your appointment with Dr. Lee is at 3.15 p.m. tomorrow; bring your card."

    assert " ".join(split(text, min_clause_chars=10)) == text
