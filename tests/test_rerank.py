"""Re-ranking: invariant search, DBA, alpha-QE, whitening; and their use by Library.query."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from searcher import Library, rerank
from searcher.edits import apply_edit


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    return rerank.l2_normalise(rng.normal(size=(n, d)).astype(np.float32))


def test_array_variants_are_the_pil_transposes() -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (5, 7, 3)).astype(np.uint8)
    image = Image.fromarray(pixels)
    kinds = list(rerank.DIHEDRAL)
    arrays, images = rerank.array_variants(pixels, kinds), rerank.transformed(image, kinds)
    for kind, arr, img in zip(kinds, arrays, images, strict=True):
        assert np.array_equal(arr, np.asarray(img)), kind


def test_invariant_search_is_the_exact_top_k_of_the_best_variant() -> None:
    rng = np.random.default_rng(1)
    db = _unit(rng, 300, 16)
    ids = np.arange(1000, 1300)
    variants = _unit(rng, 4, 16)
    got = rerank.invariant_search(rerank.matrix_search(db, ids), variants, 10, exclude=[1005])
    best = (variants @ db.T).max(0)
    best[5] = -np.inf  # excluded
    want = ids[np.argsort(-best)[:10]]
    assert got.ids.tolist() == want.tolist()
    assert np.allclose(got.scores, np.sort(best)[::-1][:10], atol=1e-5)
    assert np.array_equal(got.variant, (variants @ db[got.ids - 1000].T).argmax(0))


def test_dba_on_demand_equals_dba_of_the_whole_database() -> None:
    rng = np.random.default_rng(2)
    db = _unit(rng, 200, 8)
    full = rerank.dba(db, k=2, alpha=3.0)
    search = rerank.matrix_search(db)
    cache = rerank.NeighbourCache(search, lambda ids: db[ids], depth=4)
    some = np.array([3, 50, 199])
    assert np.allclose(cache.dba_vectors(some, 2, 3.0), full[some], atol=1e-5)
    # an excluded id (the query itself, when it is in the database) never counts as a neighbour
    first_neighbour = int(search(db[3:4], 2)[1][0][1])
    lazy = cache.dba_vectors(np.array([3]), 2, 3.0, exclude=[first_neighbour])[0]
    scores, found = search(db[3:4], 4)
    keep = [(s, f) for s, f in zip(scores[0], found[0], strict=True) if f not in (3, first_neighbour)][:2]
    manual = db[3] + sum(max(s, 0) ** 3 * db[f] for s, f in keep)
    assert np.allclose(lazy, manual / np.linalg.norm(manual), atol=1e-5)


def test_local_dba_is_dba_within_the_shortlist() -> None:
    rng = np.random.default_rng(4)
    db = _unit(rng, 60, 8)
    assert np.allclose(rerank.local_dba(db, 2, 3.0), rerank.dba(db, 2, 3.0), atol=1e-5)
    search = rerank.matrix_search(db)
    probe = db[7] + 0.1 * rng.normal(size=8)
    local = rerank.retrieve(search, lambda ids: db[ids], probe, 5, rerank.RerankSettings(dba_k=2, dba_local=True))
    head = rerank.invariant_search(search, rerank.l2_normalise(probe), 60)  # shortlist = the whole database
    want = rerank.l2_normalise(probe) @ rerank.local_dba(db[head.ids], 2, 3.0).T
    assert local.ids.tolist() == head.ids[np.argsort(-want, kind="stable")][:5].tolist()


def test_query_expansion_brings_in_a_positive_that_only_resembles_another_positive() -> None:
    # q ~ p1; p2 ~ p1 but further from q than a distractor d: plain ranks d before p2, alpha-QE the other way
    q = np.array([1.0, 0.0, 0.0, 0.0])
    p1 = np.array([0.9, 0.436, 0.0, 0.0])
    p2 = np.array([0.5, 0.866, 0.0, 0.0])
    d = np.array([0.6, 0.0, 0.8, 0.0])
    db = rerank.l2_normalise(np.stack([p1, p2, d]))
    search = rerank.matrix_search(db, np.array([1, 2, 3]))

    def reconstruct(ids: np.ndarray) -> np.ndarray:
        return db[ids - 1]

    plain = rerank.retrieve(search, reconstruct, q, 3)
    expanded = rerank.retrieve(search, reconstruct, q, 3, rerank.RerankSettings(qe_k=1, qe_alpha=1.0))
    assert plain.ids.tolist() == [1, 3, 2]
    assert expanded.ids.tolist() == [1, 2, 3]


def test_whitening_learned_on_the_vectors_decorrelates_them() -> None:
    rng = np.random.default_rng(3)
    mix = rng.normal(size=(12, 12))
    x = rerank.l2_normalise(rng.normal(size=(2000, 12)) @ mix)
    w = rerank.Whitening.fit(x, dim=6)
    y = w.matrix.apply(np.ascontiguousarray(x, dtype=np.float32))  # before re-normalisation
    cov = np.cov(y.T)
    assert w.dim == 6 and np.allclose(cov, np.eye(6) * cov[0, 0], atol=0.05 * cov[0, 0])
    assert np.allclose(np.linalg.norm(w.apply(x), axis=1), 1.0, atol=1e-5)


def test_rotated_copy_is_found_by_the_default_query_but_missed_by_a_plain_one(
    holidays_subset: dict, tmp_path: Path
) -> None:
    source = holidays_subset["folder"] / "100000.jpg"
    probe = tmp_path / "rotated.jpg"
    Image.open(source).transpose(Image.Transpose.ROTATE_90).save(probe, quality=92)
    with Library.open(holidays_subset["library"]) as lib:
        plain = lib.query([probe], k=5, invariant=False, augment=False, verify=0)[0]
        default = lib.query([probe], k=5)[0]
        flips = lib.query([probe], k=5, invariant="all")[0]
    assert Path(plain.results[0].path).name != "100000.jpg"  # a CNN vector is not rotation-invariant
    assert Path(default.results[0].path).name == "100000.jpg"
    assert Path(flips.results[0].path).name == "100000.jpg"
    assert default.results[0].score > 0.9 > plain.results[0].score


def test_indexed_probe_keeps_its_stored_vector_and_scores_stay_cosines(holidays_subset: dict) -> None:
    """With the upright view only (``invariant="none"``) an indexed probe is answered from its stored
    vector (no network), re-ranked by DBA, and the scores stay its cosines; the default query embeds it
    again (turned views, regions) and finds the same first result."""
    probe = holidays_subset["folder"] / "100200.jpg"
    with Library.open(holidays_subset["library"]) as lib:
        result = lib.query([probe], k=5, invariant="none")[0]  # DBA re-ranking, no network
        plain = lib.query([probe], k=30, augment=False, invariant="none")[0]
        default = lib.query([probe], k=5)[0]
        model = lib.find_model()
        index = lib.vector_index(model)
        me = next(i for i in index.ids() if lib._rows_by_id([int(i)])[int(i)].path == str(probe))
        mine = index.reconstruct(int(me))
        for hit in result.results:
            assert hit.score == pytest.approx(float(mine @ index.reconstruct(hit.image_id)), abs=1e-5)
    assert not result.embedded and not plain.embedded and default.embedded
    assert Path(result.results[0].path).name == "100201.jpg"  # its group's other photo
    assert Path(default.results[0].path).name == "100201.jpg"
    assert {h.path for h in result.results} <= {h.path for h in plain.results}  # re-ranked, not replaced


def test_cli_query_switches(holidays_subset: dict, tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    from tests.conftest import REPO

    probe = tmp_path / "rotated.jpg"
    Image.open(holidays_subset["folder"] / "100000.jpg").transpose(Image.Transpose.ROTATE_270).save(probe)
    base = [sys.executable, "-m", "searcher", "query", str(probe), "-k", "3", "--json",
            "--library", str(holidays_subset["library"])]  # fmt: skip
    # the default finds the rotated copy (tested through the API above); --invariant none without verification must not
    flags = ["--invariant", "none", "--no-dba", "--expand", "--verify", "0"]
    proc = subprocess.run([*base, *flags], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert Path(json.loads(proc.stdout)[0]["results"][0]["path"]).name != "100000.jpg"


def test_margin_keeps_the_upright_view_unless_a_rotated_one_is_clearly_better() -> None:
    db = rerank.l2_normalise(np.eye(3, dtype=np.float32))
    search = rerank.matrix_search(db, np.array([10, 11, 12]))
    upright = rerank.l2_normalise(np.array([0.80, 0.6, 0.0]))  # item 10 at 0.80
    slightly = rerank.l2_normalise(np.array([0.0, 0.6, 0.81]))  # rotated view: item 12 at 0.80 (a bit more)
    clearly = rerank.l2_normalise(np.array([0.0, 0.3, 0.95]))  # rotated view: item 12 at 0.95
    assert rerank.invariant_search(search, np.stack([upright, slightly]), 1).ids[0] == 12
    assert rerank.invariant_search(search, np.stack([upright, slightly]), 1, margin=0.05).ids[0] == 10
    assert rerank.invariant_search(search, np.stack([upright, clearly]), 1, margin=0.05).ids[0] == 12


def test_power_normalise_square_roots_keeping_signs() -> None:
    x = np.array([[4.0, -9.0, 0.0]], np.float32)
    got = rerank.power_normalise(x, 0.5)
    assert np.allclose(got, np.array([[2.0, -3.0, 0.0]]) / np.sqrt(13.0), atol=1e-6)
    assert np.allclose(rerank.power_normalise(x, 1.0), x / np.linalg.norm(x), atol=1e-6)


def test_category_reranking_equals_its_definition_within_the_shortlist() -> None:
    """power normalisation, local DBA and alpha-QE among the first ``shortlist`` results, computed
    plainly in numpy, give the same order as :func:`rerank.retrieve`; the tail keeps its plain order."""
    rng = np.random.default_rng(7)
    db = rerank.l2_normalise(np.abs(rng.normal(size=(120, 12))).astype(np.float32))  # ReLU features
    ids = np.arange(500, 620)
    probe = rerank.l2_normalise(np.abs(rng.normal(size=(1, 12))).astype(np.float32))
    settings = rerank.RerankSettings(dba_k=3, qe_k=2, shortlist=40, dba_local=True, power=0.5)
    got = rerank.retrieve(rerank.matrix_search(db, ids), lambda i: db[np.asarray(i) - 500], probe, 40, settings)

    plain_order = np.argsort(-(db @ probe[0]), kind="stable")[:40]
    z = np.sqrt(db[plain_order])
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    q = np.sqrt(probe[0]) / np.linalg.norm(np.sqrt(probe[0]))
    sims = z @ z.T
    np.fill_diagonal(sims, -np.inf)
    augmented = z.copy()
    for r in range(len(z)):
        nb = np.argsort(-sims[r])[:3]
        augmented[r] += (np.maximum(sims[r, nb], 0) ** 3) @ z[nb]
    augmented /= np.linalg.norm(augmented, axis=1, keepdims=True)
    first = augmented @ q
    top = np.argsort(-first, kind="stable")[:2]
    expanded = q + (first[top] ** 3) @ augmented[top]
    final = augmented @ (expanded / np.linalg.norm(expanded))
    want = ids[plain_order[np.argsort(-final, kind="stable")]]
    assert got.ids.tolist() == want.tolist()
    assert set(got.ids.tolist()) == set(ids[plain_order].tolist())  # re-ranked within the shortlist only


def test_presets_are_named_and_the_category_preset_is_reachable_from_the_cli(
    holidays_subset: dict, tmp_path: Path
) -> None:
    import json
    import subprocess
    import sys

    from tests.conftest import REPO

    assert rerank.preset(None) is rerank.PRESETS["instance"]
    with pytest.raises(ValueError, match="category"):
        rerank.preset("species")
    category = rerank.settings(preset_name="category")
    assert category.power == 0.5 and category.qe_k and category.dba_k and category.shortlist >= 100
    assert rerank.settings(expand=False, augment=False, preset_name="category").active  # power alone re-ranks
    probe = holidays_subset["folder"] / "100200.jpg"
    with Library.open(holidays_subset["library"]) as lib:
        instance = lib.query([probe], k=5)[0]
        kind = lib.query([probe], k=5, preset="category")[0]
    assert not kind.embedded and len(kind.results) == 5
    assert Path(instance.results[0].path).name == "100201.jpg"
    assert [h.path for h in kind.results] != [h.path for h in instance.results]  # another ranking
    base = [sys.executable, "-m", "searcher", "query", str(probe), "-k", "3", "--json",
            "--library", str(holidays_subset["library"])]  # fmt: skip
    proc = subprocess.run([*base, "--preset", "category"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)[0]["results"]) == 3
    bad = subprocess.run([*base, "--preset", "species"], capture_output=True, text=True, cwd=REPO)
    assert bad.returncode == 2 and "instance, category" in bad.stderr


def test_verify_reranks_the_first_results_by_pixel_verification(holidays_subset: dict, tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    from tests.conftest import REPO

    source = holidays_subset["folder"] / "100000.jpg"  # its group holds other shots of the same scene
    probe = tmp_path / "copy.jpg"
    apply_edit(Image.open(source).convert("RGB"), "combo_web", np.random.default_rng(3)).save(probe, quality=80)
    from searcher.duplicates import thresholds_for

    with Library.open(holidays_subset["library"]) as lib:
        result = lib.query([probe], k=6, verify=4)[0]
        copy_at = thresholds_for(lib.find_model()).verified
    head, tail = result.results[:4], result.results[4:]
    assert [h.rank for h in result.results] == list(range(1, 7))
    assert Path(head[0].path).name == "100000.jpg"
    # measured: the copy's cosine to another shot of the scene (100002, 0.645) beats its source's (0.615);
    # verification scores the source 0.46 and every other shot 0
    assert head[0].verified > 0.3 > max(h.verified for h in head[1:])  # other shots are not this picture
    scores, inliers = [h.verified for h in head], [h.inliers or 0 for h in head]
    assert rerank.verified_head([h.score for h in head], scores, inliers, copy_at) == [0, 1, 2, 3]  # in its order
    assert all(h.verified is None for h in tail)
    cmd = [sys.executable, "-m", "searcher", "query", str(probe), "-k", "3", "--verify", "2", "--json",
           "--library", str(holidays_subset["library"])]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)[0]["results"]
    assert Path(rows[0]["path"]).name == "100000.jpg" and rows[0]["verified"] > 0.3 and "verified" not in rows[2]


def test_needs_verification_when_the_first_scores_are_close() -> None:
    assert rerank.needs_verification([0.90, 0.89, 0.5], top=10, gap=0.02)
    assert not rerank.needs_verification([0.90, 0.85, 0.5], top=10, gap=0.02)
    assert rerank.needs_verification([0.85, 0.90], top=2, gap=0.1)  # the two best, whatever their order
    assert not rerank.needs_verification([0.9, 0.1, 0.89], top=2, gap=0.02)  # only the first ``top`` count
    assert rerank.needs_verification([0.9], top=10, gap=0.02)  # one result: verify it
    assert not rerank.needs_verification([0.9, 0.9], top=0, gap=float("inf"))  # off
    assert not rerank.needs_verification([], top=10, gap=float("inf"))


def test_default_query_verifies_as_the_preset_says(holidays_subset: dict, tmp_path: Path) -> None:
    from dataclasses import replace

    source = holidays_subset["folder"] / "100000.jpg"
    probe = tmp_path / "copy.jpg"
    apply_edit(Image.open(source).convert("RGB"), "combo_social", np.random.default_rng(0)).save(probe, quality=90)
    rerank.PRESETS["_always"] = replace(rerank.DEFAULTS, name="_always", verify_top=3, verify_gap=float("inf"))
    rerank.PRESETS["_gap"] = replace(rerank.DEFAULTS, name="_gap", verify_top=3, verify_gap=0.01)
    try:
        with Library.open(holidays_subset["library"]) as lib:
            always = lib.query([probe], k=5, preset="_always")[0]
            gap = lib.query([probe], k=5, preset="_gap")[0]
            never = lib.query([probe], k=5, verify=0)[0]
            default = lib.query([probe], k=5)[0]
    finally:
        rerank.PRESETS.pop("_always")
        rerank.PRESETS.pop("_gap")
    assert [h.verified is not None for h in always.results] == [True] * 3 + [False] * 2
    assert all(h.verified is None for h in never.results)
    close = rerank.needs_verification([h.score for h in never.results], 3, 0.01)
    assert any(h.verified is not None for h in gap.results) == close
    assert rerank.DEFAULTS.verify_gap == float("inf")  # the default verifies every query's first 10
    assert all(h.verified is not None for h in default.results)


def test_verified_head_puts_copies_first_then_what_a_homography_ties_then_the_rest() -> None:
    n = rerank.SPATIAL_INLIERS
    cos = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]
    verified = [0.1, 0.0, 0.8, 0.3, 0.9, 0.0]
    inliers = [3, n + 40, 0, n, 0, n + 40]
    # copies (>= 0.67) by score; then >= n inliers, most first (ties: CNN order); then by score
    assert rerank.verified_head(cos, verified, inliers, copy_at=0.67) == [4, 2, 1, 5, 3, 0]
    # without inliers or a copy bar: best verified score first, ties in CNN order (the order before)
    assert rerank.verified_head(cos, verified) == [4, 2, 3, 0, 1, 5]
    assert rerank.verified_head(cos, [0.0] * 6, [0] * 6, copy_at=0.67) == list(range(6))


def test_default_query_finds_the_source_of_a_photo_of_a_print(holidays_subset: dict, tmp_path: Path) -> None:
    """The copy score refuses a photo of a print (a homography, not a similarity), so it used to be left
    in CNN order; the default query now puts the result a homography ties to the probe first."""
    source = holidays_subset["folder"] / "100400.jpg"
    probe = tmp_path / "print.jpg"
    apply_edit(Image.open(source).convert("RGB"), "combo_photo_of_print", np.random.default_rng(0), "report").save(
        probe, quality=90
    )
    with Library.open(holidays_subset["library"]) as lib:
        default = lib.query([probe], k=10)[0]
        plain = lib.query([probe], k=10, verify=0)[0]
    first = default.results[0]
    assert Path(first.path).name == "100400.jpg"
    assert first.inliers is not None and first.inliers >= rerank.SPATIAL_INLIERS
    assert all(h.verified is not None for h in default.results)  # every query verifies its first 10
    others = [h for h in default.results[1:] if h.inliers is not None]
    assert others and max(h.inliers for h in others) < first.inliers
    assert {h.path for h in default.results} == {h.path for h in plain.results}  # re-ordered, not replaced
    assert default.as_dict()["results"][0]["inliers"] == first.inliers


def test_the_default_query_looks_deeper_only_when_nothing_verified_is_tied(
    holidays_subset: dict, tmp_path: Path
) -> None:
    """``verified_order(..., deeper=N)``: when none of the first results is tied to the probe, the next
    N are verified too and the original found there comes first; when one is, nothing more is verified."""
    import dataclasses

    from searcher import querying
    from searcher.duplicates import thresholds_for
    from searcher.verify import FeatureCache

    source = holidays_subset["folder"] / "100000.jpg"
    group = next(g for g in holidays_subset["groups"] if "100000.jpg" in g)
    probe = tmp_path / "copy.jpg"
    apply_edit(Image.open(source).convert("RGB"), "combo_web", np.random.default_rng(0)).save(probe, quality=85)
    with Library.open(holidays_subset["library"]) as lib:
        copy_at = thresholds_for(lib.find_model()).verified
        (plain,) = lib.query([probe], k=40, verify=0)
        original = next(h for h in plain.results if h.path == str(source))
        others = [h for h in plain.results if Path(h.path).name not in group]
        hits = [*others[:10], original, *others[10:25]]  # as if the CNN had ranked the original 11th

        def fresh() -> list:
            return [dataclasses.replace(h, verified=None, inliers=None) for h in hits]

        shallow = querying.verified_order(str(probe), fresh(), 10, FeatureCache(), copy_at)
        assert shallow[10].path == str(source) and shallow[10].verified is None
        deep = querying.verified_order(str(probe), fresh(), 10, FeatureCache(), copy_at, deeper=20)
        assert deep[0].path == str(source) and deep[0].verified >= copy_at
        assert len(deep) == len(hits) and len({h.path for h in deep}) == len(hits)  # moved, not repeated
        assert [h.rank for h in deep] == list(range(1, len(hits) + 1))
        tied_first = [original, *others[:24]]  # the original among the first: nothing deeper is verified
        tied_first = [dataclasses.replace(h, verified=None, inliers=None) for h in tied_first]
        ranked = querying.verified_order(str(probe), tied_first, 10, FeatureCache(), copy_at, deeper=20)
        assert ranked[0].path == str(source)
        assert all(h.verified is None for h in ranked[10:])
