"""Realistic edited copies of images, for near-duplicate benchmarks and threshold calibration.

    from searcher.edits import EDIT_KINDS, apply_edit, make_benchmark
    rng = np.random.default_rng(0)
    copy = apply_edit(Image.open("cat.jpg"), "random_crop", rng)
    manifest = make_benchmark(["a.jpg", "b.png"], "out/", EDIT_KINDS, seed=0)

Every edit is a function of the picture and a ``numpy.random.Generator`` only, so a
seed reproduces a benchmark exactly. The kinds cover what happens to copies of a
photo in the wild: recompression, resizing, thumbnails, crops, flips, rotations,
colour changes, blur, noise, borders, text overlays, and combinations of these.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps

Edit = Callable[[Image.Image, np.random.Generator], Image.Image]


def _rgb(img: Image.Image) -> Image.Image:
    return img if img.mode == "RGB" else img.convert("RGB")


def jpeg(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Recompress as JPEG at a low quality (10-30)."""
    buf = io.BytesIO()
    _rgb(img).save(buf, "JPEG", quality=int(rng.integers(10, 31)))
    buf.seek(0)
    with Image.open(buf) as out:
        return out.convert("RGB")


def resize(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Downscale to 40-80 % of each side (same aspect ratio)."""
    f = float(rng.uniform(0.4, 0.8))
    w, h = img.size
    return _rgb(img).resize((max(8, round(w * f)), max(8, round(h * f))), Image.Resampling.LANCZOS)


def thumbnail(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A small thumbnail: longest side 128-192 px."""
    side = int(rng.integers(128, 193))
    out = _rgb(img).copy()
    out.thumbnail((side, side), Image.Resampling.LANCZOS)
    return out


def center_crop(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Keep the central 70-90 % of each side."""
    f = float(rng.uniform(0.7, 0.9))
    w, h = img.size
    cw, ch = round(w * f), round(h * f)
    x0, y0 = (w - cw) // 2, (h - ch) // 2
    return _rgb(img).crop((x0, y0, x0 + cw, y0 + ch))


def random_crop(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Keep about half the area (each side ~71 %) at a random position."""
    w, h = img.size
    f = float(np.sqrt(rng.uniform(0.45, 0.55)))
    cw, ch = round(w * f), round(h * f)
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return _rgb(img).crop((x0, y0, x0 + cw, y0 + ch))


def hflip(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    return _rgb(img).transpose(Image.Transpose.FLIP_LEFT_RIGHT)


def vflip(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    return _rgb(img).transpose(Image.Transpose.FLIP_TOP_BOTTOM)


def rot90(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    return _rgb(img).transpose(Image.Transpose.ROTATE_90)


def rot180(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    return _rgb(img).transpose(Image.Transpose.ROTATE_180)


def rot270(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    return _rgb(img).transpose(Image.Transpose.ROTATE_270)


def small_rotation(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Rotate by 3-10 degrees either way, then crop to the largest upright rectangle (no black corners)."""
    angle = float(rng.uniform(3, 10)) * (1 if rng.random() < 0.5 else -1)
    w, h = img.size
    rotated = _rgb(img).rotate(angle, resample=Image.Resampling.BICUBIC, expand=False)
    a = np.deg2rad(abs(angle))
    # largest axis-aligned rectangle with the original aspect inside the rotated frame
    scale = min(w / (w * np.cos(a) + h * np.sin(a)), h / (w * np.sin(a) + h * np.cos(a)))
    cw, ch = int(w * scale), int(h * scale)
    x0, y0 = (w - cw) // 2, (h - ch) // 2
    return rotated.crop((x0, y0, x0 + cw, y0 + ch))


def colour_jitter(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Change brightness, contrast and saturation by up to +-30 % and shift the hue a little."""
    out = _rgb(img)
    out = ImageEnhance.Brightness(out).enhance(float(rng.uniform(0.7, 1.3)))
    out = ImageEnhance.Contrast(out).enhance(float(rng.uniform(0.7, 1.3)))
    out = ImageEnhance.Color(out).enhance(float(rng.uniform(0.6, 1.4)))
    hsv = np.asarray(out.convert("HSV")).copy()
    hsv[..., 0] = (hsv[..., 0].astype(np.int16) + int(rng.integers(-12, 13))) % 256
    return Image.fromarray(hsv, "HSV").convert("RGB")


def greyscale(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    return ImageOps.grayscale(_rgb(img)).convert("RGB")


def blur(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Gaussian blur, radius 1.5-3 px."""
    return _rgb(img).filter(ImageFilter.GaussianBlur(float(rng.uniform(1.5, 3.0))))


def noise(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Additive Gaussian noise, sigma 8-20 grey levels."""
    arr = np.asarray(_rgb(img), dtype=np.float32)
    arr = arr + rng.normal(0.0, float(rng.uniform(8, 20)), arr.shape).astype(np.float32)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def border(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A solid frame of 5-12 % of the shorter side, in a random colour."""
    w, h = img.size
    b = max(2, round(min(w, h) * float(rng.uniform(0.05, 0.12))))
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    return ImageOps.expand(_rgb(img), border=b, fill=colour)


_WORDS = ("SAMPLE", "© Studio", "DRAFT", "holiday 2019", "stock photo", "do not copy", "#tbt", "WATERMARK")


def text_overlay(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A caption or watermark: one or two lines of text, 6-12 % of the height, somewhere on the picture."""
    out = _rgb(img).copy()
    w, h = out.size
    draw = ImageDraw.Draw(out)
    for _ in range(int(rng.integers(1, 3))):
        size = max(8, round(h * float(rng.uniform(0.06, 0.12))))
        try:
            font = ImageFont.load_default(size=size)
        except TypeError:  # Pillow < 10.1
            font = ImageFont.load_default()
        text = str(_WORDS[int(rng.integers(0, len(_WORDS)))])
        x = int(rng.integers(0, max(1, w // 2)))
        y = int(rng.integers(0, max(1, h - size)))
        fill = (255, 255, 255) if rng.random() < 0.5 else (0, 0, 0)
        stroke = (0, 0, 0) if fill == (255, 255, 255) else (255, 255, 255)
        draw.text((x, y), text, fill=fill, font=font, stroke_width=max(1, size // 12), stroke_fill=stroke)
    return out


def combo_web(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """What a web upload does: resize, slight crop, recompress."""
    return jpeg(center_crop(resize(img, rng), rng), rng)


def combo_social(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A re-shared copy: mirrored, recoloured, captioned, recompressed."""
    return jpeg(text_overlay(colour_jitter(hflip(img, rng), rng), rng), rng)


def combo_rotated_thumb(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A sideways thumbnail with a frame."""
    return border(thumbnail(rot90(img, rng), rng), rng)


EDITS: dict[str, Edit] = {
    "jpeg": jpeg,
    "resize": resize,
    "thumbnail": thumbnail,
    "center_crop": center_crop,
    "random_crop": random_crop,
    "hflip": hflip,
    "vflip": vflip,
    "rot90": rot90,
    "rot180": rot180,
    "rot270": rot270,
    "small_rotation": small_rotation,
    "colour_jitter": colour_jitter,
    "greyscale": greyscale,
    "blur": blur,
    "noise": noise,
    "border": border,
    "text_overlay": text_overlay,
    "combo_web": combo_web,
    "combo_social": combo_social,
    "combo_rotated_thumb": combo_rotated_thumb,
}

EDIT_KINDS: tuple[str, ...] = tuple(EDITS)


def apply_edit(img: Image.Image, kind: str, rng: np.random.Generator) -> Image.Image:
    """Return an edited copy of ``img`` (RGB); ``kind`` is one of :data:`EDIT_KINDS`."""
    try:
        edit = EDITS[kind]
    except KeyError:
        raise ValueError(f"unknown edit kind {kind!r}; choose from {', '.join(EDIT_KINDS)}") from None
    return edit(img, rng)


def make_benchmark(
    sources: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    kinds: Sequence[str] = EDIT_KINDS,
    seed: int = 0,
    *,
    quality: int = 92,
) -> list[dict[str, Any]]:
    """Write one edited copy of every source for every kind into ``out_dir``; return the manifest.

    Copies are ``out_dir/<source index>_<source stem>__<kind>.jpg`` (JPEG at ``quality``;
    the ``jpeg`` kinds carry their own lower quality). The manifest, also written to
    ``out_dir/manifest.json``, is a list of ``{"source", "copy", "kind"}`` with absolute paths.
    The same ``seed`` gives byte-identical copies.
    """
    from searcher.decode import open_image

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for kind in kinds:
        if kind not in EDITS:
            raise ValueError(f"unknown edit kind {kind!r}; choose from {', '.join(EDIT_KINDS)}")
    manifest: list[dict[str, Any]] = []
    for i, source in enumerate(sources):
        src = os.path.abspath(os.fspath(source))
        img = open_image(src).image
        for j, kind in enumerate(kinds):
            rng = np.random.default_rng([seed, i, j])
            edited = apply_edit(img, kind, rng)
            path = out / f"{i:05d}_{Path(src).stem}__{kind}.jpg"
            edited.save(path, "JPEG", quality=100 if kind in ("jpeg", "combo_web", "combo_social") else quality)
            manifest.append({"source": src, "copy": str(path.resolve()), "kind": kind})
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest
