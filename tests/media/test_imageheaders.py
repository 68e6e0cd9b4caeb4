"""Frame sizes of icon containers read from their headers (embedding.media.imageheaders)."""

from __future__ import annotations

import io
import struct

import pytest
from PIL import Image

from embedding.errors import EmbeddingError, ErrorCode
from embedding.media.imageheaders import frame_sizes, icns_frame_sizes, ico_frame_sizes
from tests.security import bombs


def pillow_ico(bitmap_format: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGBA", (64, 64), (9, 9, 9, 255)).save(
        buf, "ICO", sizes=[(16, 16), (48, 48)], bitmap_format=bitmap_format
    )
    return buf.getvalue()


@pytest.mark.parametrize("bitmap_format", ["png", "bmp"])
def test_ico_frames_of_both_kinds(bitmap_format: str) -> None:
    assert sorted(ico_frame_sizes(pillow_ico(bitmap_format))) == [(16, 16), (48, 48)]


def test_ico_real_frame_size_not_the_declared_one() -> None:
    assert ico_frame_sizes(bombs.ico(bombs.png(20_000, 300))) == [(20_000, 300)]


def test_icns_frames() -> None:
    buf = io.BytesIO()
    Image.new("RGBA", (1024, 1024)).save(buf, "ICNS")
    sizes = icns_frame_sizes(buf.getvalue(), jpeg2000_allowed=False)
    assert (1024, 1024) in sizes and (32, 32) in sizes


def test_icns_jpeg2000_needs_its_own_permission() -> None:
    element = b"ic10" + struct.pack(">I", 8 + 12) + b"\x00\x00\x00\x0cjP  \x0d\x0a\x87\x0a"
    data = b"icns" + struct.pack(">I", 8 + len(element)) + element
    with pytest.raises(EmbeddingError) as info:
        icns_frame_sizes(data, jpeg2000_allowed=False)
    assert info.value.code == ErrorCode.INVALID_IMAGE_FORMAT and "JPEG2000" in info.value.message


@pytest.mark.parametrize(
    "data", [b"\0\0\1\0\5\0" + b"\0" * 10, b"\0\0\1\0\1\0" + b"\0" * 12 + b"\xff\xff\0\0"]
)
def test_truncated_icons_are_format_errors(data: bytes) -> None:
    with pytest.raises(EmbeddingError) as info:
        ico_frame_sizes(data)
    assert info.value.code == ErrorCode.INVALID_IMAGE_FORMAT


def test_other_formats_and_disallowed_containers_need_no_reading_ahead() -> None:
    assert frame_sizes(bombs.png(30, 30), ("PNG", "ICO")) == []
    assert frame_sizes(bombs.ico(bombs.png(30, 30)), ("PNG",)) == []  # ICO not allowed: never opened
    assert frame_sizes(bombs.icns(bombs.png(30, 30)), ("ICNS",)) == [(30, 30)]
