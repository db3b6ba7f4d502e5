"""Recipient flow: sessions, SMS challenges, downloads, gate counters, DICOMDIR records.

Revision ID: 3df00bfada1e
Revises: bd7feb002eb5
Create Date: 2026-11-22 12:53:55.066273
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import zorgbericht.db

revision: str = "3df00bfada1e"
down_revision: str | None = "bd7feb002eb5"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "code_probe",
        sa.Column("code_hmac", sa.String(length=64), nullable=False),
        sa.Column("dob_failures", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("locked_until", zorgbericht.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("updated_at", zorgbericht.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("code_hmac", name=op.f("pk_code_probe")),
    )
    with op.batch_alter_table("code_probe", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_code_probe_updated_at"), ["updated_at"], unique=False)

    op.create_table(
        "throttle_window",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("window_start", zorgbericht.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("hits", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("key", "window_start", name=op.f("pk_throttle_window")),
    )
    op.create_table(
        "recipient_session",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("code_hmac", sa.String(length=64), nullable=False),
        sa.Column("share_id", sa.Integer(), nullable=True),
        sa.Column("created_at", zorgbericht.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", zorgbericht.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("terms_accepted_at", zorgbericht.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("birth_date_ok_at", zorgbericht.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("signed_in_at", zorgbericht.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("ended_at", zorgbericht.db.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["share_id"],
            ["share.id"],
            name=op.f("fk_recipient_session_share_id_share"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_recipient_session")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_recipient_session_token_hash")),
    )
    with op.batch_alter_table("recipient_session", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_recipient_session_code_hmac"), ["code_hmac"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_recipient_session_share_id"), ["share_id"], unique=False
        )

    op.create_table(
        "download",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("share_id", sa.Integer(), nullable=False),
        sa.Column("session_id", sa.Integer(), nullable=True),
        sa.Column("format", sa.String(length=8), nullable=False),
        sa.Column("scope", sa.String(length=8), nullable=False),
        sa.Column("study_count", sa.Integer(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("created_at", zorgbericht.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["recipient_session.id"],
            name=op.f("fk_download_session_id_recipient_session"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["share_id"], ["share.id"], name=op.f("fk_download_share_id_share"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_download")),
    )
    with op.batch_alter_table("download", schema=None) as batch_op:
        batch_op.create_index("ix_download_share_day", ["share_id", "day"], unique=False)

    op.create_table(
        "series_view",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("session_id", sa.Integer(), nullable=False),
        sa.Column("series_id", sa.Integer(), nullable=False),
        sa.Column("viewed_at", zorgbericht.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["series_id"],
            ["series.id"],
            name=op.f("fk_series_view_series_id_series"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["recipient_session.id"],
            name=op.f("fk_series_view_session_id_recipient_session"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_series_view")),
        sa.UniqueConstraint("session_id", "series_id", name=op.f("uq_series_view_session_id")),
    )
    op.create_table(
        "sms_challenge",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("share_id", sa.Integer(), nullable=False),
        sa.Column("session_id", sa.Integer(), nullable=False),
        sa.Column("code_hmac", sa.String(length=64), nullable=False),
        sa.Column("created_at", zorgbericht.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", zorgbericht.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("checks", sa.Integer(), nullable=False),
        sa.Column("used_at", zorgbericht.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("superseded", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["recipient_session.id"],
            name=op.f("fk_sms_challenge_session_id_recipient_session"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["share_id"],
            ["share.id"],
            name=op.f("fk_sms_challenge_share_id_share"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sms_challenge")),
    )
    with op.batch_alter_table("sms_challenge", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_sms_challenge_session_id"), ["session_id"], unique=False
        )
        batch_op.create_index(
            "ix_sms_challenge_share_created", ["share_id", "created_at"], unique=False
        )

    with op.batch_alter_table("instance", schema=None) as batch_op:
        batch_op.add_column(sa.Column("dir_record", sa.JSON(), nullable=True))

    with op.batch_alter_table("share", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("dob_failures", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(
            sa.Column("sms_failures", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(
            sa.Column("locked_until", zorgbericht.db.UTCDateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("share", schema=None) as batch_op:
        batch_op.drop_column("locked_until")
        batch_op.drop_column("sms_failures")
        batch_op.drop_column("dob_failures")

    with op.batch_alter_table("instance", schema=None) as batch_op:
        batch_op.drop_column("dir_record")

    with op.batch_alter_table("sms_challenge", schema=None) as batch_op:
        batch_op.drop_index("ix_sms_challenge_share_created")
        batch_op.drop_index(batch_op.f("ix_sms_challenge_session_id"))

    op.drop_table("sms_challenge")
    op.drop_table("series_view")
    with op.batch_alter_table("download", schema=None) as batch_op:
        batch_op.drop_index("ix_download_share_day")

    op.drop_table("download")
    with op.batch_alter_table("recipient_session", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_recipient_session_share_id"))
        batch_op.drop_index(batch_op.f("ix_recipient_session_code_hmac"))

    op.drop_table("recipient_session")
    op.drop_table("throttle_window")
    with op.batch_alter_table("code_probe", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_code_probe_updated_at"))

    op.drop_table("code_probe")
