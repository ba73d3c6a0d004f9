"""Verify a library, and repair what can be repaired without embedding anything again.

    from searcher import Library
    from searcher.check import check_library, repair_library

    with Library.open("~/photos-library", create=False) as lib:
        report = check_library(lib)
        if not report.healthy:
            report = repair_library(lib)

SQLite is the source of truth and the FAISS files are caches of it, so the checks
compare each FAISS file (and its JSON sidecar: revision, count, SHA-256) with the
vectors SQLite holds, and SQLite with itself (every vector belongs to an indexed
image and every indexed image has a vector; vectors have the model's size and
finite values), and the indexed files with the disk.

Every finding is an :class:`Issue` of one of two severities:

``problem``
    Something is wrong: the library is not healthy (``searcher check`` exits 3).
    ``repair_library`` fixes all of them except a damaged SQLite file.
``warning``
    A state that is expected and heals by itself, or is not the library's to fix:
    a FAISS file that is behind SQLite or missing after an interrupted run (brought
    up to date whenever the library is opened), files that vanished from disk (maybe
    an unplugged drive: they are never deleted by a repair; re-index their folder),
    files changed since they were indexed, and files that failed to decode.

All SQLite reads happen in one read transaction (WAL snapshot) and the FAISS files
are read before it starts, so a check that runs while ``searcher index`` writes sees
one consistent state and reports no false problem.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from searcher import store
from searcher.locking import LibraryLocked, WriteLock
from searcher.store import SCHEMA_VERSION, STATUS_FAILED, STATUS_OK, ModelRow
from searcher.vector_index import VectorIndex

if TYPE_CHECKING:
    from searcher.library import Library

PROBLEM = "problem"
WARNING = "warning"
MAX_EXAMPLES = 10
SAMPLE_VECTORS = 64  # stored vectors compared with the FAISS copy, per model


@dataclass
class Issue:
    """One finding. ``code`` is stable (for scripts); ``message`` is for people."""

    code: str
    severity: str
    message: str
    count: int = 1
    model: str | None = None
    examples: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class CheckReport:
    """What :func:`check_library` found (and, after :func:`repair_library`, what was done)."""

    library: str
    images: int = 0
    failed: int = 0
    models: list[dict[str, Any]] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)  # actions taken by a repair
    before: list[Issue] = field(default_factory=list)  # the issues a repair started from
    seconds: float = 0.0

    @property
    def problems(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == PROBLEM]

    @property
    def warnings(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == WARNING]

    @property
    def healthy(self) -> bool:
        return not self.problems

    def add(self, code: str, severity: str, message: str, **kwargs: Any) -> None:
        examples = kwargs.pop("examples", [])
        self.issues.append(Issue(code, severity, message, examples=list(examples)[:MAX_EXAMPLES], **kwargs))

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "library": self.library,
            "healthy": self.healthy,
            "problems": len(self.problems),
            "warnings": len(self.warnings),
            "images": self.images,
            "failed": self.failed,
            "models": self.models,
            "issues": [i.as_dict() for i in self.issues],
            "seconds": round(self.seconds, 3),
        }
        if self.repaired or self.before:
            out["repaired"] = self.repaired
            out["before"] = [i.as_dict() for i in self.before]
        return out


@dataclass
class _FileState:
    """What one FAISS file and its sidecar hold, read before the SQLite snapshot."""

    path: Path
    exists: bool
    sidecar: dict[str, Any] | None = None
    sha256: str | None = None
    ids: np.ndarray | None = None
    index: VectorIndex | None = None
    error: str | None = None


# --- checking ------------------------------------------------------------------------------------


def check_library(lib: Library, *, files: bool = True, vectors: bool = True, _locked: bool = False) -> CheckReport:
    """Verify ``lib`` without changing anything.

    ``files``: also stat every indexed file (vanished or changed files are warnings).
    ``vectors``: also read every stored vector to look for non-finite values.
    """
    started = time.monotonic()
    report = CheckReport(library=str(lib.root))
    models = lib.models()
    index_dir = lib.root / _index_dir_name()
    lock_path = lib.root / _lock_name()
    file_states = {m.key: _read_index_file(lib.index_path(m), m.dim, None if _locked else lock_path) for m in models}
    _check_stray_files(index_dir, {m.key for m in models}, report)

    with _snapshot(lib) as session:
        _check_sqlite(session, report)
        _check_meta(session, models, report)
        report.images = _scalar(session, "SELECT count(*) FROM images WHERE status = :s", s=STATUS_OK)
        report.failed = _scalar(session, "SELECT count(*) FROM images WHERE status = :s", s=STATUS_FAILED)
        for model in models:
            _check_model(session, model, file_states[model.key], report, vectors)
        _check_rows_without_vectors(session, report)
        if report.failed:
            examples = session.execute(
                text("SELECT path, error FROM images WHERE status = :s ORDER BY path LIMIT :n"),
                {"s": STATUS_FAILED, "n": MAX_EXAMPLES},
            ).all()
            report.add(
                "failed_files", WARNING,
                f"{report.failed} files could not be decoded and were skipped (see `searcher failures`; "
                "retry with `searcher index --retry-failed`)",
                count=report.failed,
                examples=[f"{os.fsdecode(p)}: {e}" for p, e in examples],
            )  # fmt: skip
        if files:
            _check_files(session, report)
    report.seconds = time.monotonic() - started
    return report


def _index_dir_name() -> str:
    from searcher.library import INDEX_DIR

    return INDEX_DIR


def _lock_name() -> str:
    from searcher.library import LOCK_NAME

    return LOCK_NAME


@contextmanager
def _snapshot(lib: Library) -> Iterator[Session]:
    """A session whose reads all see one committed state (an explicit SQLite read transaction)."""
    with lib.sessions() as session:
        session.execute(text("BEGIN"))
        try:
            yield session
        finally:
            session.rollback()


def _scalar(session: Session, sql: str, **params: Any) -> int:
    return int(session.execute(text(sql), params).scalar() or 0)


def _read_sidecar(path: Path) -> dict[str, Any] | None:
    try:
        raw = json.loads(VectorIndex.sidecar_path(path).read_text())
        if not isinstance(raw, dict):
            return None
        int(raw["revision"]), int(raw["count"]), str(raw["sha256"])  # noqa: B018  (validate the fields)
        return raw
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _read_index_file(path: Path, dim: int, lock_path: Path | None, attempts: int = 20) -> _FileState:
    """Read a FAISS file and its sidecar.

    A writer replaces the file, then the sidecar; while one is at work (it holds the lock) a
    mismatch, or a change during the read, may be that moment, so the read is tried again.
    """
    state = _FileState(path, exists=False)
    for _ in range(attempts):
        before = _identity(path)
        state = _FileState(path, exists=before[0] is not None)
        if not state.exists:
            return state
        state.sidecar = _read_sidecar(path)
        try:
            state.sha256 = VectorIndex.file_checksum(path)
            state.index, _ = VectorIndex.load(path, dim)
            state.ids = np.sort(state.index.ids())
        except (ValueError, OSError) as exc:
            state.error = str(exc)
        unsettled = _identity(path) != before or (state.sidecar is not None and state.sha256 != state.sidecar["sha256"])
        if not unsettled or lock_path is None or not _writer_active(lock_path):
            return state
        time.sleep(0.25)
    return state


def _identity(path: Path) -> tuple[tuple[int, int, int] | None, ...]:
    """(inode, size, mtime) of the file and of its sidecar: changes when either is replaced."""
    out = []
    for p in (path, VectorIndex.sidecar_path(path)):
        try:
            st = os.stat(p)
            out.append((st.st_ino, st.st_size, st.st_mtime_ns))
        except OSError:
            out.append(None)
    return tuple(out)


def _writer_active(lock_path: Path) -> bool:
    """True while another process holds the library's writer lock."""
    probe = WriteLock(lock_path)
    try:
        probe.acquire(0)
    except LibraryLocked:
        return True
    except OSError:
        return False
    probe.release()
    return False


