"""Near-duplicate benchmark: searcher (CNN candidates + pixel verification) vs a 64-bit pHash.

    python scripts/dup_benchmark.py                         # the benchmark -> bench-out/dup_benchmark.json
    python scripts/dup_benchmark.py --calibrate searcher/data/duplicate_thresholds.json
    python scripts/dup_benchmark.py --scan-datasets scripts/dataset_duplicates.json

Everything comes from ../shared/datasets (``$SEARCHER_SHARED``), split in two DISJOINT halves:

* calibration (``--calibrate``, the shipped threshold): holidays-dev ``groups[0::2]`` (every
  shot), the flowers17 calibration half (a quarter of it by default) and the 19 sample photos;
  ``searcher calibrate`` on that library (edited copies of a sample as positives, CNN
  neighbours - other shots of a scene first of all - as negatives);
* benchmark (the default): holidays-dev ``groups[1::2]``: the first shot of ``--holidays``
  groups is a source, every other shot of those groups is a distractor that is NOT a
  duplicate (bursts, re-framed shots: the hard negatives); plus ``--flowers`` flowers17
  sources and ``--distractors`` more flowers17 photos from the benchmark half. Each source
  gets one edited copy per kind in :data:`searcher.edits.EDIT_KINDS`.

flowers17 holds real duplicates of its own (re-encoded, rescaled and cropped copies of one
photo under two names); ``--scan-datasets`` lists them (every CNN-neighbour pair of the shared
photos that pixel verification scores >= 0.45, flowers17 and sample photos only: holidays-dev
shots are different shots by its ground truth) and the list (15 of its pairs checked by eye) is kept in
``scripts/dataset_duplicates.json``. They are never negatives: the flowers17 halves are split by
duplicate cluster (both copies land on one side), calibration skips them as negatives, and
the benchmark counts a predicted pair of them as correct (and reports how many there were).

Benchmark metrics (pair level; ``similar`` suggestions never count):

* a predicted pair is any two files in one exact / pixels / near group; it is correct when
  both hold the same picture (a source, its copies, its dataset duplicates);
* recall is over (source, edited copy) pairs, also per kind of edit;
* pHash (DCT of a 32x32 grey image, 8x8 low band vs its median, as ``imagehash.phash``) at
  Hamming distance <= 10 over all pairs of the same files, measured in the same run.

The 100,000-vector timing of the candidate and grouping stage is scripts/bench_duplicates.py.
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
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from searcher.decode import open_image  # noqa: E402
from searcher.duplicates import find_duplicates, shipped_defaults, thresholds_for  # noqa: E402
from searcher.edits import EDIT_KINDS, make_benchmark  # noqa: E402
from searcher.library import Library  # noqa: E402

DATASET_DUPLICATES = REPO / "scripts" / "dataset_duplicates.json"
SCAN_MIN_SCORE = 0.45


def shared_dir() -> Path:
    path = Path(os.environ.get("SEARCHER_SHARED", REPO.parent / "shared"))
    if not (path / "datasets").is_dir():
        sys.exit(f"shared data not found at {path} (set SEARCHER_SHARED)")
    return path


def rel(path: str | Path) -> str:
    """A shared file's name relative to ``datasets/`` (how dataset_duplicates.json names them)."""
    p = str(path)
    return p.split("/datasets/", 1)[1] if "/datasets/" in p else p


# --- the data split ----------------------------------------------------------------------------------


def known_duplicates() -> list[tuple[str, str]]:
    """Pairs of shared photos (relative names) that are the same picture (scripts/dataset_duplicates.json)."""
    if not DATASET_DUPLICATES.exists():
        return []
    return [(p["a"], p["b"]) for p in json.loads(DATASET_DUPLICATES.read_text())["pairs"]]


def clusters(names: list[str], pairs: list[tuple[str, str]]) -> dict[str, str]:
    """Union-find over duplicate pairs: name -> the smallest name of its cluster (for each of ``names``)."""
    parent = {n: n for n in names}
    for a, b in pairs:
        parent.setdefault(a, a)
        parent.setdefault(b, b)

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        ra, rb = find(a), find(b)
        parent[max(ra, rb)] = min(ra, rb)
    return {n: find(n) for n in names}


