"""Evals, their runs and per-item outputs. Kept apart from tables.py (like job_tables.py) so that the
evals migration (0005) can follow the chain; they may move into tables.py once the chain settles."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Float, ForeignKey, Index, Integer, String, Table, Text

from stillroom.store.tables import metadata

# eval_, evalrun_ and outputitem_ + 32 hex: up to 43 characters; byte order keeps them sorting by creation.
IdString = String(48).with_variant(String(48, collation="C"), "postgresql")

evals = Table(
    "evals",
    metadata,
    Column("id", IdString, primary_key=True),  # eval_ + 32 hex, rising with creation time
    Column("project_id", String(64), nullable=False),
    Column("name", String(512), nullable=True),
    Column("metadata", Text, nullable=True),  # JSON object or null
    Column("data_source_config", Text, nullable=False),  # JSON, as echoed (with the derived schema)
    Column("testing_criteria", Text, nullable=False),  # JSON list, each with its id
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Index("ix_evals_project_id", "project_id", "id"),
    Index("ix_evals_project_updated", "project_id", "updated_at", "id"),
)

eval_runs = Table(
    "eval_runs",
    metadata,
    Column("id", IdString, primary_key=True),  # evalrun_ + 32 hex, rising with creation time
    Column("eval_id", IdString, ForeignKey("evals.id", ondelete="CASCADE"), nullable=False),
    Column("project_id", String(64), nullable=False),
    Column("name", String(512), nullable=False),
    Column("model", String(256), nullable=True),
    Column("status", String(16), nullable=False),  # queued | in_progress | completed | canceled | failed
    Column("data_source", Text, nullable=False),  # JSON, normalised
    Column("metadata", Text, nullable=True),  # JSON object or null
    Column("error", Text, nullable=True),  # JSON {code, message}
    Column("result_counts", Text, nullable=False),  # JSON {total, errored, failed, passed}
    Column("per_model_usage", Text, nullable=False),  # JSON list
    Column("per_testing_criteria_results", Text, nullable=False),  # JSON list
    Column("created_at", BigInteger, nullable=False),
    Column("started_at", BigInteger, nullable=True),
    Column("finished_at", BigInteger, nullable=True),
    Column("worker_id", String(128), nullable=True),  # the worker holding the lease
    Column("lease_expires_at", Float, nullable=True),
    Column("attempts", Integer, nullable=False),
    Index("ix_eval_runs_eval_id", "eval_id", "id"),
    Index("ix_eval_runs_status", "status", "id"),
)

eval_output_items = Table(
    "eval_output_items",
    metadata,
    Column("id", IdString, primary_key=True),  # outputitem_ + 32 hex
    Column("run_id", IdString, ForeignKey("eval_runs.id", ondelete="CASCADE"), nullable=False),
    Column("eval_id", IdString, nullable=False),
    Column("datasource_item_id", Integer, nullable=False),
    Column("status", String(8), nullable=False),  # pass | fail
    Column("datasource_item", Text, nullable=False),  # JSON
    Column("results", Text, nullable=False),  # JSON list
    Column("sample", Text, nullable=False),  # JSON
    Column("created_at", BigInteger, nullable=False),
    Index("ix_eval_output_items_run", "run_id", "id"),
    Index("ix_eval_output_items_run_item", "run_id", "datasource_item_id", unique=True),
)
