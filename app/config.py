"""Settings: every knob of docs/configuration.md, read from the environment and `.env`."""

from __future__ import annotations

import logging
import secrets
from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

log = logging.getLogger("talkstack.config")

_MIN_SECRET_LEN = 32


class Settings(BaseSettings):
    # env_ignore_empty: `SECRET_KEY=` in a .env means "unset", not "an empty key".
    model_config = SettingsConfigDict(
        env_file=".env", extra="ignore", case_sensitive=False, env_ignore_empty=True
    )

    database_url: str = "sqlite:///./talkstack.db"
    # Unset: generated once and kept in DATA_DIR, with a loud warning (fine for one machine,
    # wrong for several: every process must sign with the same key).
    secret_key: str | None = None
    data_dir: Path = Path("./data")
    public_base_url: str = "http://localhost:8000"

    twilio_account_sid: str | None = None
    twilio_auth_token: str | None = None
    twilio_api_base_url: str = "https://api.twilio.com"
    twilio_timeout_seconds: Annotated[float, Field(gt=0)] = 10.0

    llm_base_url: str = "https://api.openai.com/v1"
    llm_api_key: str | None = None
    llm_model: str = "gpt-4o-mini"
    # A live turn waits this long for the LLM's first token before apologising and hanging up.
    llm_timeout_seconds: Annotated[float, Field(gt=0)] = 15.0
    llm_temperature: Annotated[float, Field(ge=0, le=2)] = 0.4

    # The live conversation (ConversationRelay). The callee's silence is counted from when the
    # agent's speech is estimated to end (its text at CONVERSATION_SPEECH_CHARS_PER_SECOND).
    conversation_silence_seconds: Annotated[float, Field(gt=0)] = 6.0
    conversation_reprompts: Annotated[int, Field(ge=0)] = 2
    conversation_speech_chars_per_second: Annotated[float, Field(gt=0)] = 15.0

    elevenlabs_api_key: str | None = None
    elevenlabs_api_base_url: str = "https://api.elevenlabs.io"
    elevenlabs_cache_ttl_seconds: int = 300

    smtp_host: str | None = None
    smtp_port: int = 587
    smtp_username: str | None = None
    smtp_password: str | None = None
    smtp_from: str = "Talkstack <no-reply@localhost>"
    smtp_starttls: bool = False
    smtp_timeout_seconds: float = 10.0

    # HubSpot (app/hubspot): each project connects its own account with a private-app token.
    hubspot_api_base_url: str = "https://api.hubapi.com"
    hubspot_timeout_seconds: Annotated[float, Field(gt=0)] = 10.0
    redis_url: str | None = None
    webhook_allow_private_hosts: bool = False
    webhook_timeout_seconds: Annotated[float, Field(gt=0)] = 5.0
    # Retries wait 1, 4, 10 and 45 times this (five tries over about an hour).
    webhook_retry_base_seconds: Annotated[float, Field(ge=0)] = 60.0
    # Delivered and dead webhook deliveries (their bodies hold transcripts) are deleted after.
    webhook_delivery_retention_days: Annotated[int, Field(ge=1)] = 30
    batch_calls_per_second: Annotated[float, Field(gt=0)] = 1.0
    batch_max_concurrent_calls: Annotated[int, Field(ge=1)] = 10
    # A batch.dial job dials for this long, then queues its continuation (any worker takes it).
    batch_slice_seconds: Annotated[float, Field(gt=0)] = 20.0
    # Tries of a row whose dial failed with Twilio unreachable (not placed, checked with Twilio).
    batch_dial_max_attempts: Annotated[int, Field(ge=1)] = 5
    batch_retry_base_seconds: Annotated[float, Field(ge=0)] = 5.0

    # Background jobs (app/jobs): run inside each API process, unless a separate
    # `talkstack-worker` process does it.
    run_jobs_in_process: bool = True
    job_concurrency: Annotated[int, Field(ge=1)] = 8
    job_poll_interval_seconds: Annotated[float, Field(gt=0)] = 1.0
    job_lease_seconds: Annotated[float, Field(gt=0)] = 60.0
    job_retry_base_seconds: Annotated[float, Field(ge=0)] = 10.0
    job_shutdown_grace_seconds: Annotated[float, Field(ge=0)] = 10.0

    # Token lifetimes (docs/api/index.md, Authentication).
    access_token_ttl_seconds: int = 2 * 3600
    refresh_token_ttl_seconds: int = 30 * 24 * 3600
    verification_code_ttl_seconds: int = 15 * 60
    verification_max_attempts: int = 5
    reset_token_ttl_seconds: int = 3600
    jwt_algorithm: str = "HS256"

    # Argon2id cost. The defaults are OWASP's; tests lower them to keep CI fast.
    argon2_time_cost: int = 3
    argon2_memory_cost_kib: int = 65536
    argon2_parallelism: int = 4
    password_hash_concurrency: int = 4

    # Abuse limits on the unauthenticated auth endpoints, in `limits` notation.
    rate_limit_per_ip: str = "30/minute"
    rate_limit_per_email: str = "10/minute"
    rate_limit_enabled: bool = True

    log_level: str = "INFO"

    @field_validator("public_base_url")
    @classmethod
    def _strip_slash(cls, v: str) -> str:
        return v.rstrip("/")

    @model_validator(mode="after")
    def _check_secret(self) -> Settings:
        if self.secret_key is not None and len(self.secret_key) < _MIN_SECRET_LEN:
            raise ValueError(
                f"SECRET_KEY must be at least {_MIN_SECRET_LEN} characters; "
                'generate one with: python -c "import secrets; print(secrets.token_urlsafe(48))"'
            )
        return self

    @property
    def async_database_url(self) -> str:
        return to_async_url(self.database_url)

    @property
    def twilio_configured(self) -> bool:
        return bool(self.twilio_account_sid and self.twilio_auth_token)

    def resolved_secret_key(self) -> str:
        """The signing key; generated and persisted in DATA_DIR when SECRET_KEY is unset."""
        if self.secret_key:
            return self.secret_key
        path = self.data_dir / "secret_key"
        if path.exists():
            key = path.read_text().strip()
        else:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            key = secrets.token_urlsafe(48)
            path.touch(mode=0o600)
            path.write_text(key)
        log.warning(
            "SECRET_KEY is not set: using a generated key kept in %s. Set SECRET_KEY in "
            "production, and the same value on every server process.",
            path,
        )
        return key


def to_async_url(url: str) -> str:
    """Map a plain SQLAlchemy URL onto the async driver this server uses."""
    if url.startswith("sqlite:///") or url.startswith("sqlite://"):
        return url.replace("sqlite:", "sqlite+aiosqlite:", 1)
    for prefix in (
        "postgresql://",
        "postgres://",
        "postgresql+asyncpg://",
        "postgresql+psycopg2://",
    ):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


@lru_cache
def get_settings() -> Settings:
    return Settings()
