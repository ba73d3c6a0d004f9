"""plan / apply / undo: quarantine moves are journalled, checked, and undone byte for byte."""

from __future__ import annotations

import json
import os

from searcher.actions import Journal, apply_plan, batches, make_plan, read_plan, undo, write_plan
from searcher.duplicates import DuplicateReport, Group, KeepRules, Member, Thresholds
from searcher.files import content_hash


def _member(path, keep, w=100, ref=False) -> Member:
    st = os.stat(path)
    return Member(0, str(path), content_hash(path), w, w, st.st_size, st.st_mtime_ns, "PNG", keep=keep, reference=ref)


def _setup(tmp_path, make_photo):
    lib = tmp_path / "lib"
    lib.mkdir()
    keep = make_photo(tmp_path / "photos" / "keep.png", 1)
    a = tmp_path / "photos" / "sub" / "copy_a.png"
    a.parent.mkdir(parents=True)
    a.write_bytes(keep.read_bytes())
    b = make_photo(tmp_path / "photos" / "copy_b.jpg", 1)
    c = make_photo(tmp_path / "ref" / "copy_c.png", 2)
    groups = [
        Group("exact", [_member(keep, True), _member(a, False)], 0.0),
        Group("near", [_member(keep, True), _member(b, False)], 0.02),
        Group("similar", [_member(keep, True), _member(c, True)], 0.1),
    ]
    report = DuplicateReport(groups, "m", Thresholds(0.9), KeepRules())
    return lib, report, keep, a, b, c


def _snapshot(paths):
    return {str(p): (p.read_bytes(), os.stat(p).st_mtime_ns) for p in paths}


def test_plan_apply_undo_round_trip(tmp_path, make_photo) -> None:
    lib, report, keep, a, b, c = _setup(tmp_path, make_photo)
    before = _snapshot([keep, a, b, c])
    plan = make_plan(report, lib)
    assert sorted(m["path"] for m in plan["moves"]) == sorted([str(a), str(b)])  # never the kept or similar
    write_plan(plan, tmp_path / "plan.json")
    result = apply_plan(read_plan(tmp_path / "plan.json"), lib)
    assert len(result.moved) == 2 and not result.skipped
    assert not a.exists() and not b.exists() and keep.exists() and c.exists()
    for _src, dst in result.moved:
        assert os.path.exists(dst) and dst.startswith(str(lib / "quarantine"))
    entries = Journal.read(lib / "quarantine" / result.batch / "journal.jsonl")
    ops = [e["op"] for e in entries]
    assert ops == ["begin", "move", "done", "move", "done", "end"]  # intent written before each move
    res = undo(lib)
    assert len(res.restored) == 2 and not res.problems
    assert _snapshot([keep, a, b, c]) == before
    assert batches(lib)[0]["undone"] is True
    assert undo(lib).restored == []  # nothing left to undo


def test_changed_file_and_missing_keep_are_refused(tmp_path, make_photo) -> None:
    lib, report, keep, a, b, c = _setup(tmp_path, make_photo)
    plan = make_plan(report, lib)
    b.write_bytes(b.read_bytes() + b"x")  # changed since planning
    result = apply_plan(plan, lib)
    assert [p for p, _ in result.moved] == [str(a)]
    assert any(p == str(b) and "changed" in r for p, r in result.skipped)
    undo(lib)
    keep.unlink()  # the copy to keep is gone: nothing of its groups may move
    result = apply_plan(plan, lib)
    assert result.moved == [] and a.exists()


def test_reference_folders_are_never_touched(tmp_path, make_photo) -> None:
    lib, report, keep, a, b, c = _setup(tmp_path, make_photo)
    plan = make_plan(report, lib)
    result = apply_plan(plan, lib, reference=[str(tmp_path / "photos" / "sub")])
    assert a.exists() and not b.exists()
    assert any(p == str(a) and "reference" in r for p, r in result.skipped)


def test_undo_after_a_crash_between_intent_and_move(tmp_path, make_photo) -> None:
    lib, report, keep, a, b, c = _setup(tmp_path, make_photo)
    result = apply_plan(make_plan(report, lib), lib, quarantine=tmp_path / "q")
    journal = tmp_path / "q" / result.batch / "journal.jsonl"
    # simulate: an extra intent whose move never happened, and a torn last line
    with open(journal, "a") as handle:
        handle.write(json.dumps({"op": "move", "src": str(keep), "dst": str(tmp_path / "q" / "x"), "hash": "0"}))
        handle.write('\n{"op": "do')
    res = undo(lib)
    assert not res.problems and a.exists() and b.exists() and keep.exists()
