"""Write tests/providers/fixtures/minilm_reference.json: all-MiniLM-L6-v2 vectors computed by
sentence-transformers itself, which the numpy LocalEmbeddings must reproduce.

Needs sentence-transformers (and so torch) installed separately; Switchboard never does:

    pip install sentence-transformers && python -m scripts.dev.make_embedding_reference
"""

from __future__ import annotations

import json
from pathlib import Path

from shared.providers.embeddings.local import default_model_dir

FIXTURE = Path(__file__).resolve().parents[2] / "tests/providers/fixtures/minilm_reference.json"
_LONG = " ".join(
    f"Clause {n}: the customer may cancel the subscription within thirty days of renewal."
    for n in range(1, 31)
)  # far over 256 tokens: exercises truncation
TEXTS = [
    "Hello",
    "",
    "I'd like to book an appointment for Tuesday at 3 pm.",
    "What are your opening hours on weekends?",
    "My order #A-10293 arrived damaged; I want a refund of $49.99!!!",
    "Call me back at +1 (415) 555-0134, extension 42.",
    "Café crème, naïve façade, Straße — déjà vu?",
    "東京の天気はどうですか",
    "Привет, как дела?",
    "🙂 thanks so much 🙏",
    "THE SERVICE WAS TERRIBLE AND NOBODY ANSWERED THE PHONE",
    _LONG,
]


def main() -> None:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(default_model_dir()), device="cpu")
    vectors = model.encode(TEXTS, normalize_embeddings=False, convert_to_numpy=True)
    items = [
        {"text": text, "vector": [round(float(v), 6) for v in vector]}
        for text, vector in zip(TEXTS, vectors, strict=True)
    ]
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    FIXTURE.write_text(json.dumps({"model": "all-MiniLM-L6-v2", "items": items}, indent=1) + "\n")
    print(f"wrote {len(items)} vectors to {FIXTURE}")


if __name__ == "__main__":
    main()
