"""The library API that the CLI is a thin layer over.

    from searcher import Library
    with Library.open("~/photos-library") as lib:
        report = lib.index(["~/Pictures"])
        for hit in lib.query(["cat.jpg"], k=5)[0].results:
            print(hit.score, hit.path)

A library is one folder: ``library.db`` (SQLite, the source of truth: files,
their metadata and every vector) and ``indexes/<model key>.faiss`` (one FAISS
index per embedding model, rebuilt from SQLite whenever it is missing or stale).

This module holds the library's lifecycle, its models and their FAISS indexes, and the
reports; indexing is :mod:`searcher.indexing`, querying :mod:`searcher.querying`.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from platformdirs import user_data_dir
from sqlalchemy import func, select

from searcher import store
from searcher.files import absolute
from searcher.locking import WriteLock
from searcher.reports import (  # noqa: F401  (re-exported: the library's public types)
    Hit,
    IndexInterrupted,
    IndexReport,
    LibraryError,
    LibraryNotFound,
    Progress,
    QueryResult,
)
from searcher.store import STATUS_FAILED, STATUS_OK, EmbeddingRow, ImageRow, Meta, ModelRow

# numpy, FAISS (searcher.vector_index), the backbones and the indexing/querying halves are imported
# where they are used, so that `searcher info`, `failures` or `check` start in well under 0.5 s
# (tests/test_cold_start.py checks which modules each command imports).
if TYPE_CHECKING:
    import numpy as np
    from sqlalchemy.orm import Session

    from searcher.embed import Embedder, ModelIdentity
    from searcher.thumbnails import ThumbnailIndex
    from searcher.vector_index import VectorIndex
    from searcher.verify import FeatureCache

DB_NAME = "library.db"
INDEX_DIR = "indexes"
LOCK_NAME = "write.lock"


def default_library_path() -> Path:
    """``$SEARCHER_LIBRARY``, else the per-user data folder (XDG data home on Linux)."""
    env = os.environ.get("SEARCHER_LIBRARY")
    if env:
        return Path(env).expanduser()
    return Path(user_data_dir("searcher", appauthor=False)) / "library"


class _LazyMethod:
    """A method of :class:`Library` written as a function in another module, imported on first use."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name

    def __get__(self, obj: object, owner: type | None = None) -> Any:
        function = getattr(importlib.import_module(self.module), self.name)
        return function if obj is None else function.__get__(obj, owner)


