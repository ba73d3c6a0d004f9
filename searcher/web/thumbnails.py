"""Thumbnails made on first view and cached in the library folder (``<library>/thumbnails/``).

A thumbnail's name is a hash of the file's path, size, mtime and content hash (as indexed) and the
thumbnail size, so a file that changes gets a new one and the old one ages out. The cache is bounded
(``max_bytes``): every hit refreshes the file's mtime, and when the total passes the bound the least
recently used thumbnails are removed until it is 10% under. Written atomically (never a torn JPEG).
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
from pathlib import Path

from PIL import Image

from searcher.decode import open_image
from searcher.files import atomic_write_bytes

THUMB_DIR = "thumbnails"
THUMB_SIZE = 256
DEFAULT_MAX_BYTES = 512 * 1024 * 1024


class ThumbnailCache:
    def __init__(self, library_root: Path, *, max_bytes: int = DEFAULT_MAX_BYTES, size: int = THUMB_SIZE) -> None:
        self.folder = Path(library_root) / THUMB_DIR
        self.max_bytes = max_bytes
        self.size = size
        self._lock = threading.Lock()
        self._total: int | None = None  # bytes on disk, counted at first use

    def _files(self) -> list[tuple[float, int, Path]]:
        out = []
        if self.folder.is_dir():
            for sub in os.scandir(self.folder):
                if sub.is_dir():
                    for f in os.scandir(sub.path):
                        if f.name.endswith(".jpg"):
                            st = f.stat()
                            out.append((st.st_mtime, st.st_size, Path(f.path)))
        return out

    def total_bytes(self) -> int:
        with self._lock:
            if self._total is None:
                self._total = sum(s for _, s, _ in self._files())
            return self._total

    def key(self, path: str, content_hash: str | None) -> str:
        st = os.stat(path)
        text = f"{path}\0{st.st_size}\0{st.st_mtime_ns}\0{content_hash}\0{self.size}"
        return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()

    def get(self, path: str, content_hash: str | None) -> bytes:
        """The JPEG thumbnail of an (already vetted) library file; raises OSError/DecodeError when unreadable."""
        key = self.key(path, content_hash)
        target = self.folder / key[:2] / f"{key}.jpg"
        try:
            data = target.read_bytes()
            os.utime(target)  # recently used
            return data
        except FileNotFoundError:
            pass
        img = open_image(path).image.convert("RGB")
        img.thumbnail((self.size, self.size), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=82)
        data = buf.getvalue()
        atomic_write_bytes(target, data)
        self.total_bytes()
        with self._lock:
            self._total = (self._total or 0) + len(data)
            over = self._total > self.max_bytes
        if over:
            self.evict()
        return data

    def evict(self) -> int:
        """Remove least recently used thumbnails until the cache is 10% under its bound; returns how many."""
        with self._lock:
            files = sorted(self._files())
            total = sum(s for _, s, _ in files)
            goal = int(self.max_bytes * 0.9)
            removed = 0
            for _, size, path in files:
                if total <= goal:
                    break
                try:
                    path.unlink()
                except OSError:
                    continue
                total -= size
                removed += 1
            self._total = total
            return removed

