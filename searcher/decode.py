"""Stage 2: turn a file into an RGB image, safely.

Everything Pillow (plus pillow-heif for HEIC/HEIF/AVIF) can read is accepted;
anything else raises :class:`DecodeError` with a reason a person can act on.
EXIF orientation is applied, every mode is turned into 8-bit RGB (alpha is
composited onto white, 16-bit and float images are rescaled), animated files
give their first frame, and decompression bombs are refused from the header
alone, before any pixel memory is allocated. Large JPEGs are decoded at a
reduced scale in the DCT domain (``Image.draft``) when only a small image is needed.
"""

from __future__ import annotations

import io
import os
import stat
import threading
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

ImageFile.LOAD_TRUNCATED_IMAGES = False
Image.MAX_IMAGE_PIXELS = None  # we enforce our own, configurable limit below

DEFAULT_MAX_PIXELS = 178_956_970  # Pillow's own bomb limit (2 x 89.5 Mpx)

_heif_lock = threading.Lock()
_heif_state: list[bool] = []  # [True] once pillow-heif's opener is registered, [False] when it cannot be


def _enable_heif() -> bool:
    """Register pillow-heif's HEIC/HEIF/AVIF opener; True only on the call that newly did it.

    Done on the first file that looks like HEIF rather than at import (pillow-heif costs ~50 ms
    of start-up that `searcher query` of an indexed photo or `searcher duplicates` never need).
    """
    with _heif_lock:
        if _heif_state:
            return False
        try:  # optional at run time: depends on the platform's wheels
            import pillow_heif

            pillow_heif.register_heif_opener()
            _heif_state.append(True)
        except Exception:  # pragma: no cover
            _heif_state.append(False)
        return _heif_state[0]



class DecodeError(Exception):
    """The file could not be decoded into an image; ``str(exc)`` is a short reason."""


@dataclass(slots=True)
class DecodedImage:
    """An 8-bit RGB picture plus facts about the original file."""

    image: Image.Image
    width: int  # of the original, after EXIF orientation
    height: int
    format: str
    thumb: bytes | None = None  # the stored thumbnail (searcher.thumbnails), filled by the indexing workers


def max_pixels_from_env() -> int:
    """The pixel limit, overridable with ``SEARCHER_MAX_PIXELS``."""
    value = os.environ.get("SEARCHER_MAX_PIXELS")
    return int(value) if value else DEFAULT_MAX_PIXELS


