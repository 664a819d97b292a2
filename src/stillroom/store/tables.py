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
    Column("model", String(256), nullable=False),
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
    Index("ux_completions_seq", "seq", unique=True),
    Index("ix_completions_project_seq", "project_id", "seq"),
    Index("ix_completions_project_model_seq", "project_id", "model", "seq"),
)

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
# batches of several processes are numbered in the order they commit.
sequences = Table(
    "sequences",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", BigInteger, nullable=False),
)
