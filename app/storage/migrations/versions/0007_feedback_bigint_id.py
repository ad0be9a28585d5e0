"""feedback: a 64-bit id on PostgreSQL, column and sequence

Every insert attempt takes a value from the id's sequence, upserts that update a stored score,
retries and journal replays included: at ~1,000 scores/s the 32-bit ``serial`` of 0001 passed
2^31-1 within weeks, and PostgreSQL then refused every new score ("nextval: reached maximum
value of sequence"), which the feedback journal set aside for good in ``rejected.jsonl``.

On PostgreSQL the column becomes ``bigint`` (the table and its indexes are rewritten under an
ACCESS EXCLUSIVE lock: scores wait in the journal meanwhile, docs/operations.md) and so does
its sequence, whose maximum follows its type. SQLite is left alone: its ``INTEGER PRIMARY KEY``
is the 64-bit rowid already, and a ``BIGINT`` key would no longer be that rowid (no automatic ids).
The other tables' keys are not consumed per request (a UUID, a token's jti, a user id, a name).

Revision ID: 0007_feedback_bigint_id
Revises: 0006_breaker_per_version
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0007_feedback_bigint_id"
down_revision = "0006_breaker_per_version"
branch_labels = None
depends_on = None

_SEQUENCE_AS = """DO $$
DECLARE
    seq regclass := coalesce(
        pg_get_serial_sequence('feedback', 'id')::regclass,
        (SELECT dependency.refobjid::regclass
           FROM pg_attrdef AS def
           JOIN pg_attribute AS att ON att.attrelid = def.adrelid AND att.attnum = def.adnum
           JOIN pg_depend AS dependency
             ON dependency.classid = 'pg_attrdef'::regclass AND dependency.objid = def.oid
            AND dependency.refclassid = 'pg_class'::regclass
           JOIN pg_class AS sequence ON sequence.oid = dependency.refobjid AND sequence.relkind = 'S'
          WHERE def.adrelid = 'feedback'::regclass AND att.attname = 'id'
          LIMIT 1)
    );
BEGIN
    IF seq IS NOT NULL THEN
        EXECUTE format('ALTER SEQUENCE %s AS {type}', seq);
    END IF;
END $$"""
"""The id's sequence (``feedback_id_seq`` as 0001 created it), found by its column rather than named:
the one the column owns, else the one its default's ``nextval`` reads. A sequence the column does
not own (a dump restored without its ``OWNED BY``, one re-created by hand) has no
``pg_get_serial_sequence``; looking only there made the upgrade a syntax error, and the service
did not start. No sequence at all (no default): nothing to change."""

_INT32_MAX = 2**31 - 1


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.alter_column(
        "feedback", "id", type_=sa.BigInteger(), existing_type=sa.Integer(), existing_nullable=False
    )
    # a sequence at its type's maximum gets the new type's (PostgreSQL: only when it was the old one's)
    op.execute(_SEQUENCE_AS.format(type="bigint"))


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    top = bind.execute(sa.text("SELECT max(id) FROM feedback")).scalar()
    if top is not None and top > _INT32_MAX:
        raise RuntimeError(
            f"feedback holds ids up to {top}, past the 32-bit id of revision 0006: it cannot be downgraded"
        )
    op.execute(_SEQUENCE_AS.format(type="integer"))
    op.alter_column(
        "feedback", "id", type_=sa.Integer(), existing_type=sa.BigInteger(), existing_nullable=False
    )
