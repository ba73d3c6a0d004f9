"""Stage 4b: the FAISS side of a library.

One FAISS index per embedding model, whose ids are ``images.id``. The index is
a cache of what SQLite holds: it is written atomically (temporary file, fsync,
rename) with a small JSON sidecar recording the model revision it reflects,
and at open it is reconciled with SQLite (missing ids added from the stored
vectors, stale ids removed), so a crash at any moment costs at most a rebuild.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np


@dataclass
class IndexState:
    """What the sidecar says about a saved index file."""

    revision: int
    count: int
    sha256: str
    dim: int


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


class VectorIndex:
    """Cosine-similarity search over unit vectors, keyed by image id (exact inner product)."""

    def __init__(self, dim: int, index: faiss.Index | None = None) -> None:
        self.dim = dim
        self.index = index if index is not None else faiss.IndexIDMap2(faiss.IndexFlatIP(dim))

    # --- persistence ---
    @staticmethod
    def sidecar_path(path: Path) -> Path:
        return path.with_suffix(".json")

    @classmethod
    def load(cls, path: Path, dim: int) -> tuple[VectorIndex, IndexState | None]:
        """Read a saved index; raises ``ValueError`` when the file is unreadable or of another size."""
        try:
            index = faiss.read_index(str(path))
        except Exception as exc:  # faiss raises RuntimeError with C++ text
            raise ValueError(f"unreadable FAISS index {path.name}: {str(exc).splitlines()[0][:200]}") from exc
        if index.d != dim:
            raise ValueError(f"FAISS index {path.name} has dimension {index.d}, expected {dim}")
        if not isinstance(index, faiss.IndexIDMap2):
            index = faiss.IndexIDMap2(index) if index.ntotal == 0 else index
        state = None
        try:
            raw = json.loads(cls.sidecar_path(path).read_text())
            state = IndexState(int(raw["revision"]), int(raw["count"]), str(raw["sha256"]), int(raw["dim"]))
        except (OSError, ValueError, KeyError):
            state = None
        return cls(dim, index), state

    def save(self, path: Path, revision: int) -> IndexState:
        """Atomically write the index, then its sidecar."""
        data = faiss.serialize_index(self.index).tobytes()
        atomic_write_bytes(path, data)
        state = IndexState(revision, int(self.index.ntotal), hashlib.sha256(data).hexdigest(), self.dim)
        atomic_write_bytes(self.sidecar_path(path), json.dumps(state.__dict__).encode())
        return state

    @staticmethod
    def file_checksum(path: Path) -> str:
        return _sha256(path)

    # --- content ---
    def __len__(self) -> int:
        return int(self.index.ntotal)

    def ids(self) -> np.ndarray:
        return faiss.vector_to_array(self.index.id_map).astype(np.int64)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids):
            self.index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.asarray(ids, np.int64))

    def remove(self, ids: Iterable[int]) -> int:
        arr = np.fromiter(ids, dtype=np.int64)
        if len(arr) == 0:
            return 0
        return int(self.index.remove_ids(faiss.IDSelectorBatch(arr)))

    def reconstruct(self, image_id: int) -> np.ndarray:
        return self.index.reconstruct(int(image_id))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (scores, ids) per query row; missing slots have id -1."""
        k = max(1, min(k, len(self))) if len(self) else 0
        if k == 0:
            n = len(queries)
            return np.zeros((n, 0), np.float32), np.zeros((n, 0), np.int64)
        return self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)

    def reconcile(
        self, expected_ids: np.ndarray, fetch: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
    ) -> tuple[int, int]:
        """Make the index hold exactly ``expected_ids``; ``fetch(ids)`` returns (ids, vectors) to add.

        Returns (added, removed).
        """
        have = self.ids()
        extra = np.setdiff1d(have, expected_ids, assume_unique=False)
        missing = np.setdiff1d(expected_ids, have, assume_unique=False)
        removed = self.remove(extra.tolist()) if len(extra) else 0
        added = 0
        for start in range(0, len(missing), 20000):
            ids, vectors = fetch(missing[start : start + 20000])
            self.add(ids, vectors)
            added += len(ids)
        return added, removed
