"""Who is calling: one Core query per credential, the user's row and the active project's.

Every authenticated request looks its caller up here, by API-key hash (a unique index) or by
user id (the primary key). The same query brings the active project along (a join on its
primary key), so GET /user/get-active-project is answered from it alone, and routes that work
on the ORM user get it from this row too (Caller.user_in): no second query either way.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import and_, bindparam, inspect, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import make_transient_to_detached

from app.db import PointReader
from app.models import Project, User

_users = User.__table__
_projects = Project.__table__

# What ActiveProject holds; the webhook secret stays where it is.
_PROJECT_COLUMNS = (
    "id",
    "user_id",
    "name",
    "description",
    "is_deleted",
    "call_status_webhook",
    "active_agent_id",
    "created_at",
    "updated_at",
)
# Every column of users (an ORM user is made from the row), then the project's, prefixed.
_CALLER = select(
    _users, *(_projects.c[name].label(f"project_{name}") for name in _PROJECT_COLUMNS)
).select_from(
    _users.outerjoin(
        _projects,
        and_(
            _projects.c.id == _users.c.active_project_id,
            _projects.c.user_id == _users.c.id,
            _projects.c.is_deleted.is_(False),
        ),
    )
)
# Built once: constructing a statement costs more than running this one.
_BY_KEY_HASH = _CALLER.where(_users.c.api_key_hash == bindparam("key_hash"))
_BY_ID = _CALLER.where(_users.c.id == bindparam("user_id"))

_USER_ATTRIBUTES = [(attr.key, attr.columns[0].key) for attr in inspect(User).column_attrs]


@dataclass(frozen=True, slots=True)
class ActiveProject:
    """The caller's active project, live and their own, as read with the caller."""

    id: uuid.UUID
    user_id: uuid.UUID
    name: str
    description: str
    is_deleted: bool
    call_status_webhook: str | None
    active_agent_id: uuid.UUID | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Caller:
    """The user a credential belongs to, as one query found them."""

    id: uuid.UUID
    verified: bool
    token_version: int
    # None when no project is active, or the active one was deleted since.
    active_project: ActiveProject | None
    _row: Mapping[str, Any] = field(repr=False, compare=False)

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> Caller:
        m = row
        project = None
        project_id = m["project_id"]
        if project_id is not None:
            project = ActiveProject(
                id=project_id,
                user_id=m["project_user_id"],
                name=m["project_name"],
                description=m["project_description"],
                is_deleted=m["project_is_deleted"],
                call_status_webhook=m["project_call_status_webhook"],
                active_agent_id=m["project_active_agent_id"],
                created_at=m["project_created_at"],
                updated_at=m["project_updated_at"],
            )
        return cls(m["id"], m["verified"], m["token_version"], project, row)

    def user_in(self, session: AsyncSession) -> User:
        """The caller as an ORM object of `session`, made from the row already read: no query.
        Its changes are flushed as usual (UPDATE ... WHERE id)."""
        m = self._row
        user = User(**{attr: m[column] for attr, column in _USER_ATTRIBUTES})
        # As though just loaded: nothing pending, persistent once added.
        make_transient_to_detached(user)
        session.add(user)
        return user


async def caller_by_api_key_hash(reader: PointReader, key_hash: str) -> Caller | None:
    row = await reader.first(_BY_KEY_HASH, {"key_hash": key_hash})
    return None if row is None else Caller.of(row)


async def caller_by_id(reader: PointReader, user_id: uuid.UUID) -> Caller | None:
    row = await reader.first(_BY_ID, {"user_id": user_id})
    return None if row is None else Caller.of(row)
