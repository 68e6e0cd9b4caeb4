"""LanceDB: a table per model version, in a local folder or an object-store URL, written a unit at a time.

    <table>          the rows of embedding.sinks.rows, with the Arrow schema of the rows (embedding a
                     fixed_size_list<float32 | float16>[dim]); its schema metadata records the model
                     version and identity (one vector space per table)
    <table>_units    unit_id, digest, rows: the units the table holds

LanceDB has no transactions across tables, so a unit is written in two commits, each atomic on its own:
one merge_insert on the table (the unit's rows upserted by id, and in the same commit its rows whose id is
not among them deleted), then the unit's record upserted. A kill between the two leaves rows without a
record: the unit is not held, so the next delivery writes it again, which leaves each id once, with the
committed vector. The record is always written last, so a recorded unit is always whole.

The version and identity are kept in the table's own schema metadata rather than in a registry table:
they are written in the commit that creates the table, so no table ever exists unlabelled (a registry row
would be a second commit, lost to a kill in between), and they go wherever the table goes (copied, moved,
dropped). The units table is (re)created empty before the table is created, so records left by a dropped
table are never taken for rows the new one holds; a kill in between only makes it be recreated again.

Unit ids and ids come from manifests: the filters of writes and retirements are expressions of lancedb's
builder (lancedb.expr), never SQL strings; a search's filters are the SQL the builder renders (it quotes
identifiers and escapes literals). storage_options (credentials) go to lancedb only, never to a log line
or a message.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import timedelta
from typing import Any

import numpy as np
import pyarrow as pa

from embedding.config_sinks import LanceSinkConfig
from embedding.errors import ConfigError, SinkError
from embedding.sinks.base import Sink, as_metadata, check_identity, table_name
from embedding.store import faults

log = logging.getLogger(__name__)

VERSION_KEY = b"embedding.model_version"
IDENTITY_KEY = b"embedding.identity"
UNITS_SCHEMA = pa.schema(
    [
        pa.field("unit_id", pa.string(), nullable=False),
        pa.field("digest", pa.string(), nullable=False),
        pa.field("rows", pa.int64(), nullable=False),
    ]
)
IVF_PQ_MIN_ROWS = 256  # IVF-PQ trains 256 centroids per sub-vector: with fewer rows it indexes none
FILTER_BATCH = 1000  # unit ids per delete filter


def _options(config: LanceSinkConfig) -> dict[str, str]:
    """storage_options as lancedb takes them: strings (YAML's true/false as "true"/"false")."""
    return {
        key: ("true" if value else "false") if isinstance(value, bool) else str(value)
        for key, value in config.storage_options.items()
    }


def _missing(error: Exception) -> bool:
    return "not found" in str(error).lower() or "does not exist" in str(error).lower()


class LanceSink(Sink):
    def __init__(self, config: LanceSinkConfig, version: str):
        import lancedb

        self.config, self.name, self.version = config, config.name, version
        self.table = table_name(config.table, version)
        self.units = f"{self.table}_units"
        # Strong consistency: each call sees the commits of other processes (the tasks that write).
        try:
            self.db: Any = lancedb.connect(
                config.uri, storage_options=_options(config), read_consistency_interval=timedelta(0)
            )
        except Exception as exc:
            raise SinkError(
                f"sink {self.name}: cannot open the LanceDB database at {config.uri}: {_brief(exc)}"
            ) from exc
        self._tbl: Any = None
        self._units_tbl: Any = None

    def _open(self, name: str) -> Any | None:
        try:
            return self.db.open_table(name)
        except (ValueError, FileNotFoundError) as exc:
            if _missing(exc):
                return None
            raise

    @property
    def tbl(self) -> Any:
        if self._tbl is None:
            self._tbl = self._open(self.table)
            if self._tbl is None:
                raise SinkError(f"sink {self.name}: table {self.table} does not exist (not prepared)")
        return self._tbl

    @property
    def units_tbl(self) -> Any:
        if self._units_tbl is None:
            self._units_tbl = self._open(self.units)
            if self._units_tbl is None:
                raise SinkError(f"sink {self.name}: table {self.units} does not exist (not prepared)")
        return self._units_tbl

    def prepare(self, identity: dict[str, Any], schema: pa.Schema) -> None:
        tbl = self._open(self.table)
        if tbl is None:
            # Records of a table dropped since are not this table's: start them empty, then the table.
            stale = self._open(self.units) is not None
            self._units_tbl = self.db.create_table(
                self.units, schema=UNITS_SCHEMA, mode="overwrite" if stale else "create", exist_ok=True
            )
            labelled = schema.with_metadata(
                {**(schema.metadata or {}), VERSION_KEY: self.version.encode(), IDENTITY_KEY: _json(identity)}
            )
            tbl = self.db.create_table(self.table, schema=labelled, exist_ok=True)
            log.info("sink %s: created table %s (model version %s)", self.name, self.table, self.version)
        self._tbl = tbl
        metadata = tbl.schema.metadata or {}
        found = {
            "model_version": metadata[VERSION_KEY].decode() if VERSION_KEY in metadata else None,
            "identity": json.loads(metadata[IDENTITY_KEY]) if IDENTITY_KEY in metadata else {},
        }
        check_identity(self.name, self.table, self.version, identity, found)
        ours, theirs = schema.field("embedding").type, tbl.schema.field("embedding").type
        if ours.list_size != theirs.list_size:
            raise ConfigError(
                f"sink {self.name}: table {self.table} holds vectors of dimension {theirs.list_size}, "
                f"this run's have {ours.list_size}; refusing to mix them"
            )
        if self._open(self.units) is None:
            self._units_tbl = self.db.create_table(self.units, schema=UNITS_SCHEMA, exist_ok=True)
        self._evolve(schema)

    def _evolve(self, schema: pa.Schema) -> None:
        """Add the carried columns of `schema` that the table lacks (null in the rows it holds)."""
        have = set(self.tbl.schema.names)
        new = [schema.field(n).with_nullable(True) for n in schema.names if n not in have]
        if not new:
            return
        try:
            self.tbl.add_columns(new)
        except Exception:
            # Another writer may have added them meanwhile: fine if they are there now.
            if any(f.name not in self.tbl.schema.names for f in new):
                raise
        log.info("sink %s: table %s gained columns %s", self.name, self.table, [f.name for f in new])

    def held(self) -> dict[str, str]:
        records = self.units_tbl.to_arrow().select(["unit_id", "digest"])
        return dict(
            zip(records.column("unit_id").to_pylist(), records.column("digest").to_pylist(), strict=True)
        )

    def write(self, unit: str, digest: str, rows: pa.Table) -> None:
        from lancedb.expr import col, lit

        self._evolve(rows.schema)
        rows = self._conform(_distinct(rows))
        (
            self.tbl.merge_insert("id")
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .when_not_matched_by_source_delete(col("unit_id") == lit(unit))
            .execute(rows)
        )
        faults.point("sink.in_unit")  # a test's kill between the unit's rows and its record
        self._record(unit, digest, rows.num_rows)

    def _record(self, unit: str, digest: str, count: int) -> None:
        """The unit's record: written after its rows, so that a recorded unit is whole."""
        record = pa.Table.from_pylist(
            [{"unit_id": unit, "digest": digest, "rows": count}], schema=UNITS_SCHEMA
        )
        self.units_tbl.merge_insert(
            "unit_id"
        ).when_matched_update_all().when_not_matched_insert_all().execute(record)

    def _conform(self, rows: pa.Table) -> pa.Table:
        """The rows in the table's schema: its column order and types, its columns they lack as nulls."""
        schema = self.tbl.schema
        columns = []
        for field in schema:
            if field.name in rows.column_names:
                columns.append(rows.column(field.name))
            else:
                columns.append(pa.nulls(rows.num_rows, field.type))
        try:
            cast = [c if c.type == f.type else c.cast(f.type) for c, f in zip(columns, schema, strict=True)]
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
            changed = [
                f"{f.name} ({f.type}, the rows' {c.type})"
                for c, f in zip(columns, schema, strict=True)
                if c.type != f.type
            ]
            raise SinkError(
                f"sink {self.name}: table {self.table} has other types for columns {', '.join(changed)}: "
                f"{str(exc).splitlines()[0]}"
            ) from exc
        return pa.Table.from_arrays(cast, schema=schema.remove_metadata())

    def retire(self, units: list[str]) -> None:
        from lancedb.expr import col

        if not units:
            return
        for start in range(0, len(units), FILTER_BATCH):
            batch = units[start : start + FILTER_BATCH]
            self.tbl.delete(col("unit_id").isin(batch))  # rows first: a record never outlives them
            self.units_tbl.delete(col("unit_id").isin(batch))

    def finish(self) -> None:
        kind = self.config.create_index
        if kind == "none":
            return
        if any("embedding" in index.columns for index in self.tbl.list_indices()):
            return
        count = self.tbl.count_rows()
        if kind == "ivf_pq" and count < IVF_PQ_MIN_ROWS:
            log.info(
                "sink %s: table %s has %d rows, fewer than the %d an IVF-PQ index needs: not indexed yet "
                "(searched exhaustively)",
                self.name,
                self.table,
                count,
                IVF_PQ_MIN_ROWS,
            )
            return
        if count == 0:
            return
        from lancedb.index import IvfHnswSq, IvfPq

        config = IvfPq(distance_type="cosine") if kind == "ivf_pq" else IvfHnswSq(distance_type="cosine")
        self.tbl.create_index("embedding", config=config)
        log.info("sink %s: table %s indexed (%s, cosine, %d rows)", self.name, self.table, kind, count)

    def nearest(
        self, vector: np.ndarray, k: int, filters: dict[str, str]
    ) -> list[tuple[float, dict[str, Any]]]:
        from lancedb.expr import col, lit

        schema = self.tbl.schema
        where = []
        for name, value in filters.items():
            if name not in schema.names or name in ("embedding", "unit_id"):
                raise ConfigError(
                    f"filter on '{name}': no such column in sink {self.name}'s table {self.table}"
                )
            kind = schema.field(name).type
            if pa.types.is_list(kind) or pa.types.is_large_list(kind):  # a list column contains it
                # No expression of lancedb's builder tests a list: the SQL of its column and literal
                # (quoted and escaped by the builder) around DataFusion's array_has.
                where.append(f"array_has({col(name).to_sql()}, {lit(str(value)).to_sql()})")
            else:
                where.append((col(name).cast("string") == lit(str(value))).to_sql())
        shown = [c for c in schema.names if c != "embedding"]
        query = (
            self.tbl.search(np.asarray(vector, np.float32), vector_column_name="embedding")
            .distance_type("cosine")
            .select([*shown, "_distance"])
            .limit(k)
        )
        if where:
            query = query.where(" AND ".join(where), prefilter=True)
        found = query.to_arrow()
        distances = found.column("_distance").to_pylist()
        rows = found.select(shown).to_pylist()
        return [(1.0 - float(d), as_metadata(row)) for d, row in zip(distances, rows, strict=True)]

    def close(self) -> None:
        self._tbl = self._units_tbl = None
        self.db = None


def _brief(error: Exception) -> str:
    """lancedb's message of a failed request, which is a debug dump of it: the store's error code and
    message when it has them, else its start."""
    text = str(error).strip()
    code, message = re.search(r"<Code>(.*?)</Code>", text), re.search(r"<Message>(.*?)</Message>", text)
    if code:
        return f"{code.group(1)}: {message.group(1)}" if message else code.group(1)
    return text.splitlines()[0][:300] if text else type(error).__name__


def _json(value: dict[str, Any]) -> bytes:
    return json.dumps(value, sort_keys=True, default=str).encode()


def _distinct(rows: pa.Table) -> pa.Table:
    """The rows with each id once (the first), as merge_insert requires."""
    ids = rows.column("id").to_numpy(zero_copy_only=False)
    _, first = np.unique(ids.astype(str), return_index=True)
    if len(first) == rows.num_rows:
        return rows
    return rows.take(pa.array(np.sort(first)))
