"""Text queries for the self-check of a compressed index.

A compressed index (HNSW with scalar quantization, OPQ+IVF+PQ) is trained on image vectors. Text
vectors of the same model lie elsewhere in the shared space, so such an index can fail text queries
while image queries look fine: its self-check measures both. Exact (flat) indexes need no text probe.

The probes are the committed text embeddings of the same model version under the output root when there
are any (what users search with), else a fixed set of short descriptions in the version's languages,
encoded with its text tower in this process.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pyarrow.parquet as pq

from embedding.config import Config
from embedding.index.fill import read_vectors
from embedding.index.store import IndexManifest
from embedding.store.partition import Partition

PHRASES = [
    "a photo of a dog",
    "a cat sleeping on a sofa",
    "a red car parked in the street",
    "a city skyline at night",
    "a bowl of fruit on a table",
    "a mountain landscape with snow",
    "people walking on a beach",
    "an old black and white portrait",
    "a painting of flowers",
    "a map of a coastline",
    "a handwritten letter",
    "a bridge over a river",
    "un chat noir dans un jardin",
    "une église en pierre",
    "ein Zug im Bahnhof",
    "eine Katze auf dem Dach",
    "un perro corriendo en el parque",
    "una ciudad antigua junto al mar",
    "a blue star on a grey background",
    "a green circle",
    "a close-up of a bird on a branch",
    "a crowded market street",
    "a diagram with arrows and labels",
    "a ship at sea in a storm",
    "a child playing football",
    "a plate of pasta",
    "an aerial view of farmland",
    "a wooden door in a stone wall",
    "a vintage poster with bold letters",
    "a snowy forest path",
    "a lighthouse on a cliff",
    "a horse in a field",
]


def text_probes(cfg: Config, manifest: IndexManifest) -> np.ndarray | None:
    """Up to index.self_check_texts unit text vectors of the version, or None for an exact index."""
    count = cfg.index.self_check_texts
    if manifest.kind == "flat" or count == 0 or cfg.index.self_check_queries == 0:
        return None
    partition = Partition(cfg.output.root, "text", cfg.model.version, cfg.output.storage_options)
    committed = sorted(partition.markers())
    if committed:
        files = [partition.part_path(partition.embeddings_table, u) for u in committed[:8]]
        vectors = np.concatenate([read_vectors(pq.read_table(f, filesystem=partition.fs)) for f in files])
        if len(vectors):
            picks = np.random.default_rng(0).choice(len(vectors), min(count, len(vectors)), replace=False)
            return vectors[np.sort(picks)]
    return _phrases(cfg.model.version, cfg.model_dump_json(include={"model", "inference"}), count)


@lru_cache(maxsize=2)
def _phrases(version: str, settings: str, count: int) -> np.ndarray:
    """The fixed descriptions encoded by the version's text tower (once per process and version)."""
    from embedding.stages.encode import Encoder  # torch loads only where a probe needs the model

    cfg = Config.model_validate_json(settings)
    encoder = Encoder(version, cfg.model, cfg.inference)
    return encoder.encode_texts((PHRASES * (count // len(PHRASES) + 1))[:count])
