"""Tiny grey thumbnails: a second way to find a copy when the CNN puts it far from its original.

A heavy blur, a shaky camera or a watermark moves a picture's CNN vector far from the original's
(cosine 0.3-0.5, below 30 other pictures of a library), yet hardly changes a 16 x 16 grey thumbnail:
the two thumbnails still correlate at 0.9 and more. Every indexed picture's thumbnail is stored in the
library (256 float16 values, 512 bytes; ``store.ThumbnailRow``), computed by the decode workers at
index time from the picture they decode anyway. A query looks up the probe's nearest thumbnails of the
same shape (:class:`ThumbnailIndex`) and verifies them with its first results (``searcher.querying``);
only those verified as copies join the results. ``searcher duplicates`` finds blurred copies the same
way (:func:`searcher.dup_candidates.thumbnail_pairs`).

The thumbnail is zero-mean and unit-norm, so the dot product of two is their normalised correlation
(invariant to brightness and contrast changes); ``None`` for a flat picture.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

THUMB_SIDE = 16  # 16 x 16 grey levels, whatever the picture's aspect ratio
THUMB_DIM = THUMB_SIDE * THUMB_SIDE
THUMB_MATCH = 0.9  # correlation from which a thumbnail neighbour of the same shape is worth verifying
ASPECT_TOLERANCE = 0.02  # aspect ratios (width / height) this close count as the same shape


def thumbnail_vector(grey: np.ndarray) -> np.ndarray | None:
    """The 16 x 16 thumbnail of a grey picture (``(h, w)`` array, any size), zero mean and unit norm,
    as 256 float32 values; ``None`` when the picture is flat (nothing to correlate)."""
    import cv2

    small = cv2.resize(np.asarray(grey, np.uint8), (THUMB_SIDE, THUMB_SIDE), interpolation=cv2.INTER_AREA)
    t = small.astype(np.float32)
    t -= t.mean()
    norm = float(np.linalg.norm(t))
    return None if norm < 1e-3 * t.size else (t / norm).ravel()


def thumbnail_of(image: object) -> np.ndarray | None:
    """:func:`thumbnail_vector` of a PIL image (converted to grey levels first)."""
    grey = np.asarray(image.convert("L"), np.uint8)  # type: ignore[attr-defined]
    return thumbnail_vector(grey)


def to_blob(vector: np.ndarray) -> bytes:
    """A thumbnail as stored in the library: 256 float16 values (512 bytes)."""
    return np.asarray(vector, np.float16).tobytes()


def from_blob(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, np.float16).astype(np.float32)


@dataclass(frozen=True)
class ThumbnailIndex:
    """The stored thumbnails of a library, searched exactly (one matrix-vector product: 50,000
    pictures are 12.8 M multiply-adds, ~6 ms on the 2-core machine; reading them from SQLite ~0.29 s)."""

    ids: np.ndarray  # (n,) image ids
    thumbs: np.ndarray  # (n, 256) float32 unit rows
    aspects: np.ndarray  # (n,) width / height of each picture

    @classmethod
    def build(cls, rows: Sequence[tuple[int, bytes, int | None, int | None]]) -> ThumbnailIndex:
        """From ``(image id, blob, width, height)`` rows (pictures of unknown size are left out)."""
        kept = [(i, b, w, h) for i, b, w, h in rows if b and w and h and len(b) == 2 * THUMB_DIM]
        ids = np.fromiter((r[0] for r in kept), np.int64, len(kept))
        thumbs = (
            np.frombuffer(b"".join(r[1] for r in kept), np.float16).reshape(-1, THUMB_DIM).astype(np.float32)
            if kept
            else np.zeros((0, THUMB_DIM), np.float32)
        )
        aspects = np.fromiter((r[2] / r[3] for r in kept), np.float64, len(kept))  # type: ignore[operator]
        return cls(ids, thumbs, aspects)

    def __len__(self) -> int:
        return len(self.ids)

    def search(
        self,
        thumb: np.ndarray,
        aspect: float,
        k: int,
        min_correlation: float = THUMB_MATCH,
        exclude: Sequence[int] = (),
    ) -> list[tuple[int, float]]:
        """Up to ``k`` ``(image id, correlation)`` of pictures of the same shape as the probe (aspect
        ratio within :data:`ASPECT_TOLERANCE`) whose thumbnails correlate with ``thumb`` at least
        ``min_correlation``, best first."""
        if not len(self.ids) or k <= 0:
            return []
        scores = self.thumbs @ np.asarray(thumb, np.float32)  # all rows: no copy of the matrix
        same_shape = np.abs(self.aspects / aspect - 1.0) <= ASPECT_TOLERANCE
        rows = np.flatnonzero(same_shape & (scores >= min_correlation))
        if not len(rows):
            return []
        scores = scores[rows]
        skip = set(int(i) for i in exclude)
        out = []
        for r in np.argsort(-scores, kind="stable"):
            if len(out) >= k:
                break
            image_id = int(self.ids[rows[r]])
            if image_id not in skip:
                out.append((image_id, float(scores[r])))
        return out