def _check_stray_files(index_dir: Path, keys: set[str], report: CheckReport) -> None:
    if not index_dir.is_dir():
        return
    temps, unknown = [], []
    for entry in sorted(index_dir.iterdir()):
        if entry.name.startswith(".") and entry.name.endswith(".tmp"):
            temps.append(entry.name)
        elif entry.suffix == ".faiss" and entry.stem not in keys:
            unknown.append(entry.name)
    if temps:
        report.add(
            "temp_files", WARNING,
            f"{len(temps)} temporary files left by an interrupted save in {index_dir} (removed by a repair)",
            count=len(temps), examples=temps,
        )  # fmt: skip
    if unknown:
        report.add(
            "unknown_index_files", WARNING,
            f"{len(unknown)} FAISS files belong to no embedding model of this library (removed by a repair)",
            count=len(unknown), examples=unknown,
        )  # fmt: skip


def _check_sqlite(session: Session, report: CheckReport) -> None:
    rows = [r[0] for r in session.execute(text("PRAGMA quick_check")).all()]
    if rows != ["ok"]:
        report.add(
            "sqlite_damaged", PROBLEM,
            f"{os.path.basename(report.library)}/library.db is damaged ({'; '.join(rows[:3])}); "
            "restore it from a backup or index again into a new library",
            count=len(rows), examples=rows,
        )  # fmt: skip


