"""Text-to-speech: Cartesia websocket streaming, or local Piper."""
