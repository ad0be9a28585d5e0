"""circuit breaker: one record per model version (``<name>@<version>``), not one per breaker

Workers or instances serving different versions for a while (a reload reaching workers one
by one, a rolling deploy) rewrote the single record for whichever version evaluated last:
a breaker opened for one version was closed again by a worker still serving another. The
name column grows to hold the version; an existing record is copied as its version's own. It is
copied, not renamed: migrations run when an instance starts, and the instances of a rolling
deploy still running the previous code keep reading ``<name>`` (a missing row is a closed
breaker to them: they would serve the model it had tripped).

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
        "INSERT INTO circuit_breaker (name, state, since, reason, model_version, generation, "
        "evaluated_at, evaluation) "
        "SELECT name || '@' || model_version, state, since, reason, model_version, generation, "
        "evaluated_at, evaluation FROM circuit_breaker "
        "WHERE model_version IS NOT NULL AND name NOT LIKE '%@%'"
    )


def downgrade() -> None:
    # the per-version records do not fit one record per breaker: they go, and the breakers
    # restart closed (their state is re-established by the next evaluations)
    op.execute("DELETE FROM circuit_breaker WHERE name LIKE '%@%'")
    with op.batch_alter_table("circuit_breaker") as batch:
        batch.alter_column("name", type_=sa.String(64), existing_type=sa.String(160), existing_nullable=False)
