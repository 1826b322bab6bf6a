"""What the lifespan builds once and every request shares."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.config import Settings
from app.integrations.elevenlabs import VoiceCatalogue
from app.integrations.llm import LanguageModel
from app.integrations.smtp import Mailer
from app.integrations.twilio.port import Telephony
from app.integrations.webhooks.tools import ToolCaller
from app.jobs.worker import JobWorker
from app.ratelimit import AuthRateLimiter
from app.security import PasswordHasher, TokenSigner


@dataclass
class AppContext:
    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    hasher: PasswordHasher
    signer: TokenSigner
    mailer: Mailer
    limiter: AuthRateLimiter
    telephony: Telephony  # port.NoTelephony when Twilio is not configured
    voices: VoiceCatalogue
    llm: LanguageModel
    tool_webhooks: ToolCaller
    # The in-process job worker (None when RUN_JOBS_IN_PROCESS=false: a separate
    # `talkstack-worker` runs the jobs).
    worker: JobWorker | None = None
