"""Checkpoint files: each fine-tuning checkpoint names the result files that hold it (its zipped PEFT adapter),
as a JSON list like the job's `result_files`; checkpoints made before have none.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("fine_tuning_checkpoints", sa.Column("result_files", sa.Text, nullable=False, server_default="[]"))


def downgrade() -> None:
    with op.batch_alter_table("fine_tuning_checkpoints") as batch:
        batch.drop_column("result_files")
