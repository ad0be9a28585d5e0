"""user features: the movies each user rated in the snapshot, so their lists can leave them out

A user the serving model does not know (newer in the features snapshot than the champion)
was answered with their segment's list, which could hold movies they had rated. NULL for
rows loaded before this column existed: nothing extra is left out for them.

Revision ID: 0005_user_rated_movies
Revises: 0004_circuit_breaker
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_user_rated_movies"
down_revision = "0004_circuit_breaker"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("user_features", sa.Column("rated_movies", sa.JSON()))


def downgrade() -> None:
    op.drop_column("user_features", "rated_movies")
