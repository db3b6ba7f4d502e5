"""Audit: where the chain starts after retention removed old events; ATNA forwarding position.

Revision ID: 31fcd2507f2c
Revises: 4f8915146274
Create Date: 2026-11-22 14:41:43.131586
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import zorgbericht.db

revision: str = "31fcd2507f2c"
down_revision: str | None = "4f8915146274"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "audit_forward",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", zorgbericht.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.String(length=255), nullable=True),
        sa.Column("forwarded_at", zorgbericht.db.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_forward")),
    )
    with op.batch_alter_table("audit_event", schema=None) as batch_op:
        batch_op.create_index("ix_audit_tenant_patient", ["tenant_id", "patient_id"], unique=False)

    with op.batch_alter_table("audit_head", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("floor_seq", sa.BigInteger(), server_default="0", nullable=False)
        )
        batch_op.add_column(
            sa.Column("floor_hash", sa.String(length=64), server_default="0" * 64, nullable=False)
        )

    _deletes_below_the_floor_only()


def downgrade() -> None:
    _no_deletes_at_all()
    with op.batch_alter_table("audit_head", schema=None) as batch_op:
        batch_op.drop_column("floor_hash")
        batch_op.drop_column("floor_seq")

    with op.batch_alter_table("audit_event", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_tenant_patient")

    op.drop_table("audit_forward")


def _deletes_below_the_floor_only() -> None:
    """Let retention remove rows past the floor and older than five years; nothing else.

    Five years is 1827 days, leap days included (settings.AUDIT_RETENTION_MINIMUM_DAYS).

    The head may only move forward and never be deleted, so moving the floor is no way
    around the age check: whoever holds the application's database role can delete what
    the retention job would delete anyway, and not one row more.
    """
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE OR REPLACE FUNCTION audit_event_append_only() RETURNS trigger AS $$ BEGIN "
            "IF TG_OP = 'DELETE' "
            "AND OLD.seq <= COALESCE((SELECT floor_seq FROM audit_head WHERE id = 1), 0) "
            "AND OLD.occurred_at < now() - interval '1827 days' "
            "THEN RETURN OLD; END IF; RAISE EXCEPTION 'audit_event is append-only'; END; $$ "
            "LANGUAGE plpgsql"
        )
        op.execute(
            "CREATE FUNCTION audit_head_forward_only() RETURNS trigger AS $$ BEGIN "
            "IF TG_OP = 'DELETE' OR NEW.seq < OLD.seq OR NEW.floor_seq < OLD.floor_seq "
            "OR NEW.floor_seq > NEW.seq THEN "
            "RAISE EXCEPTION 'audit_head only moves forward'; END IF; RETURN NEW; END; $$ "
            "LANGUAGE plpgsql"
        )
        op.execute(
            "CREATE TRIGGER audit_head_forward_only BEFORE UPDATE OR DELETE ON audit_head "
            "FOR EACH ROW EXECUTE FUNCTION audit_head_forward_only()"
        )
        return
    op.execute("DROP TRIGGER audit_event_no_delete")
    op.execute(
        "CREATE TRIGGER audit_event_no_delete BEFORE DELETE ON audit_event "
        "WHEN OLD.seq > COALESCE((SELECT floor_seq FROM audit_head WHERE id = 1), 0) "
        "OR OLD.occurred_at >= datetime('now', '-1827 days') "
        "BEGIN SELECT RAISE(ABORT, 'audit_event is append-only'); END"
    )
    op.execute(
        "CREATE TRIGGER audit_head_no_delete BEFORE DELETE ON audit_head "
        "BEGIN SELECT RAISE(ABORT, 'audit_head only moves forward'); END"
    )
    op.execute(
        "CREATE TRIGGER audit_head_forward_only BEFORE UPDATE ON audit_head "
        "WHEN NEW.seq < OLD.seq OR NEW.floor_seq < OLD.floor_seq OR NEW.floor_seq > NEW.seq "
        "BEGIN SELECT RAISE(ABORT, 'audit_head only moves forward'); END"
    )


def _no_deletes_at_all() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER audit_head_forward_only ON audit_head")
        op.execute("DROP FUNCTION audit_head_forward_only()")
        op.execute(
            "CREATE OR REPLACE FUNCTION audit_event_append_only() RETURNS trigger AS $$ BEGIN "
            "RAISE EXCEPTION 'audit_event is append-only'; END; $$ LANGUAGE plpgsql"
        )
        return
    op.execute("DROP TRIGGER audit_head_no_delete")
    op.execute("DROP TRIGGER audit_head_forward_only")
    op.execute("DROP TRIGGER audit_event_no_delete")
    op.execute(
        "CREATE TRIGGER audit_event_no_delete BEFORE DELETE ON audit_event "
        "BEGIN SELECT RAISE(ABORT, 'audit_event is append-only'); END"
    )
