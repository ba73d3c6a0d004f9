"""`searcher duplicates` on a library shaped like a user's: edited copies + other shots of each scene.

    python scripts/dup_library_bench.py --size 3000                 # -> scripts/results/dup_library_3000.json
    python scripts/dup_library_bench.py --size 1000 --profile 40    # plus the 40 costliest functions (cProfile)

The library is built once under ``--work`` (default /tmp/searcher-dup-library-SIZE, never in the repo)
from ../shared/datasets/holidays-dev ``groups[1::2]`` (the benchmark half; the shipped threshold is
calibrated on ``groups[0::2]``, see scripts/dup_benchmark.py): the first shot of each group is an
original, the other shots of the group stay as same-scene NON-duplicates, and the rest of ``--size``
are edited copies of the originals (:func:`searcher.edits.apply_edit`, every kind in turn, a new seed
each round), saved as JPEG quality 90. It is indexed with ``searcher index`` (timed), then
:func:`searcher.duplicates.find_duplicates` runs with default settings on a fresh copy of the library
(no cached verification scores), as ``searcher duplicates --json`` does.

Written JSON: the time split (the stats of the report: load / candidates / verify / group), pairs
claimed and their precision (a pair is any two files in one exact/pixels/near group; correct when both
come from one original), copy-to-original recall overall and per edit kind, and for every copy not
grouped with its original why: ``refused by verification`` (the pair was verified, below the threshold),
``in another group`` (verified above it, yet grouped elsewhere), ``candidate, not verified with its original``
(among the CNN-neighbour pairs, but taken by another representative first) or ``never a candidate``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import itertools
import json
import os
import pstats
import shutil
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from searcher import decisions  # noqa: E402
from searcher import duplicates as dup  # noqa: E402
from searcher.decode import open_image  # noqa: E402
from searcher.edits import KIND_SETS, apply_edit  # noqa: E402
from searcher.library import Library  # noqa: E402
from searcher.verify import VERIFY_VERSION  # noqa: E402

# the edits default `searcher duplicates` is meant to group with their original (the wide generator's upright
# kinds): turned copies (90/180/270 degrees, upside down) need `--rotations`; screenshots, photos of a print or
# screen, and crops keeping under half of the picture are new pictures *of* a picture, not copies of the file
TURNED = {"vflip", "rot90", "rot180", "rot270", "combo_rotated_thumb"}
NOT_COPIES = {"screenshot", "perspective", "combo_photo_of_print", "combo_screenshot_share", "crop_small"}
DUPLICATE_KINDS = tuple(k for k in KIND_SETS["wide"] if k not in TURNED | NOT_COPIES)
# --half: which holidays-dev groups and which edit parameters. "report" is what the README states; "tune" is
# the other half (groups[0::2], the tune bins of every edit parameter), where verification rules are tuned
HALVES = {"report": (slice(1, None, 2), "report"), "tune": (slice(0, None, 2), "tune")}


def shared_dir() -> Path:
    path = Path(os.environ.get("SEARCHER_SHARED", REPO.parent / "shared"))
    if not (path / "datasets").is_dir():
        sys.exit(f"shared data not found at {path} (set SEARCHER_SHARED)")
    return path


def build(size: int, work: Path, half: str = "report") -> dict[str, Any]:
    """Write the photos (once) and return the manifest: file name -> (original id, edit kind or role)."""
    manifest_path = work / "manifest.json"
    groups_slice, split = HALVES[half]
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        same = manifest["size"] == size and manifest.get("kinds") == list(DUPLICATE_KINDS)
        if same and manifest.get("split", "report") == split:
            return manifest
    photos = work / "photos"
    shutil.rmtree(photos, ignore_errors=True)
    photos.mkdir(parents=True)
    hol = shared_dir() / "datasets" / "holidays-dev"
    groups = json.loads((hol / "groundtruth.json").read_text())["groups"][groups_slice]
    files: dict[str, dict[str, Any]] = {}
    originals = []
    for g in groups:
        src = g[0].rsplit(".", 1)[0]
        originals.append(src)
        for i, name in enumerate(g):
            shutil.copy(hol / "images" / name, photos / name)
            files[name] = {
                "source": src if i == 0 else name.rsplit(".", 1)[0],
                "role": "original" if i == 0 else "other shot",
            }
    n_copies = max(0, size - len(files))
    images = {src: open_image(hol / "images" / f"{src}.jpg").image.convert("RGB") for src in originals}
    kinds = DUPLICATE_KINDS
    jobs = list(itertools.islice(((r, k, s) for r in itertools.count() for k in kinds for s in originals), n_copies))
    for r, kind, src in jobs:
        rng = np.random.default_rng([int(src), r, kinds.index(kind)])
        name = f"{src}_{kind}_{r}.jpg"
        apply_edit(images[src], kind, rng, split).save(photos / name, quality=90)
        files[name] = {"source": src, "role": kind}
    manifest = {"size": size, "files": files, "originals": len(originals), "copies": len(jobs),
                "kinds": list(kinds), "split": split}  # fmt: skip
    manifest_path.write_text(json.dumps(manifest))
    return manifest


def index(work: Path) -> float:
    lib = work / "lib"
    if (work / "indexed").exists():
        return json.loads((work / "indexed").read_text())["seconds"]
    shutil.rmtree(lib, ignore_errors=True)
    t = time.monotonic()
    exe = REPO / ".venv" / "bin" / "searcher"
    subprocess.run([str(exe), "index", str(work / "photos"), "-L", str(lib), "-q"], check=True)
    seconds = time.monotonic() - t
    (work / "indexed").write_text(json.dumps({"seconds": seconds}))
    return seconds


def evaluate(report: dup.DuplicateReport, manifest: dict[str, Any], lib: Library) -> dict[str, Any]:
    files = manifest["files"]

    def source(path: str) -> str:
        return files[Path(path).name]["source"]

    group_of: dict[str, int] = {}
    claimed = correct = 0
    for gi, g in enumerate(report.groups):
        if g.tier == "similar":
            continue
        names = [m.path for m in g.members]
        for p in names:
            group_of[Path(p).name] = gi
        for a, b in itertools.combinations(names, 2):
            claimed += 1
            correct += source(a) == source(b)
    # why copies were missed: the scores the run verified (cached in the library), the candidate pairs
    model = lib.find_model(None)
    units, vectors = dup.load_units(lib, model, None)
    th = report.thresholds
    ci, cj, cs = dup.candidate_pairs(vectors, k=dup.DEFAULT_K, min_cosine=th.candidate_cosine)
    unit_of = {Path(m.path).name: i for i, u in enumerate(units) for m in u.rows}
    cand = {(int(a), int(b)) for a, b in zip(ci, cj, strict=True)}
    cand |= {(b, a) for a, b in cand}
    with lib.sessions() as session:
        stored = decisions.cached_scores(
            session, {decisions.pair_key(units[a].content_hash, units[b].content_hash) for a, b in cand}, VERIFY_VERSION
        )
    per_kind: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    why: Counter[str] = Counter()
    why_kind: dict[str, Counter[str]] = defaultdict(Counter)
    missed = []
    scores_missed: dict[str, list[float]] = defaultdict(list)
    for name, info in files.items():
        if info["role"] in ("original", "other shot"):
            continue
        orig = f"{info['source']}.jpg"
        found = name in group_of and group_of.get(orig) == group_of[name]
        per_kind[info["role"]][0] += found
        per_kind[info["role"]][1] += 1
        if found:
            continue
        a, b = unit_of[name], unit_of[orig]
        s = stored.get(decisions.pair_key(units[a].content_hash, units[b].content_hash))
        if s is not None:
            reason = "refused by verification" if s < th.verified else "in another group"
            scores_missed[info["role"]].append(round(s, 3))
        elif (a, b) in cand:
            reason = "candidate, not verified with its original"
        else:
            reason = "never a candidate"
        why[reason] += 1
        why_kind[info["role"]][reason] += 1
        missed.append({"file": name, "kind": info["role"], "why": reason})
    found_total = sum(v[0] for v in per_kind.values())
    total = sum(v[1] for v in per_kind.values())
    return {
        "pairs_claimed": claimed,
        "pairs_correct": correct,
        "precision": round(correct / claimed, 4) if claimed else None,
        "copy_to_original_recall": round(found_total / total, 4) if total else None,
        "copies": total,
        "recall_per_kind": {k: round(v[0] / v[1], 3) for k, v in sorted(per_kind.items())},
        "missed_why": dict(why),
        "missed_why_per_kind": {k: dict(v) for k, v in sorted(why_kind.items())},
        "missed": missed,
        "missed_verified_scores_per_kind": {k: sorted(v) for k, v in sorted(scores_missed.items())},
    }


def profile_verification(lib: Library, n_pairs: int, top: int) -> dict[str, Any]:
    """cProfile of verifying ``n_pairs`` candidate pairs in this thread (the run itself verifies in worker
    threads, which cProfile does not see): where a pair's time goes, feature extraction included."""
    from searcher.verify import FeatureCache, verify_symmetric

    model = lib.find_model(None)
    units, vectors = dup.load_units(lib, model, None)
    ci, cj, _ = dup.candidate_pairs(vectors, k=dup.DEFAULT_K, min_cosine=dup.DEFAULT_CANDIDATE_COSINE)
    pick = np.random.default_rng(0).permutation(len(ci))[:n_pairs]
    cache = FeatureCache()
    prof = cProfile.Profile()
    t = time.monotonic()
    prof.enable()
    for i in pick:
        ua, ub = units[int(ci[i])], units[int(cj[i])]
        fa, fb = cache.get(ua.content_hash, ua.rows[0].path), cache.get(ub.content_hash, ub.rows[0].path)
        if fa is not None and fb is not None:
            verify_symmetric(fa, fb)
    prof.disable()
    wall = time.monotonic() - t
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(top)
    text = buf.getvalue()
    print(text)
    return {"pairs": len(pick), "images": len(cache._items), "seconds": round(wall, 2),
            "tottime_top": [line for line in text.splitlines() if line.strip()][-top - 1 :]}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=3000, help="images in the library (originals + other shots + copies)")
    ap.add_argument("--work", type=Path, help="where the library is built (default /tmp/searcher-dup-library-SIZE)")
    ap.add_argument("--out", type=Path, help="JSON output (default scripts/results/dup_library_SIZE.json)")
    ap.add_argument("--profile", type=int, default=0, help="also profile verification: the N costliest functions")
    ap.add_argument("--profile-pairs", type=int, default=300, help="candidate pairs verified under the profiler")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--half", choices=sorted(HALVES), default="report",
                    help="report: groups[1::2] with the report edit parameters (the README's figures); tune: "
                    "groups[0::2] with the tune parameters, for tuning verification rules")  # fmt: skip
    args = ap.parse_args()
    suffix = "" if args.half == "report" else f"-{args.half}"
    work = args.work or Path(f"/tmp/searcher-dup-library-{args.size}{suffix}")
    out = args.out or REPO / "scripts" / "results" / f"dup_library_{args.size}{suffix}.json"
    t = time.monotonic()
    manifest = build(args.size, work, args.half)
    t_build = time.monotonic() - t
    t_index = index(work)
    fresh = work / "lib-run"
    shutil.rmtree(fresh, ignore_errors=True)
    shutil.copytree(work / "lib", fresh)  # no verification scores cached from an earlier run
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    with Library.open(fresh) as lib:
        t = time.monotonic()
        report = dup.find_duplicates(lib, workers=args.workers)
        wall = time.monotonic() - t
        quality = evaluate(report, manifest, lib)
        profile = profile_verification(lib, args.profile_pairs, args.profile) if args.profile else None
    load_after = Path("/proc/loadavg").read_text().split()[:3]
    result: dict[str, Any] = {
        "command": f"python scripts/dup_library_bench.py --size {args.size}{'' if not suffix else ' --half tune'}",
        "library": {
            "images": len(manifest["files"]),
            "originals": manifest["originals"],
            "copies": manifest["copies"],
            "source": f"holidays-dev groups[{HALVES[args.half][0].start}::2], {args.half} edit parameters",
        },  # fmt: skip
        "threshold": report.thresholds.verified,
        "threshold_source": report.thresholds.source,
        "verify_version": VERIFY_VERSION,
        "seconds": {
            "build": round(t_build, 1),
            "index": round(t_index, 1),
            "duplicates": round(wall, 2),
            "split": report.stats["seconds"],
        },  # fmt: skip
        "stats": {k: v for k, v in report.stats.items() if k != "seconds"},
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "cpus": os.cpu_count(),
        **quality,
    }
    if profile:
        result["verification_profile"] = profile
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    brief = {k: result[k] for k in ("seconds", "stats", "precision", "copy_to_original_recall", "missed_why")}
    print(json.dumps(brief, indent=1))


if __name__ == "__main__":
    main()
