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
    """Let the retention job remove rows it moved the floor past; nothing else, no update."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE OR REPLACE FUNCTION audit_event_append_only() RETURNS trigger AS $$ BEGIN "
            "IF TG_OP = 'DELETE' AND OLD.seq <= (SELECT floor_seq FROM audit_head WHERE id = 1) "
            "THEN RETURN OLD; END IF; RAISE EXCEPTION 'audit_event is append-only'; END; $$ "
            "LANGUAGE plpgsql"
        )
        return
    op.execute("DROP TRIGGER audit_event_no_delete")
    op.execute(
        "CREATE TRIGGER audit_event_no_delete BEFORE DELETE ON audit_event "
        "WHEN OLD.seq > (SELECT floor_seq FROM audit_head WHERE id = 1) "
        "BEGIN SELECT RAISE(ABORT, 'audit_event is append-only'); END"
    )


def _no_deletes_at_all() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE OR REPLACE FUNCTION audit_event_append_only() RETURNS trigger AS $$ BEGIN "
            "RAISE EXCEPTION 'audit_event is append-only'; END; $$ LANGUAGE plpgsql"
        )
        return
    op.execute("DROP TRIGGER audit_event_no_delete")
    op.execute(
        "CREATE TRIGGER audit_event_no_delete BEFORE DELETE ON audit_event "
        "BEGIN SELECT RAISE(ABORT, 'audit_event is append-only'); END"
    )
