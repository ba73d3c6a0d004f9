"""Bad input never crashes anything: every kind is indexed, or recorded as failed with a clear reason.

Decoding is tested kind by kind on generated files; one library indexes a folder holding every kind
at once (in-process, with the shared cached embedder); the CLI's user errors give one line each.
"""

from __future__ import annotations

import io
import json
import os
import resource
import shutil
import sqlite3
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, features
from typer.testing import CliRunner

from searcher.cli import app
from searcher.decode import DecodeError, load_for_model, open_image
from searcher.library import Library, LibraryError, LibraryNotFound
from searcher.store import SchemaError
from tests.conftest import synthetic_photo

SHARED_DATA = ("datasets", "imagededup-tests")


# --- making bad files ----------------------------------------------------------------------------


def encoded(img: Image.Image, fmt: str, **kwargs) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **kwargs)
    return out.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int, height: int, bit_depth: int = 1, colour: int = 0) -> bytes:
    """A valid, tiny PNG that inflates to ``width x height`` pixels of zeros."""
    row = b"\0" + b"\0" * ((width * bit_depth + 7) // 8)
    compressor = zlib.compressobj(9)
    body = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", body) + png_chunk(b"IEND", b"")


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims a huge RGB image (with a few bytes of pixel data)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + png_chunk(b"IEND", b"")
    )


def photo(seed: int = 1, size: tuple[int, int] = (64, 48)) -> Image.Image:
    return synthetic_photo(seed, size)


def solid(colour: tuple[int, int, int], size: tuple[int, int] = (32, 32)) -> Image.Image:
    return Image.new("RGB", size, colour)


def animated(fmt: str) -> bytes:
    frames = [solid((255, 0, 0)), solid((0, 255, 0)), solid((0, 0, 255))]
    return encoded(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)


