"""Evals, eval runs (a work queue with leases, like fine-tuning jobs) and their per-item outputs.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

IdString = sa.String(48).with_variant(sa.String(48, collation="C"), "postgresql")


def upgrade() -> None:
    op.create_table(
        "evals",
        sa.Column("id", IdString, primary_key=True),
        sa.Column("project_id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(512), nullable=True),
        sa.Column("metadata", sa.Text, nullable=True),
        sa.Column("data_source_config", sa.Text, nullable=False),
        sa.Column("testing_criteria", sa.Text, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_evals_project_id", "evals", ["project_id", "id"])
    op.create_index("ix_evals_project_updated", "evals", ["project_id", "updated_at", "id"])
    op.create_table(
        "eval_runs",
        sa.Column("id", IdString, primary_key=True),
        sa.Column("eval_id", IdString, sa.ForeignKey("evals.id", ondelete="CASCADE"), nullable=False),
        sa.Column("project_id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(512), nullable=False),
        sa.Column("model", sa.String(256), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("data_source", sa.Text, nullable=False),
        sa.Column("metadata", sa.Text, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("result_counts", sa.Text, nullable=False),
        sa.Column("per_model_usage", sa.Text, nullable=False),
        sa.Column("per_testing_criteria_results", sa.Text, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("started_at", sa.BigInteger, nullable=True),
        sa.Column("finished_at", sa.BigInteger, nullable=True),
        sa.Column("worker_id", sa.String(128), nullable=True),
        sa.Column("lease_expires_at", sa.Float, nullable=True),
        sa.Column("attempts", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_eval_runs_eval_id", "eval_runs", ["eval_id", "id"])
    op.create_index("ix_eval_runs_status", "eval_runs", ["status", "id"])
    op.create_table(
        "eval_output_items",
        sa.Column("id", IdString, primary_key=True),
        sa.Column("run_id", IdString, sa.ForeignKey("eval_runs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("eval_id", IdString, nullable=False),
        sa.Column("datasource_item_id", sa.BigInteger, nullable=False),
        sa.Column("status", sa.String(8), nullable=False),
        sa.Column("datasource_item", sa.Text, nullable=False),
        sa.Column("results", sa.Text, nullable=False),
        sa.Column("sample", sa.Text, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_eval_output_items_run", "eval_output_items", ["run_id", "id"])
    op.create_index("ix_eval_output_items_run_item", "eval_output_items", ["run_id", "datasource_item_id"], unique=True)


def downgrade() -> None:
    op.drop_table("eval_output_items")
    op.drop_table("eval_runs")
    op.drop_table("evals")
