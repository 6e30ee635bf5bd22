"""LocalEmbeddings: all-MiniLM-L6-v2 in numpy matches sentence-transformers, without torch."""

from __future__ import annotations

import json
from pathlib import Path

import gevent
import numpy as np
import pytest

from shared.providers.embeddings.base import EMBEDDING_DIM
from shared.providers.embeddings.local import LocalEmbeddings
from tests.conftest import run_fresh

FIXTURE = Path(__file__).parent / "fixtures" / "minilm_reference.json"


@pytest.fixture(scope="module")
def minilm() -> LocalEmbeddings:
    provider = LocalEmbeddings()
    provider.warm_up()
    return provider


def cosine(a: list[float], b: list[float]) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_vectors_match_the_sentence_transformers_reference(minilm: LocalEmbeddings) -> None:
    items = json.loads(FIXTURE.read_text())["items"]
    texts = [item["text"] for item in items]
    assert any(len(text.split()) > 256 for text in texts)  # truncation is exercised

    vectors = minilm.embed(texts)

    for item, vector in zip(items, vectors, strict=True):
        assert cosine(vector, item["vector"]) >= 0.9999, item["text"][:40]
        assert np.abs(np.subtract(vector, item["vector"])).max() <= 1e-3, item["text"][:40]


def test_vectors_have_384_floats_of_unit_length(minilm: LocalEmbeddings) -> None:
    [vector] = minilm.embed(["How much does a cleaning cost?"], purpose="query")

    assert len(vector) == EMBEDDING_DIM == 384
    assert all(isinstance(v, float) for v in vector)
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)


def test_paraphrases_are_closer_than_unrelated_sentences(minilm: LocalEmbeddings) -> None:
    hours, paraphrase, unrelated = minilm.embed(
        [
            "What time do you open on Saturdays?",
            "Are you open on the weekend, and from when?",
            "My card was charged twice for one order.",
        ]
    )

    assert cosine(hours, paraphrase) > cosine(hours, unrelated) + 0.2


def test_a_batch_gives_the_same_vectors_as_one_text_at_a_time(minilm: LocalEmbeddings) -> None:
    texts = ["Hi", "I need to reschedule my appointment to next Friday afternoon.", "", "Yes."]

    batch = minilm.embed(texts)
    single = [minilm.embed([text])[0] for text in texts]

    np.testing.assert_allclose(batch, single, atol=1e-5)


def test_empty_input_gives_no_vectors_and_an_empty_string_a_unit_vector(
    minilm: LocalEmbeddings,
) -> None:
    assert minilm.embed([]) == []
    [vector] = minilm.embed([""])
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)


def test_embedding_in_a_greenlet_leaves_the_hub_free_for_other_greenlets(
    minilm: LocalEmbeddings,
) -> None:
    ticks: list[int] = []

    def ticker() -> None:
        while True:
            ticks.append(1)
            gevent.sleep(0.002)

    clock = gevent.spawn(ticker)
    gevent.sleep(0)
    work = gevent.spawn(minilm.embed, ["a fairly long sentence about opening hours " * 20] * 16)
    vectors = work.get(timeout=60)
    before = len(ticks)
    clock.kill()

    assert len(vectors) == 16
    assert before >= 3  # the clock kept ticking while the model ran in the threadpool


def test_the_provider_never_imports_torch_or_transformers() -> None:
    code = (
        "import sys\n"
        "from shared.providers.embeddings.local import LocalEmbeddings\n"
        "LocalEmbeddings().embed(['hello'])\n"
        "heavy = {'torch', 'transformers', 'sentence_transformers', 'scipy'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    run_fresh(code)
