"""Sentiment of a caller's turn: Groq (JSON output) or local VADER."""
