"""PostgreSQL with pgvector: a table per model version, written a unit per transaction.

    <table>          id text primary key, unit_id, embedding vector(dim) (halfvec for float16 output),
                     model_version, uri, width, height, content_sha256, video_id, frame_time_s, and the
                     carried columns typed by their Arrow type (text, text[], bigint, double precision,
                     boolean, date, timestamptz; jsonb for the rest)
    <table>_units    unit_id primary key, digest, rows: the units the table holds
    embedding_sink_tables   table_name -> model_version, identity (one vector space per table)

A unit is written in one transaction: its old rows deleted, its rows copied (binary COPY) into a staging
table and upserted by id, its record upserted. A kill at any point leaves the unit as it was or as it is
now, never half of it. Identifiers are always quoted by psycopg (column names come from manifests), and
values always travel as parameters or COPY data: nothing is built from strings.

The password comes from `password_env` (read in the process that connects), a libpq passfile
(`password_file`), or libpq's own PGPASSWORD; it is never written to disk and never logged.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import psycopg
import pyarrow as pa
from psycopg import sql
from psycopg.types.json import Jsonb

from embedding.config_sinks import PostgresSinkConfig
from embedding.errors import ConfigError
from embedding.sinks.base import Sink, as_metadata, check_identity, table_name
from embedding.sinks.rows import FIXED_COLUMNS, FRAME_COLUMNS
from embedding.store import faults

REGISTRY = "embedding_sink_tables"
_OWN_TYPES = {
    "id": "text PRIMARY KEY",
    "unit_id": "text NOT NULL",
    "model_version": "text NOT NULL",
    "uri": "text",
    "width": "integer",
    "height": "integer",
    "content_sha256": "text",
    "video_id": "text",
    "frame_time_s": "double precision",
}


# What binary COPY calls the declared types (psycopg's type registry).
_COPY_NAMES = {"double precision": "float8", "integer": "int4", "bigint": "int8", "boolean": "bool"}


def column_type(kind: pa.DataType) -> str:
    """The PostgreSQL type of a carried column of this Arrow type (jsonb for what has no plain match)."""
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_dictionary(kind):
        return "text"
    if (pa.types.is_list(kind) or pa.types.is_large_list(kind)) and pa.types.is_string(kind.value_type):
        return "text[]"
    if pa.types.is_integer(kind):
        return "bigint"
    if pa.types.is_floating(kind):
        return "double precision"
    if pa.types.is_boolean(kind):
        return "boolean"
    if pa.types.is_date(kind):
        return "date"
    if pa.types.is_timestamp(kind):
        return "timestamptz" if kind.tz else "timestamp"
    return "jsonb"


def connect(config: PostgresSinkConfig) -> psycopg.Connection:
    """A connection with pgvector's types registered; the password from where the config says."""
    options: dict[str, Any] = {"connect_timeout": 10}
    if config.password_env:
        if config.password_env not in os.environ:
            raise ConfigError(
                f"sink {config.name}: its password_env, {config.password_env}, is not set in the environment"
            )
        options["password"] = os.environ[config.password_env]
    if config.password_file:
        options["passfile"] = config.password_file
    from pgvector.psycopg import register_vector

    # Autocommit: each `transaction()` block is a transaction of its own (not a savepoint of one a query
    # before it opened implicitly), and a lone query holds no transaction open.
    conn = psycopg.connect(config.url, autocommit=True, **options)
    conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    register_vector(conn)
    return conn


