"""Stored thumbnails (searcher.thumbnails): written at index time, backfilled for older libraries,
gone with their image, and used by the default query to verify blurred copies the CNN ranks low."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter
from sqlalchemy import delete, func, select

from searcher import querying
from searcher.duplicates import thresholds_for
from searcher.library import Library
from searcher.rerank import SPATIAL_INLIERS
from searcher.store import ThumbnailRow
from searcher.thumbnails import THUMB_DIM, ThumbnailIndex, from_blob, thumbnail_of, to_blob
from searcher.verify import FeatureCache

SOURCE = "117200.jpg"  # a Holidays photo whose blurred copy the CNN put 34th in the report benchmark


@pytest.fixture(scope="module")
def library(shared: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Library, Path]:
    images = shared / "datasets" / "holidays-dev" / "images"
    folder = tmp_path_factory.mktemp("photos")
    names = sorted(p.name for p in images.glob("*.jpg"))[::12][:30]
    for name in {*names, SOURCE, "117201.jpg"}:
        shutil.copy(images / name, folder / name)
    lib = Library.open(tmp_path_factory.mktemp("lib"), create=True)
    lib.index([folder])
    return lib, folder


def thumbnail_count(lib: Library) -> int:
    with lib.sessions() as session:
        return session.execute(select(func.count()).select_from(ThumbnailRow)).scalar_one()


def test_index_stores_one_thumbnail_per_image(library: tuple[Library, Path]) -> None:
    lib, folder = library
    assert thumbnail_count(lib) == len(list(folder.glob("*.jpg")))
    index = lib.thumbnail_index()
    assert index.thumbs.shape == (len(index), THUMB_DIM)
    assert np.allclose(np.linalg.norm(index.thumbs, axis=1), 1.0, atol=1e-2)  # float16 storage keeps unit rows


def test_blob_round_trip_and_flat_picture() -> None:
    vector = thumbnail_of(Image.open(Path(__file__).parent.parent / "data" / "sample-photos" / "chelsea.jpg"))
    assert vector is not None and vector.shape == (THUMB_DIM,)
    assert np.abs(from_blob(to_blob(vector)) - vector).max() < 1e-3
    assert thumbnail_of(Image.new("RGB", (50, 40), (90, 90, 90))) is None  # flat: nothing to correlate


def test_search_respects_shape_threshold_and_exclusions() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, THUMB_DIM)).astype(np.float32)
    a /= np.linalg.norm(a)
    b /= np.linalg.norm(b)
    rows = [(1, to_blob(a), 400, 300), (2, to_blob(a), 300, 400), (3, to_blob(b), 400, 300)]
    rows.append((4, to_blob(a), 402, 300))
    index = ThumbnailIndex.build(rows)
    found = index.search(a, 4 / 3, k=5)
    assert [i for i, _ in found] == [1, 4]  # 2 is portrait, 3 another picture
    assert [i for i, _ in index.search(a, 4 / 3, k=5, exclude=[1])] == [4]
    assert index.search(a, 4 / 3, k=0) == []


def test_query_verifies_thumbnail_neighbours_the_cnn_missed(library: tuple[Library, Path], tmp_path: Path) -> None:
    lib, folder = library
    probe = tmp_path / "blurred.jpg"
    with Image.open(folder / SOURCE) as img:
        img.convert("RGB").filter(ImageFilter.GaussianBlur(max(img.size) * 0.014)).save(probe, quality=90)
    model = lib.find_model()
    cache = FeatureCache()
    (plain,) = lib.query([probe], k=10, verify=0)
    others = [h for h in plain.results if Path(h.path).name != SOURCE]  # as if the CNN had missed it
    vector = lib.embedder_for(model).embed(
        np.asarray(Image.open(probe).convert("RGB").resize((224, 224)), np.uint8)[None]
    )
    extra = querying.thumbnail_candidates(lib, model, str(probe), vector, others, cache)
    assert SOURCE in [Path(h.path).name for h in extra]
    assert not {h.image_id for h in extra} & {h.image_id for h in others}
    copy_at = thresholds_for(model).verified
    ranked = querying.verified_order(str(probe), others, 10, cache, copy_at, extra)
    assert Path(ranked[0].path).name == SOURCE and ranked[0].verified >= copy_at
    assert len(ranked) == len(others)  # extras that are copies go first; the list keeps its length
    # an extra that joined is a copy, tied to the probe by a homography, or verified as a close look-alike
    joined = [h for h in ranked if h.image_id in {e.image_id for e in extra}]
    bar = min(copy_at, querying.EXTRA_VERIFIED)
    assert all(h.verified >= bar or (h.inliers or 0) >= SPATIAL_INLIERS for h in joined)
    (default,) = lib.query([probe], k=10)
    assert Path(default.results[0].path).name == SOURCE


def test_older_library_gets_its_thumbnails_and_removed_images_lose_them(library: tuple[Library, Path]) -> None:
    lib, folder = library
    with lib.sessions() as session, session.begin():
        before = dict(session.execute(select(ThumbnailRow.image_id, ThumbnailRow.thumb)).all())
        session.execute(delete(ThumbnailRow))  # as a library indexed before thumbnails were stored
    report = lib.index([folder])
    assert report.embedded == 0 and report.thumbnails == len(before)
    with lib.sessions() as session:
        after = dict(session.execute(select(ThumbnailRow.image_id, ThumbnailRow.thumb)).all())
    assert after.keys() == before.keys()
    assert all(np.abs(from_blob(after[i]) - from_blob(before[i])).max() < 1e-2 for i in after)
    assert lib.index([folder]).thumbnails == 0  # nothing left to do
    (folder / "117201.jpg").unlink()
    lib.index([folder])
    assert thumbnail_count(lib) == len(before) - 1
