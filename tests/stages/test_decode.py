"""The decode step's fetching: it runs ahead of decoding by a bounded number of files, never a whole unit."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from embedding.config import FetchConfig
from embedding.fetch.uripolicy import SourceSettings
from embedding.media.imagecheck import ImageLimits
from embedding.media.load import MediaSettings
from embedding.media.resize import Preprocess
from embedding.media.video import VideoSettings
from embedding.stages import decode as decoding
from tests import images_factory as f
from tests.support.rows import stream_rows


def test_fetching_runs_a_bounded_number_of_files_ahead_of_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fetching a local file takes far less than decoding it: without a bound, a unit's every file would
    wait in memory for the decoder."""
    uris = [f.write(tmp_path, f"img-{i}.jpg", f.sample_file(i % 8)) for i in range(64)]
    lock, held, most = threading.Lock(), [0], [0]
    fetch, decode = decoding.fetch_media, decoding.decode_row

    def counted_fetch(*args):
        fetched = fetch(*args)
        with lock:
            held[0] += 1
            most[0] = max(most[0], held[0])
        return fetched

    def counted_decode(fetched, settings):
        with lock:
            held[0] -= 1
        return decode(fetched, settings)

    monkeypatch.setattr(decoding, "fetch_media", counted_fetch)
    monkeypatch.setattr(decoding, "decode_row", counted_decode)
    source = SourceSettings(["file"], 20 * 1024 * 1024, FetchConfig(threads=4))
    settings = MediaSettings(source, Preprocess(size=(64, 64)), ImageLimits(), VideoSettings())
    out = decoding.decode_rows(stream_rows(uris), settings)
    assert out.column("error_code").to_pylist() == [None] * 64
    assert 1 <= most[0] <= decoding.FETCH_AHEAD * 4
