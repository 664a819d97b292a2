"""Table definitions. Every stored row carries a project id; Alembic migrations mirror this file."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    MetaData,
    String,
    Table,
    Text,
    func,
    text,
)

metadata = MetaData()

# Completion ids sort by creation time; byte order ("C") keeps that true on PostgreSQL too.
IdString = String(40).with_variant(String(40, collation="C"), "postgresql")
DEFAULT_PROJECT = "default"

# Lists page on `seq`, the commit sequence: numbered in the order the rows were committed, so a stream
# (committed when it ends, though its id was minted when it began) is never behind a cursor that already
# passed it. Every time and size column is 64-bit.
completions = Table(
    "completions",
    metadata,
    Column("id", IdString, primary_key=True),
    Column("seq", BigInteger, nullable=False),
    Column("project_id", String(64), nullable=False, server_default=DEFAULT_PROJECT),
    Column("model", String(256), nullable=False),  # the configured name the client asked for
    Column("response_model", String(256), nullable=False, server_default=text("''")),  # the stored object's "model"
    Column("created", BigInteger, nullable=False),
    Column("provider", String(32), nullable=False),
    Column("request", Text, nullable=False),  # request parameters, without messages and metadata
    Column("response", Text, nullable=False),  # the chat.completion object as answered
    Column("message_digests", Text, nullable=False),  # JSON list: the input messages, by content address
    Column("metadata", Text, nullable=False),  # JSON object
    Column("request_id", String(64), nullable=False),
    Column("stream", Boolean, nullable=False),
    Column("incomplete", Boolean, nullable=False),
    Column("latency_ms", Float, nullable=False),
    Column("stored_bytes", BigInteger, nullable=False),
    # The commit clock (µs; stillroom.store.timeline): what turns a time range into a seq range.
    Column("clock", BigInteger, nullable=False, server_default="0"),
    Index("ux_completions_seq", "seq", unique=True),
    Index("ix_completions_project_seq", "project_id", "seq"),
    Index("ix_completions_project_model_seq", "project_id", "model", "seq"),
    Index("ix_completions_project_clock", "project_id", "clock", "seq"),
)

# `list(model=...)`'s second walk (stillroom.store.pages): the stored object's own model where it differs from
# the configured one, NULL where the two agree. An index on the expression, so that PostgreSQL keeps statistics
# of it and knows that for a model reporting its own name (o4-mini as o4-mini) the walk finds nothing.
other_model = func.nullif(completions.c.response_model, completions.c.model)
Index("ix_completions_project_other_model_seq", completions.c.project_id, other_model, completions.c.seq)

completion_metadata = Table(
    "completion_metadata",
    metadata,
    Column("completion_id", IdString, ForeignKey("completions.id", ondelete="CASCADE"), primary_key=True),
    Column("key", String(64), primary_key=True),
    Column("value", String(512), nullable=False),
    Column("project_id", String(64), nullable=False),
    Column("seq", BigInteger, nullable=False),  # the completion's, so that a filter walks in list order
    Index("ix_completion_metadata_lookup", "project_id", "key", "value", "seq"),
)

message_contents = Table(
    "message_contents",
    metadata,
    Column("project_id", String(64), primary_key=True),
    Column("digest", String(64), primary_key=True),  # sha256 of the message's canonical JSON
    Column("body", Text, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("refs", BigInteger, nullable=False),
)

# A deleted completion's place in the commit sequence, so that `after=<its id>` still resumes exactly there.
completion_tombstones = Table(
    "completion_tombstones",
    metadata,
    Column("id", IdString, primary_key=True),
    Column("project_id", String(64), nullable=False),
    Column("seq", BigInteger, nullable=False),
)

# Named counters, one row each. `completions` holds the last commit sequence number handed out; a write
# batch increments it first, and the row lock it takes is held to the commit, so on PostgreSQL the
# batches of several processes are numbered in the order they commit. Its `clock` and `lag` are the commit
# clock's last value and largest lag (stillroom.store.timeline), moved by the same statement.
sequences = Table(
    "sequences",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", BigInteger, nullable=False),
    Column("clock", BigInteger, nullable=False, server_default="0"),
    Column("lag", BigInteger, nullable=False, server_default="0"),
)

# Projects own every stored row (by `project_id`). `used_bytes` is the running total of what the project keeps
# (completion rows plus its message contents), changed by the same transaction that writes or frees the bytes.
projects = Table(
    "projects",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(256), nullable=False),
    Column("created", BigInteger, nullable=False),
    Column("quota_bytes", BigInteger, nullable=False),
    Column("used_bytes", BigInteger, nullable=False),
    Column("not_stored", BigInteger, nullable=False),  # answers not stored because of quota or the switch
    Column("storage_enabled", Boolean, nullable=False),
    Column("store_policy", String(16), nullable=False),  # request | all | sample
    Column("sample_rate", Float, nullable=False),
    Column("default_metadata", Text, nullable=False),  # JSON object added under a stored request's own
    Column("retention_days", BigInteger, nullable=True),  # null: keep forever
)

# API keys: only the SHA-256 of the key is kept; `prefix` is what lists and the audit log show.
api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("project_id", String(64), nullable=False),
    Column("name", String(256), nullable=False),
    Column("role", String(16), nullable=False),
    Column("prefix", String(16), nullable=False),
    Column("hash", String(64), nullable=False),
    Column("created", BigInteger, nullable=False),
    Column("last_used", BigInteger, nullable=True),
    Column("store_policy", String(16), nullable=True),  # null: the project's policy
    Column("sample_rate", Float, nullable=True),
    Column("default_metadata", Text, nullable=True),
    Index("ux_api_keys_hash", "hash", unique=True),
    Index("ix_api_keys_project", "project_id", "id"),
)

# Who did what, when: one row per audited request. `project_id` is null for organization-level events.
audit_events = Table(
    "audit_events",
    metadata,
    Column("id", IdString, primary_key=True),  # audit_ + time-ordered
    Column("project_id", String(64), nullable=True),
    Column("created", BigInteger, nullable=False),  # unix seconds
    Column("actor", String(128), nullable=False),  # key prefix, token:<sub>, server-key or anonymous
    Column("action", String(64), nullable=False),
    Column("operation", String(64), nullable=False),
    Column("target", String(512), nullable=False),  # method and path
    Column("outcome", String(16), nullable=False),  # allowed | denied
    Index("ix_audit_events_project", "project_id", "id"),
)

# Files (bytes in the file storage, stillroom.store.blobs), fine-tuning jobs with their events and checkpoints,
# and the models succeeded jobs register. Ids sort by creation; lists page on them, newest first.
files = Table(
    "files",
    metadata,
    Column("id", IdString, primary_key=True),  # file-…, sortable by creation
    Column("project_id", String(64), nullable=False),
    Column("purpose", String(32), nullable=False),
    Column("filename", String(512), nullable=False),
    Column("bytes", BigInteger, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=True),
    Column("status", String(16), nullable=False),
    Column("storage_key", String(512), nullable=False),  # where the bytes live in the file storage
    Index("ix_files_project_id", "project_id", "id"),
)

fine_tuning_jobs = Table(
    "fine_tuning_jobs",
    metadata,
    Column("id", IdString, primary_key=True),  # ftjob-…, sortable by creation
    Column("project_id", String(64), nullable=False),
    Column("model", String(256), nullable=False),
    Column("status", String(32), nullable=False),
    Column("training_file", String(40), nullable=False),
    Column("validation_file", String(40), nullable=True),
    Column("suffix", String(64), nullable=True),
    Column("seed", BigInteger, nullable=False),
    Column("method", Text, nullable=False),  # JSON: the method as asked ("auto" kept)
    Column("hyperparameters", Text, nullable=True),  # JSON: resolved, once the files are validated
    Column("metadata", Text, nullable=True),  # JSON object or null
    Column("error", Text, nullable=True),  # JSON {code, message, param}
    Column("fine_tuned_model", String(256), nullable=True),
    Column("result_files", Text, nullable=False),  # JSON list of file ids
    Column("trained_tokens", BigInteger, nullable=True),
    Column("created_at", BigInteger, nullable=False),
    Column("finished_at", BigInteger, nullable=True),
    Column("estimated_finish", BigInteger, nullable=True),
    Column("worker_id", String(128), nullable=True),  # the worker holding the lease
    Column("lease_expires_at", Float, nullable=True),  # unix time; heartbeats push it forward
    Column("attempts", BigInteger, nullable=False),  # claims so far (a lost worker's job is retried once)
    Index("ix_fine_tuning_jobs_project_id", "project_id", "id"),
    Index("ix_fine_tuning_jobs_status", "status", "id"),
)

fine_tuning_job_metadata = Table(
    "fine_tuning_job_metadata",
    metadata,
    Column("job_id", IdString, ForeignKey("fine_tuning_jobs.id", ondelete="CASCADE"), primary_key=True),
    Column("key", String(64), primary_key=True),
    Column("value", String(512), nullable=False),
    Column("project_id", String(64), nullable=False),
    Index("ix_fine_tuning_job_metadata_lookup", "project_id", "key", "value", "job_id"),
)

fine_tuning_job_events = Table(
    "fine_tuning_job_events",
    metadata,
    Column("id", IdString, primary_key=True),  # ft-event-…, sortable by creation
    Column("job_id", IdString, ForeignKey("fine_tuning_jobs.id", ondelete="CASCADE"), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("level", String(8), nullable=False),
    Column("message", Text, nullable=False),
    Column("type", String(16), nullable=False),
    Column("data", Text, nullable=True),  # JSON
    Index("ix_fine_tuning_job_events_job_id", "job_id", "id"),
)

fine_tuning_checkpoints = Table(
    "fine_tuning_checkpoints",
    metadata,
    Column("id", IdString, primary_key=True),  # ftckpt_…, sortable by creation
    Column("job_id", IdString, ForeignKey("fine_tuning_jobs.id", ondelete="CASCADE"), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("step_number", BigInteger, nullable=False),
    Column("metrics", Text, nullable=False),  # JSON
    Column("fine_tuned_model_checkpoint", String(256), nullable=False),
    Column("result_files", Text, nullable=False, server_default="[]"),  # JSON list: its zipped adapter's file id
    Index("ix_fine_tuning_checkpoints_job_id", "job_id", "id"),
)

fine_tuned_models = Table(
    "fine_tuned_models",
    metadata,
    Column("name", String(256), primary_key=True),  # ft:<base>:<project>:<suffix>:<job id>
    Column("project_id", String(64), nullable=False),
    Column("job_id", IdString, nullable=False),
    Column("base_model", String(256), nullable=False),
    Column("gguf_file", String(40), nullable=False),  # the file (purpose fine-tune-results) llama.cpp loads
    Column("created_at", BigInteger, nullable=False),
    Index("ix_fine_tuned_models_project_id", "project_id", "name"),
)

# Evals, their runs (a work queue with leases, like fine-tuning jobs) and per-item outputs.
# eval_, evalrun_ and outputitem_ + 32 hex: up to 43 characters; byte order keeps them sorting by creation.
EvalIdString = String(48).with_variant(String(48, collation="C"), "postgresql")

evals = Table(
    "evals",
    metadata,
    Column("id", EvalIdString, primary_key=True),  # eval_ + 32 hex, rising with creation time
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
    Column("id", EvalIdString, primary_key=True),  # evalrun_ + 32 hex, rising with creation time
    Column("eval_id", EvalIdString, ForeignKey("evals.id", ondelete="CASCADE"), nullable=False),
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
    Column("attempts", BigInteger, nullable=False),
    Index("ix_eval_runs_eval_id", "eval_id", "id"),
    Index("ix_eval_runs_status", "status", "id"),
)

eval_output_items = Table(
    "eval_output_items",
    metadata,
    Column("id", EvalIdString, primary_key=True),  # outputitem_ + 32 hex
    Column("run_id", EvalIdString, ForeignKey("eval_runs.id", ondelete="CASCADE"), nullable=False),
    Column("eval_id", EvalIdString, nullable=False),
    Column("datasource_item_id", BigInteger, nullable=False),
    Column("status", String(8), nullable=False),  # pass | fail
    Column("datasource_item", Text, nullable=False),  # JSON
    Column("results", Text, nullable=False),  # JSON list
    Column("sample", Text, nullable=False),  # JSON
    Column("created_at", BigInteger, nullable=False),
    Index("ix_eval_output_items_run", "run_id", "id"),
    Index("ix_eval_output_items_run_item", "run_id", "datasource_item_id", unique=True),
)
