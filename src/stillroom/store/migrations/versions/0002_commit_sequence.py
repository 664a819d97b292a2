"""Commit sequence for cursor pages; 64-bit time and size columns.

Lists page on `completions.seq` (numbered in commit order, carried on `completion_metadata` so that a
metadata filter walks its index in list order) instead of the id, which is minted when a stream starts but
committed when it ends. Existing rows are numbered in id order, the order they were listed in before.
`completion_tombstones` keeps a deleted row's place; `sequences` holds the last number handed out.
`created`, `stored_bytes`, `size` and `refs` become BIGINT (an upstream may send `created` in milliseconds).

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

IdString = sa.String(40).with_variant(sa.String(40, collation="C"), "postgresql")


def upgrade() -> None:
    op.add_column("completions", sa.Column("seq", sa.BigInteger, nullable=True))
    op.add_column("completion_metadata", sa.Column("seq", sa.BigInteger, nullable=True))
    op.execute(
        "UPDATE completions SET seq = numbered.n "
        "FROM (SELECT id, row_number() OVER (ORDER BY id) AS n FROM completions) AS numbered "
        "WHERE completions.id = numbered.id"
    )
    op.execute(
        "UPDATE completion_metadata SET seq = "
        "(SELECT completions.seq FROM completions WHERE completions.id = completion_metadata.completion_id)"
    )
    with op.batch_alter_table("completions") as batch:
        batch.alter_column("seq", existing_type=sa.BigInteger, nullable=False)
        batch.alter_column("created", existing_type=sa.Integer, type_=sa.BigInteger, existing_nullable=False)
        batch.alter_column("stored_bytes", existing_type=sa.Integer, type_=sa.BigInteger, existing_nullable=False)
        batch.drop_index("ix_completions_project_id")
        batch.drop_index("ix_completions_project_model_id")
        batch.create_index("ux_completions_seq", ["seq"], unique=True)
        batch.create_index("ix_completions_project_seq", ["project_id", "seq"])
        batch.create_index("ix_completions_project_model_seq", ["project_id", "model", "seq"])
    with op.batch_alter_table("completion_metadata") as batch:
        batch.alter_column("seq", existing_type=sa.BigInteger, nullable=False)
        batch.drop_index("ix_completion_metadata_lookup")
        batch.create_index("ix_completion_metadata_lookup", ["project_id", "key", "value", "seq"])
    with op.batch_alter_table("message_contents") as batch:
        batch.alter_column("size", existing_type=sa.Integer, type_=sa.BigInteger, existing_nullable=False)
        batch.alter_column("refs", existing_type=sa.Integer, type_=sa.BigInteger, existing_nullable=False)
    op.create_table(
        "completion_tombstones",
        sa.Column("id", IdString, primary_key=True),
        sa.Column("project_id", sa.String(64), nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "sequences",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.BigInteger, nullable=False),
    )
    op.execute("INSERT INTO sequences (name, value) SELECT 'completions', COALESCE(MAX(seq), 0) FROM completions")


def downgrade() -> None:
    op.drop_table("sequences")
    op.drop_table("completion_tombstones")
    with op.batch_alter_table("message_contents") as batch:
        batch.alter_column("size", existing_type=sa.BigInteger, type_=sa.Integer, existing_nullable=False)
        batch.alter_column("refs", existing_type=sa.BigInteger, type_=sa.Integer, existing_nullable=False)
    with op.batch_alter_table("completion_metadata") as batch:
        batch.drop_index("ix_completion_metadata_lookup")
        batch.create_index("ix_completion_metadata_lookup", ["project_id", "key", "value", "completion_id"])
        batch.drop_column("seq")
    with op.batch_alter_table("completions") as batch:
        batch.drop_index("ix_completions_project_model_seq")
        batch.drop_index("ix_completions_project_seq")
        batch.drop_index("ux_completions_seq")
        batch.create_index("ix_completions_project_id", ["project_id", "id"])
        batch.create_index("ix_completions_project_model_id", ["project_id", "model", "id"])
        batch.alter_column("stored_bytes", existing_type=sa.BigInteger, type_=sa.Integer, existing_nullable=False)
        batch.alter_column("created", existing_type=sa.BigInteger, type_=sa.Integer, existing_nullable=False)
        batch.drop_column("seq")
