"""What the lifespan builds once and every request shares."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.config import Settings
from app.conversation.llm import LanguageModel
from app.conversation.tools import ToolWebhooks
from app.jobs.worker import JobWorker
from app.mail import Mailer
from app.ratelimit import AuthRateLimiter
from app.security import PasswordHasher, TokenSigner
from app.telephony.twilio import TwilioAdapter
from app.voice.catalogue import VoiceCatalogue


@dataclass
class AppContext:
    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    hasher: PasswordHasher
    signer: TokenSigner
    mailer: Mailer
    limiter: AuthRateLimiter
    telephony: TwilioAdapter | None
    voices: VoiceCatalogue
    llm: LanguageModel
    tool_webhooks: ToolWebhooks
    # The in-process job worker (None when RUN_JOBS_IN_PROCESS=false: a separate
    # `talkstack-worker` runs the jobs).
    worker: JobWorker | None = None