def open_image(
    source: str | os.PathLike[str] | bytes,
    *,
    min_side: int | None = None,
    max_pixels: int | None = None,
) -> DecodedImage:
    """Decode ``source`` (a path or the file's bytes) to RGB.

    ``min_side``: when given, JPEGs may be decoded at a reduced scale as long as
    both sides stay at least this large (a big speed-up for thumbnails/embedding).
    """
    limit = max_pixels if max_pixels is not None else max_pixels_from_env()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            handle = io.BytesIO(source) if isinstance(source, bytes) else _open_regular(source)
            with handle, Image.open(handle) as img:
                fmt = img.format or "unknown"
                w, h = img.size
                if w <= 0 or h <= 0:
                    raise DecodeError(f"invalid image size {w}x{h}")
                if w * h > limit:
                    raise DecodeError(
                        f"image too large: {w}x{h} = {w * h / 1e6:.0f} Mpx exceeds the limit of "
                        f"{limit / 1e6:.0f} Mpx (decompression bomb guard; raise it with --max-pixels "
                        "or SEARCHER_MAX_PIXELS)"
                    )
                if min_side and fmt == "JPEG" and min(w, h) > 2 * min_side:
                    img.draft("RGB", (min_side, min_side))
                img.load()  # first: reading EXIF can load a PNG, and a second load() would not raise again
                orientation = _exif_orientation(img)
                rgb = _to_rgb(img)
                if orientation in _ORIENTATION_TRANSPOSE:
                    rgb = rgb.transpose(_ORIENTATION_TRANSPOSE[orientation])
                if orientation in (5, 6, 7, 8):
                    w, h = h, w
                return DecodedImage(rgb, w, h, fmt)
    except DecodeError:
        raise
    except FileNotFoundError as exc:
        raise DecodeError("file not found") from exc
    except PermissionError as exc:
        raise DecodeError("permission denied") from exc
    except IsADirectoryError as exc:
        raise DecodeError("is a directory") from exc
    except UnidentifiedImageError as exc:
        size = len(source) if isinstance(source, bytes) else _size_or_none(source)
        if size == 0:
            raise DecodeError("empty file (0 bytes)") from exc
        head = _head(source)
        if b"ftyp" in head[:12] and _enable_heif():  # HEIC/HEIF/AVIF: the opener is loaded on first need
            return open_image(source, min_side=min_side, max_pixels=max_pixels)
        if b"<svg" in head:
            raise DecodeError("SVG (vector) images are not supported, only raster formats") from exc
        for magic, name in _MAGIC:
            if head.startswith(magic) or (name in ("WebP", "HEIF/AVIF") and magic in head[:12]):
                raise DecodeError(f"corrupt {name} file (its header cannot be read)") from exc
        raise DecodeError("not an image, or an unsupported format") from exc
    except Image.DecompressionBombError as exc:
        raise DecodeError(f"image too large (decompression bomb guard): {exc}") from exc
    except MemoryError as exc:
        raise DecodeError("not enough memory to decode this image") from exc
    except OSError as exc:
        if exc.filename is not None:  # the operating system refused the file itself (ELOOP, EIO, ...)
            raise DecodeError("symlink loop" if exc.errno == 40 else f"cannot read the file: {exc.strerror}") from exc
        text = str(exc)
        if "truncated" in text.lower() or "premature end" in text.lower():
            raise DecodeError(f"truncated or corrupt file: {text}") from exc
        raise DecodeError(f"corrupt or unreadable image: {text}") from exc
    except (SyntaxError, ValueError, TypeError, IndexError, KeyError, EOFError, AttributeError) as exc:
        raise DecodeError(f"corrupt image ({type(exc).__name__}: {exc})") from exc
    except Exception as exc:  # any other decoder bug must not stop an indexing run
        raise DecodeError(f"could not decode ({type(exc).__name__}: {exc})") from exc


def _open_regular(path: str | os.PathLike[str]) -> io.BufferedReader:
    """Open a file for reading; refuse FIFOs, sockets, devices and folders without blocking on them."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise DecodeError("is a directory")
        if not stat.S_ISREG(mode):
            raise DecodeError("not a regular file (a FIFO, socket or device)")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


# Signatures of common formats: a file that starts like one but cannot be opened is corrupt, not "unknown".
_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"WEBP", "WebP"),
    (b"ftyp", "HEIF/AVIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"BM", "BMP"),
)


def _head(source: str | os.PathLike[str] | bytes, n: int = 1024) -> bytes:
    if isinstance(source, bytes):
        return source[:n]
    try:
        with _open_regular(source) as handle:
            return handle.read(n)
    except (OSError, DecodeError):
        return b""


def _size_or_none(path: str | os.PathLike[str]) -> int | None:
    try:
        return os.path.getsize(path)
    except OSError:
        return None


def _exif_orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(0x0112, 1) or 1)
    except Exception:
        return 1


# EXIF orientation tag value -> the transpose that shows the picture upright (as ImageOps.exif_transpose).
_ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB. Alpha goes onto white; high bit depths are rescaled."""
    mode = img.mode
    if mode == "RGB":
        return img.copy() if img.readonly else img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        if mode.startswith("I;16") and lo >= 0 and hi <= 65535 and hi > 255:
            lo, hi = 0.0, 65535.0
        scaled = np.zeros_like(arr) if hi <= lo else (arr - lo) * (255.0 / (hi - lo))
        return Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def to_model_input(decoded: DecodedImage, size: tuple[int, int]) -> np.ndarray:
    """Resize (squash) to ``size`` = (width, height) and return a uint8 HxWx3 array."""
    img = decoded.image
    if img.size != size:
        img = img.resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0)
    return np.asarray(img, dtype=np.uint8)


def load_for_model(
    source: str | os.PathLike[str] | bytes, size: tuple[int, int], max_pixels: int | None = None
) -> tuple[np.ndarray, DecodedImage]:
    """Decode and resize in one go (what the indexing workers run)."""
    decoded = open_image(source, min_side=max(size), max_pixels=max_pixels)
    return to_model_input(decoded, size), decoded
