"""What the index stage does about a change of the committed units: nothing, an update, a compaction or
a build, and the manifest of an update.

    build       train the structure (quantizer, codebooks) anew and fill every shard: no index yet, one of
                another kind or format, asked for (--rebuild), the collection grown past
                index.retrain_growth times the rows it was trained for, or an update's self-check under
                index.min_recall
    compaction  fill every shard anew from the live units with the same trained structure: tombstones and
                delta shards past index.compact_at of the live rows, or asked for (--compact)
    update      the units that left are retired (tombstones: search skips their rows), the new ones go into
                delta shard(s) filled with the same trained structure; no other shard is read or written

Units are the unit of change, as in the commit protocol: a unit whose marker digest changed (a file that
changed, a retried error, a superseded unit) is retired and added again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from embedding.config import IndexConfig
from embedding.index.kinds import IndexKind
from embedding.index.store import IndexManifest, ShardFiles


@dataclass
class Plan:
    action: str  # none | update | compaction | build
    reason: str
    added: list[str] = field(default_factory=list)  # unit ids whose rows go in
    retired: list[str] = field(default_factory=list)  # unit ids whose rows in the index leave it


def _rows_of(manifest: IndexManifest, units: set[str]) -> int:
    """Live rows of these units in the index."""
    return sum(
        span.rows
        for shard in manifest.shards
        for span in shard.spans
        if span.unit in units and span.unit not in shard.retired
    )


def plan_change(
    current: IndexManifest | None,
    committed: dict[str, str],
    unit_rows: dict[str, int],
    kind: IndexKind,
    identity: dict,
    cfg: IndexConfig,
    asked: str = "auto",
) -> Plan:
    """What to do to make the index hold exactly the committed units (unit id -> marker digest).

    `kind`: the kind the collection calls for now; `asked`: auto, rebuild or compact (the CLI's flags).
    """
    everything = sorted(committed)
    if asked == "rebuild":
        return Plan("build", "asked for (--rebuild)", everything)
    if current is None:
        return Plan("build", "no index yet", everything)
    if current.identity != identity:
        return Plan("build", "the index holds vectors of another model identity", everything)
    if current.trained is None or not all(shard.spans for shard in current.shards):
        return Plan("build", "the index predates incremental updates", everything)
    if kind.factory != current.factory:
        rows = sum(unit_rows.values())
        return Plan(
            "build",
            f"{rows} rows call for a {kind.kind} index ({kind.factory}), not {current.kind}",
            everything,
        )
    retired = sorted(u for u, digest in current.units.items() if committed.get(u) != digest)
    added = sorted(u for u, digest in committed.items() if current.units.get(u) != digest)
    if asked == "compact":
        return Plan("compaction", "asked for (--compact)", everything, retired)
    if not added and not retired:
        return Plan("none", "the index holds exactly the committed units")
    gone = _rows_of(current, set(retired))
    live = current.rows - gone + sum(unit_rows[u] for u in added)
    if current.trained_rows and live > cfg.retrain_growth * current.trained_rows:
        return Plan(
            "build",
            f"the collection grew to {live} rows, {live / current.trained_rows:.1f}x the "
            f"{current.trained_rows} its structure was trained on (index.retrain_growth "
            f"{cfg.retrain_growth})",
            everything,
            retired,
        )
    dead = current.retired_rows() + gone
    delta = current.delta_rows() - _delta_rows_of(current, set(retired)) + sum(unit_rows[u] for u in added)
    if dead + delta > cfg.compact_at * max(live, 1):
        return Plan(
            "compaction",
            f"retired rows ({dead}) and rows in delta shards ({delta}) pass index.compact_at "
            f"({cfg.compact_at}) of the {live} live rows",
            everything,
            retired,
        )
    return Plan("update", f"{len(added)} unit(s) added, {len(retired)} retired", added, retired)


def _delta_rows_of(manifest: IndexManifest, units: set[str]) -> int:
    return sum(
        span.rows
        for shard in manifest.shards
        if shard.delta
        for span in shard.spans
        if span.unit in units and span.unit not in shard.retired
    )


def tombstoned(shards: list[ShardFiles], retired: list[str]) -> list[ShardFiles]:
    """The shards with these units retired; a shard left with no live row is dropped (its files go with
    the next clean-up)."""
    gone = set(retired)
    out = []
    for shard in shards:
        held = {span.unit for span in shard.spans}
        marks = sorted(set(shard.retired) | (held & gone))
        if set(marks) >= held:
            continue
        out.append(shard.model_copy(update={"retired": marks}) if marks != shard.retired else shard)
    return out


def recall_fell(check: dict, built: float | None, floor: float) -> str | None:
    """Why an update's self-check calls for a build, or None: its worst recall is under `floor`, and
    under that of the build it started from by more than the check can tell apart (two standard errors
    of a recall measured on its queries x k results, at least 0.01): a structure whose own build was
    under the floor would not do better trained again on the same collection, and a sample's noise is no
    reason to train again."""
    measured = [
        (check[key], check.get(count, 0) * check.get("k", 10))
        for key, count in (("recall_at_k", "queries"), ("text_recall_at_k", "text_queries"))
        if key in check
    ]
    if not measured:
        return None
    worst, results = min(measured)
    noise = max(0.01, 2 * math.sqrt(worst * (1 - worst) / max(1, results)))
    if worst >= floor or worst >= (1.0 if built is None else built) - noise:
        return None
    return f"an update's self-check recall ({worst}) fell under index.min_recall ({floor})"
