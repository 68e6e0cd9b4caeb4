"""The `sinks:` sections of the config: where committed vectors are delivered besides the Parquet tables
(embedding.sinks). Each entry is one database, told apart by its `kind`."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class _Section(BaseModel):  # embedding.config.Section's rules (config imports this module)
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


_SINK_NAME = r"^[a-z][a-z0-9_]{0,30}$"
# A table name once {version} is filled in: letters, digits and underscores (the version's "-" and "."
# become "_"), so that it is a plain SQL identifier and a plain LanceDB table name.
_TABLE_TEMPLATE = r"^[a-z_][a-z0-9_]*\{version\}[a-z0-9_]*$|^[a-z_][a-z0-9_]*$"


class PostgresSinkConfig(_Section):
    """PostgreSQL with pgvector: one table per model version, upserted by id (embedding.sinks.postgres)."""

    kind: Literal["postgres"]
    name: str = Field(pattern=_SINK_NAME)
    # A libpq URL or key=value string without a password: the password comes from password_env (the name
    # of an environment variable), a libpq passfile (password_file, mode 0600), or PGPASSWORD.
    url: str
    password_env: str | None = None
    password_file: str | None = None
    table: str = Field(default="embeddings_{version}", pattern=_TABLE_TEMPLATE)
    create_index: Literal["none", "hnsw"] = "none"  # HNSW with cosine ops, made at the end of a run
    batch_rows: int = Field(default=5000, ge=1)  # rows per COPY

    @field_validator("url")
    @classmethod
    def _no_password(cls, url: str) -> str:
        from urllib.parse import urlsplit

        if "password=" in url or (
            url.startswith(("postgres://", "postgresql://")) and urlsplit(url).password
        ):
            raise ValueError("put no password in the URL: use password_env, password_file or PGPASSWORD")
        return url


class LanceSinkConfig(_Section):
    """LanceDB: a table per model version, in a folder or an object-store URL (embedding.sinks.lance)."""

    kind: Literal["lance"]
    name: str = Field(pattern=_SINK_NAME)
    uri: str  # a local folder or s3://, gs:// URL of the LanceDB database
    storage_options: dict[str, Any] = Field(default_factory=dict)
    table: str = Field(default="embeddings_{version}", pattern=_TABLE_TEMPLATE)
    create_index: Literal["none", "ivf_pq", "hnsw"] = "none"


SinkConfig = Annotated[PostgresSinkConfig | LanceSinkConfig, Field(discriminator="kind")]
