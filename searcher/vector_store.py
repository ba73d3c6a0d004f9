"""The full vectors of a memory-bounded index (``ivfpq-disk``), in a file next to the index.

One row per vector, float32 (exact scores) or float16 (half the disk, scores to ~1e-3), in an
append-only file ``<index stem>.vectors-<token>``; only the image id of each row is kept in RAM
(8 bytes per row). A row is never rewritten: removing an id marks its row dead (id -1), and when
dead rows pile up the live ones are copied to a new file (:meth:`DiskVectors.compacted`).

Crash safety: the index container records how many rows are committed and a digest of the first
and last committed row; rows past that count are a killed writer's leftovers, overwritten by the
next append. Rows are written to the file only by the process that owns it (created it, or saved
the index that refers to it: the library's single writer); a reader that adds vectors (reconciling
with SQLite) keeps them in RAM, so two processes never write the same file. Reads use ``pread``,
not ``mmap``: the page cache holds what is read, and the process's resident memory stays bounded.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import numpy as np

STORE_DTYPES = ("float32", "float16")
FLUSH_ROWS = 16_384  # an owner writes pending rows once this many wait in RAM
READ_CHUNK_ROWS = 32_768


def new_store_path(index_path: Path) -> Path:
    """A fresh vectors file name beside ``index_path`` (each file gets its own token)."""
    return index_path.with_name(f"{index_path.stem}.vectors-{secrets.token_hex(6)}")


def store_files(index_path: Path) -> list[Path]:
    """Every vectors file of the index at ``index_path`` (current or left over)."""
    return sorted(index_path.parent.glob(f"{index_path.stem}.vectors-*"))


class DiskVectors:
    """Rows of vectors in a file (plus rows not yet written, in RAM), each row with its image id."""

    def __init__(
        self,
        path: Path,
        dim: int,
        dtype: str = "float32",
        rows: int = 0,
        row_ids: np.ndarray | None = None,
        *,
        create: bool = False,
    ) -> None:
        if dtype not in STORE_DTYPES:
            raise ValueError(f"vector storage must be one of {', '.join(STORE_DTYPES)}, not {dtype!r}")
        self.path = Path(path)
        self.dim = dim
        self.dtype = np.dtype(dtype)
        self.row_bytes = dim * self.dtype.itemsize
        flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0)
        try:
            self._fd = os.open(self.path, flags, 0o644)
        except FileNotFoundError:
            raise ValueError(f"vectors file {self.path.name} is missing") from None
        if os.fstat(self._fd).st_size < rows * self.row_bytes:
            os.close(self._fd)
            raise ValueError(f"vectors file {self.path.name} is shorter than its index says (truncated?)")
        self.owned = create  # only the owner writes rows to the file (see the module docstring)
        self.file_rows = rows  # rows [0, file_rows) are in the file
        self._ids = np.full(max(1024, rows), -1, np.int64)
        if rows:
            self._ids[:rows] = np.asarray(row_ids, np.int64)[:rows]
        self.rows = rows  # rows [file_rows, rows) wait in ``_pending``
        self._pending: list[np.ndarray] = []
        self.live = int((self._ids[:rows] >= 0).sum())

    # --- rows and ids ---
    @property
    def row_ids(self) -> np.ndarray:
        """Image id of each row, -1 for dead rows (a view: do not keep across appends)."""
        return self._ids[: self.rows]

    def ids(self) -> np.ndarray:
        ids = self.row_ids
        return ids[ids >= 0].copy()

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Live rows holding any of ``ids`` (a scan of the id table: ~10 ms per million rows)."""
        return np.nonzero(np.isin(self.row_ids, ids) & (self.row_ids >= 0))[0]

    def kill(self, rows: np.ndarray) -> int:
        rows = rows[self._ids[rows] >= 0]
        self._ids[rows] = -1
        self.live -= len(rows)
        return len(rows)

    def append(self, ids: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        """Store ``vectors`` under ``ids``; returns their rows."""
        n = len(ids)
        start = self.rows
        if start + n > len(self._ids):
            grown = np.full(max(2 * len(self._ids), start + n), -1, np.int64)
            grown[:start] = self._ids[:start]
            self._ids = grown
        self._ids[start : start + n] = ids
        self._pending.append(np.ascontiguousarray(vectors, dtype=self.dtype).reshape(n, self.dim))
        self.rows += n
        self.live += n
        if self.owned and self.rows - self.file_rows >= FLUSH_ROWS:
            self.flush()
        return np.arange(start, start + n, dtype=np.int64)

    def flush(self) -> None:
        """Write the rows waiting in RAM to the file (from the committed end: leftovers are overwritten)."""
        if not self._pending:
            return
        data = np.concatenate(self._pending).tobytes()
        offset = self.file_rows * self.row_bytes
        view = memoryview(data)
        while view:
            written = os.pwrite(self._fd, view, offset)
            view, offset = view[written:], offset + written
        self.file_rows = self.rows
        self._pending = []

    def sync(self) -> None:
        """Flush and fsync: called before an index that counts these rows is saved."""
        self.owned = True  # the saver is the library's writer: it owns the file from now on
        self.flush()
        os.fsync(self._fd)

    # --- reading ---
    def _file_rows(self, start: int, count: int) -> np.ndarray:
        size = count * self.row_bytes
        data = os.pread(self._fd, size, start * self.row_bytes)
        if len(data) != size:
            raise OSError(f"short read from {self.path.name}")
        return np.frombuffer(data, self.dtype).reshape(count, self.dim)

    def _pending_rows(self) -> np.ndarray:
        if len(self._pending) > 1:
            self._pending = [np.concatenate(self._pending)]
        return self._pending[0] if self._pending else np.zeros((0, self.dim), self.dtype)

    def read(self, rows: np.ndarray) -> np.ndarray:
        """float32 vectors of ``rows`` (one small read per row: only the candidates are read)."""
        out = np.empty((len(rows), self.dim), np.float32)
        in_file = rows < self.file_rows
        for pos in np.nonzero(in_file)[0]:
            out[pos] = self._file_rows(int(rows[pos]), 1)[0]
        if not in_file.all():
            out[~in_file] = self._pending_rows()[rows[~in_file] - self.file_rows]
        return out

    def chunks(self, size: int = READ_CHUNK_ROWS) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, float32 vectors) of every row, dead ones included, in order."""
        for start in range(0, self.file_rows, size):
            yield start, self._file_rows(start, min(size, self.file_rows - start)).astype(np.float32)
        pending = self._pending_rows()
        for start in range(0, len(pending), size):
            yield self.file_rows + start, pending[start : start + size].astype(np.float32)

    def sample(self, count: int, seed: int = 0) -> np.ndarray:
        """``count`` rows picked at random (live or not), as float32: a training set."""
        pick = np.sort(np.random.default_rng(seed).choice(self.rows, size=min(count, self.rows), replace=False))
        out = np.empty((len(pick), self.dim), np.float32)
        for start in range(0, len(pick), 4096):  # sorted: the reads sweep the file once
            part = pick[start : start + 4096]
            out[start : start + len(part)] = self.read(part)
        return out

    def digest(self) -> str:
        """sha256 of the first and last committed rows: catches a file replaced or rewritten."""
        h = hashlib.sha256(f"{self.file_rows}:{self.dtype.name}".encode())
        if self.file_rows:
            h.update(self._file_rows(0, 1).tobytes())
            h.update(self._file_rows(self.file_rows - 1, 1).tobytes())
        return h.hexdigest()

    # --- whole-file operations ---
    def compacted(self, path: Path, keep_dead: bool = False) -> DiskVectors:
        """A new store at ``path`` with the live rows in order (all rows with ``keep_dead``: same row
        numbers); this one is left untouched."""
        out = DiskVectors(path, self.dim, self.dtype.name, create=True)
        ids = self.row_ids.copy()
        for start in range(0, self.rows, READ_CHUNK_ROWS):
            part = ids[start : start + READ_CHUNK_ROWS]
            keep = np.ones(len(part), bool) if keep_dead else part >= 0
            if keep.any():  # copied in the stored type (no float16 -> float32 -> float16 round trip)
                rows = np.arange(start, start + len(part))[keep]
                out.append(part[keep], self._raw_rows(rows))
        out.live = int((out.row_ids >= 0).sum())
        out.flush()
        return out

    def _raw_rows(self, rows: np.ndarray) -> np.ndarray:
        """Rows as stored (contiguous ``rows`` expected: one read from the file)."""
        lo, hi = int(rows[0]), int(rows[-1]) + 1
        parts = []
        if lo < self.file_rows:
            parts.append(self._file_rows(lo, min(hi, self.file_rows) - lo))
        if hi > self.file_rows:
            pending = self._pending_rows()
            parts.append(pending[max(lo, self.file_rows) - self.file_rows : hi - self.file_rows])
        block = np.concatenate(parts) if len(parts) > 1 else parts[0]
        return block[rows - lo]

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        try:
            self.close()
        except (OSError, AttributeError):
            pass
