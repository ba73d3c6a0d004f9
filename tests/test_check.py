"""`searcher check` finds what is wrong with a library, and `check --repair` fixes it without embedding again."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from searcher.check import PROBLEM, WARNING, check_library, repair_library
from searcher.cli import app
from searcher.cli.maintenance import EXIT_PROBLEMS
from searcher.library import Library
from searcher.locking import LibraryLocked, WriteLock
from searcher.vector_index import VectorIndex
from tests.conftest import synthetic_photo

N_PHOTOS = 12


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A folder of photos and a library indexing it (copied per test: tests damage their copy)."""
    base = tmp_path_factory.mktemp("check")
    photos = base / "photos"
    photos.mkdir()
    for i in range(N_PHOTOS):
        synthetic_photo(100 + i, (64, 48)).save(photos / f"p{i:02d}.jpg")
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    with Library.open(base / "lib") as lib:
        lib.index([photos], batch_size=4)
    return photos, base / "lib"


@pytest.fixture
def library(pristine: tuple[Path, Path], tmp_path: Path) -> tuple[Path, Path]:
    photos, lib_path = pristine
    copy = tmp_path / "lib"
    shutil.copytree(lib_path, copy)
    return photos, copy


def codes(report) -> dict[str, str]:
    return {i.code: i.severity for i in report.issues}


def db(lib_path: Path) -> sqlite3.Connection:
    return sqlite3.connect(lib_path / "library.db", isolation_level=None)


def faiss_file(lib_path: Path) -> Path:
    (path,) = (lib_path / "indexes").glob("*.faiss")
    return path


def answers(lib_path: Path, probe: Path) -> list[tuple[str, float]]:
    """A plain query from a freshly opened library (what a new `searcher query` process does)."""
    with Library.open(lib_path, create=False) as lib:
        return [(h.path, round(h.score, 4)) for h in lib.query([probe], k=5)[0].results]


def run_cli(*args: str):
    result = CliRunner().invoke(app, list(args))
    assert "Traceback" not in result.output
    return result


def assert_faiss_matches_sqlite(lib_path: Path) -> None:
    path = faiss_file(lib_path)
    sidecar = json.loads(VectorIndex.sidecar_path(path).read_text())
    assert VectorIndex.file_checksum(path) == sidecar["sha256"]
    index, _ = VectorIndex.load(path, 1280)
    with db(lib_path) as conn:
        stored = sorted(r[0] for r in conn.execute("SELECT image_id FROM embeddings"))
        (revision,) = conn.execute("SELECT revision FROM models").fetchone()
    assert sorted(index.ids().tolist()) == stored and sidecar["count"] == len(stored)
    assert sidecar["revision"] == revision


