"""The picture inside a frame: what a copy shows when it is a screenshot, a framed or letterboxed
picture, or a photo of a print or a screen.

Stage: decoded pixels -> the picture inside them, which is then embedded (:mod:`searcher.querying`)
and verified (:mod:`searcher.verify`) beside the whole probe. Three kinds of frame are found, on a
small copy of the probe:

- a picture photographed at an angle on a background, a print or a screen (:func:`picture_quad`):
  its four corners, so that it is cut out straight (:func:`rectify`), as document scanners do;
- a solid frame or letterbox bars (:func:`border_box`);
- a busy frame such as the app or web page around a picture in a screenshot (:func:`picture_box`).

:func:`inner_box` says where the picture lies, as fractions of the frame (so the same region cuts
the full-resolution original); :func:`cut_inside` cuts it; :func:`inner_picture` does both for a
model input.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import cv2
import numpy as np
from PIL import Image


def border_box(
    pixels: np.ndarray, tolerance: int = 18, min_px: int = 3, max_fraction: float = 0.3
) -> tuple[int, int, int, int] | None:
    """``(top, bottom, left, right)`` of the picture inside a solid frame or letterbox bars, or
    ``None`` when there is none (a frame on all four sides, or bars on two opposite sides, at least
    ``min_px`` thick and of one colour)."""
    h, w = pixels.shape[:2]
    ring = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    colour = np.median(ring, axis=0).astype(np.float32)

    def thickness(lines: np.ndarray) -> int:
        # a line belongs to the frame when 95 % of its pixels are within tolerance of the frame colour
        off = np.abs(lines.astype(np.float32) - colour)
        close = np.maximum(np.maximum(off[..., 0], off[..., 1]), off[..., 2]) <= tolerance  # (n_lines, length)
        solid = np.mean(close, axis=1) >= 0.95
        return int(np.argmin(solid)) if not solid.all() else len(solid)

    limit_h, limit_w = int(h * max_fraction), int(w * max_fraction)
    top = thickness(pixels[:limit_h])
    bottom = thickness(pixels[::-1][:limit_h])
    left = thickness(pixels[:, :limit_w].transpose(1, 0, 2))
    right = thickness(pixels[:, ::-1][:, :limit_w].transpose(1, 0, 2))
    vertical = top >= min_px and bottom >= min_px and top < limit_h and bottom < limit_h
    horizontal = left >= min_px and right >= min_px and left < limit_w and right < limit_w
    if not (vertical or horizontal):
        return None
    t, b = (top, bottom) if vertical else (0, 0)
    lft, rgt = (left, right) if horizontal else (0, 0)
    return t, h - b, lft, w - rgt


def trim_border(pixels: np.ndarray, **options: int | float) -> np.ndarray | None:
    """The picture inside a solid frame or letterbox bars (:func:`border_box`), resized back to the
    input's shape; or ``None`` when there is none. Probes with a frame are also searched without
    it: a framed copy then finds its unframed source."""
    box = border_box(pixels, **options)  # type: ignore[arg-type]
    if box is None:
        return None
    t, b, lft, rgt = box
    h, w = pixels.shape[:2]
    return np.asarray(Image.fromarray(pixels[t:b, lft:rgt]).resize((w, h), Image.Resampling.BILINEAR), dtype=np.uint8)


def _longest_run(mask: np.ndarray, gap: int) -> tuple[int, int]:
    """(start, end) of the longest run of True in ``mask`` (the first of equals), bridging runs of
    False up to ``gap``."""
    idx = np.flatnonzero(mask)
    if len(idx) == 0:
        return (0, 0)
    breaks = np.flatnonzero(np.diff(idx) > gap + 1)
    starts = idx[np.r_[0, breaks + 1]]
    ends = idx[np.r_[breaks, len(idx) - 1]] + 1
    j = int(np.argmax(ends - starts))
    return int(starts[j]), int(ends[j])


def picture_box(
    pixels: np.ndarray, min_area: float = 0.04, max_area: float = 0.85, share: float = 0.05
) -> tuple[int, int, int, int] | None:
    """``(top, bottom, left, right)`` of a picture shown inside a busy frame (a screenshot of an
    app or web page: bars, flat background, captions), or ``None``. The frame's colours are those
    covering at least ``share`` of the outer ring of pixels (colours quantised to 16 levels); the
    picture is the longest band of rows mostly of other colours, narrowed to its columns that are.
    Captions are thin and broken, so their rows do not count; neither does a box whose surroundings
    are mostly not frame colours (a plain photo)."""
    h, w = pixels.shape[:2]
    q = (pixels // 16).astype(np.int32)
    code = (q[..., 0] << 8) | (q[..., 1] << 4) | q[..., 2]
    ring = np.concatenate([code[0], code[-1], code[:, 0], code[:, -1]])
    values, counts = np.unique(ring, return_counts=True)
    frame = values[counts >= share * len(ring)]
    if len(frame) == 0:
        return None
    content = ~np.isin(code, frame)
    rows = _longest_runs(content, max(1, w // 100)) >= 0.15 * w  # a stretch of picture, not a caption
    top, bottom = _longest_run(rows, gap=max(1, h // 100))
    if bottom - top < max(8, h // 12):
        return None
    cols = content[top:bottom].mean(axis=0) >= 0.5
    left, right = _longest_run(cols, gap=max(1, w // 100))
    area = (bottom - top) * (right - left) / (h * w)
    if right - left < max(8, w // 12) or not min_area <= area <= max_area:
        return None
    if area < 0.1 and (top == 0 or bottom == h):  # a small picture lies inside the screen, not at its edge
        return None
    outside = np.ones((h, w), bool)
    outside[top:bottom, left:right] = False
    if content[outside].mean() > 0.3:  # what surrounds the "picture" is not a frame (a plain photo)
        return None
    return top, bottom, left, right


def _longest_runs(mask: np.ndarray, gap: int) -> np.ndarray:
    """Per row of a 2-D ``mask``: the length of its longest run of True (gaps up to ``gap`` bridged),
    as :func:`_longest_run` of each row, for all rows at once."""
    rows, cols = np.nonzero(mask)
    out = np.zeros(mask.shape[0], np.int64)
    if len(rows) == 0:
        return out
    new_run = np.r_[True, (np.diff(rows) != 0) | (np.diff(cols) > gap + 1)]
    starts = np.flatnonzero(new_run)
    ends = np.r_[starts[1:], len(rows)] - 1
    np.maximum.at(out, rows[starts], cols[ends] - cols[starts] + 1)
    return out


Box = tuple[float, float, float, float]  # (top, bottom, left, right) as fractions of the height and width


# picture_quad: found on a copy whose longest side is QUAD_SIDE, blurred by QUAD_BLUR pixels. The
# background is what a flood fill from the edge of the frame reaches, stepping between neighbours that
# differ by at most QUAD_STEP grey levels per channel (glare and shading are smooth) and stopped by the
# picture's edges (Canny, QUAD_CANNY thresholds, on any channel). Chosen on the 'tune' copies of the
# widened benchmark (seed 2; Canny (15, 40) to (80, 200) and steps 2-10 tried): 114 of 120 photos of a screen or
# print and 109 of 120 photos of a cropped print found (~6 ms a picture on 2 cores); 1 false find in 441
# plain photos (holidays-dev and sample-photos).
QUAD_SIDE = 256
QUAD_BLUR = 1.5
QUAD_STEP = 3
QUAD_CANNY = (30, 80)
QUAD_EDGE_TOUCH = 0.05  # the picture may touch at most this share of the frame's outer 2-pixel ring
QUAD_AREA = (0.15, 0.97)  # share of the frame the picture covers
QUAD_SOLIDITY = 0.92  # the picture fills at least this share of its convex hull (no bays of background)
QUAD_UPRIGHT = 0.01  # corners this close (share of the side) to a box's: an upright picture (is_upright)


class Quad(NamedTuple):
    """A picture seen at an angle: its corners as (x, y) fractions of the frame's width and height,
    top-left, top-right, bottom-right, bottom-left."""

    corners: tuple[tuple[float, float], tuple[float, float], tuple[float, float], tuple[float, float]]


Region = Box | Quad  # where the picture inside a frame lies: an upright box or four corners


def _background(small: np.ndarray) -> np.ndarray:
    """Pixels of ``small`` (RGB) that a flood fill from its edge reaches without crossing an edge."""
    h, w = small.shape[:2]
    edges = np.zeros((h, w), np.uint8)
    for c in range(3):
        edges |= cv2.Canny(small[..., c], *QUAD_CANNY)
    edges = cv2.dilate(edges, np.ones((3, 3), np.uint8))
    mask = np.zeros((h + 2, w + 2), np.uint8)
    mask[1:-1, 1:-1] = (edges > 0).astype(np.uint8) * 2  # edges block the fill; filled pixels become 1
    step = (QUAD_STEP,) * 3
    flags = 4 | (1 << 8) | cv2.FLOODFILL_MASK_ONLY
    seeds = [(x, y) for x in range(0, w, 4) for y in (0, h - 1)] + [(x, y) for y in range(0, h, 4) for x in (0, w - 1)]
    for x, y in seeds:
        if mask[y + 1, x + 1] == 0:
            cv2.floodFill(small, mask, (x, y), 0, step, step, flags)
    return mask[1:-1, 1:-1] == 1


def _four_sides(polygon: np.ndarray) -> np.ndarray | None:
    """The quadrilateral that the four longest sides of a convex ``polygon`` (n >= 4 points) make,
    meeting where they cross (a corner the fill rounded off is restored); ``None`` if two are parallel."""
    n = len(polygon)
    if n == 4:
        return polygon
    lengths = np.linalg.norm(np.roll(polygon, -1, axis=0) - polygon, axis=1)
    sides = sorted(np.argsort(lengths)[-4:].tolist())
    corners = []
    for a, b in zip(sides, sides[1:] + sides[:1], strict=True):
        p, d1 = polygon[a], polygon[(a + 1) % n] - polygon[a]
        q, d2 = polygon[b], polygon[(b + 1) % n] - polygon[b]
        cross = d1[0] * d2[1] - d1[1] * d2[0]
        if abs(cross) < 1e-9:
            return None
        t = ((q[0] - p[0]) * d2[1] - (q[1] - p[1]) * d2[0]) / cross
        corners.append(p + t * d1)
    return np.asarray(corners)


def _clockwise(corners: np.ndarray) -> np.ndarray:
    """Four corners (x, y fractions) in the order top-left, top-right, bottom-right, bottom-left: by
    angle around their centre (clockwise on screen), starting from the one nearest the top-left."""
    centre = corners.mean(axis=0)
    ring = corners[np.argsort(np.arctan2(corners[:, 1] - centre[1], corners[:, 0] - centre[0]))]
    return np.clip(np.roll(ring, -int(np.argmin(ring.sum(axis=1))), axis=0), 0.0, 1.0)


def picture_quad(pixels: np.ndarray) -> Quad | None:
    """The corners of a picture photographed at an angle on a background (a print on a table, a
    screen), or ``None``: the largest region the background surrounds (:func:`_background`), which
    hardly touches the frame's edge, covers :data:`QUAD_AREA` of it, is convex
    (:data:`QUAD_SOLIDITY`) and is a quadrilateral (its hull simplified to four sides that cover
    95-108 % of it). A plain photo whose sky floods to the horizon is not one: what is left touches
    the frame's edge."""
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[..., None], 3, axis=2)
    h, w = pixels.shape[:2]
    if min(h, w) < 8 or pixels.shape[2] < 3:
        return None
    f = QUAD_SIDE / max(h, w)
    small = cv2.resize(pixels, (max(8, round(w * f)), max(8, round(h * f))), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(np.ascontiguousarray(small[..., :3]), (0, 0), QUAD_BLUR)
    sh, sw = small.shape[:2]
    count, labels, stats, _ = cv2.connectedComponentsWithStats((~_background(small)).astype(np.uint8), connectivity=4)
    if count < 2:
        return None
    inside = (labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))).astype(np.uint8)
    area = int(inside.sum())
    ring = np.concatenate([inside[:2].ravel(), inside[-2:].ravel(), inside[:, :2].ravel(), inside[:, -2:].ravel()])
    if ring.mean() > QUAD_EDGE_TOUCH or not QUAD_AREA[0] <= area / (sh * sw) <= QUAD_AREA[1]:
        return None
    contours, _ = cv2.findContours(inside, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    hull = cv2.convexHull(max(contours, key=cv2.contourArea))
    hull_area = cv2.contourArea(hull)
    if area < QUAD_SOLIDITY * hull_area:
        return None
    perimeter = cv2.arcLength(hull, True)
    for tolerance in (0.005, 0.01, 0.02, 0.03):  # of the perimeter
        polygon = cv2.approxPolyDP(hull, tolerance * perimeter, True).reshape(-1, 2).astype(np.float64)
        if not 4 <= len(polygon) <= 12:
            continue
        quad = _four_sides(polygon)
        if quad is not None and 0.95 <= cv2.contourArea(quad.astype(np.float32)) / hull_area <= 1.08:
            return Quad(tuple((float(x), float(y)) for x, y in _clockwise(quad / (sw, sh))))  # type: ignore[arg-type]
    return None


def rectify(image: Image.Image, quad: Quad) -> Image.Image:
    """The picture inside ``quad`` warped to an upright rectangle as long as its longer sides."""
    w, h = image.size
    corners = np.float32([(x * w, y * h) for x, y in quad.corners])
    width = max(np.linalg.norm(corners[1] - corners[0]), np.linalg.norm(corners[2] - corners[3]))
    height = max(np.linalg.norm(corners[3] - corners[0]), np.linalg.norm(corners[2] - corners[1]))
    ow, oh = max(8, round(float(width))), max(8, round(float(height)))
    warp = cv2.getPerspectiveTransform(corners, np.float32([(0, 0), (ow, 0), (ow, oh), (0, oh)]))
    pixels = np.asarray(image.convert("RGB"))
    return Image.fromarray(
        cv2.warpPerspective(pixels, warp, (ow, oh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    )


def inner_box(pixels: np.ndarray) -> tuple[Region, bool] | None:
    """Where the picture inside a frame lies, as fractions of the height and width (so the same region
    cuts the full-resolution original): the corners of a picture photographed at an angle
    (:func:`picture_quad`), or else the box inside a solid frame (:func:`border_box`) or a busy one such
    as a screenshot (:func:`picture_box`), or else the corners of an upright one; and whether its turned
    views count too (a print or a framed picture may lie any way; a screenshot is upright). ``None``
    when none is found. An upright picture is left to the boxes, which tell a frame from a screen."""
    quad = picture_quad(pixels)
    if quad is not None and not is_upright(quad):
        return quad, True
    box, framed = border_box(pixels), True
    if box is None:
        box, framed = picture_box(pixels), False
    if box is None:
        return (quad, True) if quad is not None else None
    h, w = pixels.shape[:2]
    t, b, lft, rgt = box
    return (t / h, b / h, lft / w, rgt / w), framed


def is_upright(quad: Quad, tolerance: float = QUAD_UPRIGHT) -> bool:
    """Whether ``quad`` is a picture shown straight, in a frame or on a screen, rather than photographed
    at an angle: three of its sides lie along the frame's, within ``tolerance`` of its width and height
    (a sticker over a corner of a screenshot's picture, cutting it along one side, moves one side's end)."""
    (x0, y0), (x1, y1), (x2, y2), (x3, y3) = quad.corners
    return sum(abs(d) <= tolerance for d in (x0 - x3, x1 - x2, y0 - y1, y3 - y2)) >= 3


def cut_inside(image: Image.Image, region: Region) -> Image.Image:
    """The picture in ``region`` of ``image`` (:func:`inner_box`): cropped to a box, or rectified
    from four corners."""
    if isinstance(region, Quad):
        return rectify(image, region)
    w, h = image.size
    t, b, lft, rgt = region
    x0, y0 = round(lft * w), round(t * h)
    return image.crop((x0, y0, max(round(rgt * w), x0 + 1), max(round(b * h), y0 + 1)))


Original = Image.Image | Callable[[], Image.Image | None]


def inner_picture(pixels: np.ndarray, original: Original | None = None) -> tuple[np.ndarray | None, bool]:
    """The picture inside a frame (:func:`inner_box`) resized to the input's shape (``None`` when
    there is none), and whether the frame was solid. With ``original`` (the decoded picture that
    ``pixels`` were resized from, or a function that decodes it: called only when there is a
    frame), the picture is cut from it at full resolution: a picture that fills a fifth of a phone
    screenshot keeps its detail, where cut from the model input it would be enlarged from a few
    dozen rows."""
    found = inner_box(pixels)
    if found is None:
        return None, False
    region, framed = found
    source = original() if callable(original) else original
    h, w = pixels.shape[:2]
    crop = cut_inside(source if source is not None else Image.fromarray(pixels), region)
    return np.asarray(crop.resize((w, h), Image.Resampling.BILINEAR, reducing_gap=3.0), dtype=np.uint8), framed
