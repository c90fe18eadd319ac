"""Untrusted image bytes to a safe RGB picture.

Owns the first step every image takes (in the router, to count tokens, and in the encoder, to
preprocess): identify the format from the bytes, refuse anything that is not a well-formed PNG,
JPEG, WebP or GIF of sane size *before* pixels are decoded, decode the first frame, and convert
to RGB exactly as transformers' Qwen2-VL PIL image processor does (transparency composited on
white). Every failure is an ``ImageError`` (a ``ValueError``) with a message a client can read;
no PIL exception escapes. Also owns the content hash used as the image's cache key.
"""

from __future__ import annotations

import hashlib
import io
import warnings

from PIL import Image, UnidentifiedImageError

ALLOWED_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "GIF")
# 8192 x 8192: already four times the 4096 x 4096 budget a Qwen3-VL image is downscaled to.
DEFAULT_MAX_IMAGE_PIXELS = 8192 * 8192
MAX_IMAGE_SIDE = 16384
# smart_resize refuses more extreme shapes; refusing them here gives the client a clear error.
MAX_ASPECT_RATIO = 200.0


class ImageError(ValueError):
    """An image that cannot be used: empty, corrupt, unsupported or too large."""


def image_hash(data: bytes) -> str:
    """SHA-256 hex digest of the raw image bytes (the content half of a cache key)."""
    return hashlib.sha256(data).hexdigest()


# Magic numbers: enough to tell a damaged accepted image from a format we do not accept.
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"8BPS", "PSD"),
    (b"%PDF", "PDF"),
)


def sniff_format(data: bytes) -> str | None:
    """The image format the leading bytes announce (whether or not we accept it), or None."""
    for magic, name in _SIGNATURES:
        if data.startswith(magic):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[4:8] == b"ftyp":
        return "HEIF/AVIF"
    head = data[:256].lstrip().lower()
    if head.startswith((b"<svg", b"<?xml")) or b"<svg" in head:
        return "SVG"
    return None


def _open_header(data: bytes, max_image_pixels: int) -> Image.Image:
    """Open lazily (header only) and check the declared size before any pixel is decoded."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ImageError(f"image data must be bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise ImageError("image data is empty")
    data = bytes(data)
    try:
        with warnings.catch_warnings():
            # Our own limit is stricter than PIL's bomb warning; silence it and check below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=list(ALLOWED_FORMATS))
    except Image.DecompressionBombError as exc:
        raise ImageError(f"image dimensions are too large (decompression bomb guard): {exc}") from None
    except UnidentifiedImageError:
        claimed = sniff_format(data)
        supported = ", ".join(ALLOWED_FORMATS)
        if claimed in ALLOWED_FORMATS:
            raise ImageError(f"malformed {claimed} header: the file is damaged or truncated") from None
        if claimed is not None:
            raise ImageError(f"unsupported image format {claimed} (supported: {supported})") from None
        raise ImageError(f"unrecognised image format (supported: {supported})") from None
    except Exception as exc:  # PIL raises many types on malformed headers
        raise ImageError(
            f"malformed {sniff_format(data) or 'image'} header: {type(exc).__name__}: {exc}"
        ) from None

    width, height = img.size
    if width <= 0 or height <= 0:
        raise ImageError(f"image has zero size ({width}x{height})")
    if width > MAX_IMAGE_SIDE or height > MAX_IMAGE_SIDE:
        raise ImageError(f"image is {width}x{height}; each side must be at most {MAX_IMAGE_SIDE} pixels")
    if width * height > max_image_pixels:
        raise ImageError(
            f"image is {width}x{height} = {width * height} pixels; the limit is {max_image_pixels} pixels"
        )
    if max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
        raise ImageError(f"image is {width}x{height}; the aspect ratio must be at most {MAX_ASPECT_RATIO:g}")
    return img


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert to RGB the way transformers' ``convert_to_rgb`` does for PIL images.

    Anything with an alpha band or a ``transparency`` entry (RGBA, LA, PA, P or L or RGB with a
    tRNS chunk) is composited over opaque white; everything else goes through ``convert("RGB")``.
    Always returns a new image.
    """
    if "A" in img.getbands() or img.info.get("transparency") is not None:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def image_size(data: bytes, *, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> tuple[int, int]:
    """(width, height) of untrusted image bytes, from the header alone (no pixel is decoded).

    Makes every check ``decode_image`` makes before decoding (format, sizes, aspect ratio) and
    raises the same ``ImageError``s; damage past the header is found only by ``decode_image``.
    The router uses this to count an image's tokens: the encoder decodes the pixels, once.
    """
    img = _open_header(data, max_image_pixels)
    try:
        return img.size
    finally:
        img.close()


def decode_image(data: bytes, *, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode untrusted bytes to an RGB ``PIL.Image`` (first frame of animations).

    Raises ``ImageError`` for empty, truncated, corrupt, unsupported (anything but PNG, JPEG, WebP,
    GIF), zero-size or oversized images; the size limits are checked from the header first.
    EXIF orientation is not applied, as in transformers.
    """
    img = _open_header(data, max_image_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img.seek(0)
            img.load()
            return to_rgb(img)
    except Exception as exc:  # OSError (truncated), SyntaxError, ValueError, zlib errors, ...
        raise ImageError(
            f"corrupt or truncated {img.format} image ({img.size[0]}x{img.size[1]}): {type(exc).__name__}: {exc}"
        ) from None
    finally:
        img.close()
