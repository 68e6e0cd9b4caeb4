"""Decompression bombs are refused from their headers, before a pixel is decoded (issue 11).

Peak memory is measured in a fresh Python process (ru_maxrss is a running maximum, so the test process,
which has loaded models and images before, could not show a rise), one process for all bombs: each is
checked against the baseline taken after a warm-up decode, so any bomb that decoded would show.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from embedding.config import DEFAULT_IMAGE_FORMATS
from embedding.errors import EmbeddingError, ErrorCode
from embedding.media.image import decode
from embedding.media.imagecheck import ImageLimits
from embedding.media.resize import Preprocess
from tests.security import bombs

REPO = Path(__file__).resolve().parents[2]
WITH_ICNS = (*DEFAULT_IMAGE_FORMATS, "ICNS")
DIM, FORMAT = str(ErrorCode.INVALID_IMAGE_DIMENSION), str(ErrorCode.INVALID_IMAGE_FORMAT)

MEASURE = r"""
import io, json, resource, sys
from pathlib import Path
from PIL import Image
from embedding.errors import EmbeddingError
from embedding.media.image import decode
from embedding.media.imagecheck import ImageLimits
from embedding.media.resize import Preprocess

folder, cases = Path(sys.argv[1]), json.loads(sys.argv[2])
files = {name: (folder / name).read_bytes() for name, _ in cases}
warm = io.BytesIO()
Image.new("RGB", (300, 200), (200, 30, 30)).save(warm, "PNG")
decode(warm.getvalue(), Preprocess(), ImageLimits())  # plugins, numpy and the like are loaded now
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = {}
for name, formats in cases:
    try:
        decode(files[name], Preprocess(), ImageLimits(formats=tuple(formats)))
        code, message = None, ""
    except EmbeddingError as exc:
        code, message = str(exc.code), exc.message
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base  # KiB on Linux
    out[name] = {"code": code, "message": message, "grown_mb": grown / 1024}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def bomb_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, tuple[str, ...], str]]:
    """name -> (file, allowed formats, expected code). The *-20000 frames are 20,000 x 20,000; the wide
    ones (16,500 x 5,000 RGBA, 330 MB decoded) stay under Pillow's own guard, so only our checks stop them."""
    folder = tmp_path_factory.mktemp("bombs")
    png_20000 = bombs.png(20_000, 20_000)
    png_wide = bombs.png(16_500, 5_000, "RGBA")
    cases = {
        "ico-20000.ico": (bombs.ico(png_20000), DEFAULT_IMAGE_FORMATS, DIM),
        "ico-wide.ico": (bombs.ico(png_wide), DEFAULT_IMAGE_FORMATS, DIM),
        "icns-20000.icns": (bombs.icns(png_20000), WITH_ICNS, DIM),
        "icns-wide.icns": (bombs.icns(png_wide), WITH_ICNS, DIM),
        "icns-not-allowed.icns": (bombs.icns(png_20000), DEFAULT_IMAGE_FORMATS, FORMAT),
        "tiff-20000.tif": (bombs.tiff(20_000, 20_000), DEFAULT_IMAGE_FORMATS, DIM),
        "gif-20000.gif": (bombs.gif(20_000, 20_000), DEFAULT_IMAGE_FORMATS, DIM),
        "png-20000.png": (png_20000, DEFAULT_IMAGE_FORMATS, DIM),
        "png-over-budget.png": (bombs.png(11_000, 10_000), DEFAULT_IMAGE_FORMATS, DIM),  # 110 MP
    }
    out = {}
    for name, (data, formats, code) in cases.items():
        assert len(data) < 2 * 1024 * 1024, f"{name} should be a small file, is {len(data)} bytes"
        (folder / name).write_bytes(data)
        out[name] = (folder / name, formats, code)
    return out


def test_bombs_are_refused_before_decoding_and_memory_stays_flat(bomb_files) -> None:
    folder = next(iter(bomb_files.values()))[0].parent
    cases = [[name, list(formats)] for name, (_, formats, _) in bomb_files.items()]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, str(folder), json.dumps(cases)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=REPO,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(results) == set(bomb_files)  # every bomb accounted for
    for name, (_, _, code) in bomb_files.items():
        result = results[name]
        assert result["code"] == code, (name, result)
        assert result["grown_mb"] < 100, (name, result)


def test_the_bomb_builders_make_real_images() -> None:
    """At a small size the same builders decode to the pixels they promise: the bombs are not duds."""
    checks = {
        "png": (bombs.png(300, 200), (300, 200)),
        "ico": (bombs.ico(bombs.png(300, 200)), (300, 200)),
        "tiff": (bombs.tiff(300, 200), (300, 200)),
        "gif": (bombs.gif(3001, 2999), (3001, 2999)),  # past the 12-bit LZW table: its full-table phase
    }
    for name, (data, size) in checks.items():
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            assert image.size == size, name
            pixels = np.asarray(image)
            assert pixels.min() == pixels.max(), name  # one colour all the way: nothing stopped early
    with Image.open(io.BytesIO(bombs.icns(bombs.png(256, 256, "RGBA")))) as image:
        image.load()
        assert image.size == (256, 256)


def test_an_icon_with_an_oversized_frame_is_refused_in_process() -> None:
    """Quick in-process variant: a 256 x 256 ICO declaring an embedded PNG of 12 x 17,000."""
    data = bombs.ico(bombs.png(12, 17_000))
    with pytest.raises(EmbeddingError) as info:
        decode(data, Preprocess(), ImageLimits())
    assert info.value.code == ErrorCode.INVALID_IMAGE_DIMENSION
    assert "embedded icon frame" in info.value.message or "17000" in info.value.message


def test_pillow_guard_is_left_in_place_for_the_process() -> None:
    import embedding.api  # noqa: F401  (importing the API once turned the guard off for everyone)

    guard = Image.MAX_IMAGE_PIXELS
    assert guard == 1024 * 1024 * 1024 // 4 // 3  # Pillow's default
