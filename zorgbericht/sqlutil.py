"""Small SQL helpers that differ per dialect."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session


def insert(session: Session, table: Any) -> Any:
    """The INSERT construct of the session's dialect (both know ON CONFLICT)."""
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


def insert_ignore(session: Session, table: Table, rows: list[dict[str, Any]]) -> None:
    """INSERT rows, silently skipping those that hit a unique constraint."""
    if not rows:
        return
    session.execute(insert(session, table).on_conflict_do_nothing(), rows)


def upsert(
    session: Session, table: Table, rows: list[dict[str, Any]], keys: list[str], update: list[str]
) -> None:
    """INSERT rows; on a conflict on ``keys`` overwrite the ``update`` columns."""
    if not rows:
        return
    stmt = insert(session, table)
    stmt = stmt.on_conflict_do_update(
        index_elements=keys, set_={c: getattr(stmt.excluded, c) for c in update}
    )
    session.execute(stmt, rows)
