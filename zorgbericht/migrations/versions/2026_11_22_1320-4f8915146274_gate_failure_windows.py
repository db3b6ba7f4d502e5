"""Gate failure windows: when a share's last wrong birth date and SMS code were.

Revision ID: 4f8915146274
Revises: 3df00bfada1e
Create Date: 2026-11-22 13:20:45.224651
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import zorgbericht.db

revision: str = "4f8915146274"
down_revision: str | None = "3df00bfada1e"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("share", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("dob_failed_at", zorgbericht.db.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(
            sa.Column("sms_failed_at", zorgbericht.db.UTCDateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("share", schema=None) as batch_op:
        batch_op.drop_column("sms_failed_at")
        batch_op.drop_column("dob_failed_at")
