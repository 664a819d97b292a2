"""Full-text search and time ranges on stored completions.

`completion_search` (stillroom.store.search): an FTS5 contentless table on SQLite, a tsvector table with a
GIN index on PostgreSQL, filled here with every stored completion's document. `completions.clock` and
`sequences.clock`/`lag` (stillroom.store.timeline): the commit clock, filled here by walking the existing
rows in commit order.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

from stillroom.store.search import create_search_index
from stillroom.store.timeline import id_micros

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_BATCH = 5000


def upgrade() -> None:
    op.add_column("completions", sa.Column("clock", sa.BigInteger, nullable=False, server_default="0"))
    op.add_column("sequences", sa.Column("clock", sa.BigInteger, nullable=False, server_default="0"))
    op.add_column("sequences", sa.Column("lag", sa.BigInteger, nullable=False, server_default="0"))
    conn = op.get_bind()
    clock, lag = _fill_clock(conn)
    conn.execute(
        sa.text("UPDATE sequences SET clock = :clock, lag = :lag WHERE name = 'completions'"),
        {"clock": clock, "lag": lag},
    )
    op.create_index("ix_completions_project_clock", "completions", ["project_id", "clock", "seq"])
    create_search_index(conn, fill=True)


def _fill_clock(conn: sa.Connection) -> tuple[int, int]:
    """Give every row the running maximum of the id times before it in commit order; (last clock, lag)."""
    clock = lag = 0
    after = -1
    while True:
        rows = conn.execute(
            sa.text("SELECT seq, id FROM completions WHERE seq > :after ORDER BY seq LIMIT :n"),
            {"after": after, "n": _BATCH},
        ).all()
        if not rows:
            return clock, lag
        updates = []
        for seq, completion_id in rows:
            micros = id_micros(completion_id)
            clock = max(clock, micros)
            lag = max(lag, clock - micros)
            updates.append({"seq": seq, "clock": clock})
        conn.execute(sa.text("UPDATE completions SET clock = :clock WHERE seq = :seq"), updates)
        after = rows[-1][0]


def downgrade() -> None:
    op.execute("DROP TABLE completion_search")
    op.drop_index("ix_completions_project_clock", "completions")
    with op.batch_alter_table("sequences") as batch:
        batch.drop_column("lag")
        batch.drop_column("clock")
    with op.batch_alter_table("completions") as batch:
        batch.drop_column("clock")
