"""The embeddings interface: unit-length vectors of EMBEDDING_DIM floats.

Vectors from different providers are not comparable: switching provider means
re-embedding stored knowledge and memories.
"""

from __future__ import annotations

from typing import Literal, Protocol

from shared.db.models.agents import EMBEDDING_DIM

Purpose = Literal["query", "document"]
__all__ = ["EMBEDDING_DIM", "EmbeddingsProvider", "Purpose"]


class EmbeddingsProvider(Protocol):
    name: str

    def embed(self, texts: list[str], purpose: Purpose = "document") -> list[list[float]]:
        """One L2-normalised vector per text, in order."""
