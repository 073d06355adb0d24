"""Image inputs: ``data:`` URL parsing, decoding and size limits.

Supported: ``data:image/png;base64,...`` and ``data:image/jpeg;base64,...`` (``image/jpg`` is
accepted as an alias). The bytes must really be PNG or JPEG and match the declared MIME type
(PNG bytes labelled ``image/jpeg`` are refused): Pillow's detected format decides.
``probe_image`` reads only the header (format, width, height), so pixel limits are checked
before decoding. Remote ``http(s)://`` URLs are refused with advice: the trainer never fetches
anything over the network. Resizing is left to the model's image processor (Qwen's
``smart_resize``), so what we train on matches what the model sees at inference.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings

from PIL import Image, UnidentifiedImageError

SUPPORTED_MIME = {"image/png": "PNG", "image/jpeg": "JPEG", "image/jpg": "JPEG"}


class ImageError(ValueError):
    """Why an image cannot be used; the caller adds the line number and JSON path."""


def decode_data_url(url: str) -> bytes:
    """Return the raw image bytes of a base64 ``data:`` URL, or raise ``ImageError``."""
    return parse_data_url(url)[1]


def parse_data_url(url: str) -> tuple[str, bytes]:
    """``(declared format "PNG" | "JPEG", raw bytes)`` of a base64 ``data:`` URL, or raise
    ``ImageError``."""
    if not isinstance(url, str):
        raise ImageError(f"expected a string URL, got {type(url).__name__}")
    low = url[:16].lower()
    if low.startswith(("http://", "https://")):
        raise ImageError(
            "remote image URLs are not supported: download the image and convert it to a "
            "base64 data URL (data:image/jpeg;base64,... or data:image/png;base64,...); the "
            "trainer never fetches from the network"
        )
    if not low.startswith("data:"):
        raise ImageError("expected a data:image/png;base64,... or data:image/jpeg;base64,... URL")
    header, comma, payload = url[5:].partition(",")
    if not comma:
        raise ImageError("data URL has no ',' between its header and its data")
    mime, *params = header.split(";")
    mime = mime.strip().lower()
    if mime not in SUPPORTED_MIME:
        raise ImageError(
            f"unsupported image type {mime or '(none)'!r}: use image/png or image/jpeg"
        )
    if "base64" not in (p.strip().lower() for p in params):
        raise ImageError("data URL must be base64-encoded (data:<type>;base64,<data>)")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ImageError(f"invalid base64 data: {e}") from None
    if not data:
        raise ImageError("empty image data")
    return SUPPORTED_MIME[mime], data


def probe_image(data: bytes, declared: str | None, max_pixels: int) -> tuple[int, int]:
    """``(width, height)`` from the header only; raises ``ImageError`` when the data is not
    PNG/JPEG, is not the ``declared`` format, or has more than ``max_pixels``."""
    img = _open(data)
    try:
        if declared and img.format != declared:
            raise ImageError(
                f"declared image/{declared.lower()} but the data is {img.format}: fix the "
                "data URL's MIME type"
            )
        return _check_size(img, max_pixels)
    finally:
        img.close()


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """Decode PNG/JPEG bytes into an RGB image, refusing anything above ``max_pixels``.

    The pixel count is read from the header before any pixel is decoded, so a decompression
    bomb (a few KB that expand to gigabytes) costs nothing."""
    img = _open(data)
    _check_size(img, max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.load()
    except Exception as e:
        raise ImageError(f"cannot decode {img.format} data: {e}") from None
    return img.convert("RGB") if img.mode != "RGB" else img


def _open(data: bytes) -> Image.Image:
    """Pillow's lazy open (header only) of PNG/JPEG data."""
    try:
        with warnings.catch_warnings():
            # Pillow warns (and later raises) on its own, higher limit; ours comes first.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise ImageError(f"image too large (decompression-bomb guard): {e}") from None
    except UnidentifiedImageError:
        raise ImageError("not a decodable image: no PNG or JPEG header in the data") from None
    except Exception as e:  # Pillow raises several types for garbage input
        raise ImageError(f"not a decodable image: {e}") from None
    if img.format not in ("PNG", "JPEG"):
        raise ImageError(f"image data is {img.format or 'an unknown format'}, not PNG or JPEG")
    return img


def _check_size(img: Image.Image, max_pixels: int) -> tuple[int, int]:
    w, h = img.size
    if w * h > max_pixels:
        raise ImageError(
            f"image is {w}x{h} = {w * h} pixels, above max_image_pixels={max_pixels} "
            "(decompression-bomb guard)"
        )
    if w < 1 or h < 1:
        raise ImageError(f"image has no pixels ({w}x{h})")
    return w, h


def encode_data_url(img: Image.Image, fmt: str = "PNG", quality: int = 90) -> str:
    """The inverse, for demo data and tests: an image as a base64 ``data:`` URL."""
    buf = io.BytesIO()
    if fmt.upper() == "JPEG":
        img.convert("RGB").save(buf, format="JPEG", quality=quality)
        mime = "image/jpeg"
    else:
        img.save(buf, format="PNG")
        mime = "image/png"
    return f"data:{mime};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"
