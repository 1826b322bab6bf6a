"""The fast path for point reads: the one-row, read-only Core SELECT that every authenticated
request makes to find its caller (app/credentials.py), run outside the ORM session and its
transaction.

Why it is worth a module of its own: bench/auth_bench.py, as docs/benchmarks.md ("The cost of
authentication") reports, served 571 and 487 req/s (5% and 4% of the constant-JSON ceiling)
while the lookup went through the ORM session, ~3,100 (28%) once it was one Core query, and
52-55% of the ceiling with the rest of that page's work, this reader included; in-process, the
indexed SQLite lookup is ~9 µs of current_user's ~18 µs. On a SQLite file the read runs right
on the event loop's thread (InlineSQLiteReader); elsewhere through a pooled autocommit
connection (PooledReader).
"""

from __future__ import annotations

import functools
import sqlite3
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import anyio
from sqlalchemy import Select, Uuid, event
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.engine import SQLITE_BUSY_TIMEOUT_MS


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
