"""The upload path: from untrusted bytes to an RGB picture a model can look at, or a 4xx that
says why not (a Problem).

Every live feature that takes a user's image (/probe now; typographic attacks and concept
discovery later) goes through `decode_image`, behind `BodySizeLimit`, which stops reading a
request body as soon as it is larger than allowed rather than after buffering all of it.

Checks, in order: size (streamed), a known image signature (the bytes, not the file name or
the declared type), dimensions from the header before any pixel is decoded (decompression
bombs), a full `verify()`, then decoding (truncated files fail here). What is accepted is
normalised: EXIF orientation applied, the first frame of an animation, transparency
flattened onto white, palette/CMYK/greyscale/16-bit/float converted to 8-bit RGB.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from app.urls import API_PREFIX
from precompute.errors import Problem, RetryLater

# Formats and the first bytes that identify them. TIFF, SVG, PSD and friends are refused:
# each brings its own decoder surface for no gain in a microscope.
SIGNATURES: tuple[tuple[str, Callable[[bytes], bool]], ...] = (
    ("PNG", lambda b: b.startswith(b"\x89PNG\r\n\x1a\n")),
    ("JPEG", lambda b: b.startswith(b"\xff\xd8\xff")),
    ("GIF", lambda b: b[:6] in (b"GIF87a", b"GIF89a")),
    ("WEBP", lambda b: b[:4] == b"RIFF" and b[8:12] == b"WEBP"),
    ("BMP", lambda b: b[:2] == b"BM" and len(b) >= 26),
)
ACCEPTED = "PNG, JPEG, GIF, WebP or BMP"


@dataclass(frozen=True)
class UploadLimits:
    max_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 4096 * 4096
    max_side: int = 8192
    # Larger pictures are shrunk right after decoding: every model here looks at < 1000 px.
    working_side: int = 1024


@dataclass
class DecodedImage:
    image: Image.Image  # RGB, orientation applied, at most working_side on its long side
    format: str
    width: int  # as uploaded (after EXIF orientation)
    height: int
    sha256: str
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "width": self.width,
            "height": self.height,
            "sha256": self.sha256,
            "notes": list(self.notes),
        }


def sniff(data: bytes) -> str | None:
    for name, matches in SIGNATURES:
        if matches(data[:32]):
            return name
    return None


def _describe(data: bytes) -> str:
    head = data[:16]
    if head.startswith((b"<", b"\xef\xbb\xbf<")) or b"<svg" in data[:256].lower():
        return "markup (HTML, XML or SVG)"
    if head.startswith(b"%PDF"):
        return "a PDF document"
    if head.startswith(b"PK\x03\x04"):
        return "a ZIP archive"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "a TIFF image, which is not accepted"
    if all(32 <= c < 127 or c in (9, 10, 13) for c in head):
        return "text"
    return "an unknown format"


# Decoding holds the most memory of anything the server does; bounding how many decodes run
# at once bounds the server's memory under a flood of large uploads.
_DECODE_SLOTS = threading.BoundedSemaphore(2)


def decode_image(data: bytes, limits: UploadLimits = UploadLimits()) -> DecodedImage:
    if not data:
        raise Problem(400, "empty-file", "the file is empty (0 bytes)")
    if len(data) > limits.max_bytes:
        raise Problem(413, "file-too-large", f"the file has {len(data):,} bytes; the limit is {limits.max_bytes:,}")
    fmt = sniff(data)
    if fmt is None:
        raise Problem(415, "not-an-image", f"the file is {_describe(data)}, not an image; send a {ACCEPTED} file")
    if not _DECODE_SLOTS.acquire(timeout=30):
        raise RetryLater(503, "busy", "the server is decoding other uploads; try again shortly", retry_after=5)
    try:
        return _decode(data, fmt, limits)
    finally:
        _DECODE_SLOTS.release()


def _decode(data: bytes, fmt: str, limits: UploadLimits) -> DecodedImage:
    notes: list[str] = []
    if ImageFile.LOAD_TRUNCATED_IMAGES:  # a global another library might have flipped
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is on; truncated uploads would pass")
    with warnings.catch_warnings():
        # Pillow warns (then errors at twice the size) on decompression bombs; our own pixel
        # limit below is stricter, and the warning becomes an error in any case. Its other
        # warnings (corrupt EXIF and the like) are about files it then reads anyway.
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data), formats=[fmt]) as probe:
                width, height = probe.size
                _check_dimensions(width, height, limits)
                probe.verify()
            image = Image.open(io.BytesIO(data), formats=[fmt])
            if getattr(image, "is_animated", False):
                notes.append("animated image: the first frame was used")
                image.seek(0)
            if fmt == "JPEG":
                # Decode at a reduced scale when the picture is much larger than needed.
                image.draft("RGB", (limits.working_side, limits.working_side))
            image.load()
            image, swapped = _orient(image, notes)
            image = _to_rgb(image, notes)
        except Problem:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise Problem(413, "too-many-pixels", f"the image has too many pixels (limit {limits.max_pixels:,})") from None
        except UnidentifiedImageError:
            raise Problem(422, "corrupt-image", f"the file starts like a {fmt} image but is not a readable one") from None
        except MemoryError:
            raise Problem(413, "too-many-pixels", "the image is too large to decode") from None
        except Exception as error:  # Pillow raises many types on malformed input; all mean "broken file"
            message = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
            raise Problem(422, "corrupt-image", f"the {fmt} file is truncated or corrupt ({message})") from None
    if max(image.size) > limits.working_side:
        image.thumbnail((limits.working_side, limits.working_side), Image.Resampling.LANCZOS)
    if swapped:
        width, height = height, width
    return DecodedImage(image, fmt, width, height, hashlib.sha256(data).hexdigest(), notes)


def _check_dimensions(width: int, height: int, limits: UploadLimits) -> None:
    if width < 1 or height < 1:
        raise Problem(422, "empty-image", f"the image is {width}x{height} pixels")
    if width > limits.max_side or height > limits.max_side:
        raise Problem(413, "too-many-pixels", f"the image is {width}x{height}; no side may exceed {limits.max_side:,} pixels")
    if width * height > limits.max_pixels:
        raise Problem(
            413, "too-many-pixels", f"the image is {width}x{height} = {width * height:,} pixels; the limit is {limits.max_pixels:,}"
        )


def _orient(image: Image.Image, notes: list[str]) -> tuple[Image.Image, bool]:
    """The picture the right way up, and whether its width and height swapped."""
    try:
        orientation = image.getexif().get(0x0112, 1)
    except Exception:  # unreadable EXIF is not worth refusing a picture for
        notes.append("EXIF data unreadable: orientation not applied")
        return image, False
    if orientation not in (2, 3, 4, 5, 6, 7, 8):
        return image, False
    oriented = ImageOps.exif_transpose(image)
    notes.append(f"EXIF orientation {orientation} applied")
    return (oriented if oriented is not None else image), orientation in (5, 6, 7, 8)


def _flatten(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _to_rgb(image: Image.Image, notes: list[str]) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I;16") or mode in ("I", "F"):
        import numpy as np

        values = np.asarray(image, dtype=np.float64)
        if mode == "F" or values.max(initial=0) > 65535 or values.min(initial=0) < 0:
            lo, hi = float(values.min(initial=0)), float(values.max(initial=0))
            scaled = (values - lo) / ((hi - lo) or 1.0) * 255.0
            notes.append(f"{mode} image rescaled from [{lo:.4g}, {hi:.4g}] to 8 bits")
        elif mode.startswith("I;16") or values.max(initial=0) > 255:
            scaled = values / 257.0
            notes.append("16-bit image scaled to 8 bits")
        else:
            scaled = values
        grey = Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")
        return grey.convert("RGB")
    if mode == "P":
        if "transparency" in image.info:
            notes.append("palette transparency flattened onto white")
            return _flatten(image)
        return image.convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode in ("L", "RGB") and "transparency" in image.info):
        notes.append("transparency flattened onto white")
        return _flatten(image)
    if mode == "CMYK":
        notes.append("CMYK converted to RGB")
    elif mode == "1":
        notes.append("1-bit image converted to RGB")
    return image.convert("RGB")


# -- streaming size limit ------------------------------------------------------------------------
class _BodyTooLarge(Exception):
    pass


class BodySizeLimit:
    """ASGI middleware: refuse request bodies over a per-path limit with 413, before reading
    them (by Content-Length) or as soon as the streamed bytes pass it (chunked bodies)."""

    def __init__(self, app: Any, limit_for: Callable[[str], int | None]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        if limit is None:
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._refuse(scope, send, limit)
            return
        received = 0
        tripped = False

        async def limited_receive() -> dict:
            nonlocal received, tripped
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    tripped = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: dict) -> None:
            if not tripped:  # whatever the app answers to a body cut short is replaced by the 413
                await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _BodyTooLarge:
            pass
        if tripped:
            await self._refuse(scope, send, limit)

    @staticmethod
    async def _refuse(scope: dict, send: Callable, limit: int) -> None:
        # Outside the app's exception handlers (the body is refused before a route runs), so
        # the refusal is written here, in the shape problem_response gives every other one.
        problem = Problem(413, "body-too-large", f"the request body is larger than {limit:,} bytes")
        detail = problem.detail
        if scope["path"].startswith(API_PREFIX):
            body = json.dumps(problem.body()).encode()
            content_type = b"application/json"
        else:
            body = f"<!doctype html><title>Too large</title><h1>Upload too large</h1><p>{detail}.</p>".encode()
            content_type = b"text/html; charset=utf-8"
        headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), (b"connection", b"close")]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})
