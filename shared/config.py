"""The one configuration object, read from the environment (and `.env` if present).

Every process calls `load_settings()` once at start-up and passes the result down;
nothing reads `os.environ` anywhere else.
"""

from __future__ import annotations

import secrets
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True)

    data_dir: Path = Path(".data")
    database_url: str | None = None
    redis_url: str | None = None
    secret_key: str | None = None

    bind_host: str = "127.0.0.1"
    web_port: int = 8000
    web_workers: int = 2
    worker_processes: int = 1
    worker_threads: int = 8
    # How long a silent worker keeps its messages before another requeues them, and how
    # often (per million broker commands) that housekeeping runs: Dramatiq's defaults.
    queue_heartbeat_timeout_ms: int = 60_000
    queue_maintenance_chance: int = 1_000
    voice_port: int = 8001
    worker_metrics_port: int = 9191
    public_web_url: str = "http://127.0.0.1:8000"
    public_voice_url: str = "ws://127.0.0.1:8001"

    telnyx_api_key: str | None = None
    telnyx_api_url: str = "https://api.telnyx.com/v2"
    telnyx_public_key: str | None = None
    telnyx_connection_id: str | None = None
    deepgram_api_key: str | None = None
    deepgram_url: str | None = None
    cartesia_api_key: str | None = None
    cartesia_url: str | None = None
    groq_api_key: str | None = None
    groq_url: str | None = None
    google_api_key: str | None = None
    google_api_url: str | None = None
    hubspot_access_token: str | None = None
    hubspot_api_url: str = "https://api.hubapi.com"
    hubspot_client_secret: str | None = None
    stripe_webhook_secret: str | None = None

    stt_provider: Literal["deepgram", "local"] | None = None
    tts_provider: Literal["cartesia", "local"] | None = None
    llm_provider: Literal["groq", "local"] | None = None
    embeddings_provider: Literal["google", "local"] | None = None
    sentiment_provider: Literal["groq", "local"] | None = None

    # Agent audio to Telnyx: chunk size, and how far ahead of the caller's ear we stay.
    voice_chunk_ms: int = 100
    voice_lead_ms: int = 200
    # Let the kernel delay the ACKs of Telnyx's frames (web/voice/media_socket.py).
    voice_delayed_acks: bool = True
    # Local STT: caller silence that ends a turn.
    voice_silence_ms: int = 500

    otel_exporter_otlp_endpoint: str | None = None
    log_format: Literal["json", "text"] = "json"
    log_level: str = "INFO"

    access_token_minutes: int = 30
    refresh_token_days: int = 7
    max_body_bytes: int = Field(default=1024 * 1024)
    # Per process: gevent serves many requests at once, and connections beyond the pool
    # are opened and closed per request (churn) — keep the steady state inside it.
    db_pool_size: int = 20

    @cached_property
    def signing_key(self) -> str:
        """SECRET_KEY, or a random key generated once and kept in DATA_DIR/secret_key."""
        if self.secret_key:
            return self.secret_key
        return _persisted_secret(self.data_dir / "secret_key")

    def require_database_url(self) -> str:
        if not self.database_url:
            raise RuntimeError(
                "DATABASE_URL is not set: start the stack with scripts/run, "
                "or point DATABASE_URL at PostgreSQL with pgvector"
            )
        return self.database_url

    def require_redis_url(self) -> str:
        if not self.redis_url:
            raise RuntimeError("REDIS_URL is not set: start the stack with scripts/run")
        return self.redis_url


def _persisted_secret(path: Path) -> str:
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(48)
    # O_EXCL: when two processes race on first start, one wins and both read its key.
    try:
        fd = path.open("x")
    except FileExistsError:
        return path.read_text().strip()
    with fd:
        fd.write(value)
    path.chmod(0o600)
    return value


def load_settings(**overrides: object) -> Settings:
    return Settings(**overrides)  # type: ignore[arg-type]
