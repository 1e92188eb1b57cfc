"""Images of every bit depth PIL opens become correctly scaled 8-bit RGB (never all white or all black)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from datamodules.decoding import decode_rgb


def _png(width: int, height: int, colour_type: int, bit_depth: int, pixel: bytes, row: bytes | None = None) -> bytes:
    """A PNG written by hand (PIL cannot write 16-bit RGB): every pixel is ``pixel`` (big-endian samples),
    or every row is ``row`` (bit depths below 8 pack several pixels into a byte)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    rows = b"".join(b"\x00" + (row if row is not None else pixel * width) for _ in range(height))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def _saved(array: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, fmt)
    return buf.getvalue()


CASES = {
    # 16-bit grey PNG: PIL opens it as mode I;16 and convert("RGB") clips every value above 255 to white.
    "png grey 16-bit mid": (_png(3, 2, 0, 16, struct.pack(">H", 32768)), (128, 128, 128)),
    "png grey 16-bit quarter": (_png(3, 2, 0, 16, struct.pack(">H", 16384)), (64, 64, 64)),
    "png grey 16-bit black": (_png(3, 2, 0, 16, struct.pack(">H", 0)), (0, 0, 0)),
    "png grey 16-bit white": (_png(3, 2, 0, 16, struct.pack(">H", 65535)), (255, 255, 255)),
    "png rgb 16-bit": (_png(3, 2, 2, 16, struct.pack(">HHH", 32768, 16384, 65535)), (128, 64, 255)),
    "png grey+alpha 16-bit": (_png(3, 2, 4, 16, struct.pack(">HH", 32768, 65535)), (128, 128, 128)),
    "png grey 4-bit": (_png(4, 2, 0, 4, b"", row=bytes([0x88, 0x88])), (136, 136, 136)),
    "png grey 1-bit": (_png(8, 2, 0, 1, b"", row=bytes([0xFF])), (255, 255, 255)),
    "tiff grey 16-bit": (_saved(np.full((2, 3), 32768, np.uint16), "TIFF"), (128, 128, 128)),
    "tiff float in [0, 1]": (_saved(np.full((2, 3), 0.5, np.float32), "TIFF"), (128, 128, 128)),
    "png grey 8-bit": (_saved(np.full((2, 3), 77, np.uint8), "PNG"), (77, 77, 77)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_every_bit_depth_scales_to_8_bit(name):
    data, expected = CASES[name]
    rgb = np.asarray(decode_rgb(data))
    assert rgb.dtype == np.uint8 and rgb.shape[2] == 3, name
    assert np.abs(rgb.astype(int) - np.array(expected)).max() <= 1, (name, rgb[0, 0])


def test_32_bit_integer_image_scales_by_its_declared_bit_depth():
    # PIL writes mode I as signed 32-bit samples (TIFF tags 258 and 339): 2**30 is mid-grey.
    rgb = np.asarray(decode_rgb(_saved(np.full((2, 2), 2**30, np.int32), "TIFF")))
    assert abs(int(rgb[0, 0, 0]) - 128) <= 1


def test_float_image_outside_unit_range_is_an_error_not_a_guess():
    with pytest.raises(ValueError, match=r"floating-point image with values in \[-3.0, 300.0\]"):
        decode_rgb(_saved(np.array([[-3.0, 300.0]], np.float32), "TIFF"))