class PostgresSink(Sink):
    def __init__(self, config: PostgresSinkConfig, version: str):
        self.config, self.name, self.version = config, config.name, version
        self.table = table_name(config.table, version)
        self.units = f"{self.table}_units"
        self.conn = connect(config)
        self.vector = "vector"

    def _id(self, name: str) -> sql.Identifier:
        return sql.Identifier(name)

    def prepare(self, identity: dict[str, Any], schema: pa.Schema) -> None:
        dim = schema.field("embedding").type.list_size
        half = pa.types.is_float16(schema.field("embedding").type.value_type)
        if half:
            found = self.conn.execute(
                "SELECT extversion FROM pg_extension WHERE extname = 'vector'"
            ).fetchone()
            version = tuple(int(p) for p in str(found[0] if found else "0").split(".")[:2])
            if version < (0, 7):
                raise ConfigError(
                    f"sink {self.name}: float16 vectors need pgvector 0.7 or later (halfvec); the server has "
                    f"{found[0] if found else 'none'}: set output.embedding_dtype float32 or upgrade pgvector"
                )
            self.vector = "halfvec"
        with self.conn.transaction():
            self.conn.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {} (table_name text PRIMARY KEY, "
                    "model_version text NOT NULL, identity jsonb NOT NULL)"
                ).format(self._id(REGISTRY))
            )
            row = self.conn.execute(
                sql.SQL("SELECT model_version, identity FROM {} WHERE table_name = %s").format(
                    self._id(REGISTRY)
                ),
                [self.table],
            ).fetchone()
            if row is None:
                self.conn.execute(
                    sql.SQL("INSERT INTO {} VALUES (%s, %s, %s)").format(self._id(REGISTRY)),
                    [self.table, self.version, Jsonb(identity)],
                )
            else:
                check_identity(
                    self.name,
                    self.table,
                    self.version,
                    identity,
                    {"model_version": row[0], "identity": row[1]},
                )
            columns = [sql.SQL("{} {}").format(self._id(c), sql.SQL(t)) for c, t in _OWN_TYPES.items()]
            columns.append(
                sql.SQL("embedding {}({}) NOT NULL").format(sql.SQL(self.vector), sql.Literal(dim))
            )
            self.conn.execute(
                sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(
                    self._id(self.table), sql.SQL(", ").join(columns)
                )
            )
            self._add_columns(schema)
            self.conn.execute(
                sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (unit_id)").format(
                    self._id(f"{self.table}_unit_id"), self._id(self.table)
                )
            )
            self.conn.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {} (unit_id text PRIMARY KEY, digest text NOT NULL, "
                    "rows integer NOT NULL, written_at timestamptz NOT NULL DEFAULT now())"
                ).format(self._id(self.units))
            )

    def _add_columns(self, schema: pa.Schema) -> None:
        """Carried columns the table lacks (a manifest that gained a column), added as nullable."""
        for name in schema.names:
            if name not in FIXED_COLUMNS + FRAME_COLUMNS:
                self.conn.execute(
                    sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}").format(
                        self._id(self.table), self._id(name), sql.SQL(column_type(schema.field(name).type))
                    )
                )

    def held(self) -> dict[str, str]:
        rows = self.conn.execute(sql.SQL("SELECT unit_id, digest FROM {}").format(self._id(self.units)))
        return {unit: digest for unit, digest in rows.fetchall()}

    def write(self, unit: str, digest: str, rows: pa.Table) -> None:
        names = rows.column_names
        target, columns = self._id(self.table), sql.SQL(", ").join(self._id(n) for n in names)
        updates = sql.SQL(", ").join(
            sql.SQL("{0} = EXCLUDED.{0}").format(self._id(n)) for n in names if n != "id"
        )
        with self.conn.transaction():
            self._add_columns(rows.schema)
            self.conn.execute(sql.SQL("DELETE FROM {} WHERE unit_id = %s").format(target), [unit])
            self.conn.execute(
                sql.SQL("CREATE TEMP TABLE stage (LIKE {} INCLUDING DEFAULTS) ON COMMIT DROP").format(target)
            )
            with self.conn.cursor() as cur:
                copy = sql.SQL("COPY stage ({}) FROM STDIN WITH (FORMAT BINARY)").format(columns)
                with cur.copy(copy) as out:
                    out.set_types([self._copy_type(rows.schema.field(n).type, n) for n in names])
                    for values in _records(rows, self.config.batch_rows, self.vector == "halfvec"):
                        out.write_row(values)
            faults.point("sink.in_unit")  # a test's kill inside the unit's transaction
            self.conn.execute(
                sql.SQL(
                    "INSERT INTO {} ({}) SELECT DISTINCT ON (id) {} FROM stage "
                    "ON CONFLICT (id) DO UPDATE SET {}"
                ).format(target, columns, columns, updates)
            )
            self.conn.execute(
                sql.SQL(
                    "INSERT INTO {} (unit_id, digest, rows) VALUES (%s, %s, %s) ON CONFLICT (unit_id) "
                    "DO UPDATE SET digest = EXCLUDED.digest, rows = EXCLUDED.rows, written_at = now()"
                ).format(self._id(self.units)),
                [unit, digest, rows.num_rows],
            )

    def _copy_type(self, kind: pa.DataType, name: str) -> str:
        """The type name psycopg's binary COPY knows the column by."""
        if name == "embedding":
            return self.vector
        declared = (
            _OWN_TYPES[name].removesuffix(" PRIMARY KEY").removesuffix(" NOT NULL")
            if name in _OWN_TYPES
            else column_type(kind)
        )
        return _COPY_NAMES.get(declared, declared)

    def retire(self, units: list[str]) -> None:
        if not units:
            return
        with self.conn.transaction():
            for table in (self.table, self.units):
                self.conn.execute(
                    sql.SQL("DELETE FROM {} WHERE unit_id = ANY(%s)").format(self._id(table)), [units]
                )

    def finish(self) -> None:
        if self.config.create_index != "hnsw":
            return
        ops = "halfvec_cosine_ops" if self.vector == "halfvec" else "vector_cosine_ops"
        with self.conn.transaction():
            self.conn.execute(
                sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} USING hnsw (embedding {})").format(
                    self._id(f"{self.table}_hnsw"), self._id(self.table), sql.SQL(ops)
                )
            )

    def nearest(
        self, vector: np.ndarray, k: int, filters: dict[str, str]
    ) -> list[tuple[float, dict[str, Any]]]:
        columns = self.conn.execute(
            "SELECT column_name, data_type, udt_name FROM information_schema.columns WHERE table_name = %s "
            "ORDER BY ordinal_position",
            [self.table],
        ).fetchall()
        kinds: dict[str, str] = {name: kind for name, kind, _ in columns}
        self.vector = next((udt for name, _, udt in columns if name == "embedding"), self.vector)
        where, values = [], []
        for name, value in filters.items():
            if name not in kinds or name in ("embedding", "unit_id"):
                raise ConfigError(
                    f"filter on '{name}': no such column in sink {self.name}'s table {self.table}"
                )
            test = "%s = ANY({})" if kinds[name] == "ARRAY" else "{}::text = %s"  # a list column contains it
            where.append(sql.SQL(test).format(self._id(name)))
            values.append(value)
        shown = [c for c in kinds if c != "embedding"]
        query = sql.SQL(
            "SELECT {}, 1 - (embedding <=> %s) FROM {} {} ORDER BY embedding <=> %s LIMIT %s"
        ).format(
            sql.SQL(", ").join(self._id(c) for c in shown),
            self._id(self.table),
            sql.SQL("WHERE ") + sql.SQL(" AND ").join(where) if where else sql.SQL(""),
        )
        query_vector: Any = np.asarray(vector, np.float32)
        if self.vector == "halfvec":
            from pgvector import HalfVector

            query_vector = HalfVector(query_vector)
        rows = self.conn.execute(query, [query_vector, *values, query_vector, k]).fetchall()
        return [(float(r[-1]), as_metadata(dict(zip(shown, r[:-1], strict=True)))) for r in rows]

    def close(self) -> None:
        self.conn.close()


def _records(rows: pa.Table, batch: int, half: bool) -> Any:
    """The rows as COPY values, a batch at a time: vectors as numpy arrays (halfvec: pgvector's
    HalfVector), jsonb columns wrapped."""
    from pgvector import HalfVector

    for start in range(0, rows.num_rows, batch):
        part = rows.slice(start, batch)
        columns: list[list[Any]] = []
        for name in part.column_names:
            data = part.column(name)
            if name == "embedding":
                dim = data.type.list_size
                flat = data.combine_chunks().flatten().to_numpy(zero_copy_only=False)
                vectors = list(flat.reshape(-1, dim))
                columns.append([HalfVector(v) for v in vectors] if half else vectors)
            elif name not in _OWN_TYPES and column_type(data.type) == "jsonb":
                columns.append([None if v is None else Jsonb(v) for v in data.to_pylist()])
            else:
                columns.append(data.to_pylist())
        yield from zip(*columns, strict=True)


def as_vector(value: Any) -> np.ndarray:
    """A vector read back from the table, as float32."""
    return np.asarray(value.to_numpy() if hasattr(value, "to_numpy") else value, dtype=np.float32)
