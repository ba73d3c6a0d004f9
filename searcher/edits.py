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
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps

Edit = Callable[[Image.Image, np.random.Generator], Image.Image]

SPLITS: tuple[str, ...] = ("tune", "report")
"""Parameter splits: every continuous parameter's range is cut into 8 equal bins; ``tune`` draws
from the even bins and ``report`` from the odd ones (and from other seeds), so a figure reported
on ``report`` copies never saw a parameter value that settings were tuned on. ``None`` (the
default) draws from the whole range, exactly as before the split existed (calibration uses it)."""

_SPLIT: ContextVar[str | None] = ContextVar("edit_split", default=None)
_BINS = 8


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    """A uniform draw in [lo, hi), from the bins of the current split (see :data:`SPLITS`)."""
    split = _SPLIT.get()
    if split is None:
        return float(rng.uniform(lo, hi))
    half = _BINS // 2
    b = 2 * int(rng.integers(0, half)) + (0 if split == "tune" else 1)
    return lo + (hi - lo) * (b + float(rng.random())) / _BINS


def _i(rng: np.random.Generator, lo: int, hi: int) -> int:
    """An integer in [lo, hi), drawn through :func:`_u` (so it follows the split too)."""
    if _SPLIT.get() is None:
        return int(rng.integers(lo, hi))
    return min(hi - 1, int(np.floor(_u(rng, lo, hi))))


def _rgb(img: Image.Image) -> Image.Image:
    return img if img.mode == "RGB" else img.convert("RGB")


