"""End-to-end indexing and querying with the default backbone (EfficientNet-Lite0, real weights)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from searcher import Library
from searcher.store import EmbeddingRow, ImageRow
from tests.conftest import REPO

SAMPLES = REPO / "data" / "sample-photos"


@pytest.fixture
def photo_dir(tmp_path: Path, make_photo) -> Path:
    folder = tmp_path / "photos"
    for i in range(6):
        make_photo(folder / f"img{i}.jpg", seed=i, quality=92)
    make_photo(folder / "nested" / "deeper" / "img6.png", seed=6)
    return folder


def _counts(lib: Library) -> tuple[int, int]:
    with lib.sessions() as s:
        return s.query(ImageRow).count(), s.query(EmbeddingRow).count()


def test_index_then_query_finds_the_copy_first(tmp_path: Path, photo_dir: Path) -> None:
    with Library.open(tmp_path / "lib") as lib:
        report = lib.index([photo_dir])
        assert (report.new, report.embedded, report.failed) == (7, 7, 0)
        assert report.backbone == "efficientnet_lite0"
        # a re-compressed, resized copy of img3 outside the library finds img3 first
        probe = tmp_path / "probe.jpg"
        Image.open(photo_dir / "img3.jpg").resize((200, 150)).save(probe, quality=60)
        [result] = lib.query([probe], k=3)
        assert result.error is None and result.embedded
        assert Path(result.results[0].path).name == "img3.jpg"
        assert result.results[0].score > 0.85
        assert result.results[0].score > result.results[1].score
        scores = [h.score for h in result.results]
        assert scores == sorted(scores, reverse=True)
        assert all(-1.0 <= s <= 1.0001 for s in scores)


def test_sample_photos_edited_copies_find_their_source(tmp_path: Path) -> None:
    with Library.open(tmp_path / "lib") as lib:
        report = lib.index([SAMPLES])
        assert report.failed == 0 and report.new == 14
        assert report.reused == 1  # "rocket (copy).jpg" is byte-identical: its vector is copied, not computed
        results = lib.query([SAMPLES / "chelsea_small_copy.jpg", SAMPLES / "coffee_mirrored_copy.jpg"], k=2)
        assert Path(results[0].results[0].path).name == "chelsea.jpg"
        assert Path(results[1].results[0].path).name == "coffee.jpg"
        # an indexed probe is embedded again by default (turned views, regions); with the upright view
        # only (invariant="none") its stored vector is reused: no embedding at query time
        assert results[0].embedded
        [fast] = lib.query([SAMPLES / "chelsea_small_copy.jpg"], k=2, invariant="none")
        assert not fast.embedded
        assert Path(fast.results[0].path).name == "chelsea.jpg"
        assert fast.results[0].score == pytest.approx(results[0].results[0].score, abs=1e-3)
        # the probe's own file is left out, its byte-identical twin is not
        [rocket] = lib.query([SAMPLES / "rocket.jpg"], k=1)
        assert Path(rocket.results[0].path).name == "rocket (copy).jpg"
        assert rocket.results[0].score == pytest.approx(1.0, abs=1e-5)


def test_incremental_reindex_does_only_new_work(tmp_path: Path, photo_dir: Path, make_photo) -> None:
    lib_dir = tmp_path / "lib"
    with Library.open(lib_dir) as lib:
        lib.index([photo_dir])
        again = lib.index([photo_dir])
        assert (again.unchanged, again.embedded, again.new, again.removed) == (7, 0, 0, 0)

        make_photo(photo_dir / "added.jpg", seed=100)  # add
        make_photo(photo_dir / "img1.jpg", seed=101)  # change content
        (photo_dir / "img2.jpg").unlink()  # delete
        (photo_dir / "moved").mkdir()
        shutil.move(photo_dir / "img4.jpg", photo_dir / "moved" / "renamed.jpg")  # move + rename
        os.utime(photo_dir / "img5.jpg", ns=(1, 1))  # touched but same bytes
        with lib.sessions() as s:
            old_id = s.query(ImageRow.id).filter(ImageRow.path == str(photo_dir / "img4.jpg")).scalar()

        report = lib.index([photo_dir])
        assert report.new == 1
        assert report.changed == 1
        assert report.removed == 1
        assert report.moved == 1
        assert report.embedded == 2  # only the added and the changed file
        assert report.unchanged == 4  # img0, img3, nested img6, and img5 (touched; hash confirmed)
        images, vectors = _counts(lib)
        assert images == vectors == 7
        with lib.sessions() as s:
            new_id = s.query(ImageRow.id).filter(ImageRow.path == str(photo_dir / "moved" / "renamed.jpg")).scalar()
        assert new_id == old_id  # the moved file kept its row and vector
        index = lib.vector_index(lib.find_model())
        with lib.sessions() as s:
            assert set(index.ids().tolist()) == {r for (r,) in s.query(ImageRow.id)}


def test_corrupt_and_non_image_files_are_recorded_not_fatal(tmp_path: Path, photo_dir: Path) -> None:
    (photo_dir / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(500))
    (photo_dir / "notes.png").write_text("this is not a picture")
    (photo_dir / "readme.txt").write_text("ignored: not an image extension")
    good = (photo_dir / "img0.jpg").read_bytes()
    (photo_dir / "truncated.jpg").write_bytes(good[: len(good) // 2])
    with Library.open(tmp_path / "lib") as lib:
        report = lib.index([photo_dir])
        assert report.embedded == 7
        assert report.failed == 3
        failures = dict(lib.failures())
        assert set(map(lambda p: Path(p).name, failures)) == {"broken.jpg", "notes.png", "truncated.jpg"}
        assert "truncated" in failures[str(photo_dir / "truncated.jpg")]
        assert "not an image" in failures[str(photo_dir / "notes.png")]
        # failures are not retried on every run, but are with retry_failed
        assert lib.index([photo_dir]).embedded == 0
        (photo_dir / "notes.png").unlink()
        Image.open(photo_dir / "img0.jpg").save(photo_dir / "broken.jpg")
        retried = lib.index([photo_dir], retry_failed=True)
        assert retried.embedded == 1 and retried.removed == 1
        assert len(lib.failures()) == 1


def test_reopened_library_gives_identical_results(tmp_path: Path, photo_dir: Path) -> None:
    probes = [photo_dir / "img0.jpg", photo_dir / "nested" / "deeper" / "img6.png"]
    with Library.open(tmp_path / "lib") as lib:
        lib.index([photo_dir])
        first = [r.as_dict() for r in lib.query(probes, k=5)]
    with Library.open(tmp_path / "lib", create=False) as lib:
        second = [r.as_dict() for r in lib.query(probes, k=5)]
        info = lib.info()
    assert first == second
    assert info["images"] == 7 and info["vectors"] == 7 and info["backbone"] == "efficientnet_lite0"
    # stored vectors are unit length and match what FAISS returns
    with Library.open(tmp_path / "lib", create=False) as lib:
        model = lib.find_model()
        index = lib.vector_index(model)
        with lib.sessions() as s:
            row = s.query(EmbeddingRow).first()
            vec = np.frombuffer(row.vector, dtype="<f4")
        assert np.linalg.norm(vec) == pytest.approx(1.0, abs=1e-4)
        assert np.allclose(index.reconstruct(row.image_id), vec)


def test_cli_query_json_from_another_directory(tmp_path: Path, photo_dir: Path) -> None:
    lib_dir = tmp_path / "lib"
    env = {**os.environ, "SEARCHER_LIBRARY": str(lib_dir)}
    cmd = [sys.executable, "-m", "searcher"]
    run = subprocess.run(
        [*cmd, "index", str(photo_dir), "--json"], env=env, capture_output=True, text=True, cwd=tmp_path
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["embedded"] == 7
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(photo_dir / "img2.jpg", elsewhere / "probe.jpg")
    run = subprocess.run(
        [*cmd, "query", "probe.jpg", str(photo_dir / "img0.jpg"), "-k", "3", "--json"],
        env=env, capture_output=True, text=True, cwd=elsewhere,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    data = json.loads(run.stdout)
    assert [d["query"] for d in data] == [str(elsewhere / "probe.jpg"), str(photo_dir / "img0.jpg")]
    top = data[0]["results"][0]
    assert top["rank"] == 1 and top["path"] == str(photo_dir / "img2.jpg") and top["score"] > 0.99
    assert all(os.path.isabs(r["path"]) for d in data for r in d["results"])
    assert str(photo_dir / "img0.jpg") not in [r["path"] for r in data[1]["results"]]
    # a probe that does not exist: clear error, exit code 1, no traceback
    run = subprocess.run([*cmd, "query", "nope.jpg"], env=env, capture_output=True, text=True, cwd=elsewhere)
    assert run.returncode == 1 and "no such file" in run.stderr and "Traceback" not in run.stderr
    info = subprocess.run([*cmd, "info", "--json"], env=env, capture_output=True, text=True)
    assert json.loads(info.stdout)["images"] == 7


def test_missing_library_is_a_clear_error(tmp_path: Path) -> None:
    env = {**os.environ, "SEARCHER_LIBRARY": str(tmp_path / "nowhere")}
    run = subprocess.run([sys.executable, "-m", "searcher", "info"], env=env, capture_output=True, text=True)
    assert run.returncode == 1
    assert "no library at" in run.stderr and "Traceback" not in run.stderr
