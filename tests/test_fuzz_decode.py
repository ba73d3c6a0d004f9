"""Fuzzing the decoder: random and mutated image bytes give a clean RGB image or a DecodeError, nothing else.

Seeds are small real files in every common format (baseline and progressive JPEG, PNG in several
modes, animated GIF and WebP, BMP, TIFF, ICO, HEIF and AVIF where available); hypothesis flips
bits, overwrites and inserts bytes, truncates, and splices two files together. Each test counts the
inputs it ran (at least 2,200 together) and fails on any other exception, a hang, or a result that
is not an 8-bit RGB image with the size it claims.
"""

from __future__ import annotations

import atexit
import io
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, features

from searcher.decode import DecodeError, open_image, to_model_input
from tests.conftest import synthetic_photo

MAX_PIXELS = 2_000_000  # a mutated header may claim anything: keep the allowed work small
SLOW = 5.0  # seconds: no single input may take longer (a hang, or a bomb the guard missed)


def _save(img: Image.Image, fmt: str, **kwargs) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **kwargs)
    return out.getvalue()


def _seeds() -> dict[str, bytes]:
    photo = synthetic_photo(11, (40, 30))
    frames = [synthetic_photo(12 + i, (24, 24)) for i in range(3)]
    seeds = {
        "jpeg": _save(photo, "JPEG", quality=80),
        "jpeg_progressive": _save(photo, "JPEG", quality=70, progressive=True),
        "jpeg_grey_exif": _save(photo.convert("L"), "JPEG", exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x00"),
        "jpeg_cmyk": _save(photo.convert("CMYK"), "JPEG"),
        "png": _save(photo, "PNG"),
        "png_rgba": _save(photo.convert("RGBA"), "PNG"),
        "png_palette": _save(photo.convert("P"), "PNG", transparency=3),
        "png_16bit": _save(Image.fromarray(np.arange(600, dtype=np.uint16).reshape(20, 30) * 100), "PNG"),
        "gif_animated": _save(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        "webp_lossy": _save(photo, "WEBP", quality=60),
        "webp_animated": _save(frames[0], "WEBP", save_all=True, append_images=frames[1:]),
        "bmp": _save(photo, "BMP"),
        "tiff": _save(photo, "TIFF"),
        "tiff_lzw": _save(photo, "TIFF", compression="tiff_lzw"),
        "ico": _save(photo, "ICO"),
    }
    if features.check("avif"):
        seeds["avif"] = _save(photo, "AVIF")
    try:
        import pillow_heif

        out = io.BytesIO()
        pillow_heif.from_pillow(photo).save(out, format="HEIF")
        seeds["heif"] = out.getvalue()
    except Exception:  # noqa: BLE001  (no HEIF encoder on this platform)
        pass
    return seeds


SEEDS = _seeds()
SCRATCH = Path(tempfile.mkdtemp(prefix="searcher-fuzz-"))
atexit.register(shutil.rmtree, SCRATCH, ignore_errors=True)
NAMES = sorted(SEEDS)
RAN: Counter[str] = Counter()


def check_decode(data: bytes, test: str, min_side: int | None = None, path: Path | None = None) -> None:
    """The property: a clean 8-bit RGB image of the claimed size, or a DecodeError.

    With ``path``, the bytes are also written there and decoded from the file: same verdict.
    """
    RAN[test] += 1
    started = time.monotonic()
    try:
        decoded = open_image(data, max_pixels=MAX_PIXELS, min_side=min_side)
    except DecodeError as exc:
        assert str(exc), "a DecodeError needs a reason"
        RAN[f"{test}:refused"] += 1
        if path is not None:
            path.write_bytes(data)
            with pytest.raises(DecodeError):
                open_image(path, max_pixels=MAX_PIXELS, min_side=min_side)
    else:
        if path is not None:
            path.write_bytes(data)
            assert open_image(path, max_pixels=MAX_PIXELS, min_side=min_side).image.size == decoded.image.size
        img = decoded.image
        assert img.mode == "RGB"
        assert img.size[0] >= 1 and img.size[1] >= 1
        assert decoded.width >= 1 and decoded.height >= 1
        assert decoded.width * decoded.height <= MAX_PIXELS
        pixels = to_model_input(decoded, (16, 16))
        assert pixels.shape == (16, 16, 3) and pixels.dtype == np.uint8
        RAN[f"{test}:decoded"] += 1
    assert time.monotonic() - started < SLOW, f"decoding took {time.monotonic() - started:.1f} s"


def fuzz(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        print_blob=True,
    )


@st.composite
def mutated(draw) -> bytes:
    """A seed file with a few bit flips, overwritten bytes, insertions or deletions."""
    data = bytearray(SEEDS[draw(st.sampled_from(NAMES))])
    for _ in range(draw(st.integers(1, 8))):
        op = draw(st.sampled_from(["flip", "flip", "set", "insert", "delete", "header"]))
        if op == "header":  # the first bytes hold most of the parsing decisions
            pos = draw(st.integers(0, min(64, len(data) - 1)))
        else:
            pos = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op in ("set", "header"):
            data[pos] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80, draw(st.integers(0, 255))]))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 16))]
        if not data:
            break
    return bytes(data)


