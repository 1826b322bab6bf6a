"""What the lifespan builds once and every request shares.

Each outside system is held as the Protocol the app uses (app/integrations/): the adapters
built by app/main.py build_context, or, for telephony without credentials, the stand-in
(port.NoTelephony)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.config import Settings
from app.integrations.elevenlabs import Voices
from app.integrations.llm import ChatModel
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
    voices: Voices
    llm: ChatModel
    tool_webhooks: ToolCaller
    # The in-process job worker (None when RUN_JOBS_IN_PROCESS=false: a separate
    # `talkstack-worker` runs the jobs).
    worker: JobWorker | None = None