def _check_meta(session: Session, models: list[ModelRow], report: CheckReport) -> None:
    version = session.execute(text("SELECT value FROM meta WHERE key = 'schema_version'")).scalar()
    if version is None or str(version).strip() != str(SCHEMA_VERSION):
        report.add(
            "schema_version", PROBLEM,
            f"schema_version is {version!r}, expected {SCHEMA_VERSION!r} (repaired by writing it)",
        )  # fmt: skip
    default = session.execute(text("SELECT value FROM meta WHERE key = 'default_model'")).scalar()
    if models and default not in {m.key for m in models}:
        report.add(
            "default_model", PROBLEM,
            f"the default embedding model {default!r} does not exist (a repair picks the one with most vectors)",
        )  # fmt: skip


def _check_model(session: Session, model: ModelRow, file: _FileState, report: CheckReport, scan_vectors: bool) -> None:
    key = model.key
    revision = _scalar(session, "SELECT revision FROM models WHERE id = :m", m=model.id)
    stored = np.sort(store.vector_ids(session, model.id))
    bad_size = [
        r[0]
        for r in session.execute(
            text("SELECT image_id FROM embeddings WHERE model_id = :m AND length(vector) != :n"),
            {"m": model.id, "n": 4 * model.dim},
        )
    ]
    orphans = session.execute(
        text(
            "SELECT e.image_id, i.path FROM embeddings e LEFT JOIN images i ON i.id = e.image_id "
            "WHERE e.model_id = :m AND (i.id IS NULL OR i.status != :ok) ORDER BY e.image_id"
        ),
        {"m": model.id, "ok": STATUS_OK},
    ).all()
    non_finite = _non_finite_vectors(session, model) if scan_vectors else []
    info: dict[str, Any] = {
        "key": key, "backbone": model.backbone, "pooling": model.pooling, "dim": model.dim,
        "revision": revision, "vectors": int(len(stored)), "index_file": file.exists,
        "index_vectors": None if file.ids is None else int(len(file.ids)),
        "index_revision": None if file.sidecar is None else int(file.sidecar["revision"]),
    }  # fmt: skip
    report.models.append(info)

    if bad_size:
        report.add(
            "bad_vectors", PROBLEM,
            f"{len(bad_size)} stored vectors are not {model.dim} floats long (a repair deletes them; "
            "the next `searcher index` embeds those images again)",
            count=len(bad_size), model=key, examples=[str(i) for i in bad_size],
        )  # fmt: skip
    if non_finite:
        report.add(
            "non_finite_vectors", PROBLEM,
            f"{len(non_finite)} stored vectors hold NaN or infinite values (a repair deletes them; "
            "the next `searcher index` embeds those images again)",
            count=len(non_finite), model=key, examples=[str(i) for i in non_finite],
        )  # fmt: skip
    if orphans:
        report.add(
            "orphan_vectors", PROBLEM,
            f"{len(orphans)} vectors belong to no indexed image (image row missing or failed; "
            "a repair deletes them)",
            count=len(orphans), model=key,
            examples=[f"id {i}" + (f" ({os.fsdecode(p)})" if p is not None else "") for i, p in orphans],
        )  # fmt: skip
    _check_index_file(session, model, revision, stored, file, report)


