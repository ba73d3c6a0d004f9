"""Near-duplicate benchmark: searcher (CNN candidates + pixel verification) vs a 64-bit pHash.

    python scripts/dup_benchmark.py [--sources 50] [--out bench-out/dup_benchmark.json]

Builds, from ../shared/datasets: edited copies (every kind in searcher.edits) of ``--sources``
photos (holidays-dev group heads of odd-numbered groups, then flowers17 and sample photos), and
as distractors every other holidays-dev photo (other shots of the same scenes: similar, NOT
duplicates) plus a slice of flowers17. Everything is indexed into a temporary library and
``find_duplicates`` runs with the shipped threshold. Pair-level precision and recall:

* a predicted pair is any two files in one exact / pixels / near group (similar groups are
  suggestions and do not count); it is correct when both come from the same source photo;
* recall is over (source, edited copy) pairs, also per kind of edit.

The same figures are computed for pHash (DCT of a 32x32 grey image, 8x8 low frequencies vs
their median) at Hamming distance <= 10 over all pairs of the same files. The time of the
candidate + grouping stage over 100,000 vectors comes from scripts/bench_duplicates.py.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from searcher.decode import open_image  # noqa: E402
from searcher.duplicates import find_duplicates  # noqa: E402
from searcher.edits import EDIT_KINDS, make_benchmark  # noqa: E402
from searcher.library import Library  # noqa: E402


def shared_dir() -> Path:
    path = Path(os.environ.get("SEARCHER_SHARED", REPO.parent / "shared"))
    if not (path / "datasets").is_dir():
        sys.exit(f"shared data not found at {path} (set SEARCHER_SHARED)")
    return path


# --- pHash -------------------------------------------------------------------------------------------


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    m = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2 / n)
    m[0] /= np.sqrt(2)
    return m


_D32 = _dct_matrix(32)


def phash(path: str) -> int:
    """64-bit perceptual hash (as imagehash.phash: 32x32 grey, 2-D DCT, 8x8 low band vs median)."""
    from PIL import Image

    img = open_image(path).image.convert("L").resize((32, 32), Image.Resampling.LANCZOS)
    pix = np.asarray(img, dtype=np.float64)
    dct = _D32 @ pix @ _D32.T
    low = dct[:8, :8]
    bits = (low > np.median(low)).ravel()
    return int(sum(1 << i for i, b in enumerate(bits) if b))


def hamming_pairs(hashes: list[int], max_dist: int) -> set[tuple[int, int]]:
    arr = np.array(hashes, dtype=np.uint64)
    out = set()
    for i in range(len(arr)):
        x = np.bitwise_xor(arr[i], arr[i + 1 :])
        dist = np.unpackbits(x.view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1)
        for j in np.nonzero(dist <= max_dist)[0]:
            out.add((i, i + 1 + int(j)))
    return out


# --- evaluation ------------------------------------------------------------------------------------


def evaluate(
    predicted: set[tuple[int, int]], family: list[int], truth: list[tuple[int, int, str]]
) -> dict[str, object]:
    correct = sum(1 for a, b in predicted if family[a] == family[b])
    precision = correct / len(predicted) if predicted else 1.0
    hit = [(min(a, b), max(a, b)) in predicted for a, b, _ in truth]
    by_kind: dict[str, list[bool]] = {}
    for (_, _, kind), h in zip(truth, hit, strict=True):
        by_kind.setdefault(kind, []).append(h)
    return {
        "predicted_pairs": len(predicted),
        "correct_pairs": correct,
        "precision": round(precision, 4),
        "recall": round(float(np.mean(hit)), 4),
        "recall_by_kind": {k: round(float(np.mean(v)), 3) for k, v in by_kind.items()},
    }


def calibrate_default(out: Path, sample: int = 24) -> None:
    """The shipped threshold: `searcher calibrate` on photos the benchmark does not use as sources."""
    from searcher.calibrate import calibrate

    shared = shared_dir()
    hol = shared / "datasets" / "holidays-dev"
    groups = json.loads((hol / "groundtruth.json").read_text())["groups"]
    flowers = sorted((shared / "datasets" / "flowers17" / "images").glob("*.jpg"))
    photos = [hol / "images" / n for g in groups[0::2] for n in g] + flowers[4::7]
    work = Path(tempfile.mkdtemp(prefix="searcher-calib-"))
    try:
        links = work / "photos"
        links.mkdir()
        for i, p in enumerate(photos):
            os.symlink(p, links / f"{i:05d}_{p.name}")
        with Library.open(work / "library") as lib:
            lib.index([links])
            report = calibrate(lib, sample=sample, target_precision=0.99, store_result=False)
        data = json.loads(out.read_text()) if out.exists() else {}
        data.setdefault("backbones", {})[report.backbone] = {
            "threshold": round(report.threshold, 4),
            "target_precision": report.target_precision,
            "measured": report.as_dict(),
            "library": f"{len(photos)} photos: holidays-dev groups[0::2] (all shots) + flowers17[4::7]",
            "command": "python scripts/dup_benchmark.py --calibrate " + str(out),
        }
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(data, indent=2) + "\n")
        print(json.dumps(report.as_dict(), indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sources", type=int, default=50)
    ap.add_argument("--flowers", type=int, default=150, help="flowers17 distractors")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", type=Path, default=REPO / "bench-out" / "dup_benchmark.json")
    ap.add_argument("--no-100k", action="store_true", help="skip the 100,000-vector timing")
    ap.add_argument("--keep", type=Path, default=None, help="keep the generated library in this folder")
    ap.add_argument(
        "--calibrate",
        type=Path,
        default=None,
        help="instead: calibrate the shipped default on a library of the OTHER holidays-dev groups "
        "(even-numbered) plus flowers17, and write it to this JSON (searcher/data/duplicate_thresholds.json)",
    )
    args = ap.parse_args()
    if args.calibrate is not None:
        calibrate_default(args.calibrate)
        return
    started = time.monotonic()
    shared = shared_dir()
    hol = shared / "datasets" / "holidays-dev"
    groups = json.loads((hol / "groundtruth.json").read_text())["groups"]
    flowers = sorted((shared / "datasets" / "flowers17" / "images").glob("*.jpg"))
    samples = sorted((shared / "datasets" / "sample-photos" / "images").glob("*"))
    heads = [str(hol / "images" / g[0]) for g in groups[1::2]]
    pool = heads + [str(p) for p in flowers[1::40]] + [str(p) for p in samples]
    sources = pool[: args.sources]
    source_set = set(sources)
    distractors = [str(hol / "images" / n) for g in groups for n in g if str(hol / "images" / n) not in source_set]
    distractors += [str(p) for p in flowers[::9] if str(p) not in source_set][: args.flowers]

    work = Path(tempfile.mkdtemp(prefix="searcher-dupbench-"))
    try:
        t0 = time.monotonic()
        manifest = make_benchmark(sources, work / "copies", EDIT_KINDS, seed=args.seed)
        t_edit = time.monotonic() - t0
        files = sources + distractors + [m["copy"] for m in manifest]
        idx = {p: i for i, p in enumerate(files)}
        family = list(range(len(files)))
        for m in manifest:
            family[idx[m["copy"]]] = idx[m["source"]]
        truth = [(idx[m["source"]], idx[m["copy"]], m["kind"]) for m in manifest]
        # the library indexes links to the shared photos (never copies them) and the generated copies
        links = work / "shared-links"
        links.mkdir()
        for p in sources + distractors:
            dst = links / f"{idx[p]:05d}_{Path(p).name}"
            os.symlink(p, dst)
        real = {str(links / f"{idx[p]:05d}_{Path(p).name}"): p for p in sources + distractors}

        lib_dir = args.keep or work / "library"
        t0 = time.monotonic()
        with Library.open(lib_dir) as lib:
            lib.index([links, work / "copies"])
            t_index = time.monotonic() - t0
            model = lib.find_model()
            with lib.sessions() as session:
                from searcher import store

                ids, vecs = [], []
                for i, v in store.iter_vectors(session, model.id):
                    ids.append(i)
                    vecs.append(v)
            (REPO / "bench-out").mkdir(exist_ok=True)
            np.save(REPO / "bench-out" / "real_vectors.npy", np.concatenate(vecs))
            t0 = time.monotonic()
            report = find_duplicates(lib, similar=False)
            t_dup = time.monotonic() - t0
        predicted: set[tuple[int, int]] = set()
        for g in report.groups:
            if g.tier == "similar":
                continue
            members = [idx[real.get(m.path, m.path)] for m in g.members]
            for a, b in itertools.combinations(sorted(members), 2):
                predicted.add((a, b))
        ours = evaluate(predicted, family, truth)
        ours["threshold"] = report.thresholds.verified
        ours["threshold_source"] = report.thresholds.source
        ours["stats"] = report.stats
        ours["seconds"] = round(t_dup, 1)

        # candidate recall: is the copy among the source's CNN candidates at all?
        t0 = time.monotonic()
        hashes = [phash(p) for p in files]
        ph_pairs = hamming_pairs(hashes, 10)
        t_ph = time.monotonic() - t0
        theirs = evaluate(ph_pairs, family, truth)
        theirs["seconds"] = round(t_ph, 1)
        holiday_pairs = sum(len(g) * (len(g) - 1) // 2 for g in groups)
        result = {
            "command": "python scripts/dup_benchmark.py " + " ".join(sys.argv[1:]),
            "sources": len(sources),
            "edit_kinds": list(EDIT_KINDS),
            "copies": len(manifest),
            "distractors": len(distractors),
            "files": len(files),
            "holidays_same_scene_pairs_counted_as_negatives": holiday_pairs,
            "searcher": ours,
            "phash_hamming_10": theirs,
            "seconds": {"edits": round(t_edit, 1), "index": round(t_index, 1), "duplicates": round(t_dup, 1)},
        }
        if not args.no_100k:
            sys.path.insert(0, str(REPO / "scripts"))
            import bench_duplicates

            result["duplicates_100k"] = bench_duplicates.run(100_000, REPO / "bench-out" / "real_vectors.npy")
        result["seconds"]["total"] = round(time.monotonic() - started, 1)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps({k: v for k, v in result.items()}, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