def test_healthy_library(library: tuple[Path, Path]) -> None:
    photos, lib_path = library
    with Library.open(lib_path, create=False) as lib:
        report = check_library(lib)
    assert report.healthy, report.issues
    assert codes(report) == {"failed_files": WARNING}  # broken.jpg: reported, but not a problem
    assert report.images == N_PHOTOS and report.failed == 1
    assert report.models[0]["vectors"] == N_PHOTOS == report.models[0]["index_vectors"]
    result = run_cli("check", "--library", str(lib_path), "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["healthy"] and data["problems"] == 0 and data["warnings"] == 1
    result = run_cli("check", "--library", str(lib_path))
    assert result.exit_code == 0 and "healthy" in result.stdout


def damage_flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40  # one bit of one float: still a loadable FAISS file
    path.write_bytes(bytes(data))


def damage_truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


def damage_garbage(path: Path) -> None:
    path.write_bytes(os.urandom(path.stat().st_size))


def damage_empty(path: Path) -> None:
    path.write_bytes(b"")


def damage_delete(path: Path) -> None:
    path.unlink()


def damage_sidecar_garbage(path: Path) -> None:
    VectorIndex.sidecar_path(path).write_text("{not json")


def damage_sidecar_delete(path: Path) -> None:
    VectorIndex.sidecar_path(path).unlink()


def damage_both_deleted(path: Path) -> None:
    path.unlink()
    VectorIndex.sidecar_path(path).unlink()


def damage_other_library(path: Path) -> None:
    """A FAISS file (and sidecar) from a different state: fewer vectors, an older revision."""
    index, state = VectorIndex.load(path, 1280)
    index.remove(index.ids()[:3].tolist())
    index.save(path, 1)


DAMAGE = {
    "bit_flip": (damage_flip, {"index_checksum": PROBLEM}),
    "truncated": (damage_truncate, {"index_unreadable": PROBLEM}),
    "garbage": (damage_garbage, {"index_unreadable": PROBLEM}),
    "empty": (damage_empty, {"index_unreadable": PROBLEM}),
    "deleted": (damage_delete, {"index_missing": WARNING}),
    "sidecar_garbage": (damage_sidecar_garbage, {"sidecar_missing": WARNING}),
    "sidecar_deleted": (damage_sidecar_delete, {"sidecar_missing": WARNING}),
    "both_deleted": (damage_both_deleted, {"index_missing": WARNING}),
    "stale_copy": (damage_other_library, {"index_stale": WARNING}),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_faiss_file(damage: str, library: tuple[Path, Path]) -> None:
    photos, lib_path = library
    probe = photos / "p03.jpg"
    before = answers(lib_path, probe)
    make_damage, expected = DAMAGE[damage]
    make_damage(faiss_file(lib_path))
    with Library.open(lib_path, create=False) as lib:
        report = check_library(lib)
    assert {k: v for k, v in codes(report).items() if k != "failed_files"} == expected
    healthy = all(sev == WARNING for sev in expected.values())
    assert report.healthy == healthy
    result = run_cli("check", "--library", str(lib_path), "--json")
    assert result.exit_code == (0 if healthy else EXIT_PROBLEMS)
    assert json.loads(result.stdout)["healthy"] == healthy
    # a plain query does not care: the index is checked against SQLite (and its checksum) when opened
    assert answers(lib_path, probe) == before
    # and a repair rebuilds the file from the stored vectors
    result = run_cli("check", "--repair", "--library", str(lib_path), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["healthy"] and [i["code"] for i in data["issues"]] == ["failed_files"]
    assert any("rebuilt" in action for action in data["repaired"])
    assert_faiss_matches_sqlite(lib_path)
    assert answers(lib_path, probe) == before


def test_repair_does_not_embed(library: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    photos, lib_path = library
    damage_garbage(faiss_file(lib_path))

    def no_embedding(*args, **kwargs):
        raise AssertionError("a repair must not load a network")

    monkeypatch.setattr(Library, "embedder_for", no_embedding)
    with Library.open(lib_path, create=False) as lib:
        report = repair_library(lib)
    assert report.healthy and "index_unreadable" in {i.code for i in report.before}
    assert_faiss_matches_sqlite(lib_path)


def test_orphans_and_bad_vectors(library: tuple[Path, Path]) -> None:
    photos, lib_path = library
    with db(lib_path) as conn:  # a raw connection: foreign keys off, so damage is possible
        ids = [r[0] for r in conn.execute("SELECT id FROM images WHERE status = 'ok' ORDER BY id")]
        (failed_id,) = conn.execute("SELECT id FROM images WHERE status = 'failed'").fetchone()
        conn.execute("DELETE FROM images WHERE id = ?", (ids[0],))  # its vector is now an orphan
        conn.execute(  # a vector for a failed image
            "INSERT INTO embeddings (image_id, model_id, vector) SELECT ?, model_id, vector FROM embeddings "
            "WHERE image_id = ?",
            (failed_id, ids[1]),
        )
        conn.execute("DELETE FROM embeddings WHERE image_id = ?", (ids[2],))  # an image without a vector
        nan = np.full(1280, np.nan, dtype="<f4").tobytes()
        conn.execute("UPDATE embeddings SET vector = ? WHERE image_id = ?", (nan, ids[3]))
        conn.execute("UPDATE embeddings SET vector = ? WHERE image_id = ?", (b"short", ids[4]))
    with Library.open(lib_path, create=False) as lib:
        report = check_library(lib)
    found = codes(report)
    for code in ("orphan_vectors", "images_without_vectors", "non_finite_vectors", "bad_vectors", "index_mismatch"):
        assert found.get(code) == PROBLEM, (code, report.issues)
    orphan = next(i for i in report.issues if i.code == "orphan_vectors")
    assert orphan.count == 2
    result = run_cli("check", "--library", str(lib_path))
    assert result.exit_code == EXIT_PROBLEMS and "problems found" in result.stdout

    with Library.open(lib_path, create=False) as lib:
        report = repair_library(lib)
        assert report.healthy, report.issues
        assert set(codes(report)) == {"failed_files"}
        # the images whose vector was removed lost their rows; the next index embeds them again
        assert report.images == N_PHOTOS - 4
        redo = lib.index([photos])
        assert redo.embedded == 4 and redo.new == 4
        final = check_library(lib)
    assert final.healthy and set(codes(final)) == {"failed_files"} and final.images == N_PHOTOS
    assert_faiss_matches_sqlite(lib_path)


def test_missing_and_changed_files_are_warnings(library: tuple[Path, Path], tmp_path: Path) -> None:
    photos, lib_path = library
    moved = tmp_path / "moved-photos"
    shutil.copytree(photos, moved)
    with db(lib_path) as conn:  # pretend the library indexed the copy, then the copy's drive went away
        conn.execute(
            "UPDATE images SET path = CAST(replace(CAST(path AS TEXT), ?, ?) AS BLOB)", (str(photos), str(moved))
        )
    (moved / "p00.jpg").unlink()
    synthetic_photo(999, (64, 48)).save(moved / "p01.jpg")
    os.utime(moved / "p01.jpg", ns=(1, 1))
    with Library.open(lib_path, create=False) as lib:
        report = check_library(lib)
        assert report.healthy
        found = {i.code: i for i in report.issues}
        assert found["missing_files"].severity == WARNING and found["missing_files"].count == 1
        assert found["missing_files"].examples == [str(moved / "p00.jpg")]
        assert found["changed_files"].count == 1
        after = repair_library(lib)  # a repair never drops rows of files that may come back
        assert after.images == N_PHOTOS
    assert "missing_files" not in codes(check_library_quick(lib_path))


def check_library_quick(lib_path: Path):
    with Library.open(lib_path, create=False) as lib:
        return check_library(lib, files=False, vectors=False)


def test_stray_files_meta_and_newer_index(library: tuple[Path, Path]) -> None:
    photos, lib_path = library
    index_dir = lib_path / "indexes"
    real = faiss_file(lib_path)
    (index_dir / f".{real.name}.abc123.tmp").write_bytes(b"half a save")
    shutil.copy(real, index_dir / "someothermodel.faiss")
    sidecar = VectorIndex.sidecar_path(real)
    state = json.loads(sidecar.read_text())
    state["revision"] += 5  # the database is older than the index: restored from a backup?
    sidecar.write_text(json.dumps(state))
    with db(lib_path) as conn:
        conn.execute("UPDATE meta SET value = 'gone' WHERE key = 'default_model'")
    with Library.open(lib_path, create=False) as lib:
        report = check_library(lib)
        found = codes(report)
        assert found["temp_files"] == WARNING and found["unknown_index_files"] == WARNING
        assert found["index_ahead"] == PROBLEM and found["default_model"] == PROBLEM
        repaired = repair_library(lib)
    assert repaired.healthy and set(codes(repaired)) == {"failed_files"}, repaired.issues
    assert sorted(p.name for p in index_dir.iterdir()) == sorted([real.name, sidecar.name])
    assert answers(lib_path, photos / "p00.jpg")


def test_repair_respects_the_writer_lock(library: tuple[Path, Path]) -> None:
    photos, lib_path = library
    holder = WriteLock(lib_path / "write.lock")
    holder.acquire()
    try:
        with Library.open(lib_path, create=False) as lib, pytest.raises(LibraryLocked):
            repair_library(lib)
        result = run_cli("check", "--repair", "--library", str(lib_path))
        assert result.exit_code == 1 and "is writing to this library" in " ".join(result.stderr.split())
        result = run_cli("check", "--library", str(lib_path))  # checking needs no lock
        assert result.exit_code == 0
    finally:
        holder.release()
    result = run_cli("check", "--repair", "--wait", "5", "--library", str(lib_path))
    assert result.exit_code == 0


def test_damaged_sqlite_is_reported(library: tuple[Path, Path]) -> None:
    photos, lib_path = library
    with db(lib_path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        (page_size,) = conn.execute("PRAGMA page_size").fetchone()
        (root,) = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'embeddings'").fetchone()
    with open(lib_path / "library.db", "r+b") as handle:  # scribble over the embeddings table's root page
        handle.seek((root - 1) * page_size + 8)
        handle.write(b"\x13" * 200)
    result = run_cli("check", "--library", str(lib_path), "--json")
    assert result.exit_code in (1, EXIT_PROBLEMS)  # either an error line, or a sqlite_damaged problem
    if result.exit_code == EXIT_PROBLEMS:
        assert "sqlite_damaged" in result.stdout
    else:
        assert result.stderr.startswith("error:")
