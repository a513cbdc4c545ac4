"""Fenced writes with the Django ORM: a row is written only by a token >= its stored one.

Give the model a token field and a unique key, with the mixin::

    from celery_leader.fencing.django import FencedModel

    class Report(FencedModel):          # adds fence_token = BigIntegerField(null=True)
        name = models.CharField(max_length=64, unique=True)
        body = models.TextField()

    def work(leadership):
        Report.objects.fenced_write(leadership.token, {"body": text}, name="daily")

or call :func:`fenced_write` on any model that has a ``BigIntegerField`` for the token.

The decision is one statement on the row, taken under the database's row lock, as in
:mod:`celery_leader.fencing.sql`:

* PostgreSQL, SQLite: ``INSERT ... ON CONFLICT (key) DO UPDATE SET ... WHERE
  fence_token <= excluded.fence_token RETURNING fence_token``;
* MariaDB/MySQL: ``INSERT ... ON DUPLICATE KEY UPDATE col = IF(fence_token <= t, ...)``
  with the old token caught in a session variable, when the key is the only unique key
  the INSERT could hit (that statement updates the row of *any* duplicate key, so a value
  colliding with another row's unique column would overwrite that row);
* other databases (and multi-table inheritance, and MariaDB/MySQL models with another
  unique key): ``UPDATE ... WHERE key AND
  (fence_token <= t OR fence_token IS NULL)``, then, when no row matched, the row is
  created in a savepoint and a unique-key error sends it back to the ``UPDATE``.

The row's other fields get their defaults on insert, as ``create()`` gives them. A
refused write raises :class:`~celery_leader.errors.StaleTokenError` and changes nothing.
Like ``QuerySet.update()``, it does not call ``save()`` or send model signals.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

from django.db import IntegrityError, connections, models, router, transaction

from . import TOKEN_COLUMN, check_token, stale

__all__ = ["FencedModel", "FencedQuerySet", "fenced_write"]

log = logging.getLogger(__name__)

_ATTEMPTS = 5


def fenced_write(model: Any, token: Any, values: Mapping[str, Any] | None = None, *, using: str | None = None,
                 token_field: str = TOKEN_COLUMN, **key: Any) -> None:
    """Update (or create) the row of ``model`` identified by ``key`` unless a higher token wrote it.

    ``model`` is a model class or a queryset; ``key`` must match at most one row (a unique
    field or ``unique_together``). Raises ``StaleTokenError`` when refused.
    """
    value = check_token(token)
    queryset = model if isinstance(model, models.QuerySet) else model._default_manager.all()
    model_cls = queryset.model
    values = dict(values or {})
    if not key:
        raise ValueError("fenced_write needs the key that identifies the row, e.g. name='daily'")
    fields = {f.name for f in model_cls._meta.concrete_fields} | {f.attname for f in model_cls._meta.concrete_fields}
    if token_field not in fields:
        raise ValueError(f"{model_cls.__name__} has no field {token_field!r}: add "
                         f"{token_field} = models.BigIntegerField(null=True) or use FencedModel")
    if "pk" in key and "pk" not in fields:  # Django's alias: the upsert needs the real column
        key = {(model_cls._meta.pk.name if name == "pk" else name): v for name, v in key.items()}
    lookups = [name for name in key if name not in fields]
    if lookups:
        raise ValueError(f"fenced_write: {lookups[0]!r} is not a field of {model_cls.__name__}; the key must name "
                         "the unique field(s) of the row (name='daily', pk=3), not a lookup")
    clash = [name for name in values if name in key or name == token_field]
    if clash:
        raise ValueError(f"fenced_write: {clash[0]!r} is a key or the token field; it cannot be in values")
    db = using or queryset._db or router.db_for_write(model_cls)  # objects.using(alias) counts
    queryset = queryset.using(db)
    connection = connections[db]
    one_statement = connection.vendor in ("postgresql", "sqlite") or (
        connection.vendor == "mysql" and _key_is_the_only_unique(model_cls, key)
    )
    if one_statement and not model_cls._meta.parents:
        if _upsert(connection, model_cls, key, values, value, token_field):
            return
        seen = queryset.filter(**key).values_list(token_field, flat=True).first()
        log.warning("refused a stale write to %s %s: token %s < %s", model_cls.__name__, key, value, seen)
        raise stale(f"{model_cls.__name__} {key!r}", value, seen)
    ok = models.Q(**{f"{token_field}__isnull": True}) | models.Q(**{f"{token_field}__lte": value})
    for _ in range(_ATTEMPTS):
        if queryset.filter(ok, **key).update(**values, **{token_field: value}):
            return
        try:
            with transaction.atomic(using=db):
                queryset.create(**key, **values, **{token_field: value})
            return
        except IntegrityError:
            if not queryset.filter(**key).exists():
                raise  # not a duplicate key: a constraint of the values themselves
        seen = queryset.filter(**key).values_list(token_field, flat=True).first()
        if seen is not None and seen > value:
            log.warning("refused a stale write to %s %s: token %s < %s", model_cls.__name__, key, value, seen)
            raise stale(f"{model_cls.__name__} {key!r}", value, seen)
        # the row appeared or went between the UPDATE and the INSERT: decide again on it
    raise RuntimeError(f"fenced_write on {model_cls.__name__}: the row kept changing under {_ATTEMPTS} attempts")


def _key_is_the_only_unique(model: Any, key: Mapping[str, Any]) -> bool:
    """Can the MySQL upsert only conflict on ``key``? (ON DUPLICATE KEY UPDATE fires on *any*
    unique key: a value colliding with another row's unique column would update that row.)"""
    meta = model._meta
    inserted = {f.name for f in meta.local_concrete_fields if f is not meta.auto_field or f.name in key}
    names = {meta.get_field(name).name for name in key}
    uniques = [{f.name} for f in meta.local_concrete_fields if f.unique]
    uniques += [set(group) for group in meta.unique_together]
    uniques += [set(c.fields) for c in meta.total_unique_constraints]
    return all(group == names for group in uniques if group <= inserted)


#: session variable that catches the stored token inside the MySQL upsert (-1: inserted)
_SEEN_VAR = "@celery_leader_fence_seen"


def _upsert(connection: Any, model: Any, key: Mapping[str, Any], values: Mapping[str, Any], token: int,
            token_field: str) -> bool:
    """The one-statement insert-or-update-if-not-stale; True when written."""
    meta = model._meta
    qn = connection.ops.quote_name
    instance = model(**key, **values, **{token_field: token})
    fields = [f for f in meta.local_concrete_fields if f is not meta.auto_field or f.name in key]
    columns = ", ".join(qn(f.column) for f in fields)
    params = [f.get_db_prep_save(f.pre_save(instance, True), connection) for f in fields]
    marks = ", ".join(["%s"] * len(fields))
    table = qn(meta.db_table)
    token_col = qn(meta.get_field(token_field).column)
    updated = [qn(meta.get_field(name).column) for name in values]
    with connection.cursor() as cursor:
        if connection.vendor == "mysql":
            ok = f"({token_col} IS NULL OR {token_col} <= VALUES({token_col}))"
            sets = [f"{c} = IF({ok}, VALUES({c}), {c})" for c in updated]
            # the token last: the assignments before it still see the stored token
            sets.append(f"{token_col} = IF(({_SEEN_VAR} := {token_col}) IS NULL OR {token_col} <= "
                        f"VALUES({token_col}), VALUES({token_col}), {token_col})")
            cursor.execute(f"SET {_SEEN_VAR} = -1")
            cursor.execute(f"INSERT INTO {table} ({columns}) VALUES ({marks}) ON DUPLICATE KEY UPDATE "
                           + ", ".join(sets), params)
            cursor.execute(f"SELECT {_SEEN_VAR}")
            seen = cursor.fetchone()[0]
            return seen is None or int(seen) <= token
        target = ", ".join(qn(meta.get_field(name).column) for name in key)
        sets = [f"{c} = EXCLUDED.{c}" for c in [*updated, token_col]]
        cursor.execute(
            f"INSERT INTO {table} ({columns}) VALUES ({marks}) ON CONFLICT ({target}) DO UPDATE SET "
            + ", ".join(sets)
            + f" WHERE {table}.{token_col} IS NULL OR {table}.{token_col} <= EXCLUDED.{token_col} "
            f"RETURNING {token_col}",
            params,
        )
        return cursor.fetchone() is not None


class FencedQuerySet(models.QuerySet):
    """A queryset with :meth:`fenced_write`."""

    def fenced_write(self, token: Any, values: Mapping[str, Any] | None = None, **key: Any) -> None:
        """Update or create the row at ``key`` with ``values`` unless a higher token wrote it."""
        fenced_write(self, token, values, **key)


class FencedModel(models.Model):
    """Abstract mixin: a ``fence_token`` field and ``objects.fenced_write(token, values, **key)``."""

    fence_token = models.BigIntegerField(null=True, blank=True, editable=False)

    objects = FencedQuerySet.as_manager()

    class Meta:
        abstract = True
