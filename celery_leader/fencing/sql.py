"""Fenced SQL writes with SQLAlchemy Core: a row is written only by a token >= its stored one.

The table keeps the highest token that wrote each row in a ``BIGINT`` column
(``fence_token`` by default; :func:`fence_column` makes one), and the key columns carry a
primary key or unique constraint. :func:`fenced_write` then writes a row in one atomic
conditional statement:

* PostgreSQL and SQLite: ``INSERT ... ON CONFLICT (key) DO UPDATE SET ..., fence_token =
  excluded.fence_token WHERE table.fence_token <= excluded.fence_token RETURNING fence_token``:
  inserted if absent, updated if the stored token is not higher, otherwise no row comes back;
* MariaDB / MySQL: ``INSERT ... ON DUPLICATE KEY UPDATE body = IF(fence_token <= :t,
  VALUES(body), body), ..., fence_token = IF((@seen := fence_token) <= :t, :t,
  fence_token)``: the same decision in one statement; the old token is caught in a session
  variable, read right after, because MySQL's affected-rows count cannot tell a refusal
  from an insert. Only when the key is the only unique key the ``Table`` declares among
  the written columns: that statement updates the row of *any* duplicate key, so a value
  colliding with another row's unique column would overwrite that row (such tables take
  the generic path below; declare every unique constraint on the ``Table``). (An ``UPDATE`` followed by an ``INSERT`` deadlocks there at the default
  REPEATABLE READ: both racing writers hold the gap lock of the absent key.)
* any other database: ``UPDATE ... SET ..., fence_token = :t WHERE key = ... AND
  fence_token <= :t``; when no row matched, ``INSERT`` in a savepoint; a duplicate key
  there means another writer created the row first, and the ``UPDATE`` is tried again.

Either way the decision "write or refuse" is taken by the database on the row itself,
under its row lock, so two writers racing always leave the higher token's values. The
write joins the connection's transaction: commit as usual. A refused write raises
:class:`~celery_leader.errors.StaleTokenError` and changes nothing.

::

    import sqlalchemy as sa
    from celery_leader.fencing.sql import fence_column, fenced_write

    reports = sa.Table("reports", meta, sa.Column("name", sa.String(64), primary_key=True),
                       sa.Column("body", sa.Text), fence_column())

    def work(leadership):
        with engine.begin() as conn:
            fenced_write(conn, reports, {"name": "daily"}, {"body": text}, leadership.token)

A row whose token is ``NULL`` (written before fencing was added) accepts any token.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

from . import TOKEN_COLUMN, check_token, stale

__all__ = ["fenced_write", "fence_column", "stored_token"]

log = logging.getLogger(__name__)

#: dialects written in one statement; any other takes the UPDATE-then-INSERT path
ONE_STATEMENT = frozenset({"postgresql", "sqlite", "mysql", "mariadb"})
#: a concurrent delete/insert can send the MySQL path round again; more than this is a bug
_ATTEMPTS = 5


def fence_column(name: str = TOKEN_COLUMN) -> Any:
    """A ``BIGINT`` column for the token (nullable: rows written before fencing accept any token)."""
    import sqlalchemy as sa

    return sa.Column(name, sa.BigInteger, nullable=True)


def _where_key(table: Any, key: Mapping[str, Any]) -> Any:
    import sqlalchemy as sa

    return sa.and_(*(table.c[name] == value for name, value in key.items()))


def stored_token(conn: Any, table: Any, key: Mapping[str, Any], *, token_column: str = TOKEN_COLUMN) -> int | None:
    """The token stored in the row at ``key`` (``None``: no row, or never fenced)."""
    import sqlalchemy as sa

    value = conn.execute(sa.select(table.c[token_column]).where(_where_key(table, key))).scalar()
    return None if value is None else int(value)


def _check(table: Any, key: Mapping[str, Any], values: Mapping[str, Any], token_column: str) -> None:
    if not key:
        raise ValueError("fenced_write needs the key columns that identify the row, e.g. {'name': 'daily'}")
    missing = [name for name in (*key, *values, token_column) if name not in table.c]
    if missing:
        raise ValueError(f"table {table.name!r} has no column {missing[0]!r}"
                         + (f" (add one with fence_column({token_column!r}))" if missing[0] == token_column else ""))
    clash = [name for name in values if name in key or name == token_column]
    if clash:
        raise ValueError(f"fenced_write: {clash[0]!r} is a key or the token column; it cannot be in values")


def fenced_write(conn: Any, table: Any, key: Mapping[str, Any], values: Mapping[str, Any], token: Any, *,
                 token_column: str = TOKEN_COLUMN) -> None:
    """Insert or update the row at ``key`` with ``values`` unless a higher token wrote it.

    ``conn`` is a SQLAlchemy ``Connection`` (the write joins its transaction), ``table`` a
    ``Table`` whose ``key`` columns are unique. Raises ``StaleTokenError`` when refused.
    """
    value = check_token(token)
    _check(table, key, values, token_column)
    name = conn.dialect.name
    if name in ONE_STATEMENT and (name not in ("mysql", "mariadb") or _key_is_the_only_unique(table, key, values,
                                                                                             token_column)):
        written = _upsert_mysql(conn, table, key, values, value, token_column) if name in ("mysql", "mariadb") \
            else _upsert(conn, table, key, values, value, token_column, name)
        if written:
            return
    else:
        for _ in range(_ATTEMPTS):
            if _update(conn, table, key, values, value, token_column):
                return
            if _insert(conn, table, key, values, value, token_column):
                return
            seen = stored_token(conn, table, key, token_column=token_column)
            if seen is not None and seen > value:
                break
            # the row appeared (or went) between our UPDATE and INSERT: decide again on it
        else:
            raise RuntimeError(f"fenced_write on {table.name!r}: the row kept changing under {_ATTEMPTS} attempts")
    seen = stored_token(conn, table, key, token_column=token_column)
    log.warning("refused a stale write to %s %s: token %s < %s", table.name, dict(key), value, seen)
    raise stale(f"table {table.name!r} row {dict(key)!r}", value, seen)


def _key_is_the_only_unique(table: Any, key: Mapping[str, Any], values: Mapping[str, Any], token_column: str) -> bool:
    """Can the MySQL upsert only conflict on ``key``? ON DUPLICATE KEY UPDATE fires on *any*
    unique key, so a value colliding with another row's unique column would update that
    row. Judged from the constraints the ``Table`` declares."""
    import sqlalchemy as sa

    inserted = {*key, *values, token_column}
    groups = [{c.name for c in table.primary_key.columns}]
    groups += [{c.name} for c in table.columns if c.unique]
    groups += [{c.name for c in con.columns} for con in table.constraints if isinstance(con, sa.UniqueConstraint)]
    groups += [{c.name for c in index.columns} for index in table.indexes if index.unique]
    return all(group == set(key) for group in groups if group and group <= inserted)


def _fence_ok(table: Any, token_column: str, token: Any) -> Any:
    import sqlalchemy as sa

    column = table.c[token_column]
    return sa.or_(column.is_(None), column <= token)


def _upsert(conn: Any, table: Any, key: Mapping[str, Any], values: Mapping[str, Any], token: int,
            token_column: str, dialect: str) -> bool:
    from sqlalchemy.dialects import postgresql, sqlite

    insert: Any = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt: Any = insert(table).values({**key, **values, token_column: token})
    stmt = stmt.on_conflict_do_update(
        index_elements=[table.c[name] for name in key],
        set_={**{name: stmt.excluded[name] for name in values}, token_column: stmt.excluded[token_column]},
        where=_fence_ok(table, token_column, stmt.excluded[token_column]),
    ).returning(table.c[token_column])
    # a row comes back when inserted or updated, none when the WHERE refused (rowcount is
    # not reliable here: SQLAlchemy reports -1 for some drivers)
    return conn.execute(stmt).first() is not None


#: session variable that catches the stored token inside the MySQL upsert (-1: inserted)
_SEEN_VAR = "@celery_leader_fence_seen"


def _upsert_mysql(conn: Any, table: Any, key: Mapping[str, Any], values: Mapping[str, Any], token: int,
                  token_column: str) -> bool:
    import sqlalchemy as sa
    from sqlalchemy.dialects.mysql import insert

    column = table.c[token_column]
    quoted = conn.dialect.identifier_preparer.quote(token_column)
    stmt = insert(table).values({**key, **values, token_column: token})
    new = stmt.inserted[token_column]
    ok = sa.or_(column.is_(None), column <= new)
    # the token column is assigned last: earlier assignments still see the stored token
    updates = [(name, sa.func.IF(ok, stmt.inserted[name], table.c[name])) for name in values]
    caught = sa.or_(sa.literal_column(f"({_SEEN_VAR} := {quoted})").is_(None), column <= new)
    updates.append((token_column, sa.func.IF(caught, new, column)))
    conn.execute(sa.text(f"SET {_SEEN_VAR} = -1"))
    conn.execute(stmt.on_duplicate_key_update(updates))
    seen = conn.execute(sa.text(f"SELECT {_SEEN_VAR}")).scalar()
    return seen is None or int(seen) <= token


def _update(conn: Any, table: Any, key: Mapping[str, Any], values: Mapping[str, Any], token: int,
            token_column: str) -> bool:
    stmt = (table.update().where(_where_key(table, key), _fence_ok(table, token_column, token))
            .values({**values, token_column: token}))
    # MySQL dialects of SQLAlchemy connect with CLIENT_FOUND_ROWS: rowcount counts matched rows
    return conn.execute(stmt).rowcount >= 1


def _insert(conn: Any, table: Any, key: Mapping[str, Any], values: Mapping[str, Any], token: int,
            token_column: str) -> bool:
    import sqlalchemy as sa

    try:
        with conn.begin_nested():
            conn.execute(table.insert().values({**key, **values, token_column: token}))
    except sa.exc.IntegrityError:
        exists = conn.execute(sa.select(sa.literal(1)).select_from(table).where(_where_key(table, key))).first()
        if exists is None:
            raise  # not a duplicate key: a constraint of the user's values
        return False
    return True
