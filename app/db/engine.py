"""The engine (SQLite's pragmas and its stand-in for row locks) and the request-scoped session
that owns the transaction."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import ConnectionPoolEntry

from app.errors import AppError

SQLITE_BUSY_TIMEOUT_MS = 5000


def _sqlite_pragmas(dbapi_conn: Any, _: ConnectionPoolEntry) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    # WAL lets readers proceed while one writer commits; busy_timeout waits instead of failing.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cur.close()


def _sqlite_lock_for_update(
    conn: Any, cursor: Any, statement: str, params: Any, context: Any, executemany: bool
) -> None:
    """SELECT ... FOR UPDATE on SQLite: take the database's write lock first.

    SQLite has no row locks and drops FOR UPDATE, and the driver runs a SELECT outside any
    transaction, so a read-modify-write (two Twilio callbacks for one call) could lose an
    update. BEGIN IMMEDIATE makes such transactions take turns, as row locks would on
    PostgreSQL; plain reads are untouched.
    """
    compiled = getattr(context, "compiled", None)
    stmt = getattr(compiled, "statement", None)
    if getattr(stmt, "_for_update_arg", None) is None:
        return
    if not conn.connection.driver_connection.in_transaction:
        cursor.execute("BEGIN IMMEDIATE")


def make_engine(async_url: str, **kwargs: Any) -> AsyncEngine:
    if async_url.startswith("sqlite"):
        # No rollback when a connection returns to the pool: session_scope always ends the
        # transaction itself (commit, or rollback on any error, cancellation included), and on
        # SQLite each such round trip through aiosqlite's thread costs ~20% of a light request.
        kwargs.setdefault("pool_reset_on_return", None)
        engine = create_async_engine(async_url, **kwargs)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        event.listen(engine.sync_engine, "before_cursor_execute", _sqlite_lock_for_update)
        return engine
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 20)
    kwargs.setdefault("pool_pre_ping", True)
    return create_async_engine(async_url, **kwargs)


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


@asynccontextmanager
async def session_scope(maker: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """One transaction per request: commit when the handler returns, roll back on any error."""
    async with maker() as session:
        try:
            yield session
        except AppError as exc:
            # Some refusals must still be recorded (a wrong verification code counts as a try,
            # a reused refresh token revokes its family); they say so with persist=True.
            if exc.persist:
                await session.commit()
            else:
                await session.rollback()
            raise
        except BaseException:
            await session.rollback()
            raise
        else:
            await session.commit()
