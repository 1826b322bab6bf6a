"""create_app(): the lifespan builds the engine and adapters; routers; error handlers; docs."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import fastapi_offline
from fastapi import Depends, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy import text

from app.agent.router import router as agent_router
from app.auth.router import pages as auth_pages
from app.auth.router import protected as auth_protected
from app.auth.router import public as auth_public
from app.batch.router import router as batch_router
from app.call.router import router as call_router
from app.config import Settings, get_settings
from app.context import AppContext
from app.db import make_engine, make_sessionmaker
from app.deps import current_user
from app.errors import NotConfigured, install_error_handlers
from app.hubspot.router import router as hubspot_router
from app.integrations.elevenlabs import build_voice_catalogue
from app.integrations.llm import build_language_model
from app.integrations.smtp import build_mailer
from app.integrations.twilio.port import build_telephony
from app.integrations.webhooks.tools import ToolWebhooks
from app.openapi import correct_openapi
from app.phone_number.router import router as phone_number_router
from app.project.router import router as project_router
from app.ratelimit import AuthRateLimiter
from app.schemas import ErrorBody, MessageOut
from app.security import PasswordHasher, TokenSigner
from app.tasks import running_worker
from app.user.router import router as user_router
from app.voice.router import router as voice_router
from app.web.routing import include_flat
from app.web.twilio import router as twilio_router

log = logging.getLogger("talkstack")

_DOCS_ASSETS = Path(fastapi_offline.__file__).parent / "static"

DESCRIPTION = """
A self-hostable, Talkstack-compatible API for AI phone agents on Twilio.

Authenticate with **Authorize**: paste an access token from `/auth/login` into `bearerAuth`,
or an API key from `/user/generate-apikey` into `apiKeyAuth`. Every error answers
`{"message", "status": "error", "code"}` (plus `errors` for invalid fields).
"""


# The sections of the docs page, in this order.
TAGS = [
    {"name": "ops", "description": "Liveness and readiness."},
    {"name": "auth", "description": "Accounts, tokens and passwords."},
    {"name": "twilio", "description": "Twilio's webhooks to this server (signed by Twilio)."},
    {"name": "user", "description": "API keys and the active project."},
    {"name": "project", "description": "Projects, their webhook and their active agent."},
    {"name": "agent", "description": "Agents: a system prompt and a voice."},
    {"name": "phone-number", "description": "Twilio numbers given to agents."},
    {"name": "batch", "description": "Calls placed from a spreadsheet."},
    {"name": "call", "description": "Placing calls, their history and analysis."},
    {"name": "voices", "description": "The voice catalogue."},
    {"name": "hubspot", "description": "Every finished call in HubSpot."},
]


def build_context(settings: Settings) -> AppContext:
    engine = make_engine(settings.async_database_url)
    return AppContext(
        settings=settings,
        engine=engine,
        sessionmaker=make_sessionmaker(engine),
        hasher=PasswordHasher(settings),
        signer=TokenSigner(
            settings.resolved_secret_key(),
            algorithm=settings.jwt_algorithm,
            ttl_seconds=settings.access_token_ttl_seconds,
        ),
        mailer=build_mailer(settings),
        limiter=AuthRateLimiter(settings),
        telephony=build_telephony(settings),
        voices=build_voice_catalogue(settings),
        llm=build_language_model(settings),
        tool_webhooks=ToolWebhooks(settings),
    )


@asynccontextmanager
async def open_context(settings: Settings) -> AsyncIterator[AppContext]:
    """The context, closed on exit; shared by the API's lifespan and `talkstack-worker`."""
    ctx = build_context(settings)
    try:
        yield ctx
    finally:
        await ctx.telephony.aclose()
        await ctx.voices.aclose()
        await ctx.llm.aclose()
        await ctx.tool_webhooks.aclose()
        await ctx.limiter.aclose()
        await ctx.engine.dispose()


def _docs_routes(app: FastAPI) -> None:
    # Swagger UI and ReDoc from files this server serves: the docs work with no internet.
    app.mount("/docs-assets", StaticFiles(directory=_DOCS_ASSETS), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}/openapi.json",
            title="Talkstack API",
            swagger_js_url=f"{root}/docs-assets/swagger-ui-bundle.js",
            swagger_css_url=f"{root}/docs-assets/swagger-ui.css",
            swagger_favicon_url=f"{root}/docs-assets/favicon.png",
            swagger_ui_parameters={"persistAuthorization": True},
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}/openapi.json",
            title="Talkstack API",
            redoc_js_url=f"{root}/docs-assets/redoc.standalone.js",
            redoc_favicon_url=f"{root}/docs-assets/favicon.png",
            with_google_fonts=False,
        )


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_context(settings) as ctx, AsyncExitStack() as jobs:
            app.state.ctx = ctx
            if not settings.twilio_configured:
                log.warning(
                    "TWILIO_ACCOUNT_SID / TWILIO_AUTH_TOKEN are not set: "
                    "telephony endpoints answer 503."
                )
            if settings.run_jobs_in_process:
                # Stopped (running jobs finished or handed back) before the engine is disposed.
                ctx.worker = await jobs.enter_async_context(running_worker(ctx))
            # What startup built (modules, models, catalogues) lives as long as the process:
            # out of the collector's sight, a full collection no longer pauses live calls.
            gc.collect()
            gc.freeze()
            try:
                yield
            finally:
                gc.unfreeze()

    app = FastAPI(
        title="Talkstack API",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        responses={500: {"model": ErrorBody, "description": "Internal error"}},
        openapi_tags=TAGS,
    )
    install_error_handlers(app)
    # Requests are matched against the routes in order, so the routes most requests take come
    # first: the authenticated API, then Twilio's callbacks, then the rest. (The docs list
    # the tags in TAGS order whatever the order of the routes.)
    # Everything here is protected by default: a router added here needs a credential.
    for router in (
        user_router,
        call_router,
        project_router,
        agent_router,
        phone_number_router,
        batch_router,
        voice_router,
        hubspot_router,
        auth_protected,
    ):
        include_flat(app, router, dependencies=[Depends(current_user)])
    # Twilio's callbacks: no user credential, each request proves itself with its signature.
    include_flat(app, twilio_router)
    include_flat(app, auth_public)
    include_flat(app, auth_pages)

    @app.get("/health", tags=["ops"], response_model=MessageOut)
    async def health() -> MessageOut:
        """Liveness: the process answers."""
        return MessageOut(message="ok")

    @app.get(
        "/ready",
        tags=["ops"],
        response_model=MessageOut,
        responses={503: {"model": ErrorBody, "description": "Database unreachable"}},
    )
    async def ready(request: Request) -> MessageOut:
        """Readiness: the database answers."""
        ctx: AppContext = request.app.state.ctx
        try:
            async with ctx.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception as exc:
            log.error("readiness check failed: %s", exc)
            raise NotConfigured(
                "The database is not reachable.", code="DATABASE_UNAVAILABLE"
            ) from exc
        return MessageOut(message="ready")

    _docs_routes(app)
    correct_openapi(app)
    return app
