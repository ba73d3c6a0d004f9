"""Stage 4b: the FAISS side of a library.

One :class:`VectorIndex` per embedding model, whose ids are ``images.id``. It is
a cache of what SQLite holds: it is written atomically (temporary file, fsync,
rename) with a small JSON sidecar recording the model revision it reflects,
and at open it is reconciled with SQLite (missing ids added from the stored
vectors, stale ids removed), so a crash at any moment costs at most a rebuild.

Index types (``kind``):

``flat``
    ``IndexIDMap2(IndexFlatIP)``: exact inner product over every vector. Always
    present: it is the in-memory copy of the vectors (add, remove, reconstruct,
    exact search, range search) and the source of the exact scores below.
    Memory: ``4 * dim + 16`` bytes per vector (5,136 B at 1280-d).
``ivfpq``
    The flat store plus an IVF-PQ index (``IVF<nlist>,PQ<m>x4fs``: inverted lists
    over spherical k-means cells, vectors compressed to ``m`` 4-bit codes scanned
    with SIMD "fast scan") that proposes a few hundred candidates, which are then
    re-ranked with exact scores from the flat store. Extra memory: ``m / 2 + 8``
    bytes per vector (88 B at 1280-d, m=160) plus the ``nlist x dim`` centroids.
    (8-bit PQ was ~30x slower to train and encode here.)
``hnsw``
    The flat store plus an HNSW graph over fp16 copies of the vectors
    (``IndexHNSWSQ``), re-ranked exactly like ``ivfpq``. Extra memory:
    ``2 * dim`` (fp16) ``+ ~8 * M * 1.1`` (graph links) ``+ 8`` bytes per vector
    (~2.9 KB at 1280-d, M=32).
``ivfpq-disk``
    The memory-bounded type for millions of vectors: the same IVF-PQ shortlist in RAM, but no
    flat store; the full vectors live in a file beside the index (:mod:`searcher.vector_store`,
    float32, or float16 with ``store="float16"``) and only the re-ranked candidates are read
    from it, so returned scores stay exact cosines (to ~1e-3 with float16). RAM: ``m / 2 + 16``
    bytes per vector (96 B at 1280-d: ~1 GB at 10M); disk: ``4 * dim`` (or ``2 * dim``) bytes.

Removals: HNSW cannot delete, and FAISS 1.15's fast-scan IVF mis-encodes vectors added
after a ``remove_ids`` (seen here: re-added vectors stopped finding themselves), so neither
approximate index is ever edited in place. A removed id is only taken out of the flat
store and remembered as *stale*; stale candidates are dropped before re-ranking, and an id
added again is re-ranked from its new vector. Once stale entries exceed a quarter of the live
vectors the approximate index is rebuilt from the flat store (IVF keeps its training).

``auto`` (the default) keeps ``flat`` below :data:`AUTO_ANN_MIN` vectors, where an
exact scan answers in a few milliseconds, and switches to :data:`AUTO_ANN_KIND`
above it (see ``scripts/bench.py`` for the measurements behind both numbers).
It switches to ``ivfpq-disk`` when the flat copies of the vectors would take more than
:data:`AUTO_MEMORY_FRACTION` of the memory available (``/proc/meminfo`` MemAvailable, plus what
the index itself already holds), and back only once they would fit in half of that.
Every type returns exact cosine scores, so thresholds mean the same whatever the type.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import faiss
import numpy as np

from searcher.files import atomic_write, atomic_write_bytes
from searcher.vector_store import DiskVectors, new_store_path, store_files

INDEX_TYPES = ("auto", "flat", "hnsw", "ivfpq", "ivfpq-disk")
KINDS = ("flat", "hnsw", "ivfpq", "ivfpq-disk")
DISK_KIND = "ivfpq-disk"
IVF_KINDS = ("ivfpq", DISK_KIND)

# Measured on a 2-core CPU at 1280-d (scripts/bench.py): an exact scan of 50k vectors takes
# ~10 ms per query, growing linearly (~100 ms at 500k); IVF-PQ + exact re-ranking stays at
# ~1-3 ms with recall@10 >= 0.95 from 50k to 1M. Below this size exact search is fast enough.
AUTO_ANN_MIN = 50_000
AUTO_ANN_KIND = "ivfpq"
# auto keeps the vectors in RAM while their flat copies take at most this share of the memory
# available; above it the index becomes ``ivfpq-disk`` (~96 B per vector in RAM at 1280-d)
AUTO_MEMORY_FRACTION = 0.5

# ivfpq-disk is for millions of vectors, where assigning each to one of 4096 cells dominates the
# build: measured on 2 busy cores at 1280-d, 18k vectors/s are added to IVF1024,PQ160x4fs and
# 3.6k/s to IVF4096 (10M vectors: 9 vs 46 minutes); searches then scan more codes per cell
DISK_MAX_CELLS = 1024
IVF_MIN_TRAIN = 2_048  # fewer vectors than this: no IVF yet (searches are exact and fast anyway)
IVF_RETRAIN_GROWTH = 16  # retrain (more cells) once the index holds 16x the vectors it was trained on
STALE_FRACTION = 0.25

DEFAULT_PARAMS: dict[str, dict[str, Any]] = {
    "flat": {},
    "hnsw": {"M": 32, "ef_construction": 80, "ef_search": 96, "rerank": 40},
    # nprobe / rerank_min: None = sized for the current count at search time (ivf_search_params)
    "ivfpq": {"rerank_factor": 20, "rerank_min": None, "nprobe": None},
    DISK_KIND: {"rerank_factor": 20, "rerank_min": None, "nprobe": None, "store": "float32"},
}

_MAGIC = b"SEARCHER-VINDEX1"
_TRAILER = b"SEARCHER-VEND"


@dataclass
class IndexState:
    """What the sidecar says about a saved index file."""

    revision: int
    count: int
    sha256: str
    dim: int
    kind: str = "flat"
    params: dict[str, Any] = field(default_factory=dict)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class _HashingWriter:
    """A file handle wrapper that hashes and counts what goes through it (FAISS writes via callbacks)."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.handle.write(data)
        self.size += len(data)
        return len(data)

    def write_index(self, index: faiss.Index) -> int:
        """Stream ``index`` in FAISS's format (no in-memory copy of a multi-GB index); returns its size."""
        before = self.size
        writer = faiss.PyCallbackIOWriter(self.write)
        faiss.write_index(index, writer)
        del writer  # flushes its buffer
        return self.size - before