@st.composite
def cut_or_spliced(draw) -> bytes:
    """A truncated seed, or the head of one file glued to the tail of another (or of itself)."""
    a = SEEDS[draw(st.sampled_from(NAMES))]
    if draw(st.booleans()):
        return a[: draw(st.integers(0, len(a)))]
    b = SEEDS[draw(st.sampled_from(NAMES))]
    return a[: draw(st.integers(0, len(a)))] + b[draw(st.integers(0, len(b))) :]


MAGIC = [
    b"\xff\xd8\xff\xe0", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"BM", b"II*\x00",
    b"MM\x00*", b"\x00\x00\x01\x00", b"\x00\x00\x00\x18ftypheic", b"\x00\x00\x00\x1cftypavif", b"P6\n",
]  # fmt: skip


@st.composite
def random_bytes(draw) -> bytes:
    """Pure noise, or noise behind a real format's signature (so each plugin's parser is exercised)."""
    body = draw(st.binary(min_size=0, max_size=3000))
    if draw(st.booleans()):
        return body
    return draw(st.sampled_from(MAGIC)) + body


N_MUTATED, N_SPLICED, N_RANDOM = 2500, 1000, 700


@fuzz(N_MUTATED)
@given(data=mutated(), min_side=st.sampled_from([None, 8]))
def _fuzz_mutated(data: bytes, min_side: int | None) -> None:
    check_decode(data, "mutated", min_side)


@fuzz(N_SPLICED)
@given(data=cut_or_spliced())
def _fuzz_spliced(data: bytes) -> None:
    check_decode(data, "spliced", path=SCRATCH / "spliced.jpg")  # also through a file on disk


@fuzz(N_RANDOM)
@given(data=random_bytes())
def _fuzz_random(data: bytes) -> None:
    check_decode(data, "random")


@pytest.mark.parametrize(
    "name, run, wanted",
    [("mutated", _fuzz_mutated, N_MUTATED), ("spliced", _fuzz_spliced, N_SPLICED), ("random", _fuzz_random, N_RANDOM)],
)
def test_fuzz_decode(name: str, run, wanted: int) -> None:
    before = RAN[name]
    run()
    ran = RAN[name] - before
    print(
        f"\nfuzz {name}: {ran} inputs ({RAN[name + ':decoded']} decoded, {RAN[name + ':refused']} refused), "
        f"{sum(RAN[n] for n in ('mutated', 'spliced', 'random'))} in all so far"
    )
    assert ran >= wanted


def test_seeds_decode() -> None:
    """The unmutated seeds all decode (so the mutations start from valid files)."""
    for name, data in SEEDS.items():
        decoded = open_image(data)
        assert decoded.image.mode == "RGB", name
