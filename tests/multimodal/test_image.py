"""decode_image on good images of every accepted format and mode, and on a corpus of bad input."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image

from shared.multimodal.image import ImageError, decode_image, image_hash, image_size
from tests.multimodal.conftest import encode, noise_image

pytestmark = pytest.mark.unit


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_header_only(width: int, height: int) -> bytes:
    """A syntactically valid PNG that declares width x height but carries one tiny IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def jpeg_with_size(width: int, height: int) -> bytes:
    """A real JPEG whose SOF0 header is rewritten to claim width x height."""
    data = bytearray(encode(noise_image(16, 16), "JPEG"))
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def corrupt_png_body() -> bytes:
    data = bytearray(encode(noise_image(64, 64), "PNG"))
    idat = data.index(b"IDAT")
    for i in range(idat + 8, idat + 40):
        data[i] ^= 0x5A
    return bytes(data)


@pytest.mark.parametrize(
    ("mode", "fmt", "kwargs"),
    [
        ("RGB", "PNG", {}),
        ("RGBA", "PNG", {}),
        ("LA", "PNG", {}),
        ("L", "PNG", {}),
        ("P", "PNG", {}),
        ("P", "PNG", {"transparency": 3}),
        ("1", "PNG", {}),
        ("I;16", "PNG", {}),
        ("RGB", "JPEG", {"quality": 90}),
        ("L", "JPEG", {}),
        ("CMYK", "JPEG", {}),
        ("RGB", "WEBP", {"lossless": True}),
        ("RGBA", "WEBP", {"quality": 80}),
        ("P", "GIF", {}),
    ],
)
def test_decodes_to_rgb(mode: str, fmt: str, kwargs: dict) -> None:
    data = encode(noise_image(37, 23, mode), fmt, **kwargs)
    img = decode_image(data)
    assert img.mode == "RGB" and img.size == (37, 23)


def test_transparency_is_composited_on_white() -> None:
    clear = Image.new("RGBA", (8, 8), (10, 20, 30, 0))
    assert decode_image(encode(clear, "PNG")).getpixel((0, 0)) == (255, 255, 255)


def test_animated_gif_gives_first_frame() -> None:
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    assert decode_image(buf.getvalue()).getpixel((4, 4)) == (255, 0, 0)


def test_image_hash_is_sha256_of_bytes() -> None:
    assert image_hash(b"abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def _truncated(fmt: str) -> bytes:
    data = encode(noise_image(64, 64), fmt)
    return data[: len(data) // 2]


BAD_IMAGES: dict[str, tuple[bytes, str, dict]] = {
    "empty": (b"", "empty", {}),
    "truncated png": (_truncated("PNG"), "corrupt or truncated PNG", {}),
    "truncated jpeg": (_truncated("JPEG"), "corrupt or truncated JPEG", {}),
    "truncated webp": (_truncated("WEBP"), "(corrupt or truncated|malformed)", {}),
    "png cut after header": (encode(noise_image(64, 64), "PNG")[:40], "malformed PNG header", {}),
    "corrupt png body": (corrupt_png_body(), "corrupt or truncated PNG", {}),
    "random bytes": (bytes(range(256)) * 8, "unrecognised image format", {}),
    "text file": (b"hello, this is not an image\n" * 10, "unrecognised image format", {}),
    "svg": (
        b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
        "unsupported image format SVG",
        {},
    ),
    "bmp (unsupported format)": (
        encode(noise_image(8, 8), "BMP"),
        "unsupported image format BMP .supported: PNG, JPEG, WEBP, GIF",
        {},
    ),
    "tiff (unsupported format)": (encode(noise_image(8, 8), "TIFF"), "unsupported image format TIFF", {}),
    "zero-width png header": (png_header_only(0, 10), "(zero size|malformed PNG header)", {}),
    "100000x100000 png header bomb": (png_header_only(100000, 100000), "too large", {}),
    "65000x65000 jpeg header bomb": (jpeg_with_size(65000, 65000), "too large", {}),
    "side over 16384": (png_header_only(16385, 200), "at most 16384", {}),
    "above max_image_pixels": (
        encode(noise_image(120, 100), "PNG"),
        "limit is 10000 pixels",
        {"max_image_pixels": 10000},
    ),
    "absurd aspect ratio": (png_header_only(4000, 2), "aspect ratio", {}),
}


@pytest.mark.parametrize("name", list(BAD_IMAGES))
def test_bad_images_raise_image_error(name: str) -> None:
    data, message, kwargs = BAD_IMAGES[name]
    with pytest.raises(ImageError, match=message) as info:
        decode_image(data, **kwargs)
    assert isinstance(info.value, ValueError)
    # The PIL exception is not chained: clients and logs see one clear line.
    assert info.value.__cause__ is None
    assert info.value.__context__ is None or info.value.__suppress_context__
    print(f"{name}: {info.value}")


BODY_DAMAGE = ("truncated png", "truncated jpeg", "corrupt png body")  # a truncated WebP fails at its header


@pytest.mark.parametrize("name", list(BAD_IMAGES))
def test_image_size_reads_the_header_only_and_refuses_what_decode_refuses_before_pixels(name: str) -> None:
    data, message, kwargs = BAD_IMAGES[name]
    if name in BODY_DAMAGE:  # found only when the pixels are decoded (by the encoder)
        width, height = image_size(data, **kwargs)
        assert (width, height) == Image.open(io.BytesIO(data)).size
        return
    with pytest.raises(ImageError, match=message):
        image_size(data, **kwargs)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF"])
def test_image_size_is_the_decoded_size(fmt: str) -> None:
    data = encode(noise_image(37, 21), fmt)
    assert image_size(data) == decode_image(data).size == (37, 21)


def test_non_bytes_input() -> None:
    with pytest.raises(ImageError, match="must be bytes"):
        decode_image("not bytes")  # type: ignore[arg-type]