def _non_finite_vectors(session: Session, model: ModelRow) -> list[int]:
    bad: list[int] = []
    last = -1
    while True:
        rows = session.execute(
            text(
                "SELECT image_id, vector FROM embeddings WHERE model_id = :m AND image_id > :last "
                "AND length(vector) = :n ORDER BY image_id LIMIT 5000"
            ),
            {"m": model.id, "last": last, "n": 4 * model.dim},
        ).all()
        if not rows:
            return bad
        matrix = np.frombuffer(b"".join(r[1] for r in rows), dtype="<f4").reshape(len(rows), model.dim)
        finite = np.isfinite(matrix).all(axis=1)
        bad.extend(int(rows[i][0]) for i in np.nonzero(~finite)[0])
        last = int(rows[-1][0])


def _check_index_file(
    session: Session, model: ModelRow, revision: int, stored: np.ndarray, file: _FileState, report: CheckReport
) -> None:
    key, name = model.key, file.path.name
    if not file.exists:
        if len(stored):
            report.add(
                "index_missing", WARNING,
                f"no FAISS file for {len(stored)} stored vectors ({name}); it is rebuilt from SQLite whenever "
                "the library is opened (a repair writes it)",
                model=key,
            )  # fmt: skip
        return
    if file.error is not None and file.index is None:
        report.add("index_unreadable", PROBLEM, f"{name} is unreadable: {file.error} (a repair rebuilds it)", model=key)
        return
    if file.sidecar is not None:
        if file.sha256 != file.sidecar["sha256"]:
            report.add(
                "index_checksum", PROBLEM,
                f"{name} does not match the SHA-256 in its sidecar: the file is damaged (a repair rebuilds it)",
                model=key,
            )  # fmt: skip
            return  # its content cannot be trusted, so comparing ids says nothing more
        held = 0 if file.ids is None else len(file.ids)
        if int(file.sidecar["count"]) != held:
            report.add(
                "index_count", PROBLEM,
                f"{name} holds {held} vectors but its sidecar says {file.sidecar['count']} (a repair rebuilds it)",
                model=key,
            )  # fmt: skip
    assert file.ids is not None and file.index is not None
    extra = np.setdiff1d(file.ids, stored, assume_unique=True)
    missing = np.setdiff1d(stored, file.ids, assume_unique=True)
    behind = f"{len(missing)} vectors to add, {len(extra)} to remove"
    file_revision = int(file.sidecar["revision"]) if file.sidecar is not None else None
    if file_revision is None:
        report.add(
            "sidecar_missing", WARNING,
            f"{VectorIndex.sidecar_path(file.path).name} (revision, count and checksum of {name}) is missing or "
            f"unreadable, as after a save that was interrupted ({behind}); the index is reconciled with SQLite "
            "whenever the library is opened (a repair rewrites both)",
            model=key,
        )  # fmt: skip
    elif file_revision > revision:
        report.add(
            "index_ahead", PROBLEM,
            f"{name} is at revision {file_revision} but SQLite at {revision}: the database is older than the "
            "index (restored from a backup?); a repair rebuilds the index from SQLite",
            model=key,
        )  # fmt: skip
        return
    elif file_revision < revision:
        report.add(
            "index_stale", WARNING,
            f"{name} is behind SQLite (revision {file_revision} < {revision}: {behind}), as after an interrupted "
            "run; it is brought up to date whenever the library is opened (a repair rewrites it)",
            model=key,
        )  # fmt: skip
    elif len(extra) or len(missing):
        report.add(
            "index_mismatch", PROBLEM,
            f"{name} disagrees with SQLite at the same revision: {len(extra)} ids without a stored vector, "
            f"{len(missing)} stored vectors missing (a repair rebuilds it)",
            count=int(len(extra) + len(missing)), model=key,
            examples=[f"extra id {i}" for i in extra[:5]] + [f"missing id {i}" for i in missing[:5]],
        )  # fmt: skip
    _compare_sample(session, model, file.index, np.intersect1d(stored, file.ids, assume_unique=True), report)


