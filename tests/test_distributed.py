"""The Ray engine (`searcher index --engine ray`) on a local Ray started here (2 CPUs, no network).

Same library and same vectors as a local run, incremental re-runs, a clear failure when workers
cannot read a file, and a model worker killed mid-run that costs nothing.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest
import ray  # (installed by scripts/bootstrap.sh: .[dev,ray]; never skipped)
from sqlalchemy import select

from searcher.distributed import RayEngine, parse_path_map
from searcher.distributed.engine import map_path
from searcher.library import Library
from searcher.reports import Progress
from searcher.store import EmbeddingRow, ImageRow, blob_to_vector
from tests.conftest import synthetic_photo


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def make_folder(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        synthetic_photo(1000 + i).save(folder / f"p{i:03d}.jpg", quality=90)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return folder


def library_state(lib_dir: Path) -> dict[str, tuple[str, np.ndarray | None]]:
    """path -> (status, vector) of every row."""
    with Library.open(lib_dir, create=False) as lib, lib.sessions() as session:
        vectors = {i: blob_to_vector(v) for i, v in session.execute(select(EmbeddingRow.image_id, EmbeddingRow.vector))}
        rows = session.execute(select(ImageRow)).scalars().all()
        return {r.path: (r.status, vectors.get(r.id)) for r in rows}


def assert_same_library(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for path, (status, vector) in a.items():
        assert b[path][0] == status, path
        if vector is None:
            assert b[path][1] is None, path
        else:
            np.testing.assert_allclose(b[path][1], vector, atol=1e-5, err_msg=path)


def test_same_library_and_vectors_as_a_local_run(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "photos", 10)
    with Library.open(tmp_path / "local") as lib:
        local = lib.index([folder], batch_size=4)
    with Library.open(tmp_path / "ray") as lib:
        remote = lib.index([folder], batch_size=4, engine=RayEngine())
    assert (remote.embedded, remote.failed) == (local.embedded, local.failed) == (10, 1)
    assert any("broken.jpg" in path for path, _ in remote.failures)
    assert_same_library(library_state(tmp_path / "local"), library_state(tmp_path / "ray"))
    # incremental: nothing new, nothing embedded again; a new file is the only work
    synthetic_photo(77).save(folder / "new.jpg")
    with Library.open(tmp_path / "ray") as lib:
        again = lib.index([folder], batch_size=4, engine=RayEngine())
        assert (again.embedded, again.new) == (1, 1)
        ids, vecs = lib.vector_index(lib.find_model()).vectors()
        assert len(ids) == 11 and len(set(ids.tolist())) == 11


def test_a_file_the_workers_cannot_read_is_a_recorded_failure(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "photos", 3)
    engine = RayEngine(path_map=parse_path_map([f"{folder}={tmp_path}/not-mounted"]))
    with Library.open(tmp_path / "lib") as lib:
        report = lib.index([folder], engine=engine)
        assert report.embedded == 0 and report.failed == 4
        reasons = dict(lib.failures())
    assert all("cannot read" in reasons[str(folder / f"p{i:03d}.jpg")] for i in range(3))
    assert "--path-map" in reasons[str(folder / "p000.jpg")]


def test_path_map() -> None:
    pairs = parse_path_map(["/mnt/photos=/data/p"])
    assert map_path("/mnt/photos/a/b.jpg", pairs) == "/data/p/a/b.jpg"
    assert map_path("/mnt/photosX/b.jpg", pairs) == "/mnt/photosX/b.jpg"
    with pytest.raises(Exception, match="SRC=DST"):
        parse_path_map(["/only-one-side"])


def model_worker_pids() -> list[int]:
    """Processes of Ray model actors (Ray titles them ``ray::EmbedWorker...``)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if cmdline.startswith(b"ray::EmbedWorker"):
                pids.append(int(entry))
    return pids


class KillAfterFirstBatch(Progress):
    """Kills the model worker once the first batch is committed (the run is then mid-way)."""

    def __init__(self) -> None:
        self.killed: list[int] = []

    def advance(self, n: int = 1) -> None:
        if not self.killed:
            for pid in model_worker_pids():
                os.kill(pid, signal.SIGKILL)
                self.killed.append(pid)


def test_a_killed_model_worker_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "photos", 16)
    with Library.open(tmp_path / "local") as lib:
        lib.index([folder], batch_size=4)
    progress = KillAfterFirstBatch()
    with Library.open(tmp_path / "ray") as lib:
        report = lib.index([folder], batch_size=4, engine=RayEngine(), progress=progress)
    assert progress.killed, "no model worker process was found to kill"
    assert (report.embedded, report.failed) == (16, 1)  # the restarted actor finished the run
    assert_same_library(library_state(tmp_path / "local"), library_state(tmp_path / "ray"))
    with Library.open(tmp_path / "ray") as lib:
        assert lib.index([folder], batch_size=4, engine=RayEngine()).embedded == 0


def test_ray_stays_optional_and_the_cli_checks_its_options(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = "import sys, searcher, searcher.library, searcher.cli.core; print('ray' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
    searcher_cli = Path(sys.executable).with_name("searcher")
    lib = ["--library", str(tmp_path / "lib")]
    usage = subprocess.run([searcher_cli, "index", str(tmp_path), "--address", "auto", *lib], capture_output=True)
    assert usage.returncode == 2 and b"--engine ray" in usage.stderr
    bad = subprocess.run([searcher_cli, "index", str(tmp_path), "--engine", "spark", *lib], capture_output=True)
    assert bad.returncode == 2
    path_map = subprocess.run(
        [searcher_cli, "index", str(tmp_path), "--engine", "ray", "--path-map", "nope", *lib], capture_output=True
    )
    assert path_map.returncode == 1 and b"SRC=DST" in path_map.stderr


def committed_ok(lib: Path) -> int:
    import sqlite3

    db = lib / "library.db"
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return conn.execute("SELECT count(*) FROM images WHERE status = 'ok'").fetchone()[0]
    except sqlite3.Error:
        return 0


def test_a_killed_driver_loses_no_committed_work_and_the_same_command_finishes(tmp_path: Path) -> None:
    import subprocess
    import sys
    import time

    folder = make_folder(tmp_path / "photos", 24)
    with Library.open(tmp_path / "local") as lib:
        lib.index([folder], batch_size=4)
    address = ray.get_runtime_context().gcs_address  # the driver joins the Ray this test started
    command = [
        Path(sys.executable).with_name("searcher"), "index", str(folder), "--engine", "ray", "--address", address,
        "--library", str(tmp_path / "ray"), "--batch-size", "4", "--quiet",
    ]  # fmt: skip
    driver = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while committed_ok(tmp_path / "ray") < 4 and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    driver.kill()
    driver.wait()
    before = committed_ok(tmp_path / "ray")
    assert 4 <= before < 24, f"the kill did not land mid-run ({before} of 24 committed)"
    rerun = subprocess.run(command, capture_output=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr.decode()[-2000:]
    assert_same_library(library_state(tmp_path / "local"), library_state(tmp_path / "ray"))
