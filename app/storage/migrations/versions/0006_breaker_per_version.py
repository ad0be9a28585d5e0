"""circuit breaker: one record per model version (``<name>@<version>``), not one per breaker

Workers or instances serving different versions for a while (a reload reaching workers one
by one, a rolling deploy) rewrote the single record for whichever version evaluated last:
a breaker opened for one version was closed again by a worker still serving another. The
name column grows to hold the version; an existing record becomes its version's own.

Revision ID: 0006_breaker_per_version
Revises: 0005_user_rated_movies
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_breaker_per_version"
down_revision = "0005_user_rated_movies"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("circuit_breaker") as batch:
        batch.alter_column("name", type_=sa.String(160), existing_type=sa.String(64), existing_nullable=False)
    op.execute(
        "UPDATE circuit_breaker SET name = name || '@' || model_version "
        "WHERE model_version IS NOT NULL AND name NOT LIKE '%@%'"
    )


def downgrade() -> None:
    # the per-version records do not fit one record per breaker: they go, and the breakers
    # restart closed (their state is re-established by the next evaluations)
    op.execute("DELETE FROM circuit_breaker WHERE name LIKE '%@%'")
    with op.batch_alter_table("circuit_breaker") as batch:
        batch.alter_column("name", type_=sa.String(64), existing_type=sa.String(160), existing_nullable=False)
