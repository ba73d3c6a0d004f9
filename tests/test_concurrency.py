"""Two writers never corrupt a library; readers see a consistent state while a writer works.

One writer at a time holds ``write.lock`` (flock): a second `searcher index` exits at once with a
clear message, or queues behind the first with ``--wait``. Queries and `check` need no lock: SQLite's
WAL snapshots and the atomically replaced FAISS files give them a consistent view mid-write.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

from typer.testing import CliRunner

from searcher.check import check_library
from searcher.cli import app
from searcher.library import IndexReport, Library
from searcher.vector_index import VectorIndex
from tests.conftest import synthetic_photo

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


def make_photos(folder: Path, n: int, seed: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"img{i:03d}.jpg"
        synthetic_photo(seed + i, (48, 40)).save(path, quality=85)
        paths.append(path)
    return paths


def index_process(lib: Path, *args: str, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "searcher", "index", *args, "--library", str(lib), "--quiet", "--json"],
        stdout=open(log.with_suffix(".out"), "w"),  # noqa: SIM115  (closed when the child ends)
        stderr=open(log.with_suffix(".err"), "w"),  # noqa: SIM115
        env=ENV,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def ok_paths(lib: Path) -> list[str]:
    db = lib / "library.db"
    if not db.exists():
        return []
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as conn:
            return [os.fsdecode(p) for (p,) in conn.execute("SELECT path FROM images WHERE status = 'ok'")]
    except sqlite3.Error:
        return []


def assert_consistent(lib: Path, expected: set[str]) -> None:
    """Every file exactly once, one vector each, and the FAISS file holds exactly SQLite's ids."""
    with sqlite3.connect(f"file:{lib / 'library.db'}?mode=ro", uri=True) as conn:
        rows = [(os.fsdecode(p), s) for p, s in conn.execute("SELECT path, status FROM images")]
        ids = sorted(i for (i,) in conn.execute("SELECT image_id FROM embeddings"))
        (revision,) = conn.execute("SELECT revision FROM models").fetchone()
    assert sorted(p for p, _ in rows) == sorted(expected) and {s for _, s in rows} == {"ok"}
    assert len(ids) == len(expected)
    (path,) = (lib / "indexes").glob("*.faiss")
    sidecar = json.loads(VectorIndex.sidecar_path(path).read_text())
    index, _ = VectorIndex.load(path, sidecar["dim"])
    assert sorted(index.ids().tolist()) == ids and sidecar["revision"] == revision
    assert VectorIndex.file_checksum(path) == sidecar["sha256"]
    with Library.open(lib, create=False) as opened:
        report = check_library(opened)
    assert report.healthy and report.issues == [], report.issues


def test_second_writer_and_readers_during_a_write(tmp_path: Path) -> None:
    big = make_photos(tmp_path / "big", 120, seed=2000)
    small = make_photos(tmp_path / "small", 10, seed=3000)
    lib = tmp_path / "lib"
    writer = index_process(lib, str(tmp_path / "big"), "--batch-size", "8", log=tmp_path / "writer")
    deadline = time.monotonic() + 180
    while not ok_paths(lib) and writer.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert writer.poll() is None, "the writer finished before the test could race it"

    # a second writer without --wait: one clear line naming the holder, exit 1
    result = CliRunner().invoke(app, ["index", str(tmp_path / "small"), "--library", str(lib)])
    message = " ".join(result.stderr.split())
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"another searcher process (pid {writer.pid}) is writing to this library" in message
    assert "--wait" in message

    # a third writer queues behind it with --wait (in a thread, in this process)
    queued: dict[str, object] = {}

    def wait_and_index() -> None:
        try:
            with Library.open(lib, create=False) as opened:
                queued["report"] = opened.index([tmp_path / "small"], wait=300, batch_size=4)
                queued["at"] = len(ok_paths(lib))
        except BaseException as exc:  # noqa: BLE001  (reported by the main thread)
            queued["error"] = exc

    waiter = threading.Thread(target=wait_and_index)
    waiter.start()

    # readers meanwhile: every query answers from a consistent state, every check is healthy
    everything = {str(p) for p in big + small}
    queries = checks = 0
    counts = []
    while writer.poll() is None:
        committed = ok_paths(lib)
        with Library.open(lib, create=False) as opened:
            # verify=0: what is tested is a consistent state, not pixel verification (up to 30 results per query)
            result = opened.query([committed[0]], k=5, verify=0)[0]
            assert result.error is None
            assert {h.path for h in result.results} <= everything
            assert len(result.results) == min(5, len(committed) - 1) or len(result.results) == 5
            queries += 1
            if queries % 3 == 1:
                report = check_library(opened, files=False)
                assert report.healthy, report.issues
                assert {i.code for i in report.issues} <= {"index_stale", "index_missing", "sidecar_missing"}
                checks += 1
        counts.append(len(committed))
        time.sleep(0.05)
    assert writer.wait() == 0, (tmp_path / "writer.err").read_text()[-2000:]
    waiter.join(300)
    assert "error" not in queued, queued.get("error")
    report = queued["report"]
    assert isinstance(report, IndexReport) and report.new == 10 and report.embedded == 10
    assert counts == sorted(counts), "a reader saw committed images disappear"
    print(f"\n{queries} queries and {checks} checks ran during the write ({counts[0]}..{counts[-1]} images)")
    assert queries >= 3
    assert_consistent(lib, everything)


def test_two_writers_start_together(tmp_path: Path) -> None:
    """Two `searcher index --wait` started at the same moment on a library that does not exist yet."""
    shared = make_photos(tmp_path / "photos" / "a", 20, seed=4000)
    more = make_photos(tmp_path / "photos" / "b", 12, seed=5000)
    lib = tmp_path / "lib"
    first = index_process(lib, str(tmp_path / "photos" / "a"), "--wait", "300", log=tmp_path / "first")
    second = index_process(lib, str(tmp_path / "photos"), "--wait", "300", log=tmp_path / "second")
    assert first.wait(300) == 0, (tmp_path / "first.err").read_text()[-2000:]
    assert second.wait(300) == 0, (tmp_path / "second.err").read_text()[-2000:]
    reports = [json.loads((tmp_path / f"{name}.out").read_text()) for name in ("first", "second")]
    assert sum(r["embedded"] for r in reports) == 32  # each image embedded once, by one of them
    assert assert_consistent(lib, {str(p) for p in shared + more}) is None


def _open_together(where: Path, barrier: threading.Barrier, errors: list[BaseException]) -> None:
    barrier.wait()
    try:
        Library.open(where).close()
    except BaseException as exc:  # noqa: BLE001
        errors.append(exc)


def test_simultaneous_creation_of_one_library(tmp_path: Path) -> None:
    """Processes (here threads) that open a library that does not exist yet all succeed: the schema is made once."""
    for attempt in range(10):
        where = tmp_path / f"lib{attempt}"
        barrier = threading.Barrier(4)
        errors: list[BaseException] = []
        threads = [threading.Thread(target=_open_together, args=(where, barrier, errors)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == []
        with sqlite3.connect(where / "library.db") as conn:
            assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchall() == [("1",)]
