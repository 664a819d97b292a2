"""SQLite's search index is written after the commit (stillroom.store.search_tail): the `sequences` row
`search` says how far it goes. Every completion stored so far is indexed (0007 and the group commits since),
so it starts at the last number given out. PostgreSQL indexes inside the commit and needs no such row.

Revision ID: 0010
Revises: 0009
"""

from alembic import op

from stillroom.store.search_tail import catch_up

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute(
            "INSERT INTO sequences (name, value) "
            "SELECT 'search', coalesce((SELECT value FROM sequences WHERE name = 'completions'), 0)"
        )


def downgrade() -> None:
    # The older code indexes inside the commit: first index what is still waiting (search_tail).
    if op.get_bind().dialect.name == "sqlite":
        catch_up(op.get_bind())
        op.execute("DELETE FROM sequences WHERE name = 'search'")