def jpeg(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Recompress as JPEG at a low quality (10-30)."""
    buf = io.BytesIO()
    _rgb(img).save(buf, "JPEG", quality=int(_i(rng, 10, 31)))
    buf.seek(0)
    with Image.open(buf) as out:
        return out.convert("RGB")


def resize(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Downscale to 40-80 % of each side (same aspect ratio)."""
    f = float(_u(rng, 0.4, 0.8))
    w, h = img.size
    return _rgb(img).resize((max(8, round(w * f)), max(8, round(h * f))), Image.Resampling.LANCZOS)


def thumbnail(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A small thumbnail: longest side 128-192 px."""
    side = int(_i(rng, 128, 193))
    out = _rgb(img).copy()
    out.thumbnail((side, side), Image.Resampling.LANCZOS)
    return out


def center_crop(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Keep the central 70-90 % of each side."""
    f = float(_u(rng, 0.7, 0.9))
    w, h = img.size
    cw, ch = round(w * f), round(h * f)
    x0, y0 = (w - cw) // 2, (h - ch) // 2
    return _rgb(img).crop((x0, y0, x0 + cw, y0 + ch))


def random_crop(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Keep about half the area (each side ~71 %) at a random position."""
    w, h = img.size
    f = float(np.sqrt(_u(rng, 0.45, 0.55)))
    cw, ch = round(w * f), round(h * f)
    x0, y0 = int(_i(rng, 0, w - cw + 1)), int(_i(rng, 0, h - ch + 1))
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
    angle = float(_u(rng, 3, 10)) * (1 if rng.random() < 0.5 else -1)
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
    out = ImageEnhance.Brightness(out).enhance(float(_u(rng, 0.7, 1.3)))
    out = ImageEnhance.Contrast(out).enhance(float(_u(rng, 0.7, 1.3)))
    out = ImageEnhance.Color(out).enhance(float(_u(rng, 0.6, 1.4)))
    hsv = np.asarray(out.convert("HSV")).copy()
    hsv[..., 0] = (hsv[..., 0].astype(np.int16) + int(_i(rng, -12, 13))) % 256
    return Image.fromarray(hsv, "HSV").convert("RGB")


def greyscale(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    return ImageOps.grayscale(_rgb(img)).convert("RGB")


def blur(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Gaussian blur, radius 1.5-3 px."""
    return _rgb(img).filter(ImageFilter.GaussianBlur(float(_u(rng, 1.5, 3.0))))


def noise(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Additive Gaussian noise, sigma 8-20 grey levels."""
    arr = np.asarray(_rgb(img), dtype=np.float32)
    arr = arr + rng.normal(0.0, float(_u(rng, 8, 20)), arr.shape).astype(np.float32)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def border(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A solid frame of 5-12 % of the shorter side, in a random colour."""
    w, h = img.size
    b = max(2, round(min(w, h) * float(_u(rng, 0.05, 0.12))))
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    return ImageOps.expand(_rgb(img), border=b, fill=colour)


_WORDS = ("SAMPLE", "© Studio", "DRAFT", "holiday 2019", "stock photo", "do not copy", "#tbt", "WATERMARK")


def text_overlay(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A caption or watermark: one or two lines of text, 6-12 % of the height, somewhere on the picture."""
    out = _rgb(img).copy()
    w, h = out.size
    draw = ImageDraw.Draw(out)
    for _ in range(int(_i(rng, 1, 3))):
        size = max(8, round(h * float(_u(rng, 0.06, 0.12))))
        try:
            font = ImageFont.load_default(size=size)
        except TypeError:  # Pillow < 10.1
            font = ImageFont.load_default()
        text = str(_WORDS[int(_i(rng, 0, len(_WORDS)))])
        x = int(_i(rng, 0, max(1, w // 2)))
        y = int(_i(rng, 0, max(1, h - size)))
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


# --- the widened kinds (issue 13): what users' copies look like beyond the first 20 kinds -------


def _sign(rng: np.random.Generator) -> int:
    return 1 if rng.random() < 0.5 else -1


def _crop_area(img: Image.Image, rng: np.random.Generator, lo: float, hi: float) -> Image.Image:
    """Keep ``lo``-``hi`` of the area, aspect changed up to 1.3x, anywhere (often off-centre)."""
    w, h = img.size
    area = _u(rng, lo, hi)
    aspect = float(np.exp(_sign(rng) * _u(rng, 0.0, np.log(1.3))))
    fw = min(1.0, float(np.sqrt(area * aspect)))
    fh = min(1.0, area / fw)
    cw, ch = max(8, round(w * fw)), max(8, round(h * fh))
    x0, y0 = _i(rng, 0, w - cw + 1), _i(rng, 0, h - ch + 1)
    return _rgb(img).crop((x0, y0, x0 + cw, y0 + ch))


def crop_large(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Keep 60-85 % of the area at a random position and aspect."""
    return _crop_area(img, rng, 0.6, 0.85)


def crop_half(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Keep 45-60 % of the area at a random position and aspect."""
    return _crop_area(img, rng, 0.45, 0.6)


def crop_small(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Keep 38-45 % of the area at a random, usually off-centre position."""
    return _crop_area(img, rng, 0.38, 0.45)


def _rotate(img: Image.Image, rng: np.random.Generator, crop: bool) -> Image.Image:
    angle = _u(rng, 2, 15) * _sign(rng)
    rgb = _rgb(img)
    w, h = rgb.size
    if not crop:  # the whole picture on a canvas, corners filled
        fill = (0, 0, 0) if rng.random() < 0.5 else (255, 255, 255)
        return rgb.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=fill)
    rotated = rgb.rotate(angle, resample=Image.Resampling.BICUBIC, expand=False)
    a = np.deg2rad(abs(angle))
    scale = min(w / (w * np.cos(a) + h * np.sin(a)), h / (w * np.sin(a) + h * np.cos(a)))
    cw, ch = int(w * scale), int(h * scale)
    x0, y0 = (w - cw) // 2, (h - ch) // 2
    return rotated.crop((x0, y0, x0 + cw, y0 + ch))


def rotate_crop(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Rotate by 2-15 degrees either way and cut the corners off (largest upright rectangle)."""
    return _rotate(img, rng, crop=True)


def rotate_corners(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Rotate by 2-15 degrees either way, keeping the whole picture: black or white corners."""
    return _rotate(img, rng, crop=False)


def gaussian_blur(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Gaussian blur, radius 0.3-1.5 % of the longest side (0.7-3.4 px at 224 px)."""
    rgb = _rgb(img)
    return rgb.filter(ImageFilter.GaussianBlur(max(rgb.size) * _u(rng, 0.003, 0.015)))


def motion_blur(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Camera shake: the average of 9 shifted copies along a line 1-4 % of the longest side long."""
    arr = np.asarray(_rgb(img), dtype=np.float32)
    h, w = arr.shape[:2]
    length = max(w, h) * _u(rng, 0.01, 0.04)
    theta = _u(rng, 0.0, np.pi)
    pad = int(np.ceil(length / 2)) + 1
    padded = np.pad(arr, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    out = np.zeros_like(arr)
    n = 9
    for k in range(n):
        t = (k / (n - 1) - 0.5) * length
        dx, dy = round(t * np.cos(theta)), round(t * np.sin(theta))
        out += padded[pad + dy : pad + dy + h, pad + dx : pad + dx + w]
    return Image.fromarray(np.clip(out / n, 0, 255).astype(np.uint8), "RGB")


def _fit(img: Image.Image, box: tuple[int, int]) -> Image.Image:
    w, h = img.size
    f = min(box[0] / w, box[1] / h)
    return img.resize((max(8, round(w * f)), max(8, round(h * f))), Image.Resampling.LANCZOS)


def screenshot(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """The picture shown in an app or web page and screenshotted: a desktop (16:10) or phone
    (9:19.5) screen with bars, side text and the picture at 45-85 % of the screen's width, or
    letterboxed in black."""
    rgb = _rgb(img)
    phone = rng.random() < 0.4
    sw = 720 if phone else 1280
    sh = round(sw * (19.5 / 9 if phone else 10 / 16))
    light = rng.random() < 0.5
    bg = tuple(int(c) for c in (rng.integers(225, 256, 3) if light else rng.integers(10, 50, 3)))
    screen = Image.new("RGB", (sw, sh), bg)
    draw = ImageDraw.Draw(screen)
    bar = round(sh * _u(rng, 0.04, 0.09))
    accent = tuple(int(c) for c in rng.integers(0, 256, 3))
    draw.rectangle((0, 0, sw, bar), fill=accent)
    if rng.random() < 0.3:  # letterbox: the picture fills the width on black
        draw.rectangle((0, bar, sw, sh), fill=(0, 0, 0))
        pic = _fit(rgb, (sw, sh - bar))
    else:
        pic = _fit(rgb, (round(sw * _u(rng, 0.45, 0.85)), round((sh - 2 * bar) * 0.9)))
    x = _i(rng, 0, max(1, sw - pic.size[0] + 1))
    y = bar + (sh - bar - pic.size[1]) // 2
    screen.paste(pic, (x, y))
    ink = (60, 60, 60) if light else (200, 200, 200)
    try:
        font = ImageFont.load_default(size=max(10, bar // 2))
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    for line in range(int(rng.integers(2, 6))):  # captions/menu entries around the picture
        ty = int(rng.integers(bar, sh - bar))
        if not (y <= ty <= y + pic.size[1]) or x > sw // 3 or x + pic.size[0] < 2 * sw // 3:
            draw.text((8, ty), str(_WORDS[line % len(_WORDS)]), fill=ink, font=font)
    return screen


def watermark(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A semi-transparent (25-55 %) watermark: a big diagonal word or a tiled grid of small ones."""
    rgb = _rgb(img)
    w, h = rgb.size
    layer = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    alpha = round(255 * _u(rng, 0.25, 0.55))
    colour = (255, 255, 255, alpha) if rng.random() < 0.6 else (0, 0, 0, alpha)
    text = str(_WORDS[_i(rng, 0, len(_WORDS))])
    tiled = rng.random() < 0.5
    size = max(10, round(min(w, h) * (_u(rng, 0.05, 0.09) if tiled else _u(rng, 0.12, 0.22))))
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    if tiled:
        for ty in range(0, h, size * 3):
            for tx in range((ty // (size * 3)) % 2 * size * 2, w, size * len(text)):
                draw.text((tx, ty), text, fill=colour, font=font)
    else:
        draw.text((w // 10, h // 2 - size), text, fill=colour, font=font)
        layer = layer.rotate(_u(rng, 15, 40) * _sign(rng), resample=Image.Resampling.BICUBIC)
    return Image.alpha_composite(rgb.convert("RGBA"), layer).convert("RGB")


def sticker(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """1-3 opaque stickers (discs, rounded labels, stars), each 2-8 % of the picture's area."""
    out = _rgb(img).copy()
    w, h = out.size
    draw = ImageDraw.Draw(out)
    for _ in range(int(rng.integers(1, 4))):
        side = round(np.sqrt(w * h * _u(rng, 0.02, 0.08)))
        x, y = int(rng.integers(0, max(1, w - side))), int(rng.integers(0, max(1, h - side)))
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        shape = int(rng.integers(0, 3))
        if shape == 0:
            draw.ellipse((x, y, x + side, y + side), fill=fill, outline=(255, 255, 255), width=max(1, side // 15))
        elif shape == 1:
            draw.rounded_rectangle((x, y, x + side * 3 // 2, y + side * 2 // 3), radius=side // 5, fill=fill)
        else:
            cx, cy, r = x + side / 2, y + side / 2, side / 2
            pts = [
                (cx + (r if k % 2 == 0 else r / 2.5) * np.cos(np.pi * k / 5 - np.pi / 2),
                 cy + (r if k % 2 == 0 else r / 2.5) * np.sin(np.pi * k / 5 - np.pi / 2))
                for k in range(10)
            ]  # fmt: skip
            draw.polygon(pts, fill=fill)
    return out


def _perspective_coeffs(dst: list[tuple[float, float]], src: list[tuple[float, float]]) -> list[float]:
    """Coefficients for ``Image.transform(PERSPECTIVE)`` mapping output points ``dst`` to input ``src``."""
    a = []
    for (x, y), (u, v) in zip(dst, src, strict=True):
        a.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        a.append([0, 0, 0, x, y, 1, -v * x, -v * y])
    b = np.asarray([c for p in src for c in p], dtype=np.float64)
    return np.linalg.solve(np.asarray(a, dtype=np.float64), b).tolist()


def perspective(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A photo of the picture on a screen or a print: a tilted quadrilateral (corners moved 3-12 %
    of the side) on a background, with a brightness/contrast cast, glare, slight blur and noise."""
    rgb = _rgb(img)
    w, h = rgb.size
    scale = min(1.0, 1024 / max(w, h))
    rgb = rgb.resize((max(8, round(w * scale)), max(8, round(h * scale))), Image.Resampling.LANCZOS)
    w, h = rgb.size
    margin = _u(rng, 0.03, 0.12)
    pad_x, pad_y = round(w * margin * 1.5), round(h * margin * 1.5)
    ow, oh = w + 2 * pad_x, h + 2 * pad_y
    corners = []
    for cx, cy in ((0, 0), (w, 0), (w, h), (0, h)):
        dx, dy = _sign(rng) * w * _u(rng, 0, margin), _sign(rng) * h * _u(rng, 0, margin)
        corners.append((pad_x + cx + dx, pad_y + cy + dy))
    coeffs = _perspective_coeffs(corners, [(0, 0), (w, 0), (w, h), (0, h)])
    warped = rgb.convert("RGBA").transform((ow, oh), Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.BICUBIC)
    bg = Image.new("RGBA", (ow, oh), tuple(int(c) for c in rng.integers(20, 200, 3)) + (255,))
    out = Image.alpha_composite(bg, warped).convert("RGB")
    out = ImageEnhance.Brightness(out).enhance(_u(rng, 0.75, 1.2))
    out = ImageEnhance.Contrast(out).enhance(_u(rng, 0.7, 1.0))
    arr = np.asarray(out, dtype=np.float32)
    yy, xx = np.mgrid[0:oh, 0:ow].astype(np.float32)
    gx, gy = _u(rng, 0, ow), _u(rng, 0, oh)
    glare = 60 * _u(rng, 0.2, 1.0) * np.exp(-((xx - gx) ** 2 + (yy - gy) ** 2) / (2 * (0.25 * max(ow, oh)) ** 2))
    arr = arr + glare[..., None] + rng.normal(0, 4, arr.shape).astype(np.float32)
    out = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    return out.filter(ImageFilter.GaussianBlur(max(ow, oh) * 0.001))


def combo_crop_rotate(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A straightened, reframed copy: a 45-60 % crop, turned 2-15 degrees, corners cut, recompressed."""
    return jpeg(rotate_crop(crop_half(img, rng), rng), rng)


def combo_screenshot_share(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A screenshot of a re-shared copy: recoloured, stickered, screenshotted, recompressed."""
    return jpeg(screenshot(sticker(colour_jitter(img, rng), rng), rng), rng)


def combo_blur_watermark(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A shaky, watermarked, downscaled copy."""
    return resize(watermark(motion_blur(img, rng), rng), rng)


def combo_photo_of_print(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A photo of a cropped print: a 60-85 % crop, photographed at an angle, recompressed."""
    return jpeg(perspective(crop_large(img, rng), rng), rng)


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
"""The first 20 kinds: ``searcher calibrate`` and the duplicates benchmark use exactly these."""

NEW_KINDS: dict[str, Edit] = {
    "crop_large": crop_large,
    "crop_half": crop_half,
    "crop_small": crop_small,
    "rotate_crop": rotate_crop,
    "rotate_corners": rotate_corners,
    "gaussian_blur": gaussian_blur,
    "motion_blur": motion_blur,
    "screenshot": screenshot,
    "watermark": watermark,
    "sticker": sticker,
    "perspective": perspective,
    "combo_crop_rotate": combo_crop_rotate,
    "combo_screenshot_share": combo_screenshot_share,
    "combo_blur_watermark": combo_blur_watermark,
    "combo_photo_of_print": combo_photo_of_print,
}
EDITS.update(NEW_KINDS)

WIDE_KINDS: tuple[str, ...] = EDIT_KINDS + tuple(NEW_KINDS)
"""The widened near-duplicate benchmark: the first 20 kinds and 15 more (crops down to 38 % of
the area off-centre, 2-15 degree rotations with and without corners, Gaussian and motion blur,
screenshots, watermarks, stickers, photos of a screen or print, and combinations)."""

KIND_SETS: dict[str, tuple[str, ...]] = {"classic": EDIT_KINDS, "wide": WIDE_KINDS}


def apply_edit(img: Image.Image, kind: str, rng: np.random.Generator, split: str | None = None) -> Image.Image:
    """Return an edited copy of ``img`` (RGB); ``kind`` is one of :data:`WIDE_KINDS`; ``split``
    (``"tune"``, ``"report"`` or ``None`` for the whole ranges) picks the parameter bins (:data:`SPLITS`)."""
    try:
        edit = EDITS[kind]
    except KeyError:
        raise ValueError(f"unknown edit kind {kind!r}; choose from {', '.join(WIDE_KINDS)}") from None
    if split is not None and split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    token = _SPLIT.set(split)
    try:
        return edit(img, rng)
    finally:
        _SPLIT.reset(token)


_SELF_COMPRESSED = (
    "jpeg", "combo_web", "combo_social", "combo_crop_rotate", "combo_screenshot_share", "combo_photo_of_print",
)  # fmt: skip


def make_benchmark(
    sources: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    kinds: Sequence[str] = EDIT_KINDS,
    seed: int = 0,
    *,
    quality: int = 92,
    split: str | None = None,
) -> list[dict[str, Any]]:
    """Write one edited copy of every source for every kind into ``out_dir``; return the manifest.

    Copies are ``out_dir/<source index>_<source stem>__<kind>.jpg`` (JPEG at ``quality``;
    the ``jpeg`` kinds carry their own lower quality). The manifest, also written to
    ``out_dir/manifest.json``, is a list of ``{"source", "copy", "kind"}`` with absolute paths.
    The same ``seed`` gives byte-identical copies. ``split`` (:data:`SPLITS`) draws every
    parameter from that split's bins and from seeds of its own, so ``"tune"`` and ``"report"``
    copies of the same photos never share a parameter value or a random stream.
    """
    from searcher.decode import open_image

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for kind in kinds:
        if kind not in EDITS:
            raise ValueError(f"unknown edit kind {kind!r}; choose from {', '.join(WIDE_KINDS)}")
    manifest: list[dict[str, Any]] = []
    for i, source in enumerate(sources):
        src = os.path.abspath(os.fspath(source))
        img = open_image(src).image
        for j, kind in enumerate(kinds):
            key = [seed, i, j] if split is None else [seed, i, j, 1 + SPLITS.index(split)]
            rng = np.random.default_rng(key)
            edited = apply_edit(img, kind, rng, split)
            path = out / f"{i:05d}_{Path(src).stem}__{kind}.jpg"
            edited.save(path, "JPEG", quality=100 if kind in _SELF_COMPRESSED else quality)
            manifest.append({"source": src, "copy": str(path.resolve()), "kind": kind, "split": split})
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest
