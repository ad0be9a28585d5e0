"""user features: the latest feature-store snapshot per user (seed 001 features API)

Revision ID: 0003_user_features
Revises: 0002_revoked_tokens
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_user_features"
down_revision = "0002_revoked_tokens"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "user_features",
        sa.Column("user_id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("snapshot_id", sa.String(64), nullable=False),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("age", sa.Integer(), nullable=False),
        sa.Column("age_group", sa.String(8), nullable=False),
        sa.Column("gender", sa.String(1), nullable=False),
        sa.Column("occupation", sa.String(32), nullable=False),
        sa.Column("n_ratings", sa.Integer(), nullable=False),
        sa.Column("n_liked", sa.Integer(), nullable=False),
        sa.Column("liked_share", sa.Float(), nullable=False),
        sa.Column("mean_rating", sa.Float()),
        sa.Column("std_rating", sa.Float()),
        sa.Column("first_ts", sa.BigInteger()),
        sa.Column("last_ts", sa.BigInteger()),
        sa.Column("genre_share", sa.JSON(), nullable=False),
        sa.Column("liked_genre_share", sa.JSON(), nullable=False),
    )
    op.create_index("ix_user_features_snapshot_id", "user_features", ["snapshot_id"])


def downgrade() -> None:
    op.drop_table("user_features")
