"""Model instances from hand-written SQL, for the turn's hottest reads.

Building a queryset (filters, joins, annotations) costs more CPU than PostgreSQL spends answering
it; the few queries every turn makes are written once as SQL instead, and their rows become model
instances exactly as the ORM would make them (each field's database converters, ``Model.from_db``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, TypeVar

from django.db import connection
from django.db.models import Model

M = TypeVar("M", bound=Model)


def columns(model: type[Model], alias: str) -> str:
    """The model's columns, in ``instance``'s order, qualified by ``alias``."""
    return ", ".join(f'{alias}."{field.column}"' for field in model._meta.concrete_fields)


def width(model: type[Model]) -> int:
    return len(model._meta.concrete_fields)


@functools.cache
def _converters(model: type[Model]) -> tuple[list[str], list[tuple[int, list[Any], Any]]]:
    fields = model._meta.concrete_fields
    converters = []
    for position, field in enumerate(fields):
        column = field.get_col(model._meta.db_table)
        found = connection.ops.get_db_converters(column) + column.get_db_converters(connection)
        if found:
            converters.append((position, found, column))
    return [field.attname for field in fields], converters


def instance(model: type[M], values: Sequence[Any]) -> M:
    """``values`` (a slice of a row, in ``columns`` order) as a saved instance of ``model``."""
    names, converters = _converters(model)
    values = list(values)
    for position, found, column in converters:
        for converter in found:
            values[position] = converter(values[position], column, connection)
    return model.from_db(connection.alias, names, values)


def insert_sql(
    model: type[Model],
    objs: Sequence[Model],
    returning: Sequence[str],
    *,
    on_conflict: str = "",
    expressions: dict[str, str] | None = None,
    source: str = "",
) -> tuple[str, list[Any]]:
    """One INSERT of these new instances (as ``bulk_create`` writes them: each field's ``pre_save`` and
    database preparation, the auto primary key left to the database) ``RETURNING`` these columns.

    ``on_conflict``: an ``ON CONFLICT`` clause; ``expressions``: SQL written instead of a column's value
    (by attname), reading the one row of ``source`` (an earlier CTE of the same statement), e.g. its id."""
    meta = model._meta
    expressions = expressions or {}
    fields = [field for field in meta.concrete_fields if field is not meta.auto_field]
    params: list[Any] = []
    for obj in objs:
        obj._prepare_related_fields_for_save(operation_name="bulk_create")  # type: ignore[attr-defined]
        params += [
            field.get_db_prep_save(field.pre_save(obj, True), connection)
            for field in fields
            if field.attname not in expressions
        ]
    names = ", ".join(f'"{field.column}"' for field in fields)
    cells = ", ".join(expressions.get(field.attname, "%s") for field in fields)
    if expressions:
        assert len(objs) == 1 and source, "expressions read one row of one CTE"
        values = f"SELECT {cells} FROM {source}"  # noqa: S608 (our columns and CTE names)
    else:
        values = "VALUES " + ", ".join([f"({cells})"] * len(objs))
    sql = f"INSERT INTO {meta.db_table} ({names}) {values} {on_conflict} RETURNING {', '.join(returning)}"
    return sql, params


def inserted(objs: Sequence[Model], pks: Sequence[Any]) -> None:
    """The instances of ``insert_sql`` are saved, with these primary keys."""
    for obj, pk in zip(objs, pks, strict=True):
        obj.pk = pk
        obj._state.adding = False
        obj._state.db = connection.alias
