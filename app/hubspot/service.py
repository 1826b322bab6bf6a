"""A project's HubSpot connection: connect, status, disconnect, and contacts for makeCall.

The private-app token is checked with HubSpot before it is stored, stored encrypted (Fernet,
with a key derived from SECRET_KEY) and never returned or logged.
"""

from __future__ import annotations

import base64
import logging
import uuid
from collections.abc import Collection

from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.context import AppContext
from app.db import utcnow
from app.integrations.hubspot import client as hs
from app.integrations.hubspot.errors import (
    HubSpotContactHasNoNumber,
    HubSpotContactNotFound,
    HubSpotNotConnected,
    HubSpotTokenInvalid,
    HubSpotUpstreamError,
)
from app.models import Call, HubSpotConnection, Project
from app.models.hubspot_connection import (  # defined with the columns they fill
    ConnectionStatus as ConnectionStatus,
)
from app.models.hubspot_connection import (
    SyncResult as SyncResult,
)

log = logging.getLogger("talkstack.hubspot")


# Contact properties reach prompts as {{hubspot.<property>}}.
VARIABLE_PREFIX = "hubspot."
REVOKED_MESSAGE = (
    "HubSpot refused the project's access token (revoked?): connect again with "
    "/hubspot/connect and a valid token."
)
UNREADABLE_MESSAGE = (
    "The stored HubSpot token cannot be decrypted (SECRET_KEY changed since it was stored): "
    "connect again with /hubspot/connect."
)


def _fernet(ctx: AppContext) -> Fernet:
    return Fernet(base64.urlsafe_b64encode(ctx.signer.derive_key(b"hubspot-access-token")))


def encrypt_token(ctx: AppContext, token: str) -> str:
    return _fernet(ctx).encrypt(token.encode()).decode()


def decrypt_token(ctx: AppContext, connection: HubSpotConnection) -> str | None:
    """The token in clear; None if it cannot be decrypted (SECRET_KEY changed since)."""
    try:
        return _fernet(ctx).decrypt(connection.encrypted_token.encode()).decode()
    except InvalidToken:
        return None


def client_for(ctx: AppContext, token: str) -> hs.CRM:
    settings = ctx.settings
    return hs.HubSpotClient(
        token, base_url=settings.hubspot_api_base_url, timeout=settings.hubspot_timeout_seconds
    )


async def get_connection(
    session: AsyncSession, project_id: uuid.UUID, *, lock: bool = False
) -> HubSpotConnection | None:
    query = select(HubSpotConnection).where(HubSpotConnection.project_id == project_id)
    if lock:
        query = query.with_for_update()
    return (await session.execute(query)).scalar_one_or_none()


async def connect(
    ctx: AppContext, session: AsyncSession, *, project: Project, access_token: str
) -> HubSpotConnection:
    """Check the token with HubSpot, then store it (replacing any earlier connection)."""
    try:
        portal_id = await client_for(ctx, access_token).portal_id()
    except (hs.HubSpotUnauthorized, hs.HubSpotRejected) as exc:
        raise HubSpotTokenInvalid(
            "HubSpot refused the access token: give the token of a HubSpot private app "
            f"(Settings → Integrations → Private apps). HubSpot said: {exc.message}"
        ) from exc
    except hs.HubSpotError as exc:
        log.warning("checking a HubSpot token for project %s failed: %s", project.id, exc)
        raise HubSpotUpstreamError(
            f"HubSpot could not check the access token; try again later. ({exc.message})"
        ) from exc
    encrypted = encrypt_token(ctx, access_token)
    connection = await get_connection(session, project.id, lock=True)
    if connection is None:
        connection = HubSpotConnection(
            project_id=project.id, encrypted_token=encrypted, portal_id=portal_id
        )
        try:
            async with session.begin_nested():
                session.add(connection)
        except IntegrityError:  # connected at the same moment by another request
            connection = await get_connection(session, project.id, lock=True)
            assert connection is not None
    if connection.portal_id != portal_id:
        # Another HubSpot account: the ids kept on calls name objects of the old one.
        await _forget_hubspot_ids(session, project.id)
    connection.encrypted_token = encrypted
    connection.portal_id = portal_id
    connection.status = ConnectionStatus.CONNECTED
    connection.connected_at = utcnow()
    connection.last_sync_at = None
    connection.last_sync_result = None
    connection.last_sync_call_sid = None
    connection.last_sync_error = None
    connection.updated_at = utcnow()
    await session.flush()
    log.info("project %s connected HubSpot portal %s", project.id, portal_id)
    return connection


