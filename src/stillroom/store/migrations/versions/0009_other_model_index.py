"""The index of 0008 on (project_id, response_model, seq) becomes one on (project_id, NULLIF(response_model,
model), seq): the stored object's own model only where it differs from the configured one, which is all that
`list(model=...)`'s second walk looks for (stillroom.store.pages._either_model). With the old index a model
that reports its own name (`o4-mini` answering as `o4-mini`) made that walk read every row of the model to
find none; PostgreSQL keeps statistics of an indexed expression, so it also plans the walk knowing that.
The index is built anew: one pass over `completions`, during which writes wait.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_OLD = "ix_completions_project_response_model_seq"
_NEW = "ix_completions_project_other_model_seq"


def upgrade() -> None:
    op.create_index(_NEW, "completions", ["project_id", sa.text("nullif(response_model, model)"), "seq"])
    op.drop_index(_OLD, "completions")


def downgrade() -> None:
    op.create_index(_OLD, "completions", ["project_id", "response_model", "seq"])
    op.drop_index(_NEW, "completions")
