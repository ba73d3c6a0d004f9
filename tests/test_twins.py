"""Burst shots (searcher.twins): a copy of one of two near-identical shots finds its own, on real photos.

holidays-dev holds tripod bursts taken seconds apart (112600/112601, 116401/116402): an edited copy of
one is tied to both by a homography, and the verification's order between them was chance.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from searcher import twins
from searcher.edits import apply_edit
from searcher.twins import settle_twins, twin_features, twin_features_of_path, twin_preference
from searcher.verify import FeatureCache

BURSTS = [("112601", "112600"), ("116401", "116402")]
KINDS = ("perspective", "combo_photo_of_print", "crop_large")


@pytest.fixture(scope="module")
def holidays(shared: Path) -> Path:
    return shared / "datasets" / "holidays-dev" / "images"


def _copy(holidays: Path, name: str, kind: str, seed: int, split: str = "report") -> Image.Image:
    img = Image.open(holidays / f"{name}.jpg").convert("RGB")
    return apply_edit(img, kind, np.random.default_rng([seed, 7]), split)


def test_a_copy_prefers_its_own_burst_shot(holidays: Path) -> None:
    """Edited copies (photos of a print, perspective, crops: the report parameters) of either shot of
    two bursts: put their source second and the twin first, and the twin test asks for the swap in
    most; put their source first, and it never asks to swap it away."""
    asked, wrong, n = 0, [], 0
    for source, twin in BURSTS:
        for name, other in ((source, twin), (twin, source)):
            mine, theirs = (
                twin_features_of_path(str(holidays / f"{name}.jpg")),
                twin_features_of_path(str(holidays / f"{other}.jpg")),
            )
            for kind in KINDS:
                for seed in range(2):
                    probe = twin_features(_copy(holidays, name, kind, seed), twins.PROBE_SIDE)
                    n += 1
                    swap = twin_preference(probe, theirs, mine)  # the twin first, the source second
                    asked += swap is not None and swap < -twins.PREFERENCE_MARGIN
                    keep = twin_preference(probe, mine, theirs)  # the source first
                    if keep is not None and keep < -twins.PREFERENCE_MARGIN:
                        wrong.append((name, kind, seed, keep))
    assert not wrong, wrong
    assert asked >= 0.75 * n, (asked, n)


def test_no_preference_between_unrelated_pictures(holidays: Path) -> None:
    probe = twin_features(_copy(holidays, "112601", "perspective", 0), twins.PROBE_SIDE)
    first = twin_features_of_path(str(holidays / "112601.jpg"))
    unrelated = twin_features_of_path(str(holidays / "100000.jpg"))
    assert twin_preference(probe, first, unrelated) is None
    assert twin_preference(probe, unrelated, first) is None


def test_settle_twins_puts_the_source_first(holidays: Path, tmp_path: Path) -> None:
    """The order the verification gave (twin first) is changed only when both are tied to the probe;
    a turned result never replaces an upright one; an unreadable file changes nothing."""
    probe = tmp_path / "print.jpg"
    _copy(holidays, "116401", "combo_photo_of_print", 0).save(probe, quality=92)
    paths = [str(holidays / "116402.jpg"), str(holidays / "116401.jpg")]
    cache = FeatureCache()
    assert settle_twins(str(probe), paths, [0, 1], [True, True], cache) == [1, 0]
    assert settle_twins(str(probe), paths, [0, 1], [False, True], cache) == [0, 1]  # the first is not tied
    assert settle_twins(str(probe), paths, [0, 1], [True, False], cache) == [0, 1]  # nor is the twin
    assert settle_twins(str(probe), paths, [0, 1], [True, True], cache, turned=[False, True]) == [0, 1]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    assert settle_twins(str(probe), [str(broken), paths[1]], [0, 1], [True, True], FeatureCache()) == [0, 1]


def test_default_query_finds_the_burst_shot_a_print_was_made_of(
    holidays: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through Library.query: photos of prints of one shot of five bursts, with the twins and other
    photos indexed. With the twin step off (an infinite margin) the verification's order puts the twin
    first for many; with it, more find their own shot, and none that found it loses it."""
    from searcher import Library

    folder = tmp_path / "photos"
    folder.mkdir()
    bursts = {"112403": "112404", "119604": "119605", "116401": "116402", "112601": "112600", "122602": "122601"}
    names = [*bursts, *bursts.values(), "122600", "100000", "100100", "100200"]
    for name in names:
        (folder / f"{name}.jpg").symlink_to(holidays / f"{name}.jpg")
    cases = []
    for source in bursts:
        for seed in range(3):
            path = tmp_path / f"{source}_{seed}.jpg"
            _copy(holidays, source, "combo_photo_of_print", seed, "tune").save(path, quality=92)
            cases.append((str(path), str(folder / f"{source}.jpg")))
    with Library.open(tmp_path / "lib", create=True) as lib:
        lib.index([str(folder)])

        def found() -> list[bool]:
            lib._verify_cache = None
            return [lib.query([probe], k=5)[0].results[0].path == source for probe, source in cases]

        with_twins = found()
        monkeypatch.setattr(twins, "PREFERENCE_MARGIN", float("inf"))
        without = found()
    lost = [case for case, now, before in zip(cases, with_twins, without, strict=True) if before and not now]
    assert not lost, lost
    assert sum(with_twins) >= sum(without) + 4, (sum(with_twins), sum(without))
