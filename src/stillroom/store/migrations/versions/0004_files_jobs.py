"""Files, fine-tuning jobs (with metadata, events, checkpoints) and the fine-tuned models they register.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

IdString = sa.String(40).with_variant(sa.String(40, collation="C"), "postgresql")


def upgrade() -> None:
    op.create_table(
        "files",
        sa.Column("id", IdString, primary_key=True),
        sa.Column("project_id", sa.String(64), nullable=False),
        sa.Column("purpose", sa.String(32), nullable=False),
        sa.Column("filename", sa.String(512), nullable=False),
        sa.Column("bytes", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("expires_at", sa.BigInteger, nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("storage_key", sa.String(512), nullable=False),
    )
    op.create_index("ix_files_project_id", "files", ["project_id", "id"])
    op.create_table(
        "fine_tuning_jobs",
        sa.Column("id", IdString, primary_key=True),
        sa.Column("project_id", sa.String(64), nullable=False),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("training_file", sa.String(40), nullable=False),
        sa.Column("validation_file", sa.String(40), nullable=True),
        sa.Column("suffix", sa.String(64), nullable=True),
        sa.Column("seed", sa.BigInteger, nullable=False),
        sa.Column("method", sa.Text, nullable=False),
        sa.Column("hyperparameters", sa.Text, nullable=True),
        sa.Column("metadata", sa.Text, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("fine_tuned_model", sa.String(256), nullable=True),
        sa.Column("result_files", sa.Text, nullable=False),
        sa.Column("trained_tokens", sa.BigInteger, nullable=True),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("finished_at", sa.BigInteger, nullable=True),
        sa.Column("estimated_finish", sa.BigInteger, nullable=True),
        sa.Column("worker_id", sa.String(128), nullable=True),
        sa.Column("lease_expires_at", sa.Float, nullable=True),
        sa.Column("attempts", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_fine_tuning_jobs_project_id", "fine_tuning_jobs", ["project_id", "id"])
    op.create_index("ix_fine_tuning_jobs_status", "fine_tuning_jobs", ["status", "id"])
    op.create_table(
        "fine_tuning_job_metadata",
        sa.Column("job_id", IdString, sa.ForeignKey("fine_tuning_jobs.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.String(512), nullable=False),
        sa.Column("project_id", sa.String(64), nullable=False),
    )
    op.create_index(
        "ix_fine_tuning_job_metadata_lookup", "fine_tuning_job_metadata", ["project_id", "key", "value", "job_id"]
    )
    op.create_table(
        "fine_tuning_job_events",
        sa.Column("id", IdString, primary_key=True),
        sa.Column("job_id", IdString, sa.ForeignKey("fine_tuning_jobs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("level", sa.String(8), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("data", sa.Text, nullable=True),
    )
    op.create_index("ix_fine_tuning_job_events_job_id", "fine_tuning_job_events", ["job_id", "id"])
    op.create_table(
        "fine_tuning_checkpoints",
        sa.Column("id", IdString, primary_key=True),
        sa.Column("job_id", IdString, sa.ForeignKey("fine_tuning_jobs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("step_number", sa.BigInteger, nullable=False),
        sa.Column("metrics", sa.Text, nullable=False),
        sa.Column("fine_tuned_model_checkpoint", sa.String(256), nullable=False),
    )
    op.create_index("ix_fine_tuning_checkpoints_job_id", "fine_tuning_checkpoints", ["job_id", "id"])
    op.create_table(
        "fine_tuned_models",
        sa.Column("name", sa.String(256), primary_key=True),
        sa.Column("project_id", sa.String(64), nullable=False),
        sa.Column("job_id", IdString, nullable=False),
        sa.Column("base_model", sa.String(256), nullable=False),
        sa.Column("gguf_file", sa.String(40), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_fine_tuned_models_project_id", "fine_tuned_models", ["project_id", "name"])


def downgrade() -> None:
    for table in (
        "fine_tuned_models",
        "fine_tuning_checkpoints",
        "fine_tuning_job_events",
        "fine_tuning_job_metadata",
        "fine_tuning_jobs",
        "files",
    ):
        op.drop_table(table)