def _read_index(handle: BinaryIO, length: int, digest: Any) -> faiss.Index:
    """Read one FAISS index of ``length`` bytes from ``handle``'s position, hashing the bytes read."""
    remaining = [length]

    def read(n: int) -> bytes:
        data = handle.read(min(n, remaining[0]))
        remaining[0] -= len(data)
        digest.update(data)
        return data

    index = faiss.read_index(faiss.PyCallbackIOReader(read))
    if remaining[0]:  # FAISS stopped early: hash the rest so the checksum covers the whole file
        digest.update(handle.read(remaining[0]))
    return index


# sha256 of index files computed while loading them, so checking a file against its sidecar
# does not read a multi-GB file twice: (path, inode, size, mtime_ns) -> hex digest
_CHECKSUMS: dict[tuple[str, int, int, int], str] = {}


def _file_key(path: Path, handle: BinaryIO | None = None) -> tuple[str, int, int, int]:
    st = os.fstat(handle.fileno()) if handle is not None else os.stat(path)
    return (os.path.abspath(path), st.st_ino, st.st_size, st.st_mtime_ns)


def build_threads() -> int:
    """OpenMP threads FAISS may use to build an index (``SEARCHER_FAISS_THREADS`` overrides).

    One on machines with two cores or fewer: FAISS's many small parallel regions (PQ training,
    HNSW insertion) then spend more time in fork/join than in work as soon as anything else runs
    (TensorFlow, other programs). Measured here on 2 busy cores, building IVF-PQ over 3k
    vectors took 0.7 s of CPU on one thread and 8-25 s on two; over 30k, 2.5 s vs 12 s wall.
    """
    env = os.environ.get("SEARCHER_FAISS_THREADS")
    if env:
        return max(1, int(env))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 1 if cores <= 2 else min(cores, 16)


