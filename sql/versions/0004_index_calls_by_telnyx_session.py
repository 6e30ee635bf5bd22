"""index calls by telnyx session

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 23:44:07.682223
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        op.f("ix_calls_telnyx_call_session_id"), "calls", ["telnyx_call_session_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_calls_telnyx_call_session_id"), table_name="calls")
