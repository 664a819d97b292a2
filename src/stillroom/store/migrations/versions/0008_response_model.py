"""completions.response_model: the model name the stored object itself reports (its "model"), indexed per
project in list order like the configured name, so that `list(model=...)` matches either; filled from the
stored responses.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

# A string "model" of the stored response, cut to the column's 256 characters; "" for anything else.
_FROM_RESPONSE = {
    "sqlite": "CASE WHEN json_valid(response) AND json_type(response, '$.model') = 'text' "
    "THEN substr(json_extract(response, '$.model'), 1, 256) ELSE '' END",
    "postgresql": "CASE WHEN json_typeof(response::json -> 'model') = 'string' "
    "THEN left(response::json ->> 'model', 256) ELSE '' END",
}


def upgrade() -> None:
    op.add_column(
        "completions", sa.Column("response_model", sa.String(256), nullable=False, server_default=sa.text("''"))
    )
    conn = op.get_bind()
    conn.execute(sa.text(f"UPDATE completions SET response_model = {_FROM_RESPONSE[conn.dialect.name]}"))
    op.create_index("ix_completions_project_response_model_seq", "completions", ["project_id", "response_model", "seq"])


def downgrade() -> None:
    op.drop_index("ix_completions_project_response_model_seq", "completions")
    with op.batch_alter_table("completions") as batch:
        batch.drop_column("response_model")