def split(shared: Path, flowers_calibration_share: int = 4) -> dict[str, Any]:
    """The disjoint calibration / benchmark halves (see the module docstring)."""
    data = shared / "datasets"
    groups = json.loads((data / "holidays-dev" / "groundtruth.json").read_text())["groups"]
    flowers = sorted((data / "flowers17" / "images").glob("*.jpg"))
    names = [rel(p) for p in flowers]
    cluster = clusters(names, known_duplicates())
    order = {n: i for i, n in enumerate(names)}
    # by duplicate cluster, so the two names of one picture never land in different halves
    calib_flowers = [
        p for p, n in zip(flowers, names, strict=True) if order[cluster[n]] % flowers_calibration_share == 0
    ]
    bench_flowers = [p for p, n in zip(flowers, names, strict=True) if order[cluster[n]] % 4 == 2]
    return {
        "holidays_calibration": [[data / "holidays-dev" / "images" / n for n in g] for g in groups[0::2]],
        "holidays_benchmark": [[data / "holidays-dev" / "images" / n for n in g] for g in groups[1::2]],
        "flowers_calibration": calib_flowers,
        "flowers_benchmark": bench_flowers,
        "samples": sorted((data / "sample-photos" / "images").iterdir()),
    }


def link_all(paths: list[Path], folder: Path) -> dict[str, str]:
    """Symlink shared files into ``folder`` (never copy them); returns link -> real path."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for i, p in enumerate(paths):
        dst = folder / f"{i:05d}_{p.name}"
        os.symlink(p, dst)
        out[str(dst)] = str(p)
    return out


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
    predicted: set[tuple[int, int]],
    family: list[int],
    truth: list[tuple[int, int, str]],
    scene: list[int | None],
) -> dict[str, Any]:
    correct = sum(1 for a, b in predicted if family[a] == family[b])
    wrong = [(a, b) for a, b in predicted if family[a] != family[b]]
    same_scene = sum(1 for a, b in wrong if scene[a] is not None and scene[a] == scene[b])
    precision = correct / len(predicted) if predicted else 1.0
    hit = [(min(a, b), max(a, b)) in predicted for a, b, _ in truth]
    by_kind: dict[str, list[bool]] = {}
    for (_, _, kind), h in zip(truth, hit, strict=True):
        by_kind.setdefault(kind, []).append(h)
    return {
        "wrong_pair_examples": sorted((min(a, b), max(a, b)) for a, b in wrong)[:40],
        "predicted_pairs": len(predicted),
        "correct_pairs": correct,
        "wrong_pairs": len(wrong),
        "wrong_pairs_other_shot_of_one_scene": same_scene,  # or a copy of another shot
        "precision": round(precision, 4),
        "recall": round(float(np.mean(hit)), 4),
        "recall_by_kind": {k: round(float(np.mean(v)), 3) for k, v in by_kind.items()},
    }


def misses(report, index_of, truth: list[tuple[int, int, str]], names: list[str]) -> list[dict[str, Any]]:
    """Each (source, copy) pair not in one group, and where the two ended up."""
    where: dict[int, tuple[str, str, int]] = {}
    for g in report.groups:
        if g.tier != "similar":
            for m in g.members:
                where[index_of(m.path)] = (g.tier, Path(g.representative).name, len(g.members))
    out = []
    for a, b, kind in truth:
        if a in where and b in where and where[a] == where[b]:
            continue
        out.append(
            {"kind": kind, "source": Path(names[a]).name, "source_group": where.get(a), "copy_group": where.get(b)}
        )
    return out


def turned_cosines(lib, model, rows, ids, index_of, vec_of, truth, family) -> dict[str, Any]:
    """How close the turned probes of --rotations get: the best cosine over turns between each source
    and copy (either way), per kind; and each picture's best turned-probe cosine to an unrelated one."""
    from searcher import decisions

    hash_of = {index_of(rows[i].path): rows[i].content_hash for i in ids}
    with lib.sessions() as session:
        blobs = decisions.cached_rotations(session, model.key, list(hash_of.values()), (1, 2))
    turned = {
        i: np.stack([np.frombuffer(blobs[(h, t)], np.float32) for t in (1, 2)])
        for i, h in hash_of.items()
        if (h, 1) in blobs and (h, 2) in blobs
    }
    by_kind: dict[str, list[float]] = {}
    for a, b, kind in truth:
        if a in turned and b in turned:
            best = max(float((turned[a] @ vec_of[b]).max()), float((turned[b] @ vec_of[a]).max()))
            by_kind.setdefault(kind, []).append(best)
    order = sorted(turned)
    plain = np.stack([vec_of[i] for i in order])
    fam = np.array([family[i] for i in order])
    unrelated = []
    for i in order:
        sims = (turned[i] @ plain.T).max(axis=0)
        sims[fam == family[i]] = -1
        unrelated.append(float(sims.max()))
    return {
        "copies": {
            k: {"min": round(min(v), 3), "p10": round(float(np.percentile(v, 10)), 3)} for k, v in by_kind.items()
        },
        "best_unrelated": {q: round(float(np.percentile(unrelated, q)), 3) for q in (50, 90, 99)},
    }