class Library:
    """An image library on disk. Open with :meth:`open`; close with :meth:`close` or ``with``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.db_path = root / DB_NAME
        self.engine = store.open_engine(self.db_path)
        store.init_schema(self.engine)
        self.sessions = store.make_sessionmaker(self.engine)
        self._lock = WriteLock(root / LOCK_NAME)
        self._indexes: dict[str, VectorIndex] = {}
        self._embedders: dict[str, Embedder] = {}
        self._verify_cache: FeatureCache | None = None

    # --- lifecycle ---------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike[str] | None = None, *, create: bool = True) -> Library:
        """Open the library at ``path`` (default: :func:`default_library_path`), creating it if asked."""
        root = Path(path).expanduser() if path is not None else default_library_path()
        root = Path(absolute(root))
        if not (root / DB_NAME).exists():
            if not create:
                raise LibraryNotFound(
                    f"no library at {root}; create one with `searcher index FOLDER` "
                    "(or point --library / SEARCHER_LIBRARY at an existing one)"
                )
            if root.exists() and not root.is_dir():
                raise LibraryError(f"{root} exists and is not a folder")
            root.mkdir(parents=True, exist_ok=True)
            (root / INDEX_DIR).mkdir(exist_ok=True)
        return cls(root)

    def close(self) -> None:
        self._lock.release()
        self._indexes.clear()
        self._embedders.clear()
        self._verify_cache = None
        self.engine.dispose()

    def __enter__(self) -> Library:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- models ------------------------------------------------------------------------------
    def _get_meta(self, session: Session, key: str) -> str | None:
        row = session.get(Meta, key)
        return row.value if row else None

    def _set_meta(self, session: Session, key: str, value: str) -> None:
        row = session.get(Meta, key)
        if row is None:
            session.add(Meta(key=key, value=value))
        else:
            row.value = value

    def _model_row(self, session: Session, identity: ModelIdentity, create: bool) -> ModelRow | None:
        row = session.execute(select(ModelRow).where(ModelRow.key == identity.key)).scalar_one_or_none()
        if row is None and create:
            row = ModelRow(
                key=identity.key,
                backbone=identity.backbone,
                weights_sha256=identity.weights_sha256,
                weights_source=identity.weights_source,
                preprocess_version=identity.preprocess_version,
                pooling=identity.pooling,
                dim=identity.dim,
                revision=0,
            )
            session.add(row)
            session.flush()
            if self._get_meta(session, "default_model") is None:
                self._set_meta(session, "default_model", identity.key)
        return row

    def models(self) -> list[ModelRow]:
        with self.sessions() as session:
            return list(session.execute(select(ModelRow).order_by(ModelRow.id)).scalars())

    def find_model(self, backbone: str | None = None, pooling: str | None = None) -> ModelRow:
        """The model a query should use: the library's default, or the named backbone's vectors."""
        with self.sessions() as session:
            if backbone is None:
                key = self._get_meta(session, "default_model")
                if key is None:
                    raise LibraryError("this library has no indexed images yet; run `searcher index FOLDER`")
                row = session.execute(select(ModelRow).where(ModelRow.key == key)).scalar_one()
                if pooling is None or row.pooling == pooling:
                    return row
                backbone = row.backbone
            from searcher.backbones.registry import get_backbone

            name = get_backbone(backbone).name
            stmt = select(ModelRow).where(ModelRow.backbone == name)
            if pooling is not None:
                stmt = stmt.where(ModelRow.pooling == pooling)
            rows = list(session.execute(stmt).scalars())
            if not rows:
                raise LibraryError(
                    f"no images in this library were indexed with {name}"
                    + (f" and {pooling} pooling" if pooling else "")
                    + f"; run `searcher index --backbone {name} FOLDER` first"
                )
            counts = {r.id: session.scalar(select(func.count()).where(EmbeddingRow.model_id == r.id)) for r in rows}
            return max(rows, key=lambda r: (counts[r.id], r.id))

    def verify_cache(self) -> FeatureCache:
        """Local features of the pictures the default query has verified, kept while the library is
        open (a server or a script asking many queries verifies the same results again and again);
        keys carry each file's size and mtime, so a changed file is read again. At most 512 pictures
        (about 250 MB)."""
        if self._verify_cache is None:
            from searcher.verify import FeatureCache

            self._verify_cache = FeatureCache(capacity=512)
        return self._verify_cache

    def thumbnail_index(self) -> ThumbnailIndex:
        """The stored thumbnails of every readable image (:mod:`searcher.thumbnails`), read once and
        kept while the library is open and no newer image has a thumbnail (the newest id: one index
        lookup; counting the rows took 30 ms at 50,000 images). A removed image may stay in the kept
        copy: callers look its row up and skip it when it is gone."""
        from searcher.store import ThumbnailRow, thumbnail_rows
        from searcher.thumbnails import ThumbnailIndex

        with self.sessions() as session:
            token = session.execute(select(func.max(ThumbnailRow.image_id))).scalar_one()
            held = self.__dict__.get("_thumbnail_index")
            if held is None or held[0] != token:
                held = (token, ThumbnailIndex.build(thumbnail_rows(session)))
                self.__dict__["_thumbnail_index"] = held
        return held[1]

    def embedder_for(self, model: ModelRow, runtime: str | None = None) -> Embedder:
        """A loaded network that produces vectors comparable with ``model``'s (built once, kept).

        ``runtime``: ``tensorflow``, ``onnxruntime`` or ``auto`` (default: ``--runtime`` /
        ``$SEARCHER_RUNTIME`` / ``auto``); see :mod:`searcher.runtime`. Either gives the same key.
        """
        from searcher.runtime import load_embedder, requested_runtime

        chosen = requested_runtime(runtime)
        if chosen == "tensorflow" and model.key in self._embedders:  # built by index() to fetch its weights
            return self._embedders[model.key]
        cache_key = f"{model.key}@{chosen}"
        if cache_key not in self._embedders:
            weights: str | None = model.weights_source
            if weights == "random":
                weights = None
            elif weights not in (None, "imagenet") and not os.path.isfile(weights):
                weights = "imagenet"  # e.g. the pip package moved to another virtualenv

            def check_images(size: int) -> list[np.ndarray]:
                """Up to four of this library's photos, decoded, to check a new ONNX export on."""
                from searcher.decode import load_for_model

                with self.sessions() as session:
                    paths = session.scalars(
                        select(ImageRow.path).where(ImageRow.status == STATUS_OK).order_by(ImageRow.id).limit(8)
                    ).all()
                out = []
                for path in paths:
                    try:
                        out.append(load_for_model(path, (size, size))[0])
                    except Exception:  # moved, unreadable: the next one
                        continue
                    if len(out) == 4:
                        break
                return out

            embedder = load_embedder(
                model.backbone, weights, model.pooling, runtime=chosen, library_root=self.root,
                check_images=check_images,
            )  # fmt: skip
            if embedder.identity.key != model.key:
                raise LibraryError(
                    f"the weights of {model.backbone} on this machine differ from those that built this "
                    f"library's vectors ({embedder.identity.key} != {model.key}); pass the same --weights"
                )
            self._embedders[cache_key] = embedder
        return self._embedders[cache_key]

    def vector_index(self, model: ModelRow) -> VectorIndex:
        """The model's FAISS index, loaded from disk and reconciled with SQLite (cached per session)."""
        cached = self._indexes.get(model.key)
        if cached is not None:
            return cached
        from searcher.vector_index import VectorIndex

        path = self.index_path(model)
        with self.sessions() as session:
            db_model = session.get(ModelRow, model.id)
            assert db_model is not None
            revision = db_model.revision
            index, state = None, None
            if path.exists():
                try:
                    index, state = VectorIndex.load(path, model.dim)
                    if state is not None and VectorIndex.file_checksum(path) != state.sha256:
                        raise ValueError("checksum mismatch")  # damaged, or replaced while we read it
                except (ValueError, OSError):
                    index, state = None, None  # rebuilt below from the stored vectors
            if index is None:
                index = VectorIndex(model.dim, home=path)
            if state is None or state.revision != revision or state.count != len(index):
                expected = store.vector_ids(session, model.id)
                index.reconcile(expected, lambda ids: self._stored_vectors(session, model, ids))
        self._indexes[model.key] = index
        return index

    def index_path(self, model: ModelRow) -> Path:
        return self.root / INDEX_DIR / f"{model.key}.faiss"

    def _save_index(self, model: ModelRow, index: VectorIndex) -> None:
        # Reconciled first, so the sidecar never vouches for an index that missed a commit (a Ctrl-C
        # between a batch's commit and its addition to the in-memory index, for example).
        with self.sessions() as session:
            revision = session.get(ModelRow, model.id).revision  # type: ignore[union-attr]
            expected = store.vector_ids(session, model.id)
            index.reconcile(expected, lambda ids: self._stored_vectors(session, model, ids))
        index.save(self.index_path(model), revision)

    @staticmethod
    def _stored_vectors(session: Session, model: ModelRow, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import numpy as np

        found = store.vectors_for(session, model.id, ids.tolist())
        keys = np.fromiter(found.keys(), dtype=np.int64, count=len(found))
        vecs = np.stack(list(found.values())) if found else np.zeros((0, model.dim), np.float32)
        return keys, vecs

    def _remove_temp_files(self) -> None:
        """Temporary files of a FAISS save that was killed (only a writer saves, and this one holds the lock)."""
        for tmp in (self.root / INDEX_DIR).glob(".*.tmp"):
            try:
                tmp.unlink()
            except OSError:
                pass

    def index_type(self, model: ModelRow) -> str:
        """The index type asked for ``model`` (``auto`` unless ``index --index-type`` chose one)."""
        with self.sessions() as session:
            return self._get_meta(session, f"index_type:{model.key}") or "auto"

    def _rows_by_id(self, ids: Iterable[int]) -> dict[int, ImageRow]:
        ids = list(ids)
        out: dict[int, ImageRow] = {}
        with self.sessions() as session:
            for start in range(0, len(ids), 900):
                for row in session.execute(select(ImageRow).where(ImageRow.id.in_(ids[start : start + 900]))).scalars():
                    out[row.id] = row
        return out

    # --- indexing and querying (the two halves live in their own modules) ----------------------
    index = _LazyMethod("searcher.indexing", "index_files")
    query = _LazyMethod("searcher.querying", "query")
    search_vectors = _LazyMethod("searcher.querying", "search_vectors")
    search_probes = _LazyMethod("searcher.querying", "search_probes")

    def rows_by_id(self, ids: Iterable[int]) -> dict[int, ImageRow]:
        """The image rows of ``ids`` (missing ids are left out)."""
        return self._rows_by_id(ids)

    # --- reporting ---------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """Location, default backbone, counts and size on disk (no network is loaded)."""
        with self.sessions() as session:
            images = session.scalar(select(func.count()).select_from(ImageRow).where(ImageRow.status == STATUS_OK))
            failed = session.scalar(select(func.count()).select_from(ImageRow).where(ImageRow.status == STATUS_FAILED))
            default_key = self._get_meta(session, "default_model")
            models = []
            for m in session.execute(select(ModelRow).order_by(ModelRow.id)).scalars():
                n = session.scalar(select(func.count()).where(EmbeddingRow.model_id == m.id))
                models.append(
                    {
                        "key": m.key, "backbone": m.backbone, "pooling": m.pooling, "dim": m.dim,
                        "vectors": n, "weights_sha256": m.weights_sha256, "default": m.key == default_key,
                    }
                )  # fmt: skip
        size = sum(f.stat().st_size for f in self.root.rglob("*") if f.is_file())
        default = next((m for m in models if m["default"]), None)
        return {
            "library": str(self.root),
            "backbone": default["backbone"] if default else None,
            "images": images,
            "vectors": default["vectors"] if default else 0,
            "failures": failed,
            "size_bytes": size,
            "models": models,
        }

    def failures(self) -> list[tuple[str, str]]:
        with self.sessions() as session:
            rows = session.execute(
                select(ImageRow.path, ImageRow.error).where(ImageRow.status == STATUS_FAILED).order_by(ImageRow.path)
            ).all()
        return [(p, e or "") for p, e in rows]
