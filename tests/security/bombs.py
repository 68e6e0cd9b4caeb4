"""Decompression bombs made on the fly: small files whose real frame decodes to hundreds of megabytes.

Each is a complete, decodable image (the same builders at a small size decode to the expected pixels, see
test_bombs.py), so a decoder that skipped the checks would really allocate and fill the memory.
"""

from __future__ import annotations

import struct
import zlib

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _compressed_rows(row: bytes, height: int) -> bytes:
    """zlib stream of `height` copies of `row`, built without holding the raw image in memory."""
    packer = zlib.compressobj(9)
    batch = max(1, (1 << 22) // len(row))  # about 4 MB of raw rows per call
    parts = []
    for start in range(0, height, batch):
        parts.append(packer.compress(row * min(batch, height - start)))
    parts.append(packer.flush())
    return b"".join(parts)


def png(width: int, height: int, mode: str = "1") -> bytes:
    """A blank PNG: mode "1" (1-bit grey), "L" (8-bit grey) or "RGBA" (8-bit RGBA)."""
    depth, colour, channels = {"1": (1, 0, 1), "L": (8, 0, 1), "RGBA": (8, 6, 4)}[mode]
    row = b"\0" + bytes((width * depth * channels + 7) // 8)  # filter byte, then the scanline
    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return (
        PNG_MAGIC
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", _compressed_rows(row, height))
        + _chunk(b"IEND", b"")
    )


def ico(frame: bytes) -> bytes:
    """An ICO whose directory declares a 256 x 256 icon and whose entry holds `frame` (a PNG)."""
    directory = struct.pack("<HHH", 0, 1, 1)
    entry = struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(frame), 6 + 16)
    return directory + entry + frame


def icns(frame: bytes) -> bytes:
    """An ICNS whose 512 x 512 @2x element ("ic10") holds `frame` (a PNG)."""
    element = b"ic10" + struct.pack(">I", 8 + len(frame)) + frame
    return b"icns" + struct.pack(">I", 8 + len(element)) + element


def tiff(width: int, height: int) -> bytes:
    """A blank 1-bit TIFF in one deflate-compressed strip (little-endian, one IFD)."""
    data = _compressed_rows(bytes((width + 7) // 8), height)
    entries = [
        (256, 4, 1, width),  # ImageWidth
        (257, 4, 1, height),  # ImageLength
        (258, 3, 1, 1),  # BitsPerSample
        (259, 3, 1, 8),  # Compression: Adobe deflate
        (262, 3, 1, 1),  # PhotometricInterpretation: BlackIsZero
        (273, 4, 1, 0),  # StripOffsets (patched below)
        (277, 3, 1, 1),  # SamplesPerPixel
        (278, 4, 1, height),  # RowsPerStrip
        (279, 4, 1, len(data)),  # StripByteCounts
    ]
    ifd_size = 2 + 12 * len(entries) + 4
    data_offset = 8 + ifd_size
    out = [b"II*\0", struct.pack("<I", 8), struct.pack("<H", len(entries))]
    for tag, kind, count, value in entries:
        value = data_offset if tag == 273 else value
        packed = struct.pack("<H", value) + b"\0\0" if kind == 3 else struct.pack("<I", value)
        out.append(struct.pack("<HHI", tag, kind, count) + packed)
    out.append(struct.pack("<I", 0))
    return b"".join(out) + data


def _lzw_fill(pixels: int, index: int = 1) -> bytes:
    """GIF LZW data for `pixels` pixels of palette `index` (0-3) with a minimum code size of 2.

    One colour compresses as ever longer runs: each new code is the previous run plus one pixel, until
    the 12-bit table is full; then the longest run is repeated (a deferred clear, which GIF allows).
    """
    clear, end = 4, 5
    bits, nbits, out = 0, 0, bytearray()
    width, next_code = 3, end + 1

    def emit(code: int) -> None:
        nonlocal bits, nbits
        bits |= code << nbits
        nbits += width
        while nbits >= 8:
            out.append(bits & 0xFF)
            bits >>= 8
            nbits -= 8

    emit(clear)
    emit(index)  # one pixel; the decoder adds no entry for the first code after a clear
    remaining, previous = pixels - 1, 1
    while remaining > 0:
        if next_code < 4096 and previous + 1 <= remaining:
            emit(next_code)  # not yet in the decoder's table: it is the previous run plus one pixel
            previous += 1
            remaining -= previous
            next_code += 1
            if next_code == 1 << width and width < 12:
                width += 1
            continue
        run = min(remaining, previous)  # the longest run in the table, or what is left
        emit(index if run == 1 else run + 4)  # code k holds k - 4 pixels (k >= 6)
        remaining -= run
        if next_code < 4096:  # the decoder adds an entry for every code while the table has room
            next_code += 1
            if next_code == 1 << width and width < 12:
                width += 1
    emit(end)
    if nbits:
        out.append(bits & 0xFF)
    blocks = [bytes([len(out[i : i + 255])]) + out[i : i + 255] for i in range(0, len(out), 255)]
    return b"".join(blocks) + b"\0"


def gif(width: int, height: int) -> bytes:
    """A white GIF whose first frame is width x height (screen and frame alike)."""
    screen = b"GIF89a" + struct.pack("<HHBBB", width, height, 0x81, 0, 0)  # a 4-colour global palette
    palette = bytes([0, 0, 0, 255, 255, 255, 255, 0, 0, 0, 255, 0])
    frame = b"," + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02" + _lzw_fill(width * height)
    return screen + palette + frame + b";"