def predicted_pairs(report, index_of) -> set[tuple[int, int]]:
    out: set[tuple[int, int]] = set()
    for g in report.groups:
        if g.tier == "similar":
            continue
        members = sorted(index_of(m.path) for m in g.members)
        out.update(itertools.combinations(members, 2))
    return out


# --- --scan-datasets ----------------------------------------------------------------------------------


def scan_datasets(out: Path) -> None:
    """List the duplicates the shared datasets hold themselves (see the module docstring)."""
    from searcher import store
    from searcher.calibrate import same_picture
    from searcher.duplicates import candidate_pairs
    from searcher.verify import VERIFY_VERSION, FeatureCache, verify_symmetric

    shared = shared_dir()
    data = shared / "datasets"
    photos = [
        p for ds in ("flowers17", "holidays-dev", "sample-photos") for p in sorted((data / ds / "images").iterdir())
    ]
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="searcher-scan-"))
    try:
        real = link_all(photos, work / "photos")
        with Library.open(work / "library") as lib:
            lib.index([work / "photos"])
            model = lib.find_model()
            with lib.sessions() as session:
                chunks = list(store.iter_vectors(session, model.id))
            ids = np.concatenate([c[0] for c in chunks]).tolist()
            vecs = np.concatenate([c[1] for c in chunks]).astype(np.float32)
            rows = lib._rows_by_id(ids)
        paths = [real[rows[i].path] for i in ids]
        (REPO / "bench-out").mkdir(exist_ok=True)
        np.save(REPO / "bench-out" / "shared_vectors.npy", vecs)  # bench_duplicates.py's real vectors
        i, j, cos = candidate_pairs(vecs, k=10, min_cosine=0.75)
        cache = FeatureCache(capacity=10_000)
        found = []
        for a, b, c in zip(i.tolist(), j.tolist(), cos.tolist(), strict=True):
            ra, rb = sorted((rel(paths[a]), rel(paths[b])))
            if ra.startswith("holidays-dev/") or rb.startswith("holidays-dev/"):
                continue  # different shots by the dataset's own ground truth
            v = verify_symmetric(cache.get(paths[a]), cache.get(paths[b]))
            if v.score >= SCAN_MIN_SCORE:
                kind = "same picture" if same_picture(paths[a], paths[b]) else "rescaled / cropped / recoloured copy"
                found.append({"a": ra, "b": rb, "score": round(v.score, 4), "cosine": round(c, 4), "kind": kind})
        found.sort(key=lambda p: (p["a"], p["b"]))
        result = {
            "what": "pairs of ../shared photos that are one picture under two names (never negatives)",
            "how": "python scripts/dup_benchmark.py --scan-datasets scripts/dataset_duplicates.json: every pair "
            "among the 10 CNN neighbours (efficientnet_lite0, cosine >= 0.75) of all flowers17, holidays-dev and "
            f"sample photos, verified on the pixels (searcher.verify), score >= {SCAN_MIN_SCORE}; holidays-dev "
            "pairs skipped (other shots of a scene by its ground truth, however alike)",
            "checked_by_eye": "montages of the pairs at scores 0.49 to 1.0 (image_0289/0290, 0729/0735, 0646/0679, "
            "0741/0793, 0205/0227, 0997/1022, 0356/0362, 1281/1355, 0643/0714, 1308/1325, 0217/0229, "
            "1179/1188, 1074/1091, 0439/0453, 0838/0866): all are one photo (re-encoded, rescaled, cropped "
            "or recoloured): 15 of the pairs, spread over the scores, checked by eye; the rest were not",
            "verify_version": VERIFY_VERSION,
            "count": len(found),
            "seconds": round(time.monotonic() - started, 1),
            "pairs": found,
        }
        out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"{len(found)} duplicate pairs inside the datasets -> {out}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --- --calibrate ------------------------------------------------------------------------------------


