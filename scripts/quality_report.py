"""Retrieval quality per backbone, measured like the literature; writes JSON, prints markdown tables.

For every backbone whose weights are on this machine (EfficientNet-Lite0/1/2 from their pip
packages, MobileNet v1/v2 from ``../shared/weights``):

- INRIA Holidays (``holidays-dev``, Holidays protocol: each group's NNNN00 image queries the rest,
  itself removed from its ranking): mAP, per technique;
- Oxford Flowers-17 (every image queries the other 1,359; positives = its species): mAP, P@10;
- near-duplicates: edited copies (:mod:`searcher.edits`, all kinds) of photos sampled from
  ``holidays-dev`` query the whole folder (the other shots of each scene are hard negatives):
  recall@1 of the source, per kind of edit;
- the cost of each technique: query latency per probe, and index throughput.

    .venv/bin/python scripts/quality_report.py                       # all backbones, ~1 h on 2 busy cores
    .venv/bin/python scripts/quality_report.py -b efficientnet_lite0 --variants   # + embedding variants

Settings were chosen on Flowers-17 and a near-duplicate benchmark built from sample-photos and
imagededup (with Flowers-17 as distractors); Holidays was only used to report (and to confirm that
a technique helps on data not used to choose it). Libraries are kept in ``bench-out/quality-libraries``
so a re-run only embeds what is new.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
SHARED = Path(os.environ.get("SEARCHER_SHARED", REPO.parent / "shared"))
HOLIDAYS = SHARED / "datasets" / "holidays-dev"
FLOWERS = SHARED / "datasets" / "flowers17"
BACKBONES = {
    "efficientnet_lite0": None,
    "efficientnet_lite1": None,
    "efficientnet_lite2": None,
    "mobilenet_v2": SHARED / "weights" / "mobilenet_v2_1.0_224.weights.h5",
    "mobilenet": SHARED / "weights" / "mobilenet_1.0_224.weights.h5",
    "mobilenet_025_128": SHARED / "weights" / "mobilenet_0.25_128.weights.h5",
}


def configs(level: int) -> dict[str, Any]:
    """Option sets to evaluate: plain, the two presets and default + QE; ``level`` 1 (the default
    backbone) adds each technique alone and whitening; ``level`` 2 (``--variants``) also the
    embedding variants (aspect, multi-scale: the folder is embedded again) and the ablations."""
    from searcher.evaluate import RetrievalOptions
    from searcher.rerank import DEFAULTS, ROTATIONS

    inv = dict(invariant=ROTATIONS, trim=DEFAULTS.trim, margin=DEFAULTS.margin)
    dba = dict(dba_k=DEFAULTS.dba_k, dba_alpha=DEFAULTS.dba_alpha, dba_local=DEFAULTS.dba_local)
    qe = dict(qe_k=DEFAULTS.qe_k, qe_alpha=DEFAULTS.qe_alpha)
    out = {"plain": RetrievalOptions()}
    if level >= 1:
        out.update({
            "invariant": RetrievalOptions(**inv),
            "dba": RetrievalOptions(**dba),
            "qe": RetrievalOptions(**qe),
            "dba+qe": RetrievalOptions(**dba, **qe),
            "whiten256": RetrievalOptions(whiten=True, whiten_dim=256),
        })  # fmt: skip
    out["default"] = RetrievalOptions.from_preset("instance")
    out["default+qe"] = RetrievalOptions(**inv, **dba, **qe)
    out["category"] = RetrievalOptions.from_preset("category")
    if level >= 2:
        ms = dict(mode="aspect", scales=(0.7071, 1.0, 1.4142))
        out.update({
            "dba exact (whole database)": RetrievalOptions(**{**dba, "dba_local": False}),
            "default, dba exact": RetrievalOptions(**inv, **{**dba, "dba_local": False}),
            "rotations, no margin, no trim": RetrievalOptions(invariant=ROTATIONS),
            "rotations, margin, no trim": RetrievalOptions(invariant=ROTATIONS, margin=DEFAULTS.margin),
            "aspect": RetrievalOptions(mode="aspect"),
            "multiscale": RetrievalOptions(**ms),
            "multiscale+default": RetrievalOptions(**ms, **inv, **dba),
        })  # fmt: skip
    return out


def dup_configs(full: bool) -> dict[str, tuple[Any, int]]:
    """Near-duplicate option sets: (retrieval options, how many first results pixel verification re-ranks)."""
    from searcher.evaluate import RetrievalOptions
    from searcher.rerank import DEFAULTS, ROTATIONS_AND_FLIPS

    flips = RetrievalOptions(invariant=ROTATIONS_AND_FLIPS, trim=DEFAULTS.trim, margin=DEFAULTS.margin)
    out = {"plain": (RetrievalOptions(), 0), "rotations+flips": (flips, 0)}
    if full:
        out["rotations+flips, no trim"] = (RetrievalOptions(invariant=ROTATIONS_AND_FLIPS, margin=DEFAULTS.margin), 0)
        out["default retrieval"] = (RetrievalOptions.from_preset("instance"), 0)
    out["rotations+flips + verification of top 10"] = (flips, 10)
    return out


def query_latency(lib: Any, probes: list[str]) -> dict[str, float]:
    """Milliseconds per probe of ``Library.query`` for new photos (not indexed), per technique."""
    lib.query(probes[:2], k=10, pooling="avg", invariant=False, augment=False)  # load the network once
    out = {}
    for name, kw in {
        "plain": dict(invariant=False, augment=False, expand=False),
        "invariant": dict(invariant=True, augment=False, expand=False),
        "rotations+flips": dict(invariant="all", augment=False, expand=False),
        "dba": dict(invariant=False, augment=True, expand=False),
        "qe": dict(invariant=False, augment=False, expand=True),
        "default": dict(),
        "default+qe": dict(expand=True),
        "category": dict(preset="category"),
    }.items():
        started = time.perf_counter()
        lib.query(probes, k=10, pooling="avg", **kw)
        out[name] = round(1000 * (time.perf_counter() - started) / len(probes), 1)
    return out


def run_backbone(name: str, weights: Path | None, args: argparse.Namespace) -> dict[str, Any]:
    from searcher import Library
    from searcher.evaluate import GroundTruth, evaluate_folder, near_duplicate_benchmark

    w = str(weights) if weights else None
    result: dict[str, Any] = {"backbone": name, "weights": w or "imagenet"}
    lib_dir = Path(args.libraries) / name
    holidays_gt = GroundTruth.load(HOLIDAYS / "groundtruth.json")
    flowers_gt = GroundTruth.load(FLOWERS / "groundtruth.json")
    with Library.open(lib_dir) as lib:
        for label, folder in (("holidays", HOLIDAYS / "images"), ("flowers", FLOWERS / "images")):
            started = time.monotonic()
            report = lib.index([folder], backbone=name, weights=w)
            result[f"index_{label}"] = {
                "embedded": report.embedded, "seconds": round(time.monotonic() - started, 1),
                "images_per_s": round(report.embedded / report.seconds, 1) if report.embedded else None,
            }  # fmt: skip
        for label, folder, gt in (
            ("holidays", HOLIDAYS / "images", holidays_gt),
            ("flowers", FLOWERS / "images", flowers_gt),
        ):
            result[label] = {}
            level = (2 if args.variants else 1) if name == "efficientnet_lite0" else 0
            for cname, opts in configs(level).items():
                if label == "flowers" and cname.startswith("rotations,"):
                    continue  # ablations of the invariant probes: Holidays only
                r = evaluate_folder(lib, folder, gt, opts, backbone=name, weights=w, pooling="avg", index=False)
                result[label][cname] = r.as_dict()
                m = r.metrics
                print(f"  {name} {label:8s} {cname:20s} mAP={m.map:.4f} P@10={m.precision[10]:.4f}", flush=True)
        if args.variants and name == "efficientnet_lite0":
            # GeM pooling (p=3) is an index-time choice: a second set of vectors in the same library.
            lib.index([HOLIDAYS / "images", FLOWERS / "images"], backbone=name, weights=w, pooling="gem")
            for label, folder, gt in (
                ("holidays", HOLIDAYS / "images", holidays_gt),
                ("flowers", FLOWERS / "images", flowers_gt),
            ):
                for cname in ("plain", "default"):
                    opts = configs(0)[cname]
                    r = evaluate_folder(lib, folder, gt, opts, backbone=name, pooling="gem", index=False)
                    result[label][f"gem3 {cname}"] = r.as_dict()
                    print(f"  {name} {label:8s} gem3 {cname:15s} mAP={r.metrics.map:.4f}", flush=True)
        result["near_duplicates"] = {}
        sources = args.near_dup_sources if name == "efficientnet_lite0" else args.near_dup_sources_other
        with tempfile.TemporaryDirectory(prefix="quality-neardup-") as work:
            for cname, (opts, verify_top) in dup_configs(args.variants and name == "efficientnet_lite0").items():
                started = time.monotonic()
                r = near_duplicate_benchmark(
                    lib, HOLIDAYS / "images", sources=sources, seed=0, options=opts, workdir=work,
                    backbone=name, weights=w, pooling="avg", index=False, verify_top=verify_top,
                )  # fmt: skip
                r.seconds["total"] = time.monotonic() - started
                result["near_duplicates"][cname] = r.as_dict()
                low = {k: v["recall@1"] for k, v in r.per_kind.items() if v["recall@1"] < 1}
                print(f"  {name} near-dup {cname:34s} R@1={r.overall['recall@1']:.4f} {low}", flush=True)
            copies = sorted(str(p) for p in Path(work).glob("*.jpg"))[
                :: max(1, len(list(Path(work).glob("*.jpg"))) // 40)
            ]
            result["query_ms_per_new_probe"] = query_latency(lib, copies[:40])
            result["library_images"] = lib.info()["images"]
    return result


def run_extras(args: argparse.Namespace) -> dict[str, Any]:
    """Default backbone only: the near-duplicate benchmark with pixel verification of the first 10
    CNN results (the duplicates module's check), and GeM pooling with every re-ranking technique."""
    from searcher import Library
    from searcher.evaluate import GroundTruth, RetrievalOptions, evaluate_folder, near_duplicate_benchmark
    from searcher.rerank import DEFAULTS, ROTATIONS

    name = "efficientnet_lite0"
    out: dict[str, Any] = {"backbone": name}
    with Library.open(Path(args.libraries) / name) as lib:
        lib.index([HOLIDAYS / "images", FLOWERS / "images"], backbone=name)
        dup = dup_configs(False)["rotations+flips"][0]
        r = near_duplicate_benchmark(
            lib, HOLIDAYS / "images", sources=args.near_dup_sources, seed=0, options=dup, backbone=name,
            pooling="avg", index=False, verify_top=10,
        )  # fmt: skip
        out["near_duplicates_verified_top10"] = r.as_dict()
        print(f"  near-dup rotations+flips + verification R@1={r.overall['recall@1']:.4f}", flush=True)
        lib.index([HOLIDAYS / "images", FLOWERS / "images"], backbone=name, pooling="gem")
        full = RetrievalOptions(
            invariant=ROTATIONS, trim=DEFAULTS.trim, margin=DEFAULTS.margin, dba_k=DEFAULTS.dba_k, qe_k=DEFAULTS.qe_k,
            dba_local=DEFAULTS.dba_local,
        )  # fmt: skip
        for label, folder in (("holidays", HOLIDAYS), ("flowers", FLOWERS)):
            gt = GroundTruth.load(folder / "groundtruth.json")
            dba_qe = RetrievalOptions(dba_k=DEFAULTS.dba_k, qe_k=DEFAULTS.qe_k, dba_local=DEFAULTS.dba_local)
            for cname, opts in (("gem3 dba+qe", dba_qe), ("gem3 default+qe", full)):
                r = evaluate_folder(lib, folder / "images", gt, opts, backbone=name, pooling="gem", index=False)
                out.setdefault(label, {})[cname] = r.as_dict()
                print(f"  {label} {cname} mAP={r.metrics.map:.4f} P@10={r.metrics.precision[10]:.4f}", flush=True)
    return out


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def markdown(results: list[dict[str, Any]]) -> str:
    verified = "rotations+flips + verification of top 10"
    lines = [
        "| backbone | Holidays mAP plain | Holidays mAP instance (default) | Flowers-17 P@10 plain "
        "| Flowers-17 P@10 instance | Flowers-17 P@10 category | near-dup R@1 plain | near-dup R@1 rot+flips "
        "| near-dup R@1 rot+flips + verification |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        h, f, n = r["holidays"], r["flowers"], r["near_duplicates"]
        lines.append(
            f"| {r['backbone']} | {h['plain']['mAP']:.3f} | **{h['default']['mAP']:.3f}** "
            f"| {f['plain']['precision']['10']:.3f} | {f['default']['precision']['10']:.3f} "
            f"| **{f['category']['precision']['10']:.3f}** "
            f"| {n['plain']['overall']['recall@1']:.3f} | {n['rotations+flips']['overall']['recall@1']:.3f} "
            f"| **{n[verified]['overall']['recall@1']:.3f}** |"
        )
    first = results[0]
    lines += ["", f"Techniques, {first['backbone']} (mAP trapezoid = the official Holidays script):", ""]
    lines += [
        "| technique | Holidays mAP | Holidays mAP (trapezoid) | Flowers-17 P@10 | Flowers-17 mAP | ms per new probe |",
        "|---|---|---|---|---|---|",
    ]
    lat = first.get("query_ms_per_new_probe", {})
    for cname, h in first["holidays"].items():
        f = first["flowers"].get(cname)
        fl = f"{f['precision']['10']:.4f} | {f['mAP']:.4f}" if f else "– | –"
        lines.append(f"| {cname} | {h['mAP']:.4f} | {h['mAP_trapezoid']:.4f} | {fl} | {lat.get(cname, '')} |")
    lines += ["", f"Near-duplicates ({first['backbone']}), recall@1 of the source per kind of edit:", ""]
    dup = first["near_duplicates"]
    names = list(dup)
    lines += ["| edit | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    kinds = list(dup[names[0]]["per_kind"])
    for kind in [*kinds, "all"]:
        cells = [(dup[c]["overall"] if kind == "all" else dup[c]["per_kind"][kind])["recall@1"] for c in names]
        lines.append(f"| {kind} | " + " | ".join(f"{v:.3f}" for v in cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-b", "--backbone", action="append", help="Backbone(s) (default: all with weights here).")
    parser.add_argument("--out", default=str(REPO / "bench-out" / "quality_report.json"))
    parser.add_argument("--libraries", default=str(REPO / "bench-out" / "quality-libraries"))
    parser.add_argument("--near-dup-sources", type=int, default=50, help="Photos edited (default backbone).")
    parser.add_argument("--near-dup-sources-other", type=int, default=25, help="Photos edited (other backbones).")
    parser.add_argument("--variants", action="store_true", help="Also GeM, aspect, multi-scale, whitening (Lite0).")
    parser.add_argument(
        "--extras", action="store_true", help="Only: near-dup with pixel verification, GeM + re-ranking (Lite0)."
    )
    args = parser.parse_args()
    from searcher.backbones.registry import get_backbone, weights_status

    if args.extras:
        extras = run_extras(args)
        path = Path(args.out).with_name("quality_extras.json")
        path.write_text(json.dumps({**extras, "load_average_at_end": load_average()}, indent=1))
        print(f"JSON: {path}")
        return

    chosen = args.backbone or list(BACKBONES)
    results, skipped = [], {}
    started = time.monotonic()
    for name in chosen:
        weights = BACKBONES.get(name)
        ok, where = weights_status(get_backbone(name), str(weights) if weights else "imagenet")
        if not ok:
            skipped[name] = f"weights not available: {where}"
            print(f"skip {name}: {skipped[name]}", flush=True)
            continue
        print(f"{name} ...", flush=True)
        results.append(run_backbone(name, weights, args))
        write(args.out, results, skipped, started)
    out = write(args.out, results, skipped, started)
    print()
    print(markdown(results))
    print(f"\nJSON: {out}; load average {load_average()}")


def write(path: str, results: list[dict[str, Any]], skipped: dict[str, str], started: float) -> Path:
    doc = {
        "results": results,
        "skipped": skipped,
        "machine": {
            "cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "load_average_at_end": load_average(), "seconds": round(time.monotonic() - started, 1),
        },
        "command": " ".join(sys.argv),
    }  # fmt: skip
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1))
    return out


if __name__ == "__main__":
    main()
