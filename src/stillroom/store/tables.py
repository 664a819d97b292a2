"""Table definitions. Every stored row carries a project id; Alembic migrations mirror this file."""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

# Completion ids sort by creation time; byte order ("C") keeps that true on PostgreSQL too.
IdString = String(40).with_variant(String(40, collation="C"), "postgresql")
DEFAULT_PROJECT = "default"

completions = Table(
    "completions",
    metadata,
    Column("id", IdString, primary_key=True),
    Column("project_id", String(64), nullable=False, server_default=DEFAULT_PROJECT),
    Column("model", String(256), nullable=False),
    Column("created", Integer, nullable=False),
    Column("provider", String(32), nullable=False),
    Column("request", Text, nullable=False),  # request parameters, without messages and metadata
    Column("response", Text, nullable=False),  # the chat.completion object as answered
    Column("message_digests", Text, nullable=False),  # JSON list: the input messages, by content address
    Column("metadata", Text, nullable=False),  # JSON object
    Column("request_id", String(64), nullable=False),
    Column("stream", Boolean, nullable=False),
    Column("incomplete", Boolean, nullable=False),
    Column("latency_ms", Float, nullable=False),
    Column("stored_bytes", Integer, nullable=False),
    Index("ix_completions_project_id", "project_id", "id"),
    Index("ix_completions_project_model_id", "project_id", "model", "id"),
)

completion_metadata = Table(
    "completion_metadata",
    metadata,
    Column("completion_id", IdString, ForeignKey("completions.id", ondelete="CASCADE"), primary_key=True),
    Column("key", String(64), primary_key=True),
    Column("value", String(512), nullable=False),
    Column("project_id", String(64), nullable=False),
    Index("ix_completion_metadata_lookup", "project_id", "key", "value", "completion_id"),
)

message_contents = Table(
    "message_contents",
    metadata,
    Column("project_id", String(64), primary_key=True),
    Column("digest", String(64), primary_key=True),  # sha256 of the message's canonical JSON
    Column("body", Text, nullable=False),
    Column("size", Integer, nullable=False),
    Column("refs", Integer, nullable=False),
)