def calibrate_default(out: Path, sample: int, neighbours: int, seed: int) -> None:
    """The shipped threshold: `searcher calibrate` on the calibration half only."""
    from searcher.calibrate import calibrate
    from searcher.duplicates import DEFAULT_CANDIDATE_COSINE, DEFAULT_SIMILAR_COSINE

    shared = shared_dir()
    parts = split(shared, flowers_calibration_share=8)
    photos = [p for g in parts["holidays_calibration"] for p in g] + parts["flowers_calibration"] + parts["samples"]
    work = Path(tempfile.mkdtemp(prefix="searcher-calib-"))
    try:
        real = link_all(photos, work / "photos")
        known = [(str(shared / "datasets" / a), str(shared / "datasets" / b)) for a, b in known_duplicates()]
        with Library.open(work / "library") as lib:
            lib.index([work / "photos"])
            report = calibrate(
                lib, sample=sample, neighbours=neighbours, seed=seed, target_precision=0.99, store_result=False,
                known_duplicates=known,
            )  # fmt: skip
        measured = report.as_dict()
        for item in measured["top_negatives"] + measured["library_duplicates"]:
            for key in ("a", "b"):
                item[key] = rel(real.get(item[key], item[key])) if item[key] in real else Path(item[key]).name
        data = json.loads(out.read_text()) if out.exists() else {}
        data["about"] = (
            "Verified-score thresholds for near-duplicates per backbone (searcher.duplicates.thresholds_for). "
            "A library's own `searcher calibrate` overrides them."
        )
        data.setdefault("backbones", {})[report.backbone] = {
            "threshold": round(report.threshold, 4),
            "candidate_cosine": DEFAULT_CANDIDATE_COSINE,
            "similar_cosine": DEFAULT_SIMILAR_COSINE,
            "target_precision": report.target_precision,
            "how": f"python scripts/dup_benchmark.py --calibrate {os.path.relpath(out, REPO)} --sample {sample} "
            f"--neighbours {neighbours} --seed {seed}",
            "data": (
                f"{len(photos)} photos, disjoint from the benchmark: holidays-dev groups[0::2] (every shot: other "
                f"shots of a scene are the hard negatives), {len(parts['flowers_calibration'])} flowers17 photos "
                f"(one eighth, split by duplicate cluster) and the 19 sample photos; {sample} of them sampled, "
                f"one edited copy per kind each as positives, {neighbours} nearest CNN neighbours of each "
                "(and their copies against those neighbours) as negatives; flowers17's own duplicates "
                "(scripts/dataset_duplicates.json) are not negatives"
            ),
            "measured": measured,
        }
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(data, indent=2) + "\n")
        print(json.dumps(measured, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --- the benchmark ----------------------------------------------------------------------------------


def print_table(result: dict[str, Any]) -> None:
    cols = [k for k in ("searcher", "searcher_rotations", "phash_hamming_10") if k in result]
    head = {"searcher": "searcher", "searcher_rotations": "searcher --rotations", "phash_hamming_10": "pHash<=10"}
    print(f"\n{'':28}" + "".join(f"{head[c]:>22}" for c in cols))
    for key in ("precision", "recall", "predicted_pairs", "wrong_pairs", "wrong_pairs_other_shot_of_one_scene"):
        print(f"{key[:28]:28}" + "".join(f"{result[c][key]:>22}" for c in cols))
    print("recall by kind of edit:")
    for kind in result["edit_kinds"]:
        print(f"  {kind:26}" + "".join(f"{result[c]['recall_by_kind'][kind]:>22.3f}" for c in cols))
    print(
        f"\nthreshold {result['searcher']['threshold']} ({result['searcher']['threshold_source']}); "
        f"{result['sources']} sources x {len(result['edit_kinds'])} kinds = {result['copies']} copies, "
        f"{result['distractors']} distractors ({result['holidays_other_shots']} other shots of the source scenes); "
        f"{result['seconds']['total']} s"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--holidays", type=int, default=40, help="holidays-dev sources (first shot of a group)")
    ap.add_argument("--flowers", type=int, default=10, help="flowers17 sources")
    ap.add_argument("--distractors", type=int, default=80, help="flowers17 distractors")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--rotations", action="store_true", help="also run duplicates with rotated probes")
    ap.add_argument("--out", type=Path, default=REPO / "bench-out" / "dup_benchmark.json")
    ap.add_argument("--keep", type=Path, default=None, help="work in this (new) folder and keep it: copies, library")
    ap.add_argument("--calibrate", type=Path, default=None, help="instead: calibrate the shipped default")
    ap.add_argument("--sample", type=int, default=60, help="with --calibrate: photos to make copies of")
    ap.add_argument("--neighbours", type=int, default=5, help="with --calibrate: CNN neighbours as negatives")
    ap.add_argument("--scan-datasets", type=Path, default=None, help="instead: list the datasets' own duplicates")
    args = ap.parse_args()
    if args.scan_datasets is not None:
        scan_datasets(args.scan_datasets)
        return
    if args.calibrate is not None:
        calibrate_default(args.calibrate, args.sample, args.neighbours, args.seed)
        return
    started = time.monotonic()
    shared = shared_dir()
    parts = split(shared)
    groups = parts["holidays_benchmark"][: args.holidays]
    flowers = parts["flowers_benchmark"]
    step = max(1, len(flowers) // max(1, args.flowers))
    flower_sources = flowers[::step][: args.flowers]
    sources = [str(g[0]) for g in groups] + [str(p) for p in flower_sources]
    other_shots = [str(p) for g in parts["holidays_benchmark"] for p in g[1:]]
    rest = [str(p) for p in flowers if p not in set(flower_sources)]
    distractors = other_shots + rest[: args.distractors]
    scene = {str(p): gi for gi, g in enumerate(parts["holidays_benchmark"]) for p in g}

    if args.keep is None:
        work = Path(tempfile.mkdtemp(prefix="searcher-dupbench-"))
    else:
        work = args.keep
        work.mkdir(parents=True)
    try:
        t0 = time.monotonic()
        manifest = make_benchmark(sources, work / "copies", EDIT_KINDS, seed=args.seed)
        t_edit = time.monotonic() - t0
        files = sources + distractors + [m["copy"] for m in manifest]
        idx = {p: i for i, p in enumerate(files)}
        # families: a source, its copies, and any file that is the same picture (dataset duplicates)
        names = [rel(p) for p in files]
        cluster = clusters(names, known_duplicates())
        first_of: dict[str, int] = {}
        family = [first_of.setdefault(cluster[n], i) for i, n in enumerate(names)]
        for m in manifest:
            family[idx[m["copy"]]] = family[idx[m["source"]]]
        dataset_dups = sum(
            1
            for a, b in known_duplicates()
            if str(shared / "datasets" / a) in idx and str(shared / "datasets" / b) in idx
        )
        truth = [(idx[m["source"]], idx[m["copy"]], m["kind"]) for m in manifest]
        scene.update({m["copy"]: scene[m["source"]] for m in manifest if m["source"] in scene})
        scenes = [scene.get(p) for p in files]  # a copy belongs to its source's scene
        real = link_all([Path(p) for p in sources + distractors], work / "shared-links")

        def index_of(path: str) -> int:
            return idx[real.get(path, path)]

        lib_dir = work / "library"
        t0 = time.monotonic()
        with Library.open(lib_dir) as lib:
            lib.index([work / "shared-links", work / "copies"])
            t_index = time.monotonic() - t0
            model = lib.find_model()
            th = thresholds_for(model)
            # the CNN cosine of each (source, copy): below the candidate floor a copy is never verified
            from searcher import store

            with lib.sessions() as session:
                chunks = list(store.iter_vectors(session, model.id))
                ids = np.concatenate([c[0] for c in chunks]).tolist()
                vecs = np.concatenate([c[1] for c in chunks])
                rows = lib._rows_by_id(ids)
            vec_of = {index_of(rows[i].path): v for i, v in zip(ids, vecs, strict=True)}
            cos_by_kind: dict[str, list[float]] = {}
            for a, b, kind in truth:
                cos_by_kind.setdefault(kind, []).append(float(vec_of[a] @ vec_of[b]))
            t0 = time.monotonic()
            report = find_duplicates(lib, similar=False)
            t_dup = time.monotonic() - t0
            rot_report, t_rot = None, 0.0
            if args.rotations:
                t0 = time.monotonic()
                rot_report = find_duplicates(lib, similar=False, rotations=True)
                t_rot = time.monotonic() - t0
                turned_stats = turned_cosines(lib, model, rows, ids, index_of, vec_of, truth, family)

        def named(result: dict[str, Any]) -> dict[str, Any]:
            result["wrong_pair_examples"] = [
                [Path(files[a]).name, Path(files[b]).name] for a, b in result["wrong_pair_examples"]
            ]
            return result

        ours = named(evaluate(predicted_pairs(report, index_of), family, truth, scenes))
        ours.update(threshold=report.thresholds.verified, threshold_source=report.thresholds.source)
        ours.update(stats=report.stats, seconds=round(t_dup, 1), misses=misses(report, index_of, truth, files))
        if rot_report is not None:
            ours_rot = named(evaluate(predicted_pairs(rot_report, index_of), family, truth, scenes))
            ours_rot.update(stats=rot_report.stats, seconds=round(t_rot, 1))
            ours_rot["misses"] = misses(rot_report, index_of, truth, files)
            ours_rot["turned_cosines"] = turned_stats

        t0 = time.monotonic()
        hashes = [phash(p) for p in files]
        theirs = named(evaluate(hamming_pairs(hashes, 10), family, truth, scenes))
        theirs["seconds"] = round(time.monotonic() - t0, 1)
        result: dict[str, Any] = {
            "command": "python scripts/dup_benchmark.py " + " ".join(sys.argv[1:]),
            "data": "benchmark half: holidays-dev groups[1::2] + flowers17 benchmark quarter (disjoint from the "
            "calibration data of the shipped threshold)",
            "sources": len(sources),
            "holidays_sources": len(groups),
            "flowers_sources": len(flower_sources),
            "edit_kinds": list(EDIT_KINDS),
            "copies": len(manifest),
            "distractors": len(distractors),
            "holidays_other_shots": len(other_shots),
            "dataset_duplicate_pairs_present": dataset_dups,
            "files": len(files),
            "shipped": shipped_defaults().get(model.backbone, {}).get("threshold"),
            "candidate_cosine": th.candidate_cosine,
            "copy_cosine_by_kind": {
                k: {
                    "min": round(min(v), 3),
                    "p10": round(float(np.percentile(v, 10)), 3),
                    "median": round(float(np.median(v)), 3),
                    "below_candidate_floor": round(float(np.mean(np.array(v) < th.candidate_cosine)), 3),
                }
                for k, v in cos_by_kind.items()
            },
            "searcher": ours,
            "phash_hamming_10": theirs,
            "seconds": {"edits": round(t_edit, 1), "index": round(t_index, 1), "duplicates": round(t_dup, 1)},
            "load_average": os.getloadavg(),
        }
        if rot_report is not None:
            result["searcher_rotations"] = ours_rot
            result["seconds"]["duplicates_rotations"] = round(t_rot, 1)
        result["seconds"]["total"] = round(time.monotonic() - started, 1)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print_table(result)
        print(f"\nwritten to {args.out}")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
