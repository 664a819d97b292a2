"""Projects (quota, usage, storage switch, store policy, retention), API keys, the audit log.

Every project id already used by a stored row gets a project, the default one always; its `used_bytes`
starts as what it keeps today (completion rows plus message contents), from then on a running total.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

IdString = sa.String(40).with_variant(sa.String(40, collation="C"), "postgresql")
DEFAULT_QUOTA_BYTES = 10 * 1000**3


def upgrade() -> None:
    op.create_table(
        "projects",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("created", sa.BigInteger, nullable=False),
        sa.Column("quota_bytes", sa.BigInteger, nullable=False),
        sa.Column("used_bytes", sa.BigInteger, nullable=False),
        sa.Column("not_stored", sa.BigInteger, nullable=False),
        sa.Column("storage_enabled", sa.Boolean, nullable=False),
        sa.Column("store_policy", sa.String(16), nullable=False),
        sa.Column("sample_rate", sa.Float, nullable=False),
        sa.Column("default_metadata", sa.Text, nullable=False),
        sa.Column("retention_days", sa.BigInteger, nullable=True),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("project_id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("created", sa.BigInteger, nullable=False),
        sa.Column("last_used", sa.BigInteger, nullable=True),
        sa.Column("store_policy", sa.String(16), nullable=True),
        sa.Column("sample_rate", sa.Float, nullable=True),
        sa.Column("default_metadata", sa.Text, nullable=True),
    )
    op.create_index("ux_api_keys_hash", "api_keys", ["hash"], unique=True)
    op.create_index("ix_api_keys_project", "api_keys", ["project_id", "id"])
    op.create_table(
        "audit_events",
        sa.Column("id", IdString, primary_key=True),
        sa.Column("project_id", sa.String(64), nullable=True),
        sa.Column("created", sa.BigInteger, nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("operation", sa.String(64), nullable=False),
        sa.Column("target", sa.String(512), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
    )
    op.create_index("ix_audit_events_project", "audit_events", ["project_id", "id"])
    # One project per id in use (and the default), with what it keeps now as its starting usage.
    op.execute(
        "INSERT INTO projects (id, name, created, quota_bytes, used_bytes, not_stored, storage_enabled, "
        "store_policy, sample_rate, default_metadata, retention_days) "
        f"SELECT u.project_id, u.project_id, 0, {DEFAULT_QUOTA_BYTES}, SUM(u.bytes), 0, true, 'request', 0.0, "
        "'{}', NULL FROM ("
        "SELECT project_id, stored_bytes AS bytes FROM completions "
        "UNION ALL SELECT project_id, size AS bytes FROM message_contents "
        "UNION ALL SELECT 'default' AS project_id, 0 AS bytes"
        ") AS u GROUP BY u.project_id"
    )
    op.execute("INSERT INTO sequences (name, value) VALUES ('access', 1)")


def downgrade() -> None:
    op.execute("DELETE FROM sequences WHERE name = 'access'")
    op.drop_table("audit_events")
    op.drop_table("api_keys")
    op.drop_table("projects")
