"""Stored completions, their metadata index and content-addressed messages.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

IdString = sa.String(40).with_variant(sa.String(40, collation="C"), "postgresql")


def upgrade() -> None:
    op.create_table(
        "completions",
        sa.Column("id", IdString, primary_key=True),
        sa.Column("project_id", sa.String(64), nullable=False, server_default="default"),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("created", sa.Integer, nullable=False),
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("request", sa.Text, nullable=False),
        sa.Column("response", sa.Text, nullable=False),
        sa.Column("message_digests", sa.Text, nullable=False),
        sa.Column("metadata", sa.Text, nullable=False),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("stream", sa.Boolean, nullable=False),
        sa.Column("incomplete", sa.Boolean, nullable=False),
        sa.Column("latency_ms", sa.Float, nullable=False),
        sa.Column("stored_bytes", sa.Integer, nullable=False),
    )
    op.create_index("ix_completions_project_id", "completions", ["project_id", "id"])
    op.create_index("ix_completions_project_model_id", "completions", ["project_id", "model", "id"])
    op.create_table(
        "completion_metadata",
        sa.Column("completion_id", IdString, sa.ForeignKey("completions.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.String(512), nullable=False),
        sa.Column("project_id", sa.String(64), nullable=False),
    )
    op.create_index(
        "ix_completion_metadata_lookup",
        "completion_metadata",
        ["project_id", "key", "value", "completion_id"],
    )
    op.create_table(
        "message_contents",
        sa.Column("project_id", sa.String(64), primary_key=True),
        sa.Column("digest", sa.String(64), primary_key=True),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("refs", sa.Integer, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("message_contents")
    op.drop_table("completion_metadata")
    op.drop_table("completions")
