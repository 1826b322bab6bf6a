"""Engine, declarative base and the request-scoped session that owns the transaction."""

from __future__ import annotations

import functools
import sqlite3
import uuid
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, Protocol

import anyio
from sqlalchemy import DateTime, MetaData, Select, Uuid, event
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.types import TypeDecorator

from app.errors import AppError

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on every backend (SQLite hands back naive datetimes)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class TimestampMixin:
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(
        UTCDateTime(), default=utcnow, onupdate=utcnow, nullable=False
    )


def new_id() -> uuid.UUID:
    return uuid.uuid4()


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


# --- point reads ------------------------------------------------------------------------------


class PointReader(Protocol):
    """Runs a read-only Core SELECT that finds at most one row (the credential lookup that
    every authenticated request makes) outside any ORM session and transaction, and returns
    that row's values by column key."""

    async def first(
        self, query: Select[Any], params: Mapping[str, Any]
    ) -> Mapping[str, Any] | None: ...

    def close(self) -> None: ...


class PooledReader:
    """Through a pooled connection of the async engine, in autocommit mode: no BEGIN, and no
    ROLLBACK when the connection goes back to the pool (which restores its isolation level)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def first(
        self, query: Select[Any], params: Mapping[str, Any]
    ) -> Mapping[str, Any] | None:
        async with self._engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            row = (await conn.execute(query, params)).first()
        return None if row is None else row._mapping

    def close(self) -> None:
        """Nothing of its own to close: the engine's pool holds the connections."""


class InlineSQLiteReader:
    """On a SQLite file: right on the event loop's thread, through one dedicated sqlite3
    connection of its own, in autocommit (each read sees every commit made until then, by any
    process) and read-only (PRAGMA query_only).

    An indexed lookup takes a few microseconds in SQLite itself, while the same statement
    through aiosqlite takes four thread round trips (cursor, execute, fetch, close) and
    SQLAlchemy's greenlet bridge: several times the query. So each query is compiled once by
    SQLAlchemy for the engine's dialect and then run on the sqlite3 connection directly, its
    parameters and values converted by the column types' own bind and result processors, as
    SQLAlchemy's execution would. In WAL mode a reader does not wait for writers; if SQLite
    still answers "busy" (a checkpoint resetting the log, recovery after a crash), this
    connection does not wait (busy_timeout=0): the read is done again in a worker thread, on a
    connection that waits as the engine's own do.
    """

    def __init__(self, path: str, dialect: Dialect) -> None:
        self._path = path
        self._dialect = dialect
        self._conn: sqlite3.Connection | None = None
        self._prepared: dict[Select[Any], _PreparedRead] = {}

    async def first(
        self, query: Select[Any], params: Mapping[str, Any]
    ) -> Mapping[str, Any] | None:
        prepared = self._prepared.get(query)
        if prepared is None:
            prepared = self._prepared[query] = _PreparedRead(query, self._dialect)
        args = prepared.args(params)
        try:
            if self._conn is None:
                self._conn = self._connect(busy_timeout_ms=0)
            # fetchall: the statement runs to its end, so no read transaction stays open.
            rows = self._conn.execute(prepared.sql, args).fetchall()
        except sqlite3.OperationalError as exc:
            self.close()
            if not _sqlite_busy(exc):
                raise
            rows = await anyio.to_thread.run_sync(self._fetch_waiting, prepared.sql, args)
        return prepared.values(rows[0]) if rows else None

    def _connect(self, *, busy_timeout_ms: int) -> sqlite3.Connection:
        # check_same_thread=False: the loop's thread uses it, dispose() may close it elsewhere.
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
        conn.execute("PRAGMA query_only=ON")
        return conn

    def _fetch_waiting(self, sql: str, args: list[Any]) -> list[Any]:
        conn = self._connect(busy_timeout_ms=SQLITE_BUSY_TIMEOUT_MS)
        try:
            return conn.execute(sql, args).fetchall()
        finally:
            conn.close()

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


class _PreparedRead:
    """A SELECT compiled once for a positional-parameter dialect (SQLite's qmark), with the
    bind processors of its parameters and the result processors of its columns."""

    def __init__(self, query: Select[Any], dialect: Dialect) -> None:
        compiled = query.compile(dialect=dialect)
        names = compiled.positiontup
        if names is None:
            raise ValueError(f"{dialect.name} does not take positional parameters")
        self.sql = str(compiled)
        self._binds: list[tuple[str, Any, Callable[[Any], Any] | None]] = []
        for name in names:
            bind = compiled.binds[name]
            if bind.expanding or bind.literal_execute:
                raise ValueError(f"parameter {name!r} is rendered at execution time")
            processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
            self._binds.append((name, bind.effective_value, processor))
        # Each column's position and result processor, by key.
        self.columns: dict[str, tuple[int, Callable[[Any], Any] | None]] = {}
        for position, column in enumerate(query.selected_columns):
            if column.key is None:
                raise ValueError(f"column {column} has no key")
            processor = column.type.dialect_impl(dialect).result_processor(dialect, None)
            if processor is not None and isinstance(column.type, Uuid):
                # The same few ids come back on every request (the caller's, their active
                # project's): a bounded memo of the immutable UUIDs skips parsing them again.
                processor = functools.lru_cache(maxsize=4096)(processor)
            self.columns[column.key] = (position, processor)

    def args(self, params: Mapping[str, Any]) -> list[Any]:
        args = []
        for name, default, processor in self._binds:
            value = params.get(name, default)
            args.append(value if processor is None else processor(value))
        return args

    def values(self, raw: Sequence[Any]) -> PointRow:
        return PointRow(self.columns, raw)


class PointRow(Mapping[str, Any]):
    """A row as SQLite gave it, each value converted (UUID, datetime...) when it is read: a
    caller reads a dozen of the two dozen columns the lookup brings."""

    __slots__ = ("_columns", "_raw")

    def __init__(
        self, columns: Mapping[str, tuple[int, Callable[[Any], Any] | None]], raw: Sequence[Any]
    ) -> None:
        self._columns = columns
        self._raw = raw

    def __getitem__(self, key: str) -> Any:
        position, processor = self._columns[key]
        value = self._raw[position]
        return value if processor is None else processor(value)

    def __iter__(self) -> Iterator[str]:
        return iter(self._columns)

    def __len__(self) -> int:
        return len(self._columns)


def _sqlite_busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


_inline_readers: weakref.WeakKeyDictionary[Engine, InlineSQLiteReader] = weakref.WeakKeyDictionary()


def point_reader(engine: AsyncEngine) -> PointReader:
    """The engine's point reader. On a SQLite file, one per engine, made on first use; its
    connection is closed when the engine is disposed (and opened again if it is used after)."""
    url = engine.url
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:") or url.query:
        return PooledReader(engine)
    reader = _inline_readers.get(engine.sync_engine)
    if reader is None:
        reader = InlineSQLiteReader(url.database, engine.dialect)
        _inline_readers[engine.sync_engine] = reader
        event.listen(engine.sync_engine, "engine_disposed", _closer(reader))
    return reader


def _closer(reader: PointReader) -> Callable[[Engine], None]:
    return lambda _: reader.close()