def _compare_sample(
    session: Session, model: ModelRow, index: VectorIndex, stored: np.ndarray, report: CheckReport
) -> None:
    if not len(stored):
        return
    rng = np.random.default_rng(len(stored))
    sample = rng.choice(stored, size=min(SAMPLE_VECTORS, len(stored)), replace=False)
    rows = session.execute(
        text(
            f"SELECT image_id, vector FROM embeddings WHERE model_id = :m AND length(vector) = :n "
            f"AND image_id IN ({','.join(str(int(i)) for i in sample)})"
        ),
        {"m": model.id, "n": 4 * model.dim},
    ).all()
    vectors = {int(i): np.frombuffer(blob, dtype="<f4") for i, blob in rows}  # malformed ones: bad_vectors
    differ = []
    for image_id, vector in vectors.items():
        try:
            held = index.reconstruct(image_id)
        except Exception:  # noqa: BLE001  (FAISS raises RuntimeError for an absent id)
            differ.append(image_id)
            continue
        if not np.allclose(held, vector, atol=1e-4, equal_nan=True):
            differ.append(image_id)
    if differ:
        report.add(
            "index_vectors_differ", PROBLEM,
            f"{len(differ)} of {len(vectors)} sampled vectors in the FAISS file differ from SQLite's "
            "(a repair rebuilds it)",
            count=len(differ), model=model.key, examples=[f"id {i}" for i in differ],
        )  # fmt: skip


def _check_rows_without_vectors(session: Session, report: CheckReport) -> None:
    rows = session.execute(
        text(
            "SELECT id, path FROM images i WHERE status = :ok AND NOT EXISTS "
            "(SELECT 1 FROM embeddings e WHERE e.image_id = i.id AND length(e.vector) > 0) ORDER BY id"
        ),
        {"ok": STATUS_OK},
    ).all()
    if rows:
        report.add(
            "images_without_vectors", PROBLEM,
            f"{len(rows)} images are marked indexed but have no vector (a repair removes these rows; the next "
            "`searcher index` of their folder adds them again)",
            count=len(rows), examples=[os.fsdecode(p) for _, p in rows],
        )  # fmt: skip


def _check_files(session: Session, report: CheckReport) -> None:
    vanished: list[str] = []
    changed: list[str] = []
    last = -1
    while True:
        rows = session.execute(
            text(
                "SELECT id, path, size, mtime_ns FROM images WHERE status = :ok AND id > :last ORDER BY id LIMIT 5000"
            ),
            {"ok": STATUS_OK, "last": last},
        ).all()
        if not rows:
            break
        for _, raw, size, mtime in rows:
            path = os.fsdecode(raw)
            try:
                st = os.stat(path)
            except OSError:
                vanished.append(path)
                continue
            if st.st_size != size or st.st_mtime_ns != mtime:
                changed.append(path)
        last = int(rows[-1][0])
    if vanished:
        report.add(
            "missing_files", WARNING,
            f"{len(vanished)} indexed files are no longer on disk (moved, deleted, or on a drive that is not "
            "mounted); `searcher index` of their folder drops them, a repair keeps them",
            count=len(vanished), examples=vanished,
        )  # fmt: skip
    if changed:
        report.add(
            "changed_files", WARNING,
            f"{len(changed)} indexed files changed on disk since they were indexed; `searcher index` of their "
            "folder embeds them again",
            count=len(changed), examples=changed,
        )  # fmt: skip


# --- repairing -----------------------------------------------------------------------------------


def repair_library(lib: Library, *, wait: float = 0.0, files: bool = True) -> CheckReport:
    """Fix every problem :func:`check_library` can find, except a damaged SQLite file.

    Takes the library's writer lock (waiting up to ``wait`` seconds for a running
    ``searcher index``), deletes vectors that belong to no indexed image or are
    malformed, deletes image rows left without any vector, repairs the meta rows,
    removes stray temporary and unknown FAISS files, and rebuilds every model's FAISS
    index from the vectors stored in SQLite (no image is decoded or embedded).
    Returns a fresh check of the result, with ``repaired`` listing what was done and
    ``before`` the issues it started from.
    """
    from searcher.library import LOCK_NAME

    actions: list[str] = []
    lock = WriteLock(lib.root / LOCK_NAME)
    lock.acquire(wait)
    try:
        before = check_library(lib, files=False, _locked=True)  # no writer changes anything meanwhile
        if any(i.code == "sqlite_damaged" for i in before.issues):
            actions.append("SQLite is damaged: nothing repaired (restore library.db from a backup)")
        else:
            actions.extend(_repair_rows(lib, before))
            actions.extend(_remove_stray_files(lib))
            actions.extend(_rebuild_indexes(lib))
    finally:
        lock.release()
    after = check_library(lib, files=files)
    after.repaired = actions
    after.before = before.issues
    return after


