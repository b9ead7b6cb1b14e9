"""claims and the delivery log in id order per edition and status

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 14:00:00

The claim (``WHERE edition_id = ? AND status = 'queued' ORDER BY id LIMIT n``) and
the delivery log filtered by edition and status read this index in order: on
PostgreSQL an index on (edition_id, status) alone leaves them a sort of every
matching row, or a scan from the first id, on each batch (SQLite's indexes end in
the rowid, so there it was already in order).
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_deliveries_edition_status_id", "deliveries", ["edition_id", "status", "id"])
    op.drop_index("ix_deliveries_edition_status", table_name="deliveries")


def downgrade() -> None:
    op.create_index("ix_deliveries_edition_status", "deliveries", ["edition_id", "status"])
    op.drop_index("ix_deliveries_edition_status_id", table_name="deliveries")
