"""A QEMU screen (PPM) made into the PNG virtctl promises, by the node's own encoder."""

from __future__ import annotations

import struct
import zlib

import pytest

from workers.screens import PNG_MAGIC, ppm_to_png


def test_a_ppm_becomes_a_png_of_the_same_pixels() -> None:
    pixels = bytes([255, 0, 0, 0, 255, 0, 0, 0, 255, 9, 9, 9])  # 2x2: red green / blue grey
    png = ppm_to_png(b"P6\n# QEMU screendump\n2 2\n255\n" + pixels)
    assert png[:8] == PNG_MAGIC
    size, kind = struct.unpack(">I4s", png[8:16])
    assert (size, kind) == (13, b"IHDR")
    assert struct.unpack(">IIBBBBB", png[16:29]) == (2, 2, 8, 2, 0, 0, 0)
    idat_len, idat = struct.unpack(">I4s", png[33:41])
    assert idat == b"IDAT"
    assert zlib.decompress(png[41 : 41 + idat_len]) == b"\0" + pixels[:6] + b"\0" + pixels[6:]
    assert png[-12:] == struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))


def test_other_formats_are_refused() -> None:
    with pytest.raises(ValueError, match="binary PPM"):
        ppm_to_png(b"P3\n1 1\n255\n0 0 0\n")
    with pytest.raises(ValueError, match="65535 levels"):
        ppm_to_png(b"P6\n1 1\n65535\n" + b"\0" * 6)
