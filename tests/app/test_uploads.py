"""The upload path against hostile and awkward files: every one gets a 4xx that says why, or a
correct result; never a 5xx; and the server's memory stays bounded while it refuses them.

Files are generated here (Pillow, or hand-written bytes where Pillow would refuse to write
something that broken), through the real /api/v1/probe endpoint with the real toy model.
"""

from __future__ import annotations

import io
import resource
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, features

from app.server import create_app
from app.uploads import UploadLimits, decode_image
from precompute.errors import Problem
from tests.app.conftest import Store

MAX_BYTES = 1024 * 1024


# -- file makers ---------------------------------------------------------------------------------
def save(image: Image.Image, fmt: str, **params) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **params)
    return out.getvalue()


def picture(size: tuple[int, int] = (96, 80), mode: str = "RGB") -> Image.Image:
    """A picture with structure (a gradient and a block), so truncation matters."""
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), np.full_like(x, 90)], axis=-1).astype(np.uint8)
    rgb[h // 4: h // 2, w // 4: w // 2] = (250, 20, 20)
    return Image.fromarray(rgb).convert(mode)


def chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def raw_png(width: int, height: int, bit_depth: int, color_type: int, row: bytes, extra: bytes = b"") -> bytes:
    """A PNG written by hand: every row the same (so huge images compress to almost nothing)."""
    compressor = zlib.compressobj(9)
    body = bytearray()
    line = b"\x00" + row
    block = line * max(1, min(height, (1 << 20) // max(len(line), 1)))
    remaining = height
    while remaining > 0:
        rows = min(remaining, len(block) // len(line))
        body += compressor.compress(block[: rows * len(line)])
        remaining -= rows
    body += compressor.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + extra + chunk(b"IDAT", bytes(body)) + chunk(b"IEND", b"")


def png_bomb() -> bytes:
    # 30,000 x 30,000 1-bit pixels: 112 MB of pixels (900 M as RGB) in a file of about 100 KB.
    return raw_png(30_000, 30_000, 1, 0, b"\x00" * (30_000 // 8))


def png_header_only_huge() -> bytes:
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def png_text_bomb() -> bytes:
    text = zlib.compress(b"\x00" * (16 * 1024 * 1024), 9)  # 16 MB of text behind 16 KB
    return raw_png(8, 8, 8, 0, b"\x80" * 8, extra=chunk(b"zTXt", b"Comment\x00\x00" + text))


def png_bad_crc() -> bytes:
    data = bytearray(save(picture(), "PNG"))
    idat = data.index(b"IDAT")
    data[idat + 10] ^= 0xFF  # flip bits inside the compressed pixels; the CRC no longer matches
    return bytes(data)


def png_16bit_rgb() -> bytes:
    row = b"".join(struct.pack(">HHH", 65535, 32768, 0) for _ in range(16))  # orange-ish, full 16-bit range
    return raw_png(16, 16, 16, 2, row)


def gif_huge_screen() -> bytes:
    frame = save(Image.new("P", (4, 4)), "GIF")
    return frame[:6] + struct.pack("<HH", 60_000, 60_000) + frame[10:]


def animated(fmt: str) -> bytes:
    frames = [Image.new("RGB", (48, 48), color) for color in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    return save(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)


def cmyk_jpeg() -> bytes:
    return save(Image.new("CMYK", (40, 40), (0, 255, 255, 0)), "JPEG", quality=95)  # pure red in CMYK


def grey16_png() -> bytes:
    return save(Image.fromarray(np.full((24, 24), 32896, dtype=np.uint16)), "PNG")  # 32896 / 257 = 128


def palette_transparency_png() -> bytes:
    image = Image.new("P", (20, 20), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.paste(1, (10, 0, 20, 20))  # right half red, left half index 0 = transparent
    return save(image, "PNG", transparency=0)


def rgba_png() -> bytes:
    image = Image.new("RGBA", (20, 20), (0, 0, 255, 0))  # fully transparent blue: should read as white
    return save(image, "PNG")


def exif_rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    return save(picture((120, 60)), "JPEG", exif=exif.tobytes())


def jpeg_garbage_exif() -> bytes:
    data = save(picture(), "JPEG")
    app1 = b"Exif\x00\x00" + b"II*\x00\xff\xff\xff\x7f" + b"\x13" * 40
    return data[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + data[2:]


def truncated(data: bytes, keep: float) -> bytes:
    return data[: int(len(data) * keep)]


def too_many_bytes() -> bytes:
    return b"\x89PNG\r\n\x1a\n" + np.random.default_rng(0).bytes(MAX_BYTES + 200_000)


@dataclass
class Case:
    name: str
    make: Callable[[], bytes]
    filename: str
    expect: set[int]  # acceptable statuses; 200 means "a correct result"
    reason: str | None = None
    note: str | None = None  # a note the result must carry
    check: Callable[[Image.Image], None] | None = None  # on the decoded picture


def reddish(image: Image.Image) -> None:
    r, g, b = image.convert("RGB").getpixel((image.width // 2, image.height // 2))
    assert r > 200 and g < 60 and b < 60, (r, g, b)


def mid_grey(image: Image.Image) -> None:
    assert image.getpixel((3, 3)) == (128, 128, 128)


def white_and_red(image: Image.Image) -> None:
    assert image.getpixel((2, 10)) == (255, 255, 255) and image.getpixel((15, 10)) == (255, 0, 0)


def white(image: Image.Image) -> None:
    assert image.getpixel((5, 5)) == (255, 255, 255)


def portrait(image: Image.Image) -> None:
    assert image.height > image.width


def orange16(image: Image.Image) -> None:
    r, g, b = image.getpixel((4, 4))
    assert r == 255 and 126 <= g <= 129 and b == 0


CASES = [
    Case("zero bytes", lambda: b"", "empty.png", {400}, "empty-file"),
    Case("text renamed .png", lambda: b"hello, this is not an image\n" * 20, "notes.png", {415}, "not-an-image"),
    Case("html renamed .jpg", lambda: b"<!doctype html><script>alert(1)</script>", "x.jpg", {415}, "not-an-image"),
    Case("svg", lambda: b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="9e9" height="9e9"/>', "x.svg", {415}),
    Case("pdf renamed .png", lambda: b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n", "doc.png", {415}),
    Case("zip renamed .png", lambda: b"PK\x03\x04" + b"\x00" * 100, "archive.png", {415}),
    Case("tiff", lambda: save(picture(), "TIFF"), "x.tiff", {415}),
    Case("ico", lambda: save(picture((32, 32)), "ICO"), "x.ico", {415}),
    Case("random bytes", lambda: np.random.default_rng(1).bytes(5000), "noise.bin", {415}),
    Case("png signature only", lambda: b"\x89PNG\r\n\x1a\n", "sig.png", {422}, "corrupt-image"),
    Case("truncated png", lambda: truncated(save(picture(), "PNG"), 0.5), "half.png", {422}, "corrupt-image"),
    Case("truncated jpeg", lambda: truncated(save(picture((200, 200)), "JPEG", quality=95), 0.4), "half.jpg", {422}, "corrupt-image"),
    Case("jpeg header then garbage", lambda: b"\xff\xd8\xff\xe0" + b"\x00\x10JFIF" + b"\x01" * 64, "bad.jpg", {422}, "corrupt-image"),
    Case("gif header only", lambda: b"GIF89a\x10\x00\x10\x00", "bad.gif", {422}, "corrupt-image"),
    Case("truncated webp", lambda: truncated(save(picture(), "WEBP"), 0.5), "half.webp", {422}),
    Case("png with a bad CRC", png_bad_crc, "crc.png", {422}, "corrupt-image"),
    Case("gif header then html (polyglot)", lambda: b"GIF89a\x01\x00\x01\x00" + b"<script>alert(1)</script>" * 10, "p.gif", {422}),
    Case("decompression bomb png", png_bomb, "bomb.png", {413}, "too-many-pixels"),
    Case("enormous dimensions in the header", png_header_only_huge, "huge.png", {413}, "too-many-pixels"),
    Case("too wide strip", lambda: raw_png(9000, 2, 8, 0, b"\x10" * 9000), "wide.png", {413}, "too-many-pixels"),
    Case("5000 x 5000 solid", lambda: raw_png(5000, 5000, 8, 0, b"\x40" * 5000), "big.png", {413}, "too-many-pixels"),
    Case("gif with a 60000 px screen", gif_huge_screen, "screen.gif", {413}, "too-many-pixels"),
    Case("png zTXt text bomb", png_text_bomb, "text.png", {413, 422}),
    Case("over the byte limit", too_many_bytes, "big.bin", {413}),
    Case("animated gif", lambda: animated("GIF"), "anim.gif", {200}, note="first frame", check=reddish),
    Case("animated png (APNG)", lambda: animated("PNG"), "anim.png", {200}, note="first frame", check=reddish),
    Case("cmyk jpeg", cmyk_jpeg, "cmyk.jpg", {200}, note="CMYK", check=reddish),
    Case("16-bit greyscale png", grey16_png, "grey16.png", {200}, note="16-bit", check=mid_grey),
    Case("16-bit rgb png", png_16bit_rgb, "rgb16.png", {200}, check=orange16),
    Case("palette with transparency", palette_transparency_png, "pal.png", {200}, note="transparency", check=white_and_red),
    Case("rgba fully transparent", rgba_png, "alpha.png", {200}, note="transparency", check=white),
    Case("greyscale with alpha", lambda: save(picture().convert("LA"), "PNG"), "la.png", {200}, note="transparency"),
    Case("1-bit", lambda: save(picture().convert("1"), "PNG"), "bits.png", {200}),
    Case("exif rotated jpeg", exif_rotated_jpeg, "rot.jpg", {200}, note="EXIF orientation 6", check=portrait),
    Case("jpeg with garbage exif", jpeg_garbage_exif, "exif.jpg", {200}),
    Case("jpeg named .png", lambda: save(picture(), "JPEG"), "really-a-jpeg.png", {200}),
    Case("bmp", lambda: save(picture(), "BMP"), "x.bmp", {200}),
    Case("webp", lambda: save(picture(), "WEBP", lossless=True), "x.webp", {200}),
    Case("1 x 1 png", lambda: save(Image.new("RGB", (1, 1), (255, 0, 0)), "PNG"), "dot.png", {200}, check=reddish),
    Case("large but allowed jpeg", lambda: save(picture((3000, 2000)), "JPEG", quality=60), "photo.jpg", {200}),
]
if features.check("webp"):
    CASES.append(Case("animated webp", lambda: animated("WEBP"), "anim.webp", {200}, note="first frame", check=reddish))


def test_there_are_enough_hostile_files() -> None:
    assert len(CASES) >= 30
    assert sum(1 for c in CASES if 200 not in c.expect) >= 20


@pytest.fixture(scope="module")
def upload_client(live_store: Store) -> Iterator[TestClient]:
    settings = live_store.settings(max_upload_bytes=MAX_BYTES)
    with TestClient(create_app(settings)) as client:
        yield client


def probe(client: TestClient, data: bytes, filename: str, content_type: str = "application/octet-stream") -> object:
    return client.post("/api/v1/probe", data={"model": "toy-rn", "top_k": "5"}, files={"file": (filename, data, content_type)})


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_upload(upload_client: TestClient, case: Case) -> None:
    data = case.make()
    r = probe(upload_client, data, case.filename)
    assert r.status_code < 500, r.text
    assert r.status_code in case.expect, (r.status_code, r.text[:300])
    body = r.json()
    if r.status_code != 200:
        assert body["detail"] and body["reason"], body
        if case.reason:
            assert body["reason"] == case.reason, body
        return
    units = body["units"]
    assert len(units) == 5
    assert [u["activation"] for u in units] == sorted((u["activation"] for u in units), reverse=True)
    assert all(len(u["map"]) == 2 and len(u["map"][0]) == 2 for u in units)  # toy-rn layer4 is 2x2
    if case.note:
        assert any(case.note in n for n in body["input"]["notes"]), body["input"]["notes"]
    if case.check:
        decoded = decode_image(data, UploadLimits(max_bytes=MAX_BYTES))
        case.check(decoded.image)


def test_the_page_says_why_too(upload_client: TestClient) -> None:
    r = upload_client.post("/probe", data={"model": "toy-rn"}, files={"file": ("x.png", b"not an image", "image/png")})
    assert r.status_code == 415 and "text/html" in r.headers["content-type"] and "not an image" in r.text


def test_body_limit_applies_while_streaming(upload_client: TestClient) -> None:
    """A chunked body with no Content-Length is cut off once it passes the limit."""
    sent = 0

    def body() -> Iterator[bytes]:
        nonlocal sent
        boundary = b"--xyz\r\n"
        yield boundary + b'Content-Disposition: form-data; name="model"\r\n\r\ntoy-rn\r\n'
        yield boundary + b'Content-Disposition: form-data; name="file"; filename="a.png"\r\nContent-Type: image/png\r\n\r\n'
        for _ in range(64):  # 4 MB in 64 KB chunks, far past the 1 MB limit
            sent += 65536
            yield b"\x00" * 65536
        yield b"\r\n--xyz--\r\n"

    r = upload_client.post("/api/v1/probe", content=body(), headers={"Content-Type": "multipart/form-data; boundary=xyz"})
    assert r.status_code == 413 and r.json()["reason"] == "body-too-large"


def test_declared_length_over_limit_is_refused_before_reading(upload_client: TestClient) -> None:
    r = upload_client.post("/api/v1/probe", content=b"x" * (MAX_BYTES + 100_000),
                           headers={"Content-Type": "multipart/form-data; boundary=xyz"})
    assert r.status_code == 413


def test_memory_stays_bounded(upload_client: TestClient) -> None:
    """Refusing bombs must not allocate their pixels: a bomb fully decoded would take ~1 GB."""
    assert probe(upload_client, save(picture(), "PNG"), "warm.png").status_code == 200  # model loaded, caches warm
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    for _ in range(3):
        for make in (png_bomb, png_header_only_huge, gif_huge_screen, png_text_bomb, lambda: raw_png(5000, 5000, 8, 0, b"\x40" * 5000)):
            assert probe(upload_client, make(), "bomb.png").status_code in (413, 422)
    for _ in range(5):
        assert probe(upload_client, save(picture((3000, 2000)), "JPEG", quality=60), "photo.jpg").status_code == 200
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 200, f"peak memory grew by {grown_mib:.0f} MiB"


def test_decode_limits_directly() -> None:
    with pytest.raises(Problem) as info:
        decode_image(save(picture((100, 100)), "PNG"), UploadLimits(max_pixels=64 * 64))
    assert info.value.status == 413
    big = decode_image(save(picture((2400, 1200)), "PNG"), UploadLimits())
    assert (big.width, big.height) == (2400, 1200) and max(big.image.size) == 1024  # shrunk for the model, size reported
