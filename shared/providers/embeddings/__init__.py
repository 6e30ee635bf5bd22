"""Sentence embeddings: Google (gemini-embedding-001) or local all-MiniLM-L6-v2."""