def _repair_rows(lib: Library, before: CheckReport) -> list[str]:
    actions: list[str] = []
    with lib.sessions() as session, session.begin():
        changed_models: set[int] = set()
        models = list(session.execute(select(ModelRow)).scalars())
        for model in models:
            doomed = {
                int(r[0])
                for r in session.execute(
                    text(
                        "SELECT e.image_id FROM embeddings e LEFT JOIN images i ON i.id = e.image_id "
                        "WHERE e.model_id = :m AND (i.id IS NULL OR i.status != :ok OR length(e.vector) != :n)"
                    ),
                    {"m": model.id, "ok": STATUS_OK, "n": 4 * model.dim},
                )
            }
            doomed.update(_non_finite_vectors(session, model))
            if doomed:
                ids = sorted(doomed)
                for start in range(0, len(ids), 500):
                    session.execute(
                        text(
                            f"DELETE FROM embeddings WHERE model_id = :m AND image_id IN "
                            f"({','.join(str(i) for i in ids[start : start + 500])})"
                        ),
                        {"m": model.id},
                    )
                changed_models.add(model.id)
                actions.append(f"deleted {len(ids)} orphan or malformed vectors of {model.key}")
        lonely = [
            int(r[0])
            for r in session.execute(
                text(
                    "SELECT id FROM images i WHERE status = :ok AND NOT EXISTS "
                    "(SELECT 1 FROM embeddings e WHERE e.image_id = i.id)"
                ),
                {"ok": STATUS_OK},
            )
        ]
        for start in range(0, len(lonely), 500):
            part = ",".join(str(i) for i in lonely[start : start + 500])
            session.execute(text(f"DELETE FROM images WHERE id IN ({part})"))
        if lonely:
            actions.append(f"deleted {len(lonely)} image rows without any vector (re-index their folders)")
        for model in models:
            if model.id in changed_models or lonely:
                model.revision = (model.revision or 0) + 1
        version = session.execute(text("SELECT value FROM meta WHERE key = 'schema_version'")).scalar()
        if version is None or str(version).strip() != str(SCHEMA_VERSION):
            session.execute(
                text("INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', :v)"),
                {"v": str(SCHEMA_VERSION)},
            )
            actions.append(f"set schema_version to {SCHEMA_VERSION}")
        default = session.execute(text("SELECT value FROM meta WHERE key = 'default_model'")).scalar()
        if models and default not in {m.key for m in models}:
            counts = {
                m.key: _scalar(session, "SELECT count(*) FROM embeddings WHERE model_id = :m", m=m.id) for m in models
            }
            best = max(models, key=lambda m: (counts[m.key], -m.id)).key
            session.execute(text("INSERT OR REPLACE INTO meta (key, value) VALUES ('default_model', :v)"), {"v": best})
            actions.append(f"set the default embedding model to {best}")
    return actions


def _remove_stray_files(lib: Library) -> list[str]:
    index_dir = lib.root / _index_dir_name()
    if not index_dir.is_dir():
        return []
    keys = {m.key for m in lib.models()}
    removed = []
    for entry in sorted(index_dir.iterdir()):
        stray_temp = entry.name.startswith(".") and entry.name.endswith(".tmp")
        unknown = entry.suffix in (".faiss", ".json") and entry.stem not in keys
        if (stray_temp or unknown) and entry.is_file():
            try:
                entry.unlink()
                removed.append(entry.name)
            except OSError:
                pass
    return [f"removed {len(removed)} stray files from {index_dir}"] if removed else []


def _rebuild_indexes(lib: Library) -> list[str]:
    actions = []
    for model in lib.models():
        path = lib.index_path(model)
        for stale in (path, VectorIndex.sidecar_path(path)):
            try:
                stale.unlink()
            except FileNotFoundError:
                pass
        lib._indexes.pop(model.key, None)
        index = lib.vector_index(model)  # no file: built from the vectors stored in SQLite
        lib._save_index(model, index)
        lib._indexes.pop(model.key, None)
        actions.append(f"rebuilt {path.name} from {len(index)} stored vectors")
    return actions
