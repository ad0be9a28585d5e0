"""circuit breaker: the serving champion's breaker state, shared by every worker and instance

Revision ID: 0004_circuit_breaker
Revises: 0003_user_features
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_circuit_breaker"
down_revision = "0003_user_features"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "circuit_breaker",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("since", sa.Float(), nullable=False),
        sa.Column("reason", sa.String(500), nullable=False),
        sa.Column("model_version", sa.String(64)),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("evaluated_at", sa.Float(), nullable=False),
        sa.Column("evaluation", sa.JSON(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("circuit_breaker")
