"""Duplicate detection: tiers, no chaining, keep rules, decisions, incoming check, real test photos."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from searcher import duplicates as dup
from searcher.cli import app
from searcher.duplicates import KeepRules, Member, candidate_pairs, find_duplicates, group_units
from searcher.edits import apply_edit
from searcher.library import Library

runner = CliRunner()


# --- pure parts ------------------------------------------------------------------------------------


def test_grouping_does_not_chain() -> None:
    # A~B and B~C are strong, A~C is weak: C must not join A's group
    scores = {(0, 1): 0.99, (1, 2): 0.99, (0, 2): 0.2}
    nbrs = {0: {1, 2}, 1: {0, 2}, 2: {0, 1}}
    groups = group_units(3, [0, 1, 2], lambda a, b: scores[(min(a, b), max(a, b))], nbrs, 0.9)
    assert groups == [(0, [(1, 0.99)])]
    # with C ranked first, C takes B and A stays alone
    groups = group_units(3, [2, 1, 0], lambda a, b: scores[(min(a, b), max(a, b))], nbrs, 0.9)
    assert groups == [(2, [(1, 0.99)])]


def test_grouping_joins_the_best_representative() -> None:
    # 0 and 2 are representatives (they do not match each other); 1 passes both, 2 better: it joins 2
    scores = {(0, 1): 0.96, (1, 2): 0.99, (0, 2): 0.2, (0, 3): 0.97, (2, 3): 0.95}
    nbrs = {0: {1, 2, 3}, 1: {0, 2}, 2: {0, 1, 3}, 3: {0, 2}}
    fn = lambda a, b: scores.get((min(a, b), max(a, b)))  # noqa: E731
    for lazy in (0, 64):
        groups = group_units(4, [0, 2, 1, 3], fn, nbrs, 0.9, lazy_limit=lazy)
        assert groups == [(0, [(3, 0.97)]), (2, [(1, 0.99)])], lazy
    # a member is never scored against a representative it is no candidate of (large components)
    groups = group_units(4, [0, 2, 1, 3], fn, {0: {1, 3}, 2: {0}}, 0.9, lazy_limit=0)
    assert groups == [(0, [(1, 0.96), (3, 0.97)])]


def test_grouping_tries_representatives() -> None:
    # 0 is ranked first but passes only 1; 2 passes everyone: with try_first=3 it leads one group of all
    scores = {(0, 1): 0.95, (0, 2): 0.97, (1, 2): 0.96, (2, 3): 0.95, (0, 3): 0.3, (1, 3): 0.3}
    nbrs = {0: {1, 2, 3}, 1: {2, 3}, 2: {3}}
    fn = lambda a, b: scores.get((min(a, b), max(a, b)))  # noqa: E731
    assert group_units(4, [0, 1, 2, 3], fn, nbrs, 0.9) == [(0, [(1, 0.95), (2, 0.97)])]
    assert group_units(4, [0, 1, 2, 3], fn, nbrs, 0.9, try_first=3) == [(2, [(0, 0.97), (1, 0.96), (3, 0.95)])]


def test_grouping_respects_refusals_and_is_deterministic() -> None:
    scores = {(0, 1): 0.99, (0, 2): 0.98, (1, 2): 0.97}
    nbrs = {0: {1, 2}, 1: {0, 2}, 2: {0, 1}}
    fn = lambda a, b: scores[(min(a, b), max(a, b))]  # noqa: E731
    groups = group_units(3, [0, 1, 2], fn, nbrs, 0.9, allowed=lambda a, b: {a, b} != {0, 2})
    assert groups == [(0, [(1, 0.99)])]
    # refused pairs are kept apart among members too, not only against the representative
    groups = group_units(3, [0, 1, 2], fn, nbrs, 0.9, allowed=lambda a, b: {a, b} != {1, 2})
    assert groups == [(0, [(1, 0.99)])]
    assert group_units(3, [0, 1, 2], fn, nbrs, 0.9) == group_units(3, [0, 1, 2], fn, nbrs, 0.9)


def test_candidate_pairs_exact_and_ivf(monkeypatch) -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(size=(3000, 64)).astype(np.float32)
    base[1::2] = base[0::2] + 0.05 * rng.normal(size=(1500, 64)).astype(np.float32)  # planted pairs
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    i, j, s = candidate_pairs(base, k=3, min_cosine=0.9)
    planted = {(a, a + 1) for a in range(0, 3000, 2)}
    assert planted <= set(zip(i.tolist(), j.tolist(), strict=True))
    assert np.all(i < j) and np.all(s >= 0.9)
    monkeypatch.setattr(dup, "IVF_MIN", 1000)
    monkeypatch.setattr(dup, "REDUCED_DIM", 32)
    i2, j2, _ = candidate_pairs(base, k=3, min_cosine=0.9)
    found = set(zip(i2.tolist(), j2.tolist(), strict=True))
    assert len(planted & found) / len(planted) > 0.95


def test_turned_probes_add_candidates() -> None:
    rng = np.random.default_rng(1)
    vecs = np.abs(rng.normal(size=(50, 32))).astype(np.float32)
    vecs -= vecs.mean(axis=0)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    probes = np.abs(rng.normal(size=(50, 2, 32))).astype(np.float32)
    probes /= np.linalg.norm(probes, axis=2, keepdims=True)
    probes[7, 1] = vecs[30]  # row 7 turned looks like row 30
    i, j, _ = candidate_pairs(vecs, k=3, min_cosine=0.9)
    assert (7, 30) not in set(zip(i.tolist(), j.tolist(), strict=True))
    i, j, s = candidate_pairs(vecs, k=3, min_cosine=0.9, probes=probes, probe_k=2)
    found = dict(zip(zip(i.tolist(), j.tolist(), strict=True), s.tolist(), strict=True))
    assert found[(7, 30)] == pytest.approx(1.0)


def test_keep_rules_order(tmp_path) -> None:
    def m(path, w, size, mtime):
        return Member(0, str(tmp_path / path), "h", w, w, size, mtime, "JPEG")

    big, small, large_file, old = m("a/big.jpg", 400, 10, 5), m("a/s.jpg", 200, 10, 1), m("a/l.jpg", 200, 99, 5), None
    old = m("a/old.jpg", 200, 99, 1)
    rules = KeepRules()
    assert sorted([small, large_file, old, big], key=rules.sort_key)[:3] == [big, old, large_file]
    pref = m("pref/x.jpg", 10, 1, 9)
    assert min([big, pref], key=KeepRules(prefer=[str(tmp_path / "pref")]).sort_key) is pref
    ref = m("ref/y.jpg", 10, 1, 9)
    rules = KeepRules(prefer=[str(tmp_path / "pref")], reference=[str(tmp_path / "ref")])
    assert min([big, pref, ref], key=rules.sort_key) is ref


# --- a real library ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dup_library(tmp_path_factory, shared):
    """Photos with known copies and known non-copies (other shots of a scene), indexed once."""
    hol = shared / "datasets" / "holidays-dev" / "images"
    root = tmp_path_factory.mktemp("dups")
    photos = root / "photos"
    photos.mkdir()
    for name in ("100000", "100001", "100002", "100200", "100201", "126400"):
        shutil.copy(hol / f"{name}.jpg", photos / f"{name}.jpg")
    shutil.copy(hol / "100000.jpg", photos / "exact_100000.jpg")  # exact
    img = Image.open(hol / "100200.jpg")
    img.save(photos / "same_100200.png")  # pixels (with the BMP below)
    img.save(photos / "same_100200.bmp")
    src = Image.open(hol / "126400.jpg").convert("RGB")
    for i, kind in enumerate(("thumbnail", "hflip", "random_crop", "rot90")):
        apply_edit(src, kind, np.random.default_rng(i)).save(photos / f"edit_{kind}.jpg", quality=90)
    lib_dir = root / "lib"
    with Library.open(lib_dir) as lib:
        lib.index([photos])
    return lib_dir, photos


def _tier_of(report, path) -> dict[str, str]:
    return {g.tier: g for g in report.groups if any(m.path == str(path) for m in g.members)}


def test_tiers_are_labelled(dup_library) -> None:
    lib_dir, photos = dup_library
    with Library.open(lib_dir) as lib:
        report = find_duplicates(lib)
        again = find_duplicates(lib)
    assert [g.as_dict() for g in report.groups] == [g.as_dict() for g in again.groups]  # stable
    exact = _tier_of(report, photos / "exact_100000.jpg")["exact"]
    assert {m.path for m in exact.members} == {str(photos / "100000.jpg"), str(photos / "exact_100000.jpg")}
    pixels = _tier_of(report, photos / "same_100200.png")["pixels"]
    assert str(photos / "same_100200.bmp") in {m.path for m in pixels.members}
    near = _tier_of(report, photos / "126400.jpg")["near"]
    paths = {m.path for m in near.members}
    # (90-degree turns are verified when they are CNN candidates; their cosine can fall below the floor)
    assert {str(photos / f"edit_{k}.jpg") for k in ("thumbnail", "hflip")} <= paths
    assert near.kept.path == str(photos / "126400.jpg") or near.kept.width * near.kept.height >= 400 * 300
    assert sum(m.keep for m in near.members) == 1
    # other shots of one scene are never near-duplicates of each other
    for g in report.groups:
        if g.tier in ("exact", "pixels", "near"):
            names = {m.path.rsplit("/", 1)[1][:6] for m in g.members if m.path.rsplit("/", 1)[1][:1] == "1"}
            assert not ({"100000", "100001", "100002"} & names and len(names & {"100000", "100001", "100002"}) > 1)
            assert len(names & {"100200", "100201"}) <= 1
    with Library.open(lib_dir) as lib:
        cached = find_duplicates(lib)
    assert cached.stats["verified_pairs"] == 0  # scores come from the cache on re-runs


def test_turned_copies_with_rotations(dup_library) -> None:
    lib_dir, photos = dup_library
    with Library.open(lib_dir) as lib:
        report = find_duplicates(lib, similar=False, rotations=True)
        with lib.sessions() as session:
            cached = session.query(dup.decisions.RotatedVectorRow).count()
        again = find_duplicates(lib, similar=False, rotations=True)
    near = _tier_of(report, photos / "126400.jpg")["near"]
    assert str(photos / "edit_rot90.jpg") in {m.path for m in near.members}
    assert report.stats["turned_candidate_pairs"] >= 1
    assert cached == 2 * report.stats["units"]  # 90 and 180 degrees, once per content
    assert again.stats["seconds"]["turned_embedding"] < report.stats["seconds"]["turned_embedding"]
    assert [g.as_dict() for g in again.groups] == [g.as_dict() for g in report.groups]


def test_not_duplicate_is_remembered(dup_library) -> None:
    lib_dir, photos = dup_library
    a, b = photos / "126400.jpg", photos / "edit_hflip.jpg"
    res = runner.invoke(app, ["not-duplicate", str(a), str(b), "-L", str(lib_dir)])
    assert res.exit_code == 0, res.output
    with Library.open(lib_dir) as lib:
        report = find_duplicates(lib, similar=False)
    for g in report.groups:  # never in one group, whichever file is kept or is the representative
        assert not {str(a), str(b)} <= {m.path for m in g.members}, g.as_dict()
    res = runner.invoke(app, ["duplicates", "--not-duplicate", str(a), str(b), "-L", str(lib_dir), "--json"])
    assert json.loads(res.stdout)["added"] is False


def test_cli_outputs(dup_library, tmp_path) -> None:
    lib_dir, photos = dup_library
    res = runner.invoke(app, ["duplicates", "-L", str(lib_dir), "--json", "-q", "--plan", str(tmp_path / "p.json"),
                              "--html", str(tmp_path / "r.html")])  # fmt: skip
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    tiers = {g["tier"] for g in data["groups"]}
    assert {"exact", "pixels", "near"} <= tiers
    member = data["groups"][0]["members"][0]
    assert {"path", "score", "keep", "width", "height", "size", "format", "mtime"} <= set(member)
    plan = json.loads((tmp_path / "p.json").read_text())
    assert plan["moves"] and all(not m["path"].endswith("100000.jpg") or "exact_" in m["path"] for m in plan["moves"])
    html = (tmp_path / "r.html").read_text()
    assert "data:image/jpeg;base64," in html and "KEEP" in html
    res = runner.invoke(app, ["duplicates", "-L", str(lib_dir), "--csv", "--no-similar"])
    assert res.stdout.splitlines()[0].startswith("group,tier,spread,path")
    res = runner.invoke(app, ["duplicates", str(photos / "nope"), "-L", str(lib_dir)])
    assert "no duplicates" in res.stdout


def test_query_duplicates_only_exit_codes(dup_library, tmp_path, make_photo) -> None:
    lib_dir, photos = dup_library
    clean = tmp_path / "clean"
    make_photo(clean / "new.png", 77)
    res = runner.invoke(app, ["query", "--dir", str(clean), "--duplicates-only", "-L", str(lib_dir), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["duplicates"] == []
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    shutil.copy(photos / "100201.jpg", incoming / "a.jpg")
    src = Image.open(photos / "126400.jpg").convert("RGB")
    apply_edit(src, "thumbnail", np.random.default_rng(9)).save(incoming / "b.jpg")
    make_photo(incoming / "c.png", 78)
    res = runner.invoke(app, ["query", "--dir", str(incoming), "--duplicates-only", "-L", str(lib_dir), "--json"])
    assert res.exit_code == 3, res.output
    found = {d["path"].rsplit("/", 1)[1]: d for d in json.loads(res.stdout)["duplicates"]}
    assert set(found) == {"a.jpg", "b.jpg"}
    assert found["a.jpg"]["tier"] == "exact" and found["b.jpg"]["tier"] == "near"
    # a copy turned sideways is found too (the probe is searched turned)
    apply_edit(src, "rot270", np.random.default_rng(0)).save(incoming / "d.jpg", quality=90)
    res = runner.invoke(app, ["query", "--dir", str(incoming), "--duplicates-only", "-L", str(lib_dir), "--json"])
    found = {d["path"].rsplit("/", 1)[1]: d for d in json.loads(res.stdout)["duplicates"]}
    assert found["d.jpg"]["tier"] == "near" and str(photos / "126400.jpg") in found["d.jpg"]["matches"]
    # --threshold is honoured: above every possible score only the exact copy is left
    res = runner.invoke(
        app, ["query", "--dir", str(incoming), "--duplicates-only", "--threshold", "1.01", "-L", str(lib_dir), "--json"]
    )
    assert res.exit_code == 3, res.output
    assert [d["path"].rsplit("/", 1)[1] for d in json.loads(res.stdout)["duplicates"]] == ["a.jpg"]


def test_imagededup_photos(shared, tmp_path) -> None:
    data = shared / "datasets" / "imagededup-tests" / "data"
    truth = json.loads((data.parent / "groundtruth.json").read_text())
    with Library.open(tmp_path / "lib") as lib:
        lib.index([data])
        report = find_duplicates(lib, similar=False)
    group_of: dict[str, int] = {}
    for gi, g in enumerate(report.groups):
        for m in g.members:
            group_of[str(m.path)] = gi
    for expected in truth["near_duplicate_groups"]:
        present = [str(data / p) for p in expected if str(data / p) in group_of]
        # every indexed copy of a ground-truth group lands in one group with the base image
        base = str(data / expected[0])
        assert base in group_of
        assert sum(group_of[p] == group_of[base] for p in present) >= len(present) - 2, (expected, present)
    bases = [str(data / "base_images" / n) for n in truth["distinct_base_images"]]
    assert len({group_of.get(b, -i - 1) for i, b in enumerate(bases)}) == len(bases)


# --- calibration -------------------------------------------------------------------------------------


def test_same_picture(shared, tmp_path) -> None:
    from searcher.calibrate import same_picture

    hol = shared / "datasets" / "holidays-dev" / "images"
    img = Image.open(hol / "100200.jpg").convert("RGB")
    img.save(tmp_path / "resaved.jpg", quality=75)
    img.resize((img.width // 2, img.height // 2)).save(tmp_path / "half.png")
    apply_edit(img, "center_crop", np.random.default_rng(0)).save(tmp_path / "crop.png")
    assert same_picture(str(hol / "100200.jpg"), str(tmp_path / "resaved.jpg"))
    assert same_picture(str(hol / "100200.jpg"), str(tmp_path / "half.png"))
    assert not same_picture(str(hol / "100200.jpg"), str(tmp_path / "crop.png"))
    assert not same_picture(str(hol / "100200.jpg"), str(hol / "100201.jpg"))  # another shot


def test_calibration_does_not_count_real_duplicates_as_negatives(shared, tmp_path) -> None:
    """A library that already holds a re-saved copy: that pair is no negative (it scores ~1 and, with
    its edited copies, used to push the threshold above 1)."""
    from searcher.calibrate import calibrate

    hol = shared / "datasets" / "holidays-dev" / "images"
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("100000", "100001", "100200", "100201", "126400"):
        shutil.copy(hol / f"{name}.jpg", photos / f"{name}.jpg")
    Image.open(hol / "100200.jpg").convert("RGB").save(photos / "resaved_100200.jpg", quality=80)
    with Library.open(tmp_path / "lib") as lib:
        lib.index([photos])
        report = calibrate(lib, sample=6, kinds=("jpeg", "hflip"), neighbours=2, store_result=False)
    found = {frozenset(p.rsplit("/", 1)[1] for p in (d["a"], d["b"])) for d in report.library_duplicates}
    assert frozenset({"100200.jpg", "resaved_100200.jpg"}) in found
    for neg in report.top_negatives:
        assert {neg["a"].rsplit("/", 1)[1], neg["b"].rsplit("/", 1)[1]} != {"100200.jpg", "resaved_100200.jpg"}
    assert report.negative_max < 0.99  # other shots of a scene, but no copy among the negatives
    assert report.threshold <= 1.0 and report.precision >= 0.99 and report.recall == 1.0
