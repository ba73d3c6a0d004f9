"""Keep rules on ties (names that look like copies, shorter paths), the reason per kept file,
and the duplicates table in an 80-column terminal, on the sample photos."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from searcher.duplicates import KeepRules, Member, looks_like_copy
from searcher.library import Library


def _member(path: str) -> Member:
    return Member(0, path, "h", 100, 100, 1000, 5, "JPEG")


@pytest.mark.parametrize(
    "name",
    ["rocket (copy).jpg", "Copy of rocket.jpg", "rocket_copy.jpg", "rocket-1.jpg", "rocket (1).jpg", "rocket copy.jpg",
     "rocket - Copy.jpg"],
)  # fmt: skip
def test_copy_names_lose_ties(tmp_path, name) -> None:
    original, copy = _member(str(tmp_path / "rocket.jpg")), _member(str(tmp_path / name))
    assert looks_like_copy(copy.path)
    rules = KeepRules()
    for order in ([original, copy], [copy, original]):
        assert min(order, key=rules.sort_key) is original
    assert rules.reason(original, [copy]) == "name does not look like a copy"


@pytest.mark.parametrize("name", ["IMG_0001.jpg", "2023-05-12.jpg", "holiday.jpg", "copyright.jpg", "DSC-120.jpg"])
def test_ordinary_names_do_not_look_like_copies(name) -> None:
    assert not looks_like_copy(f"/photos/{name}")


def test_shorter_path_then_reasons(tmp_path) -> None:
    short, deep = _member(str(tmp_path / "a.jpg")), _member(str(tmp_path / "sub" / "folder" / "a.jpg"))
    rules = KeepRules()
    assert min([deep, short], key=rules.sort_key) is short
    assert rules.reason(short, [deep]) == "shortest path"
    big = Member(0, str(tmp_path / "z (1).jpg"), "h", 400, 400, 10, 9, "JPEG")
    assert min([short, big], key=rules.sort_key) is big  # resolution beats the name
    assert rules.reason(big, [short]) == "highest resolution"
    ref_rules = KeepRules(reference=[str(tmp_path / "sub")])
    assert ref_rules.reason(deep, [short]) == "in a reference folder"


@pytest.fixture(scope="module")
def sample_library(tmp_path_factory):
    src = Path(__file__).resolve().parents[1] / "data" / "sample-photos"
    root = tmp_path_factory.mktemp("sample")
    photos = root / "photos" / "a rather long folder name" / "holiday 2026"
    photos.mkdir(parents=True)
    for name in ("rocket.jpg", "rocket (copy).jpg", "chelsea.jpg", "chelsea_small_copy.jpg", "coffee.jpg"):
        shutil.copy(src / name, photos / name)
        os.utime(photos / name, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))  # equal dates
    with Library.open(root / "lib") as lib:
        lib.index([photos])
    return root / "lib", photos


def _cli(*args: str, columns: int = 80) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": str(columns), "NO_COLOR": "1"}
    return subprocess.run([sys.executable, "-m", "searcher", *args], capture_output=True, text=True, env=env,
                          timeout=300)  # fmt: skip


def test_sample_rocket_original_is_kept_with_a_reason(sample_library) -> None:
    lib_dir, photos = sample_library
    res = _cli("duplicates", "-L", str(lib_dir), "--json", "-q", "--no-similar")
    assert res.returncode == 0, res.stderr
    groups = json.loads(res.stdout)["groups"]
    exact = next(g for g in groups if g["tier"] == "exact")
    by_name = {os.path.basename(m["path"]): m for m in exact["members"]}
    assert set(by_name) == {"rocket.jpg", "rocket (copy).jpg"}
    assert by_name["rocket.jpg"]["keep"] and not by_name["rocket (copy).jpg"]["keep"]
    assert by_name["rocket.jpg"]["reason"] == "name does not look like a copy"
    assert all(os.path.isabs(m["path"]) for g in groups for m in g["members"])  # absolute in --json
    assert all(m["reason"] for g in groups for m in g["members"] if m["keep"])


def test_table_fits_80_columns_with_relative_paths(sample_library) -> None:
    lib_dir, photos = sample_library
    res = _cli("duplicates", "-L", str(lib_dir), "--no-similar", "-q")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert f"in {photos}" in lines  # the common folder, once per group, on its own line
    assert all(len(line) <= 80 for line in lines if not line.startswith("in /")), res.stdout
    assert any("rocket (copy).jpg" in line for line in lines), res.stdout  # the whole name on one line
    assert any("chelsea_small_copy.jpg" in line for line in lines), res.stdout
    rows = [line for line in lines if "rocket" in line]
    assert rows and all(str(photos) not in line for line in rows)  # rows show paths relative to it
