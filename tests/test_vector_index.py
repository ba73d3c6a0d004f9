"""VectorIndex: the same API and exact scores for every index type (flat, hnsw, ivfpq, ivfpq-disk)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import faiss
import numpy as np
import pytest

from searcher import Library
from searcher import vector_index as vi
from searcher.vector_index import DISK_KIND, VectorIndex, bytes_per_vector, choose_kind, pq_subquantizers
from searcher.vector_store import store_files
from tests.conftest import synthetic_photo

DIM = 64


def clustered(n: int, seed: int = 0, centres: int = 40) -> np.ndarray:
    """Unit vectors around a few centres (like embeddings: neighbours are meaningful, not random)."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, DIM)).astype(np.float32)
    x = c[rng.integers(0, centres, n)] + 0.6 * rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def recall(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean([len(set(x) & set(y)) / len(y) for x, y in zip(a.tolist(), b.tolist(), strict=True)]))


def built(
    kind: str, n: int = 4000, seed: int = 0, home: Path | None = None, **params: object
) -> tuple[VectorIndex, np.ndarray, np.ndarray]:
    x = clustered(n, seed)
    ids = np.arange(n, dtype=np.int64) * 3 + 5  # ids are not positions
    index = VectorIndex(DIM, home=home or Path(tempfile.mkdtemp(prefix="vindex-")) / "m.faiss")
    index.add(ids, x)
    index.set_kind(kind, params or None)
    return index, ids, x


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivfpq", DISK_KIND])
def test_every_kind_answers_like_exact_search(kind: str) -> None:
    index, ids, x = built(kind)
    assert index.kind == kind and index.approximate == (kind != "flat") and len(index) == len(ids)
    queries = clustered(100, seed=9)
    scores, found = index.search(queries, 10)
    exact_s, exact_i = index.search(queries, 10, exact=True)
    assert recall(found, exact_i) >= 0.95
    # scores are exact cosine similarities whatever the type (re-ranked from the flat store)
    for q, srow, irow in zip(queries, scores, found, strict=True):
        for s, i in zip(srow, irow, strict=True):
            assert s == pytest.approx(float(x[(i - 5) // 3] @ q), abs=1e-5)
        assert list(srow) == sorted(srow, reverse=True)
    assert np.allclose(index.reconstruct(int(ids[7])), x[7])
    assert set(index.ids().tolist()) == set(ids.tolist())


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivfpq", DISK_KIND])
def test_remove_add_save_load_reconcile(kind: str, tmp_path: Path) -> None:
    index, ids, x = built(kind, home=tmp_path / "m.faiss")
    gone = ids[:300]
    assert index.remove(gone.tolist()) == 300
    assert index.remove([-7, int(gone[0])]) == 0  # unknown or already removed
    _, found = index.search(x[:300], 5)
    assert not np.isin(found, gone).any()
    # an id removed and added again with another vector is found once, with its new score
    fresh = clustered(1, seed=42)
    index.add(np.array([gone[0]]), fresh)
    scores, found = index.search(fresh, 3)
    assert found[0][0] == gone[0] and scores[0][0] == pytest.approx(1.0, abs=1e-5)
    assert list(found[0]).count(gone[0]) == 1
    path = tmp_path / "m.faiss"
    state = index.save(path, revision=7)
    assert state.kind == kind and state.count == len(index) == len(ids) - 299
    assert state.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    vi._CHECKSUMS.clear()
    loaded, lstate = VectorIndex.load(path, DIM)
    assert lstate is not None and (lstate.revision, lstate.kind) == (7, kind)
    assert loaded.kind == kind and loaded.approximate == index.approximate
    assert VectorIndex.file_checksum(path) == state.sha256  # remembered from the load
    q = clustered(20, seed=3)
    assert np.array_equal(loaded.search(q, 5)[1], index.search(q, 5)[1])
    # SQLite is the truth: reconcile to a different id set
    expected = np.concatenate([ids[500:1000], np.array([999_999])])
    added, removed = loaded.reconcile(expected, lambda want: (want, clustered(len(want), seed=5)))
    assert (added, removed) == (1, len(ids) - 299 - 500)
    assert set(loaded.ids().tolist()) == set(expected.tolist())
    _, found = loaded.search(q, 10)
    assert np.isin(found[found >= 0], expected).all()


@pytest.mark.parametrize("kind", ["hnsw", "ivfpq"])
def test_approximate_index_is_rebuilt_when_many_ids_are_stale(kind: str) -> None:
    index, ids, x = built(kind, n=3000)
    trained_on = index.params.get("trained_on")
    index.remove(ids[:300].tolist())
    assert len(index._stale) == 300 and index.ann.ntotal == 3000  # not edited in place
    index.remove(ids[300:1000].tolist())  # > 25% of the live vectors: rebuilt from the flat store
    assert len(index._stale) == 0 and index.ann.ntotal == len(index) == 2000
    assert index.params.get("trained_on") == trained_on  # IVF keeps its training
    _, found = index.search(x[1000:1100], 1)
    assert np.mean(found[:, 0] == ids[1000:1100]) >= 0.95


def test_ivfpq_waits_for_enough_vectors_then_trains() -> None:
    index = VectorIndex(DIM)
    index.add(np.arange(100), clustered(100))
    index.set_kind("ivfpq")
    assert index.kind == "ivfpq" and not index.approximate  # too few to train: exact search meanwhile
    assert index.search(clustered(1, seed=1), 3)[1].shape == (1, 3)
    index.add(np.arange(100, 3000), clustered(2900, seed=2))
    assert index.maintain() and index.approximate
    assert index.params["nlist"] >= 1 and index.params["m"] == pq_subquantizers(DIM)


def test_small_k_and_empty_index() -> None:
    empty = VectorIndex(DIM, kind="hnsw")
    s, i = empty.search(clustered(2), 5)
    assert s.shape == (2, 0) and i.shape == (2, 0)
    index, ids, x = built("ivfpq", n=3000)
    s, i = index.search(x[:1], 5000)  # k larger than the index: every vector, exactly ranked
    assert i.shape == (1, 3000) and set(i[0].tolist()) == set(ids.tolist())


def test_choose_kind_and_memory_figures() -> None:
    assert choose_kind("auto", 10) == "flat"
    assert choose_kind("auto", vi.AUTO_ANN_MIN) == vi.AUTO_ANN_KIND
    assert choose_kind("auto", vi.AUTO_ANN_MIN // 2 + 1, current="ivfpq") == "ivfpq"  # no flip-flopping
    assert choose_kind("auto", vi.AUTO_ANN_MIN // 2 - 1, current="ivfpq") == "flat"
    assert choose_kind("hnsw", 3) == "hnsw"
    with pytest.raises(ValueError):
        choose_kind("lsh", 3)
    assert bytes_per_vector("flat", 1280) == 5136
    assert bytes_per_vector("flat", 1280) < bytes_per_vector("ivfpq", 1280) < bytes_per_vector("hnsw", 1280)


def test_old_plain_faiss_files_still_load(tmp_path: Path) -> None:
    plain = faiss.IndexIDMap2(faiss.IndexFlatIP(DIM))
    plain.add_with_ids(clustered(10), np.arange(10, dtype=np.int64))
    faiss.write_index(plain, str(tmp_path / "old.faiss"))
    loaded, state = VectorIndex.load(tmp_path / "old.faiss", DIM)
    assert state is None and loaded.kind == "flat" and len(loaded) == 10
    with pytest.raises(ValueError):
        VectorIndex.load(tmp_path / "old.faiss", DIM + 1)
    index, _, _ = built("ivfpq", n=3000)
    index.save(tmp_path / "new.faiss", 1)
    data = (tmp_path / "new.faiss").read_bytes()
    (tmp_path / "cut.faiss").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError):
        VectorIndex.load(tmp_path / "cut.faiss", DIM)


def test_library_index_type_is_remembered_and_kept_in_sync(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(6):
        synthetic_photo(i).save(photos / f"p{i}.jpg", quality=90)
    with Library.open(tmp_path / "lib") as lib:
        lib.index([photos], index_type="hnsw")
        model = lib.find_model()
        assert lib.index_type(model) == "hnsw"
        index = lib.vector_index(model)
        assert index.kind == "hnsw" and index.approximate and len(index) == 6
        (photos / "p2.jpg").unlink()
        synthetic_photo(20).save(photos / "p20.jpg", quality=90)
        report = lib.index([photos])  # index_type not given: stays hnsw
        assert (report.removed, report.embedded) == (1, 1)
        [result] = lib.query([photos / "p20.jpg"], k=10, include_self=True)
        names = [Path(h.path).name for h in result.results]
        assert names[0] == "p20.jpg" and "p2.jpg" not in names and len(names) == 6
    sidecar = (tmp_path / "lib" / "indexes" / f"{model.key}.json").read_text()
    assert '"kind": "hnsw"' in sidecar
    with Library.open(tmp_path / "lib") as lib:  # a fresh process-like open: loads the saved hnsw index
        index = lib.vector_index(lib.find_model())
        assert index.kind == "hnsw" and len(index) == 6
        lib.index([photos], index_type="flat")
        assert lib.vector_index(lib.find_model()).kind == "flat"
        assert not lib.vector_index(lib.find_model()).approximate


# --- ivfpq-disk: the memory-bounded type -------------------------------------------------------


def test_disk_index_keeps_only_codes_in_ram_and_scores_exactly(tmp_path: Path) -> None:
    index, ids, x = built(DISK_KIND, n=6000, home=tmp_path / "m.faiss")
    assert index.index is None and index.disk is not None and index.approximate  # no flat copy in RAM
    queries = clustered(100, seed=11)
    scores, found = index.search(queries, 10)
    flat, _, _ = built("flat", n=6000)
    _, truth = flat.search(queries, 10)
    assert recall(found, truth) >= 0.95
    np.testing.assert_allclose(scores, np.einsum("qd,qkd->qk", queries, x[(found - 5) // 3]), atol=1e-5)
    index.save(tmp_path / "m.faiss", 1)
    [vectors_file] = store_files(tmp_path / "m.faiss")
    assert vectors_file.stat().st_size == 6000 * DIM * 4
    assert bytes_per_vector(DISK_KIND, 1280) < 100 < bytes_per_vector("ivfpq", 1280) / 50
    # float16 storage: half the disk, scores to ~1e-3
    half, _, _ = built(DISK_KIND, n=6000, home=tmp_path / "h.faiss", store="float16")
    s16, f16 = half.search(queries, 10)
    assert recall(f16, truth) >= 0.95
    np.testing.assert_allclose(s16, np.einsum("qd,qkd->qk", queries, x[(f16 - 5) // 3]), atol=2e-3)
    half.save(tmp_path / "h.faiss", 1)
    assert store_files(tmp_path / "h.faiss")[0].stat().st_size == 6000 * DIM * 2


def test_disk_index_compacts_and_switches_back(tmp_path: Path) -> None:
    path = tmp_path / "m.faiss"
    index, ids, x = built(DISK_KIND, n=4000, home=path)
    index.save(path, 1)
    first = store_files(path)
    index.remove(ids[:2000].tolist())  # half dead: live rows copied to a new file, ann rebuilt
    assert index.disk.rows == len(index) == 2000 and index.ann.ntotal == 2000
    _, found = index.search(x[2000:2100], 1)
    assert np.mean(found[:, 0] == ids[2000:2100]) >= 0.95
    index.save(path, 2)
    assert store_files(path) != first and len(store_files(path)) == 1  # the old file is gone
    assert np.allclose(index.reconstruct(int(ids[2500])), x[2500])
    with pytest.raises(KeyError):
        index.reconstruct(int(ids[0]))
    index.set_kind("ivfpq")  # back to RAM: same vectors, no vectors file after the next save
    assert index.disk is None and len(index) == 2000
    index.save(path, 3)
    assert store_files(path) == []
    assert np.allclose(index.reconstruct(int(ids[2500])), x[2500])


def test_disk_index_damaged_or_missing_vectors_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "m.faiss"
    index, _, _ = built(DISK_KIND, n=3000, home=path)
    index.save(path, 1)
    [vectors_file] = store_files(path)
    data = vectors_file.read_bytes()
    vectors_file.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="shorter"):
        VectorIndex.load(path, DIM)
    vectors_file.write_bytes(data[::-1])  # same size, other content
    with pytest.raises(ValueError, match="does not match"):
        VectorIndex.load(path, DIM)
    vectors_file.unlink()
    with pytest.raises(ValueError, match="missing"):
        VectorIndex.load(path, DIM)


CRASHING_WRITER = """
import os, signal, sys
from pathlib import Path
import numpy as np
sys.path.insert(0, {repo!r})
from searcher.vector_index import VectorIndex
from tests.test_vector_index import clustered
index, _ = VectorIndex.load(Path({path!r}), {dim})
index.save(Path({path!r}), 2)  # the writer: owns the vectors file from here on
more = clustered(20_000, seed=77)
index.add(np.arange(10**6, 10**6 + 20_000), more)  # > FLUSH_ROWS: rows reach the file, not the index
os.pwrite(index.disk._fd, b"torn", os.fstat(index.disk._fd).st_size)  # a torn row at the end
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_disk_index_survives_a_writer_killed_mid_add(tmp_path: Path) -> None:
    path = tmp_path / "m.faiss"
    index, ids, x = built(DISK_KIND, n=3000, home=path)
    index.save(path, 1)
    code = CRASHING_WRITER.format(repo=str(Path(__file__).resolve().parent.parent), path=str(path), dim=DIM)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    [vectors_file] = store_files(path)
    assert vectors_file.stat().st_size > 3000 * DIM * 4  # uncommitted rows are on disk
    loaded, state = VectorIndex.load(path, DIM)
    assert state is not None and state.revision == 2 and len(loaded) == 3000  # the last save, exactly
    scores, found = loaded.search(x[:50], 1)
    assert np.array_equal(found[:, 0], ids[:50]) and np.allclose(scores[:, 0], 1.0, atol=1e-5)
    # the next writer overwrites the leftovers: new rows read back exactly after a reload
    fresh = clustered(100, seed=78)
    loaded.add(np.arange(5_000_000, 5_000_100), fresh)
    loaded.save(path, 3)
    again, _ = VectorIndex.load(path, DIM)
    assert len(again) == 3100 and np.allclose(again.reconstruct(5_000_042), fresh[42])
    assert vectors_file.stat().st_size >= 3100 * DIM * 4


def test_a_reader_never_writes_the_vectors_file(tmp_path: Path) -> None:
    path = tmp_path / "m.faiss"
    index, _, _ = built(DISK_KIND, n=3000, home=path)
    index.save(path, 1)
    [vectors_file] = store_files(path)
    before = vectors_file.read_bytes()
    reader, _ = VectorIndex.load(path, DIM)  # e.g. `searcher serve` reconciling with SQLite
    extra = clustered(20_000, seed=5)
    reader.add(np.arange(10**6, 10**6 + 20_000), extra)
    assert len(reader) == 23_000 and np.allclose(reader.reconstruct(10**6 + 7), extra[7])
    assert vectors_file.read_bytes() == before  # its additions stayed in RAM


def test_auto_picks_the_disk_index_when_memory_is_short() -> None:
    gb = 1 << 30
    flat_1m = 1_000_000 * bytes_per_vector("ivfpq", 1280)  # ~5.2 GB of flat copies
    assert choose_kind("auto", 1_000_000, dim=1280, available=64 * gb) == "ivfpq"
    assert choose_kind("auto", 1_000_000, dim=1280, available=int(1.5 * flat_1m)) == DISK_KIND
    assert choose_kind("auto", 10_000, dim=1280, available=40_000_000) == DISK_KIND  # tiny machine
    assert choose_kind("auto", 10_000, dim=1280, available=64 * gb) == "flat"
    # hysteresis: back to RAM only once the copies fit in half the usual share
    assert choose_kind("auto", 1_000_000, DISK_KIND, dim=1280, available=int(3 * flat_1m)) == DISK_KIND
    assert choose_kind("auto", 1_000_000, DISK_KIND, dim=1280, available=int(5 * flat_1m)) == "ivfpq"
    # an explicit type is never overridden, and without dim the memory rule is off
    assert choose_kind("flat", 10**7, dim=1280, available=gb) == "flat"
    assert choose_kind("auto", 1_000_000, available=gb) == "ivfpq"
    assert vi.available_memory() > 0


def test_library_with_the_disk_index(tmp_path: Path) -> None:
    from searcher.check import check_library

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(6):
        synthetic_photo(i).save(photos / f"p{i}.jpg", quality=90)
    with Library.open(tmp_path / "lib") as lib:
        lib.index([photos], index_type=DISK_KIND)
        model = lib.find_model()
        index = lib.vector_index(model)
        assert index.kind == DISK_KIND and index.index is None and len(index) == 6
        [result] = lib.query([photos / "p3.jpg"], k=3, include_self=True)
        assert Path(result.results[0].path).name == "p3.jpg"
        assert result.results[0].score == pytest.approx(1.0, abs=1e-4)
    path = tmp_path / "lib" / "indexes" / f"{model.key}.faiss"
    assert len(store_files(path)) == 1
    with Library.open(tmp_path / "lib") as lib:
        report = check_library(lib)
        assert report.problems == [], report.problems
        assert lib.vector_index(lib.find_model()).kind == DISK_KIND
    assert os.path.exists(path)