@contextlib.contextmanager
def omp_threads(n: int) -> Iterator[None]:
    """Limit FAISS's OpenMP threads for the calling thread only (OpenMP settings are per thread)."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def available_memory() -> int:
    """Bytes of memory the system can give without swapping (MemAvailable; sysconf elsewhere)."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def choose_kind(
    requested: str, count: int, current: str = "flat", *, dim: int | None = None, available: int | None = None
) -> str:
    """The index type to use for ``count`` vectors when the user asked for ``requested``.

    ``auto`` switches to :data:`AUTO_ANN_KIND` at :data:`AUTO_ANN_MIN` vectors and back to
    ``flat`` only below half of that (so a library hovering at the threshold does not flip).
    Given ``dim``, it also weighs memory: ``ivfpq-disk`` once the flat copies of ``count``
    vectors exceed :data:`AUTO_MEMORY_FRACTION` of ``available`` bytes (default: what the system
    has available now, plus what an in-RAM index of ``current`` type already holds), and back
    only when they fit in half of that.
    """
    if requested not in INDEX_TYPES:
        raise ValueError(f"index type must be one of {', '.join(INDEX_TYPES)}, not {requested!r}")
    if requested != "auto":
        return requested
    if dim is not None:
        flat_bytes = count * bytes_per_vector("ivfpq", dim)
        if available is None:
            held = count * bytes_per_vector(current, dim) if current != DISK_KIND else 0
            available = available_memory() + int(held)
        limit = AUTO_MEMORY_FRACTION * available * (0.5 if current == DISK_KIND else 1.0)
        if flat_bytes > limit:
            return DISK_KIND
    if current == DISK_KIND:
        current = AUTO_ANN_KIND
    if current != "flat":
        return current if count >= AUTO_ANN_MIN // 2 else "flat"
    return AUTO_ANN_KIND if count >= AUTO_ANN_MIN else "flat"


def bytes_per_vector(kind: str, dim: int, params: dict[str, Any] | None = None) -> float:
    """Approximate resident memory per vector of each index type (flat store included)."""
    p = {**DEFAULT_PARAMS[kind], **(params or {})}
    flat = 4 * dim + 16  # float32 vector + id map (+ reverse map entry, roughly)
    if kind == "flat":
        return float(flat)
    if kind == "ivfpq":
        return float(flat + p.get("m", pq_subquantizers(dim)) / 2 + 8)
    if kind == DISK_KIND:  # PQ code + its row label + the row's image id; the vectors are on disk
        return float(p.get("m", pq_subquantizers(dim)) / 2 + 16)
    return float(flat + 2 * dim + 8 * p["M"] * 1.1 + 8)


