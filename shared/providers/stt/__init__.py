"""Speech-to-text: Deepgram live streaming, or local (Silero VAD + faster-whisper)."""
