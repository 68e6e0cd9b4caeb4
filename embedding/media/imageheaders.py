"""The real sizes of the frames inside icon containers, read from their headers before Pillow opens them.

An ICO or ICNS directory declares small sizes (at most 256 or 1024 pixels), but each entry holds a whole
PNG or BMP (ICO) or a PNG or JPEG 2000 image (ICNS) whose own header may say 20,000 x 20,000. Pillow
decodes the chosen ICO frame inside `Image.open` (Pillow 13, `IcoImageFile._open` calls `load`) and the
ICNS frame in `load`, at the embedded size, so the job reads every entry's header itself first and the
caller refuses the file unless every frame is within the limits.
"""

from __future__ import annotations

import io
import struct

from embedding.errors import EmbeddingError, ErrorCode

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ICO_MAGIC = b"\0\0\1\0"
ICNS_MAGIC = b"icns"
_JP2_MAGICS = (b"\xff\x4f\xff\x51", b"\x0d\x0a\x87\x0a", b"\x00\x00\x00\x0cjP  \x0d\x0a\x87\x0a")
# ICNS element types that hold a PNG or JPEG 2000 image (the older RGB/mask types have fixed sizes).
_ICNS_IMAGE_TYPES = {b"ic07", b"ic08", b"ic09", b"ic10", b"ic11", b"ic12", b"ic13", b"ic14"}
_ICNS_IMAGE_TYPES |= {b"icp4", b"icp5", b"icp6"}


def _bad(message: str) -> EmbeddingError:
    return EmbeddingError(ErrorCode.INVALID_IMAGE_FORMAT, message)


def _png_size(data: bytes, offset: int) -> tuple[int, int]:
    header = data[offset : offset + 24]
    if len(header) < 24 or header[12:16] != b"IHDR":
        raise _bad("an embedded PNG has no IHDR header")
    return struct.unpack(">II", header[16:24])


def _dib_size(data: bytes, offset: int) -> tuple[int, int]:
    """A BMP info header as ICO stores it: its height counts the colour and the mask rows (twice)."""
    header = data[offset : offset + 12]
    if len(header) < 12:
        raise _bad("an icon entry has a truncated bitmap header")
    (size,) = struct.unpack("<I", header[:4])
    if size == 12:  # BITMAPCOREHEADER: 16-bit sides
        width, height = struct.unpack("<HH", header[4:8])
    else:  # BITMAPINFOHEADER and its successors: signed 32-bit sides (negative height: top-down)
        width, height = struct.unpack("<ii", header[4:12])
    return abs(width), abs(height) // 2


def ico_frame_sizes(data: bytes) -> list[tuple[int, int]]:
    """The real (width, height) of every image an ICO file holds."""
    if len(data) < 6:
        raise _bad("ICO file is truncated")
    (count,) = struct.unpack("<H", data[4:6])
    sizes = []
    for i in range(count):
        entry = data[6 + 16 * i : 22 + 16 * i]
        if len(entry) < 16:
            raise _bad("ICO directory is truncated")
        (offset,) = struct.unpack("<I", entry[12:16])
        if offset >= len(data):
            raise _bad("an ICO entry points past the end of the file")
        if data[offset : offset + 8] == PNG_MAGIC:
            sizes.append(_png_size(data, offset))
        else:
            sizes.append(_dib_size(data, offset))
    return sizes


def icns_frame_sizes(data: bytes, jpeg2000_allowed: bool) -> list[tuple[int, int]]:
    """The real (width, height) of every PNG or JPEG 2000 image an ICNS file holds.

    JPEG 2000 elements are refused unless JPEG2000 is an allowed format: it is another decoder.
    """
    sizes = []
    position, end = 8, min(len(data), struct.unpack(">I", data[4:8])[0] if len(data) >= 8 else 0)
    while position + 8 <= end:
        kind, length = struct.unpack(">4sI", data[position : position + 8])
        if length < 8:
            raise _bad("ICNS element with an invalid length")
        start = position + 8
        if kind in _ICNS_IMAGE_TYPES:
            head = data[start : start + 12]
            if head.startswith(PNG_MAGIC):
                sizes.append(_png_size(data, start))
            elif head.startswith(_JP2_MAGICS):
                if not jpeg2000_allowed:
                    raise _bad("ICNS holds a JPEG 2000 image, and JPEG2000 is not in images.formats")
                sizes.append(_jpeg2000_size(data[start : position + length]))
        position += length
    return sizes


def _jpeg2000_size(block: bytes) -> tuple[int, int]:
    from PIL import Jpeg2KImagePlugin

    # Pillow's JPEG 2000 plugin reads the header only when opening; decoding waits for load().
    return Jpeg2KImagePlugin.Jpeg2KImageFile(io.BytesIO(block)).size


def frame_sizes(data: bytes, formats: tuple[str, ...] | list[str]) -> list[tuple[int, int]]:
    """Sizes of embedded frames for containers whose headers Pillow does not report up front ([] else)."""
    if data.startswith(ICO_MAGIC) and "ICO" in formats:
        return ico_frame_sizes(data)
    if data.startswith(ICNS_MAGIC) and "ICNS" in formats:
        return icns_frame_sizes(data, "JPEG2000" in formats)
    return []