def with_orientation(img: Image.Image, value: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = value
    return encoded(img, "JPEG", exif=exif)


def heic_bytes(img: Image.Image) -> bytes:
    pillow_heif = pytest.importorskip("pillow_heif")
    out = io.BytesIO()
    pillow_heif.from_pillow(img).save(out, format="HEIF")
    return out.getvalue()


def corrupt_jpeg_header() -> bytes:
    data = bytearray(encoded(photo(), "JPEG"))
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = b"\x00\x00\x00\x00"  # height and width 0
    return bytes(data)


def corrupt_jpeg_body() -> bytes:
    data = bytearray(encoded(photo(2, (128, 96)), "JPEG", quality=90))
    sos = data.find(b"\xff\xda")
    for i in range(sos + 40, len(data) - 40, 7):
        data[i] ^= 0x5A  # garbled entropy-coded data: libjpeg recovers or gives up, it never crashes
    return bytes(data)


def corrupt_png_data() -> bytes:
    data = bytearray(encoded(photo(), "PNG"))
    idat = data.find(b"IDAT")
    length = int.from_bytes(data[idat - 4 : idat], "big")
    data[idat + 4 : idat + 4 + length] = (bytes(range(256)) * (length // 256 + 1))[:length]  # not zlib data
    return bytes(data)


def corrupt_png_header() -> bytes:
    data = bytearray(encoded(photo(), "PNG"))
    data[data.find(b"IHDR") + 12] ^= 0xFF  # colour type: the header's CRC fails
    return bytes(data)


def png_bad_crc() -> bytes:
    data = bytearray(encoded(photo(), "PNG"))
    idat = data.find(b"IDAT")
    data[idat + 4 + int.from_bytes(data[idat - 4 : idat], "big")] ^= 0xFF  # only the pixel chunk's CRC is wrong
    return bytes(data)


def sixteen_bit_grey() -> bytes:
    ramp = np.linspace(0, 65535, 64 * 48).reshape(48, 64).astype(np.uint16)
    return encoded(Image.fromarray(ramp), "PNG")


def sixteen_bit_rgb() -> bytes:
    """A 48-bit RGB PNG (Pillow cannot write one, so it is assembled by hand)."""
    pixels = np.linspace(0, 65535, 16 * 12 * 3).astype(">u2").reshape(12, 16 * 3)
    raw = b"".join(b"\0" + row.tobytes() for row in pixels)
    header = struct.pack(">IIBBBBB", 16, 12, 16, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(raw))
        + png_chunk(b"IEND", b"")
    )


def float_tiff() -> bytes:
    ramp = np.linspace(-3.0, 7.0, 64 * 48, dtype=np.float32).reshape(48, 64)
    return encoded(Image.fromarray(ramp, "F"), "TIFF")


def palette_with_transparency() -> bytes:
    img = photo().convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return encoded(img, "PNG", transparency=0)


def transparent_rgba() -> bytes:
    img = photo().convert("RGBA")
    img.putalpha(0)  # fully transparent: composited onto white
    return encoded(img, "PNG")


# kind -> (bytes maker, expected: "ok" or a fragment of the DecodeError reason)
DECODE_KINDS: dict[str, tuple] = {
    "truncated_jpeg": (lambda: encoded(photo(), "JPEG")[:300], "truncated"),
    "truncated_png": (lambda: encoded(photo(), "PNG")[:200], "truncated"),
    "truncated_gif_header": (lambda: encoded(photo(), "GIF")[:12], "corrupt GIF"),
    "corrupt_jpeg_header": (corrupt_jpeg_header, "corrupt JPEG"),
    "corrupt_jpeg_body": (corrupt_jpeg_body, "ok-or-error"),
    "corrupt_png_data": (corrupt_png_data, "corrupt"),
    "corrupt_png_header": (corrupt_png_header, "corrupt PNG"),
    "png_bad_crc_only": (png_bad_crc, "ok-or-error"),
    "zero_bytes": (lambda: b"", "empty file"),
    "random_bytes": (lambda: np.random.default_rng(7).bytes(4000), "not an image"),
    "text_file": (lambda: b"hello, I am not a picture\n" * 20, "not an image"),
    "svg_vector": (lambda: b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>', "SVG"),
    "header_only_bomb": (lambda: png_header_only(100_000, 100_000), "too large"),
    "sixteen_bit_grey_png": (sixteen_bit_grey, "ok"),
    "sixteen_bit_rgb_png": (sixteen_bit_rgb, "ok"),
    "float_tiff": (float_tiff, "ok"),
    "int32_tiff": (lambda: encoded(Image.fromarray(np.arange(64, dtype=np.int32).reshape(8, 8) * 1000), "TIFF"), "ok"),
    "cmyk_jpeg": (lambda: encoded(photo().convert("CMYK"), "JPEG"), "ok"),
    "cmyk_tiff": (lambda: encoded(photo().convert("CMYK"), "TIFF"), "ok"),
    "palette_png": (lambda: encoded(photo().convert("P"), "PNG"), "ok"),
    "palette_transparency_png": (palette_with_transparency, "ok"),
    "bilevel_png": (lambda: encoded(photo().convert("1"), "PNG"), "ok"),
    "grey_alpha_png": (lambda: encoded(photo().convert("LA"), "PNG"), "ok"),
    "rgba_png": (transparent_rgba, "ok"),
    "ycbcr_jpeg_grey": (lambda: encoded(photo().convert("L"), "JPEG"), "ok"),
    "animated_gif": (lambda: animated("GIF"), "ok"),
    "animated_webp": (lambda: animated("WEBP"), "ok"),
    "panorama_jpeg": (lambda: encoded(photo(3, (12000, 100)), "JPEG"), "ok"),
    "tiny_1x1_png": (lambda: encoded(solid((9, 9, 9), (1, 1)), "PNG"), "ok"),
    "tiny_1x1_gif": (lambda: encoded(solid((9, 9, 9), (1, 1)), "GIF"), "ok"),
    "tiny_1x2_jpeg": (lambda: encoded(solid((9, 9, 9), (1, 2)), "JPEG"), "ok"),
    "bmp": (lambda: encoded(photo(), "BMP"), "ok"),
    "tiff": (lambda: encoded(photo(), "TIFF", compression="tiff_lzw"), "ok"),
    "ppm": (lambda: encoded(photo(), "PPM"), "ok"),
    "ico": (lambda: encoded(photo(), "ICO"), "ok"),
    "webp": (lambda: encoded(photo(), "WEBP"), "ok"),
    "exif_rotated_jpeg": (lambda: with_orientation(photo(), 6), "ok"),
}


@pytest.mark.parametrize("kind", sorted(DECODE_KINDS))
def test_decode_kind(kind: str, tmp_path: Path) -> None:
    make, expected = DECODE_KINDS[kind]
    data = make()
    path = tmp_path / f"{kind}.img"  # the extension says nothing: Pillow sniffs the content
    path.write_bytes(data)
    for source in (data, path):
        try:
            decoded = open_image(source)
        except DecodeError as exc:
            assert expected != "ok", f"{kind} should decode, got: {exc}"
            if expected != "ok-or-error":
                assert expected.lower() in str(exc).lower(), f"{kind}: unclear reason {exc!r}"
            continue
        assert expected in ("ok", "ok-or-error"), f"{kind} should be refused"
        assert decoded.image.mode == "RGB" and min(decoded.image.size) >= 1
        assert decoded.width >= 1 and decoded.height >= 1
        pixels = load_for_model(source, (224, 224))[0]
        assert pixels.shape == (224, 224, 3) and pixels.dtype == np.uint8


def test_decode_details(tmp_path: Path) -> None:
    """The conversions do the right thing, not just something."""
    first = open_image(animated("GIF")).image.getpixel((5, 5))
    assert first[0] > 200 and first[1] < 50 and first[2] < 50  # the first (red) frame
    first = open_image(animated("WEBP")).image.getpixel((5, 5))
    assert first[0] > 200 and first[1] < 50 and first[2] < 50
    assert open_image(transparent_rgba()).image.getpixel((3, 3)) == (255, 255, 255)  # alpha onto white
    grey = np.asarray(open_image(sixteen_bit_grey()).image)
    assert grey.min() < 10 and grey.max() > 245  # 16-bit range rescaled, not clipped to white
    cmyk = np.asarray(open_image(encoded(photo().convert("CMYK"), "JPEG")).image, dtype=float)
    assert np.abs(cmyk - np.asarray(photo(), dtype=float)).mean() < 40
    rotated = open_image(with_orientation(photo(size=(64, 48)), 6))
    assert (rotated.width, rotated.height) == (48, 64) and rotated.image.size == (48, 64)
    pano = open_image(encoded(photo(3, (12000, 100)), "JPEG"))
    assert (pano.width, pano.height) == (12000, 100)
    assert open_image(heic_bytes(photo())).format in ("HEIF", "HEIC")
    if features.check("avif"):
        assert open_image(encoded(photo(), "AVIF")).format == "AVIF"


def test_decompression_bomb_refused_without_allocating(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_bomb(20_000, 20_000))  # 400 Mpx (1.2 GB as RGB) in a ~60 KB file
    assert bomb.stat().st_size < 200_000
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    with pytest.raises(DecodeError, match="too large.*400 Mpx exceeds the limit of 179 Mpx"):
        open_image(bomb)
    with pytest.raises(DecodeError, match="too large"):
        open_image(png_header_only(1_000_000, 1_000_000))
    assert time.monotonic() - started < 2.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 100_000  # KiB: nothing big allocated
    # the limit is configurable: per call, and with SEARCHER_MAX_PIXELS
    normal = tmp_path / "normal.jpg"
    photo(4, (400, 300)).save(normal)
    with pytest.raises(DecodeError, match="exceeds the limit"):
        open_image(normal, max_pixels=100_000)
    monkeypatch.setenv("SEARCHER_MAX_PIXELS", "50000")
    with pytest.raises(DecodeError, match="SEARCHER_MAX_PIXELS"):
        open_image(normal)
    assert open_image(normal, max_pixels=10**9).width == 400


def test_special_files_never_block(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    folder = tmp_path / "folder.jpg"
    folder.mkdir()
    loop = tmp_path / "loop.jpg"
    loop.symlink_to(loop)
    dangling = tmp_path / "dangling.jpg"
    dangling.symlink_to(tmp_path / "nowhere.jpg")
    outcome: dict[str, str] = {}

    def attempt() -> None:
        for path in (fifo, folder, loop, dangling, tmp_path / "missing.jpg"):
            try:
                open_image(path)
                outcome[path.name] = "decoded"
            except DecodeError as exc:
                outcome[path.name] = str(exc)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(10)
    assert not worker.is_alive(), "opening a FIFO blocked"
    assert "not a regular file" in outcome["pipe.jpg"]
    assert outcome["folder.jpg"] == "is a directory"
    assert outcome["loop.jpg"] == "symlink loop"
    assert outcome["dangling.jpg"] == "file not found"
    assert outcome["missing.jpg"] == "file not found"


# --- one library, every kind ----------------------------------------------------------------------


def library_rows(lib_path: Path) -> dict[str, tuple[str, str | None]]:
    """path -> (status, error), read straight from SQLite."""
    with sqlite3.connect(lib_path / "library.db") as db:
        return {os.fsdecode(p): (s, e) for p, s, e in db.execute("SELECT path, status, error FROM images")}


@pytest.fixture
def bad_folder(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A folder with every kind of file; returns it and {name: expected ("ok" or a reason fragment)}."""
    root = tmp_path / "photos"
    root.mkdir()
    expect: dict[str, str] = {}

    def put(name: str, data: bytes, outcome: str) -> None:
        (root / name).write_bytes(data)
        expect[name] = outcome

    for i, kind in enumerate(sorted(DECODE_KINDS)):
        make, expected = DECODE_KINDS[kind]
        if expected == "ok-or-error":
            continue
        ext = ".png" if "png" in kind else ".jpg"  # often the wrong extension on purpose
        put(f"{i:02d}-{kind}{ext}", make(), "ok" if expected == "ok" else expected)
    put("jpeg-named.png", encoded(photo(20), "JPEG"), "ok")
    put("png-named.gif", encoded(photo(21), "PNG"), "ok")
    put("photo.heic", heic_bytes(photo(22)), "ok")
    if features.check("avif"):
        put("photo.avif", encoded(photo(23), "AVIF"), "ok")
    put("photo.webp", encoded(photo(24), "WEBP"), "ok")
    put("vector.svg", b'<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"/>', "SVG")
    put("notes.txt", b"not an image extension: ignored", "ignored")
    (root / "dangling.jpg").symlink_to(root / "gone.jpg")
    expect["dangling.jpg"] = "dangling symlink"
    (root / "loop.jpg").symlink_to(root / "loop.jpg")
    expect["loop.jpg"] = "symlink loop"
    os.mkfifo(root / "pipe.jpg")
    expect["pipe.jpg"] = "not a regular file"
    (root / "album.jpg").mkdir()  # a folder with an image extension is a folder
    put("album.jpg/inside.jpg", encoded(photo(25), "JPEG"), "ok")
    (root / "album.jpg" / "up").symlink_to(root)  # a folder loop
    odd = os.fsencode(root) + b"/caf\xe9-\xff.jpg"  # not UTF-8
    with open(odd, "wb") as handle:
        handle.write(encoded(photo(26), "JPEG"))
    expect[os.fsdecode(odd)[len(str(root)) + 1 :]] = "ok"
    odd_bad = os.fsencode(root) + b"/broken-\xfe.png"
    with open(odd_bad, "wb") as handle:
        handle.write(b"\x89PNG\r\n\x1a\n broken")
    expect[os.fsdecode(odd_bad)[len(str(root)) + 1 :]] = "corrupt"
    (root / "odd[").mkdir()
    put("odd[/b].jpg", encoded(photo(27), "JPEG"), "ok")  # "[/b]" reads as rich markup in messages
    return root, expect


def test_index_every_kind(bad_folder: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    root, expect = bad_folder
    lib_path = tmp_path / "lib"
    with Library.open(lib_path) as lib:
        report = lib.index([root], batch_size=8)
        assert not report.interrupted
        rows = library_rows(lib_path)
        by_name = {p[len(str(root)) + 1 :]: v for p, v in rows.items()}
        for name, outcome in expect.items():
            if outcome == "ignored":
                assert name not in by_name
                continue
            assert name in by_name, f"{name!r} was not recorded"
            status, error = by_name[name]
            if outcome == "ok":
                assert status == "ok", f"{name!r} failed: {error}"
            else:
                assert status == "failed" and outcome.lower() in (error or "").lower(), (name, error)
        assert not set(by_name) - {n for n, o in expect.items() if o != "ignored"}, "unexpected rows"
        n_ok = sum(1 for o in expect.values() if o == "ok")
        assert lib.info()["images"] == n_ok
        failed = dict(lib.failures())
        assert len(failed) == sum(1 for o in expect.values() if o not in ("ok", "ignored"))
        # a probe with an odd name gets answers, and re-running does no work
        probe = os.fsdecode(os.fsencode(root) + b"/caf\xe9-\xff.jpg")
        hits = lib.query([probe], k=3)[0]
        assert hits.error is None and len(hits.results) == 3
        again = lib.index([root], batch_size=8)
        assert again.new == 0 and again.embedded == 0 and again.changed == 0

    runner = CliRunner()
    out = runner.invoke(app, ["failures", "--library", str(lib_path), "--json"])
    assert out.exit_code == 0, out.output
    listed = json.loads(out.stdout)  # valid JSON even with names that are not UTF-8
    paths = {os.fsencode(item["path"]) for item in listed}
    assert os.fsencode(root) + b"/broken-\xfe.png" in paths  # the escapes round-trip to the original bytes
    assert len(listed) == len(failed)
    out = runner.invoke(app, ["failures", "--library", str(lib_path)])
    assert out.exit_code == 0 and "Traceback" not in out.output
    out = runner.invoke(app, ["query", str(root / "odd[/b].jpg"), "-k", "40", "-L", str(lib_path)])
    assert out.exit_code == 0, out.output
    out = runner.invoke(app, ["query", probe, "--library", str(lib_path), "--json", "-k", "40"])
    assert out.exit_code == 0
    assert os.fsencode(probe) not in {os.fsencode(h["path"]) for h in json.loads(out.stdout)[0]["results"]}
    assert json.loads(out.stdout)[0]["query"] == probe


def test_retry_failed(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    root.mkdir()
    photo(30, (400, 300)).save(root / "big.jpg")
    photo(31).save(root / "small.jpg")
    (root / "broken.jpg").write_bytes(encoded(photo(32), "JPEG")[:200])
    with Library.open(tmp_path / "lib") as lib:
        report = lib.index([root], max_pixels=50_000)
        assert report.failed == 2 and report.embedded == 1
        assert "exceeds the limit" in dict(lib.failures())[str(root / "big.jpg")]
        # without --retry-failed a failed file stays failed (even with a higher limit) ...
        assert lib.index([root]).embedded == 0
        assert len(lib.failures()) == 2
        # ... with it, it is tried again: the big one now fits, the broken one fails again
        report = lib.index([root], retry_failed=True)
        assert report.embedded == 1
        assert [p for p, _ in lib.failures()] == [str(root / "broken.jpg")]
        # fixing the file is noticed without --retry-failed (it changed)
        photo(32).save(root / "broken.jpg")
        assert lib.index([root]).embedded == 1 and lib.failures() == []
        assert lib.info()["images"] == 3


def test_imagededup_odd_formats_and_corrupt_files(shared: Path, tmp_path: Path) -> None:
    data = shared.joinpath(*SHARED_DATA, "data")
    truth = json.loads(shared.joinpath(*SHARED_DATA, "groundtruth.json").read_text())
    corrupt = {str(data / p) for p in truth["corrupt_or_unreadable"]}
    files = {str(p) for p in data.rglob("*") if p.is_file()}
    with Library.open(tmp_path / "lib") as lib:
        report = lib.index([data], batch_size=16)
        rows = library_rows(tmp_path / "lib")
    assert set(rows) == files  # every file has an image extension (.svg included) and is recorded
    failed = {p for p, (status, _) in rows.items() if status == "failed"}
    assert failed == corrupt, {p: rows[p][1] for p in failed ^ corrupt}
    for path in corrupt:
        assert rows[path][1] and "corrupt" in rows[path][1] or "not an image" in rows[path][1]
    # mislabelled extensions (JPEG bytes named .bmp/.png/.svg) are decoded by content
    for name in ("ukbench09380.bmp", "ukbench09380.png", "ukbench09380.svg", "ukbench09380.webp"):
        assert rows[str(data / "formats_images" / name)][0] == "ok"
    assert report.failed == len(corrupt)


def test_unreadable_files_recorded(tmp_path: Path) -> None:
    """Permission denied, as a normal user or as root (root gets EACCES once its DAC capabilities are dropped)."""
    root = tmp_path / "photos"
    (root / "locked-folder").mkdir(parents=True)
    photo(40).save(root / "fine.jpg")
    photo(41).save(root / "secret.jpg")
    photo(42).save(root / "locked-folder" / "inside.jpg")
    os.chmod(root / "secret.jpg", 0)
    os.chmod(root / "locked-folder", 0)
    lib_path = tmp_path / "lib"
    try:
        if os.geteuid() != 0:
            with Library.open(lib_path) as lib:
                lib.index([root])
        else:
            setpriv = shutil.which("setpriv")
            if setpriv is None:
                pytest.skip("running as root without setpriv: cannot make a file unreadable")
            # Root ignores file modes through CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH: drop both for the run.
            drop = [setpriv, "--bounding-set", "-dac_override,-dac_read_search", "--"]
            probe = subprocess.run([*drop, "cat", str(root / "secret.jpg")], capture_output=True)
            if probe.returncode == 0:
                pytest.skip("setpriv could not drop the capabilities here")
            run = subprocess.run(
                [*drop, sys.executable, "-m", "searcher", "index", str(root), "-L", str(lib_path), "--json", "-q"],
                capture_output=True, text=True, timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
            )  # fmt: skip
            assert run.returncode == 0, run.stderr[-2000:]
            assert "Traceback" not in run.stderr
            report = json.loads(run.stdout)
            assert {f["path"]: f["error"] for f in report["failures"]} == {
                str(root / "secret.jpg"): "permission denied"
            }
    finally:
        os.chmod(root / "secret.jpg", 0o644)
        os.chmod(root / "locked-folder", 0o755)
    rows = library_rows(lib_path)
    assert rows[str(root / "secret.jpg")] == ("failed", "permission denied")
    assert rows[str(root / "fine.jpg")][0] == "ok"
    assert str(root / "locked-folder" / "inside.jpg") not in rows  # an unreadable folder is skipped, not fatal


# --- errors a user can act on: one line, non-zero exit, no traceback ---------------------------


class Outcome:
    """A CLI run: exit code, stdout, and stderr with rich's line wrapping undone."""

    def __init__(self, result) -> None:
        self.exit_code = result.exit_code
        self.stdout = result.stdout
        self.stderr = " ".join(result.stderr.split())
        self.lines = len(result.stderr.strip().splitlines())
        self.exception = result.exception


def cli(*args: str) -> Outcome:
    result = CliRunner().invoke(app, list(args))
    assert "Traceback" not in result.output
    return Outcome(result)


def test_user_errors_are_one_line(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    photo(50).save(photos / "a.jpg")
    photo(51).save(photos / "b.jpg")
    missing_lib = tmp_path / "no-library"
    for command in (["query", str(photos / "a.jpg")], ["info"], ["failures"], ["check"]):
        result = cli(*command, "--library", str(missing_lib))
        assert result.exit_code == 1
        assert result.stderr.startswith("error: no library at") and result.lines <= 3
    assert not missing_lib.exists()  # reading commands never create a library

    lib_path = tmp_path / "lib"
    with Library.open(lib_path) as lib:
        lib.index([photos])
    result = cli("index", str(tmp_path / "nowhere"), "--library", str(lib_path))
    assert result.exit_code == 1 and "no such file or folder" in result.stderr
    result = cli("query", str(tmp_path / "nowhere.jpg"), "--library", str(lib_path))
    assert result.exit_code == 1 and "nowhere.jpg: no such file" in result.stderr
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff garbage")
    result = cli("query", str(broken), str(photos / "a.jpg"), "--library", str(lib_path), "--json")
    assert result.exit_code == 1  # the good probe is still answered
    answers = json.loads(result.stdout)
    assert answers[0]["error"] and answers[1]["results"]

    with sqlite3.connect(lib_path / "library.db") as db:
        db.execute("UPDATE meta SET value = '999' WHERE key = 'schema_version'")
    result = cli("query", str(photos / "a.jpg"), "--library", str(lib_path))
    assert result.exit_code == 1 and "newer searcher (schema 999" in result.stderr
    with pytest.raises(SchemaError):
        Library.open(lib_path, create=False)
    result = cli("info", "--library", str(lib_path), "--debug")
    assert isinstance(result.exception, SchemaError)  # --debug lets the traceback through

    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "library.db").write_bytes(b"this is not a database" * 100)
    result = cli("info", "--library", str(damaged))
    assert result.exit_code == 1 and "is damaged or is not a searcher library" in result.stderr

    with pytest.raises(LibraryNotFound):
        Library.open(missing_lib, create=False)
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    with pytest.raises(LibraryError, match="not a folder"):
        Library.open(not_a_folder)
