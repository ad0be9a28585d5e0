"""recommendation requests: an index on the user of each list served under a user id

``GET /api/users/<id>/recommendations`` leaves out the movies the user scored on lists served
under their id (app/storage/user_features.py ``scored_movies``). With no index on
``recommendation_requests.user_id`` that read went through every score stored since the user's
snapshot, all users' (tens of millions a day at ~1,000 scores/s), or for computed features through
the whole table, on each request. With this index it reads the user's own requests and their scores.

Partial (``WHERE user_id IS NOT NULL``): the lists of ``/api/recommend`` for a profile have no
user, are not in it, and cost the request log's ``COPY`` nothing more; a list for a user id (that
endpoint with ``user_id``, ``/api/users/<id>/recommendations``) adds one entry.

A plain ``CREATE INDEX``, not ``CONCURRENTLY``: every process runs the migrations in one transaction
under a transaction-scoped advisory lock (app/storage/db.py ``Database.upgrade``), and a concurrent
build can run in no transaction; it also waits for every transaction older than it, those of the
workers waiting for the lock included, which wait for it: a deadlock at each start of an instance.
The build blocks writes to ``recommendation_requests`` (not reads) while it runs:
docs/operations.md.

Revision ID: 0008_requests_user_index
Revises: 0007_feedback_bigint_id
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0008_requests_user_index"
down_revision = "0007_feedback_bigint_id"
branch_labels = None
depends_on = None

_INDEX = "ix_recommendation_requests_user_id"


def upgrade() -> None:
    where = sa.text("user_id IS NOT NULL")
    op.create_index(
        _INDEX, "recommendation_requests", ["user_id"], postgresql_where=where, sqlite_where=where
    )


def downgrade() -> None:
    op.drop_index(_INDEX, table_name="recommendation_requests")