def pq_subquantizers(dim: int) -> int:
    """4-bit PQ sub-quantizers: one per 8 dimensions (160 for 1280-d: 80 bytes per vector), at
    least 64 for small vectors (coarser codes rank candidates too poorly to re-rank from).

    An even divisor of ``dim`` (FAISS fast-scan packs codes in pairs).
    """
    for m in range(max(2, dim // 8, min(dim // 2, 64)), 1, -1):
        if dim % m == 0 and m % 2 == 0:
            return m
    return 2


def ivf_search_params(count: int, nlist: int) -> tuple[int, int]:
    """(nprobe, candidates to re-rank) for an IVF-PQ index of ``count`` vectors in ``nlist`` cells.

    Measured on 1280-d embeddings (scripts/bench.py, sweep of nprobe x candidates): recall@10 is
    limited by how many cells are scanned when cells are small (10k vectors: 0.89 at nprobe 8,
    0.98 at 64 of 128) and by how many candidates are re-ranked when the index is large and
    neighbours crowd together (1M: 0.87 with 200 candidates, 0.96 with 400, nprobe barely
    matters). So: scan at least ~20k codes, and re-rank ~sqrt(count) / 2 candidates (>= 200).
    """
    per_cell = max(count / max(nlist, 1), 1.0)
    nprobe = int(min(nlist, max(8, nlist // 32, math.ceil(20_000 / per_cell))))
    candidates = int(min(2_000, max(200, 0.5 * math.sqrt(count))))
    return nprobe, candidates


def ivf_cells(count: int) -> int:
    """Inverted lists for ``count`` vectors: a power of two near sqrt(count), 64..4096."""
    target = max(64.0, min(4096.0, math.sqrt(max(count, 1))))
    return int(2 ** round(math.log2(target)))


class VectorIndex:
    """Cosine-similarity search over unit vectors, keyed by image id (see the module docstring)."""

    def __init__(
        self,
        dim: int,
        index: faiss.Index | None = None,
        kind: str = "flat",
        params: dict[str, Any] | None = None,
        ann: faiss.Index | None = None,
        stale: Iterable[int] = (),
        *,
        disk: DiskVectors | None = None,
        home: Path | None = None,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown index kind {kind!r}")
        self.dim = dim
        # the vectors: in RAM (``index``, a flat store) or, for ``ivfpq-disk``, in a file (``disk``)
        self.disk = disk
        self.index = None if disk is not None else (
            index if index is not None else faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        )
        self.home = home  # the index file's path: where an ``ivfpq-disk`` store is created
        self.kind = kind
        self.params: dict[str, Any] = {**DEFAULT_PARAMS[kind], **(params or {})}
        self.ann = ann  # None: every search is an exact scan of ``index``
        self._stale: set[int] = set(int(i) for i in stale)  # ids in ``ann`` that are no longer live
        self._stale_cache: np.ndarray | None = None

    # --- persistence ---
    @staticmethod
    def sidecar_path(path: Path) -> Path:
        return path.with_suffix(".json")

    @classmethod
    def load(cls, path: Path, dim: int) -> tuple[VectorIndex, IndexState | None]:
        """Read a saved index; raises ``ValueError`` when the file is unreadable or of another size."""
        try:
            with open(path, "rb") as handle:
                key = _file_key(path, handle)
                digest = hashlib.sha256()
                head = handle.read(len(_MAGIC))
                if head == _MAGIC:
                    vindex = cls._load_container(handle, digest, path)
                else:
                    handle.seek(0)
                    flat = _read_index(handle, key[2], digest)
                    vindex = cls(flat.d, cls._as_idmap(flat))
                _CHECKSUMS[key] = digest.hexdigest()
        except ValueError:
            raise
        except Exception as exc:  # faiss raises RuntimeError with C++ text
            raise ValueError(f"unreadable FAISS index {path.name}: {str(exc).splitlines()[0][:200]}") from exc
        vindex.home = path
        held_dim = vindex.index.d if vindex.index is not None else vindex.dim
        if vindex.dim != dim or held_dim != dim:
            raise ValueError(f"FAISS index {path.name} has dimension {held_dim}, expected {dim}")
        state = None
        try:
            raw = json.loads(cls.sidecar_path(path).read_text())
            state = IndexState(
                int(raw["revision"]), int(raw["count"]), str(raw["sha256"]), int(raw["dim"]),
                str(raw.get("kind", "flat")), dict(raw.get("params", {})),
            )  # fmt: skip
        except (OSError, ValueError, KeyError, TypeError):
            state = None
        return vindex, state

    @staticmethod
    def _as_idmap(index: faiss.Index) -> faiss.Index:
        if isinstance(index, faiss.IndexIDMap2):
            return index
        if index.ntotal == 0:
            return faiss.IndexIDMap2(index)
        raise ValueError("FAISS index without ids")

    @classmethod
    def _load_container(cls, handle: BinaryIO, digest: Any, path: Path) -> VectorIndex:
        """Our own layout: magic, FAISS parts back to back, JSON header, its length, trailer."""
        handle.seek(-(len(_TRAILER) + 8), os.SEEK_END)
        tail = handle.read()
        if not tail.endswith(_TRAILER):
            raise ValueError("truncated index file")
        (header_len,) = struct.unpack("<Q", tail[:8])
        handle.seek(-(len(_TRAILER) + 8 + header_len), os.SEEK_END)
        raw_header = handle.read(header_len)
        header = json.loads(raw_header)
        digest.update(_MAGIC)
        handle.seek(len(_MAGIC))
        flat, ann, stale, row_ids = None, None, np.zeros(0, np.int64), None
        for name, offset, length in header["parts"]:  # in file order, so the hash is of the whole file
            if offset != handle.tell():
                raise ValueError("corrupt index file layout")
            if name == "flat":
                flat = cls._as_idmap(_read_index(handle, length, digest))
            elif name == "ann":
                ann = _read_index(handle, length, digest)
            else:
                data = handle.read(length)
                digest.update(data)
                if name == "stale":
                    stale = np.frombuffer(data, dtype="<i8")
                elif name == "rows":
                    row_ids = np.frombuffer(data, dtype="<i8")
        digest.update(raw_header)
        digest.update(tail)
        dim = int(header["dim"])
        disk = None
        if "store" in header:  # ivfpq-disk: the vectors are in a file beside this one
            meta = header["store"]
            if row_ids is None or len(row_ids) != int(meta["rows"]):
                raise ValueError("index file without its row table")
            disk = DiskVectors(path.parent / meta["file"], dim, meta["dtype"], int(meta["rows"]), row_ids)
            if disk.digest() != meta["digest"]:
                disk.close()
                raise ValueError(f"vectors file {meta['file']} does not match its index")
        elif flat is None:
            raise ValueError("index file without vectors")
        return cls(dim, flat, header["kind"], header.get("params"), ann, stale.tolist(), disk=disk)

    def save(self, path: Path, revision: int) -> IndexState:
        """Atomically write the index (streamed: no in-memory copy), then its sidecar.

        An ``ivfpq-disk`` store is written and fsynced first (copied beside ``path`` if it lives
        elsewhere); once the new index is in place, vectors files it no longer uses are deleted.
        """
        result: dict[str, Any] = {}
        store: dict[str, Any] | None = None
        if self.disk is not None:
            if self.disk.path.parent.resolve() != path.parent.resolve() or not self.disk.path.name.startswith(
                f"{path.stem}.vectors-"
            ):
                self._replace_store(self.disk.compacted(new_store_path(path), keep_dead=True))
            self.disk.sync()
            store = {"file": self.disk.path.name, "dtype": self.disk.dtype.name, "rows": self.disk.rows}
            store["digest"] = self.disk.digest()

        def write(handle: BinaryIO) -> None:
            out = _HashingWriter(handle)
            if self.kind == "flat" and self.ann is None:  # plain FAISS file, readable by any FAISS tool
                out.write_index(self.index)
            else:
                out.write(_MAGIC)
                parts = []
                start = out.size
                if self.index is not None:
                    parts.append(["flat", start, out.write_index(self.index)])
                if self.disk is not None:
                    start = out.size
                    parts.append(["rows", start, out.write(self.disk.row_ids.astype("<i8").tobytes())])
                if self.ann is not None:
                    start = out.size
                    parts.append(["ann", start, out.write_index(self.ann)])
                if self._stale:
                    start = out.size
                    data = np.asarray(sorted(self._stale), dtype="<i8").tobytes()
                    parts.append(["stale", start, out.write(data)])
                fields = {"kind": self.kind, "dim": self.dim, "params": self.params, "parts": parts}
                if store is not None:
                    fields["store"] = store
                header = json.dumps(fields).encode()
                out.write(header)
                out.write(struct.pack("<Q", len(header)))
                out.write(_TRAILER)
            result["sha256"] = out.digest.hexdigest()

        atomic_write(path, write)
        try:
            _CHECKSUMS[_file_key(path)] = result["sha256"]
        except OSError:
            pass
        state = IndexState(revision, len(self), result["sha256"], self.dim, self.kind, dict(self.params))
        atomic_write_bytes(self.sidecar_path(path), json.dumps(state.__dict__).encode())
        self.home = path
        for old in store_files(path):  # stores of earlier saves (readers that opened one keep reading it)
            if self.disk is None or old.name != self.disk.path.name:
                with contextlib.suppress(OSError):
                    old.unlink()
        return state

    @staticmethod
    def file_checksum(path: Path) -> str:
        """sha256 of the file (remembered from :meth:`load` or :meth:`save` while the file is unchanged)."""
        try:
            known = _CHECKSUMS.get(_file_key(path))
        except OSError:
            known = None
        return known or _sha256(path)

    # --- content ---
    def __len__(self) -> int:
        return self.disk.live if self.disk is not None else int(self.index.ntotal)

    @property
    def approximate(self) -> bool:
        """True when searches go through an approximate index (then re-ranked exactly)."""
        return self.ann is not None

    def ids(self) -> np.ndarray:
        if self.disk is not None:
            return self.disk.ids()
        return faiss.vector_to_array(self.index.id_map).astype(np.int64)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        ids = np.asarray(ids, np.int64)
        if len(ids) == 0:
            return
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(ids), self.dim)
        if self.disk is not None:  # the ann's labels are rows of the store, not image ids
            rows = self.disk.append(ids, vectors)
            if self.ann is not None:
                with omp_threads(build_threads()):
                    self.ann.add_with_ids(vectors, rows)
            return
        self.index.add_with_ids(vectors, ids)
        if self.ann is not None:
            with omp_threads(build_threads()):  # batches of ~32 while indexing: no fork/join storms
                self.ann.add_with_ids(vectors, ids)
            if self._stale:
                self._stale.difference_update(ids.tolist())
                self._stale_cache = None

    def remove(self, ids: Iterable[int]) -> int:
        arr = np.unique(np.fromiter(ids, dtype=np.int64))
        if len(arr) == 0:
            return 0
        if self.disk is not None:  # dead rows stay in the file and the ann until compacted
            removed = self.disk.kill(self.disk.rows_of(arr))
            if self.disk.rows - self.disk.live > max(256, STALE_FRACTION * self.disk.live):
                self._compact()
            return removed
        if self.ann is not None:
            live = arr[np.isin(arr, self.ids())]
        removed = int(self.index.remove_ids(faiss.IDSelectorBatch(arr)))
        if self.ann is not None:  # never edited in place (see the module docstring): stale until rebuilt
            self._stale.update(live.tolist())
            self._stale_cache = None
            if len(self._stale) > max(256, STALE_FRACTION * len(self)):
                self._build_ann(retrain=False)
        return removed

    def reconstruct(self, image_id: int) -> np.ndarray:
        if self.disk is not None:
            rows = self.disk.rows_of(np.array([image_id], np.int64))
            if len(rows) == 0:
                raise KeyError(f"id {image_id} is not in the index")
            return self.disk.read(rows[-1:])[0]
        return self.index.reconstruct(int(image_id))

    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """Every (id, vector) held, as arrays (a copy: ``4 * dim`` bytes per vector)."""
        if self.disk is not None:
            ids = self.disk.row_ids.copy()
            parts = [v[ids[s : s + len(v)] >= 0] for s, v in self.disk.chunks()]
            vecs = np.concatenate(parts) if parts else np.zeros((0, self.dim), np.float32)
            return ids[ids >= 0], vecs
        inner = faiss.downcast_index(self.index.index)
        n = len(self)
        return self.ids(), inner.reconstruct_n(0, n) if n else np.zeros((0, self.dim), np.float32)

    def search(self, queries: np.ndarray, k: int, *, exact: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (scores, ids) per query row, exact cosine scores; missing slots have id -1.

        ``exact`` scans every vector even when an approximate index exists.
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        n = len(queries)
        k = max(1, min(k, len(self))) if len(self) else 0
        if k == 0:
            return np.zeros((n, 0), np.float32), np.zeros((n, 0), np.int64)
        # a handful of queries: one thread (no fork/join per call; other threads keep their cores)
        with omp_threads(1) if n <= 16 else contextlib.nullcontext():
            return self._search(queries, k, exact)

    def _search(self, queries: np.ndarray, k: int, exact: bool) -> tuple[np.ndarray, np.ndarray]:
        n = len(queries)
        if self.ann is None or exact:
            return self._exact(queries, k)
        if self.kind in IVF_KINDS:
            nprobe, candidates = ivf_search_params(len(self), int(self.params["nlist"]))
            wanted = max(k * int(self.params["rerank_factor"]), int(self.params.get("rerank_min") or candidates))
            params: Any = faiss.SearchParametersIVF()
            params.nprobe = int(self.params.get("nprobe") or nprobe)
        else:
            wanted = max(2 * k, int(self.params["rerank"]))
            params = faiss.SearchParametersHNSW()
            params.efSearch = max(int(self.params["ef_search"]), wanted)
        if 4 * wanted >= len(self):  # asking for a good part of the index: a full scan is as fast, and exact
            return self._exact(queries, k)
        scores = np.full((n, k), -np.inf, np.float32)
        labels = np.full((n, k), -1, np.int64)
        for start in range(0, n, 256):
            q = queries[start : start + 256]
            _, cand = self.ann.search(q, wanted, params=params)
            s, lab = self._rerank(q, cand, k)
            scores[start : start + len(q)] = s
            labels[start : start + len(q)] = lab
        return scores, labels

    def _exact(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-``k`` over every vector (the flat store, or the disk store read in chunks)."""
        if self.disk is None:
            return self.index.search(queries, k)
        n = len(queries)
        best_s = np.full((n, k), -np.inf, np.float32)
        best_r = np.full((n, k), -1, np.int64)
        row_ids = self.disk.row_ids
        for start, vecs in self.disk.chunks():
            scores = queries @ vecs.T
            scores[:, row_ids[start : start + len(vecs)] < 0] = -np.inf
            kk = min(k, scores.shape[1])
            top = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
            all_s = np.concatenate([best_s, np.take_along_axis(scores, top, axis=1)], axis=1)
            all_r = np.concatenate([best_r, top + start], axis=1)
            order = np.argsort(-all_s, axis=1, kind="stable")[:, :k]
            best_s, best_r = np.take_along_axis(all_s, order, axis=1), np.take_along_axis(all_r, order, axis=1)
        ids = np.where(np.isfinite(best_s) & (best_r >= 0), row_ids[np.maximum(best_r, 0)], -1)
        return best_s, ids

    def _stale_sorted(self) -> np.ndarray:
        if self._stale_cache is None:
            self._stale_cache = np.sort(np.fromiter(self._stale, dtype=np.int64, count=len(self._stale)))
        return self._stale_cache

    def _rerank(self, queries: np.ndarray, cand: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact scores of the candidate ids from the flat store; the best ``k`` of each row."""
        if self.disk is not None:
            return self._rerank_disk(queries, cand, k)
        cand = cand.copy()
        if self._stale:
            stale = self._stale_sorted()
            pos = np.minimum(np.searchsorted(stale, cand), len(stale) - 1)
            cand[stale[pos] == cand] = -1
        # an id removed then added again sits in ``ann`` twice (its stale entry and the new one)
        order = np.sort(cand, axis=1)
        if (np.diff(order, axis=1)[order[:, 1:] >= 0] == 0).any():
            for row in cand:
                _, first = np.unique(row, return_index=True)
                keep = np.zeros(len(row), bool)
                keep[first] = True
                row[~keep] = -1
        valid = cand >= 0
        scores = np.full(cand.shape, -np.inf, np.float32)
        if valid.any():
            vecs = self.index.reconstruct_batch(cand[valid])
            rows = np.nonzero(valid)[0]
            scores[valid] = np.einsum("ij,ij->i", vecs, queries[rows])
        return _top_k(scores, cand, k)

    def _rerank_disk(self, queries: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact scores of candidate rows read from the disk store (each row read once)."""
        assert self.disk is not None
        row_ids = self.disk.row_ids
        cand = np.where(rows >= 0, row_ids[np.maximum(rows, 0)], -1)  # dead rows: -1
        valid = cand >= 0
        scores = np.full(cand.shape, -np.inf, np.float32)
        if valid.any():
            wanted, where = np.unique(rows[valid], return_inverse=True)
            vecs = self.disk.read(wanted)[where.ravel()]
            qrows = np.nonzero(valid)[0]
            scores[valid] = np.einsum("ij,ij->i", vecs, queries[qrows])
        return _top_k(scores, cand, k)

    # --- index types ---
    def set_kind(self, kind: str, params: dict[str, Any] | None = None) -> bool:
        """Switch to ``kind`` (building its approximate index from the flat store); True if it changed."""
        if kind not in KINDS:
            raise ValueError(f"index type must be one of {', '.join(KINDS)}, not {kind!r}")
        if kind == self.kind and not params:
            return self.maintain()
        self.kind = kind
        self.params = {**DEFAULT_PARAMS[kind], **(params or {})}
        self._move_vectors()
        self._build_ann()
        return True

    def _move_vectors(self) -> None:
        """Put the vectors where the current kind keeps them: a disk store for ``ivfpq-disk``, else RAM."""
        if self.kind == DISK_KIND:
            dtype = str(self.params.get("store") or "float32")
            if self.disk is not None and self.disk.dtype.name == dtype:
                return
            if self.home is None:
                raise ValueError("an ivfpq-disk index needs a location for its vectors file (home=...)")
            store = DiskVectors(new_store_path(self.home), self.dim, dtype, create=True)
            if self.disk is not None:  # another storage type: copied row by row
                for start, vecs in self.disk.chunks():
                    ids = self.disk.row_ids[start : start + len(vecs)]
                    store.append(ids[ids >= 0], vecs[ids >= 0])
                self.disk.close()
            else:
                ids = self.ids()
                inner = faiss.downcast_index(self.index.index)
                for start in range(0, len(ids), 50_000):
                    count = min(50_000, len(ids) - start)
                    store.append(ids[start : start + count], inner.reconstruct_n(start, count))
            store.flush()
            self.disk, self.index, self.ann = store, None, None
            self._stale.clear()
            self._stale_cache = None
        elif self.disk is not None:
            flat = faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
            for start, vecs in self.disk.chunks():
                ids = self.disk.row_ids[start : start + len(vecs)]
                flat.add_with_ids(np.ascontiguousarray(vecs[ids >= 0]), ids[ids >= 0])
            self.disk.close()  # its file is deleted by the next save
            self.disk, self.index, self.ann = None, flat, None

    def _compact(self) -> None:
        """Copy the live rows of the disk store to a new file and rebuild the ann over them."""
        assert self.disk is not None
        home = self.home or self.disk.path.with_name(self.disk.path.name.split(".vectors-")[0] + ".faiss")
        self._replace_store(self.disk.compacted(new_store_path(home)), rows_changed=True)

    def _replace_store(self, store: DiskVectors, rows_changed: bool = False) -> None:
        assert self.disk is not None
        store.owned = True
        self.disk.close()
        self.disk = store
        if rows_changed and self.ann is not None:
            self._build_ann(retrain=False)

    def maintain(self) -> bool:
        """Bring the approximate index up to the current size (first build, or retrain after growth)."""
        if self.kind == "flat":
            return False
        if self.ann is None:
            if self.kind in IVF_KINDS and len(self) < IVF_MIN_TRAIN:
                return False
            self._build_ann()
            return True
        if self.kind in IVF_KINDS and len(self) > IVF_RETRAIN_GROWTH * int(self.params.get("trained_on", len(self))):
            for key in ("nlist", "trained_on"):  # sized again for the new count
                self.params.pop(key, None)
            self._build_ann()
            return True
        return False

    def _build_ann(self, retrain: bool = True) -> None:
        """(Re)build the approximate index from the flat store; ``retrain=False`` keeps IVF's training."""
        with omp_threads(build_threads()):
            self._build_ann_now(retrain)

    def _build_ann_now(self, retrain: bool) -> None:
        self._stale.clear()
        self._stale_cache = None
        n = len(self)
        if not retrain and self.kind in IVF_KINDS and self.ann is not None:
            self.ann.reset()
            self._add_all_to(self.ann)
            return
        self.ann = None
        if self.kind == "flat" or (self.kind in IVF_KINDS and n < IVF_MIN_TRAIN):
            return
        if self.kind == "hnsw":
            inner = faiss.downcast_index(self.index.index)
            ann = faiss.IndexHNSWSQ(
                self.dim, faiss.ScalarQuantizer.QT_fp16, int(self.params["M"]), faiss.METRIC_INNER_PRODUCT
            )
            ann.hnsw.efConstruction = int(self.params["ef_construction"])
            ann.hnsw.efSearch = int(self.params["ef_search"])
            wrapped = faiss.IndexIDMap(ann)
        else:
            nlist = int(self.params.get("nlist") or 0) or ivf_cells(n)
            if self.kind == DISK_KIND and not self.params.get("nlist"):
                nlist = min(nlist, DISK_MAX_CELLS)
            nlist = max(1, min(nlist, n // 39))
            m = int(self.params.get("m") or 0) or pq_subquantizers(self.dim)
            ann = faiss.index_factory(self.dim, f"IVF{nlist},PQ{m}x4fs", faiss.METRIC_INNER_PRODUCT)
            ivf = faiss.extract_index_ivf(ann)
            ivf.cp.spherical = True
            ivf.cp.niter = 15
            ivf.cp.max_points_per_centroid = 64
            sample_n = min(n, max(64 * nlist, 65_536))
            if self.disk is not None:
                ann.train(self.disk.sample(sample_n))
            else:
                inner = faiss.downcast_index(self.index.index)
                pick = np.sort(np.random.default_rng(0).choice(n, size=sample_n, replace=False))
                xb = faiss.rev_swig_ptr(inner.get_xb(), n * self.dim).reshape(n, self.dim)
                ann.train(np.ascontiguousarray(xb[pick]))
            self.params.update(nlist=nlist, m=m, trained_on=n)
            wrapped = ann
        self._add_all_to(wrapped)
        self.ann = wrapped

    def _add_all_to(self, ann: faiss.Index) -> None:
        if self.disk is not None:  # labels are rows; dead rows are left out
            for start, vecs in self.disk.chunks():
                live = self.disk.row_ids[start : start + len(vecs)] >= 0
                rows = np.arange(start, start + len(vecs), dtype=np.int64)
                ann.add_with_ids(np.ascontiguousarray(vecs[live]), rows[live])
            return
        inner = faiss.downcast_index(self.index.index)
        ids = self.ids()
        for start in range(0, len(ids), 50_000):
            count = min(50_000, len(ids) - start)
            ann.add_with_ids(inner.reconstruct_n(start, count), ids[start : start + count])

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


def _top_k(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best of each row of re-ranked candidates (``-inf`` / ``-1`` where there are fewer)."""
    kk = min(k, ids.shape[1])
    top = np.argsort(-scores, axis=1, kind="stable")[:, :kk]
    out_s = np.take_along_axis(scores, top, axis=1)
    out_i = np.take_along_axis(ids, top, axis=1)
    out_i[~np.isfinite(out_s)] = -1
    if kk < k:
        out_s = np.pad(out_s, ((0, 0), (0, k - kk)), constant_values=-np.inf)
        out_i = np.pad(out_i, ((0, 0), (0, k - kk)), constant_values=-1)
    return out_s, out_i