async def disconnect(session: AsyncSession, *, project: Project) -> bool:
    """Forget the token; whether there was one."""
    connection = await get_connection(session, project.id, lock=True)
    if connection is None:
        return False
    await session.delete(connection)
    await _forget_hubspot_ids(session, project.id)
    await session.flush()
    log.info("project %s disconnected HubSpot", project.id)
    return True


async def _forget_hubspot_ids(session: AsyncSession, project_id: uuid.UUID) -> None:
    await session.execute(
        update(Call)
        .where(
            Call.project_id == project_id,
            (Call.hubspot_contact_id.is_not(None)) | (Call.hubspot_call_id.is_not(None)),
        )
        .values(hubspot_contact_id=None, hubspot_call_id=None)
        .execution_options(synchronize_session=False)
    )


def mark_broken(connection: HubSpotConnection, reason: str, call_sid: str | None = None) -> None:
    connection.status = ConnectionStatus.BROKEN
    record_result(connection, SyncResult.ERROR, reason, call_sid)


def record_result(
    connection: HubSpotConnection,
    result: SyncResult,
    error: str | None,
    call_sid: str | None = None,
) -> None:
    now = utcnow()
    connection.last_sync_at = now
    connection.last_sync_result = result
    connection.last_sync_error = error
    if call_sid is not None:
        connection.last_sync_call_sid = call_sid
    connection.updated_at = now


async def usable_client(
    ctx: AppContext, session: AsyncSession, project_id: uuid.UUID
) -> tuple[HubSpotConnection, hs.CRM]:
    """The project's connection and a client with its token; 400 if there is none that works."""
    connection = await get_connection(session, project_id)
    if connection is None:
        raise HubSpotNotConnected()
    if connection.status != ConnectionStatus.CONNECTED:
        raise HubSpotNotConnected(REVOKED_MESSAGE)
    token = decrypt_token(ctx, connection)
    if token is None:
        mark_broken(connection, UNREADABLE_MESSAGE)
        raise HubSpotNotConnected(UNREADABLE_MESSAGE, persist=True)
    return connection, client_for(ctx, token)


async def resolve_contact(
    ctx: AppContext,
    session: AsyncSession,
    *,
    project: Project,
    contact_id: str,
    properties: Collection[str] = (),
) -> tuple[str, dict[str, str]]:
    """A HubSpot contact of the project's account, for a call: its number in E.164 (phone,
    else mobile phone) and its properties as `hubspot.<property>` variables.

    `properties` names properties to fetch besides the usual ones (those a prompt uses).
    Refusals: 400 not connected or no valid number, 404 no such contact, 502 HubSpot failed.
    A revoked token marks the connection broken; that change is kept even though the request
    fails (persist=True), so the caller's transaction must commit on AppError.persist.
    """
    connection, client = await usable_client(ctx, session, project.id)
    contact_id = contact_id.strip()
    if not contact_id.isdigit():  # HubSpot's ids are numbers: anything else names nothing
        raise HubSpotContactNotFound()
    try:
        contact = await client.get_contact(contact_id, properties)
    except hs.HubSpotNotFound as exc:
        raise HubSpotContactNotFound() from exc
    except hs.HubSpotUnauthorized as exc:
        mark_broken(connection, exc.message)
        await session.flush()
        raise HubSpotNotConnected(REVOKED_MESSAGE, persist=True) from exc
    except hs.HubSpotError as exc:
        log.warning("reading HubSpot contact for project %s failed: %s", project.id, exc)
        raise HubSpotUpstreamError(
            f"HubSpot could not give the contact; try again later. ({exc.message})"
        ) from exc
    numbers = contact.numbers()
    if not numbers:
        raise HubSpotContactHasNoNumber()
    variables = {
        f"{VARIABLE_PREFIX}{name}": value
        for name, value in contact.properties.items()
        if value is not None
    }
    return numbers[0], variables
