"""Speed and retrieval quality of backbones on Oxford Flowers-17 (1,360 photos, 17 species x 80).

For each backbone: a plain ``searcher index`` of the images into a fresh temporary library (timed),
then every image queries the other 1,359 from the stored vectors (its own vector left out), scored
against ``groundtruth.json`` (same species = relevant): precision@10 and mAP.

    .venv/bin/python scripts/eval_flowers.py --out flowers.json
    .venv/bin/python scripts/eval_flowers.py --out f.json --backbone mobilenet_v2 --backbone efficientnet_lite0

Backbones whose ImageNet weights are in ``../shared/weights`` (MobileNet v1/v2) use that file
(``--weights``); ``--weights NAME=FILE`` picks another. Timings depend on the machine and on
whatever else is running; the JSON records the CPU count and load average.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("SEARCHER_SHARED", REPO.parent / "shared"))
DEFAULT_BACKBONES = ["mobilenet_v2", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
SHARED_WEIGHTS = {
    "mobilenet": "mobilenet_1.0_224.weights.h5",
    "mobilenet_v2": "mobilenet_v2_1.0_224.weights.h5",
    "mobilenet_025_128": "mobilenet_0.25_128.weights.h5",
}


def index_folder(backbone: str, weights: str | None, images: Path, library: Path, batch_size: int) -> dict:
    """Run ``searcher index`` in a subprocess (as a user would); returns its JSON report plus wall time."""
    cmd = [sys.executable, "-m", "searcher", "index", "--backbone", backbone, "--library", str(library),
           "--json", "--quiet", "--batch-size", str(batch_size)]  # fmt: skip
    if weights:
        cmd += ["--weights", weights]
    cmd.append(str(images))
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    wall = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"searcher index failed for {backbone}:\n{proc.stderr}")
    report = json.loads(proc.stdout)
    report["wall_seconds"] = wall
    return report


def stored_vectors(library: Path, backbone: str) -> tuple[list[str], np.ndarray]:
    """File names and vectors of every image indexed with ``backbone``."""
    from searcher import Library
    from searcher.store import ImageRow, iter_vectors

    with Library.open(library, create=False) as lib:
        model = lib.find_model(backbone)
        with lib.sessions() as session:
            ids, vecs = zip(*iter_vectors(session, model.id), strict=True)
            all_ids = np.concatenate(ids)
            paths = {r.id: r.path for r in session.query(ImageRow).filter(ImageRow.id.in_(all_ids.tolist()))}
    return [os.path.basename(paths[int(i)]) for i in all_ids], np.concatenate(vecs)


def retrieval_scores(names: list[str], vectors: np.ndarray, groups: list[list[str]], k: int = 10) -> dict:
    """Each image against all the others (cosine; vectors are unit length): P@k and mAP."""
    label_of = {name: g for g, members in enumerate(groups) for name in members}
    labels = np.array([label_of[n] for n in names])
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)  # never retrieve yourself
    order = np.argsort(-sims, axis=1)[:, :-1]  # drop the last column: the query itself
    relevant = labels[order] == labels[:, None]
    p_at_k = relevant[:, :k].mean(axis=1)
    hits = np.cumsum(relevant, axis=1)
    ranks = np.arange(1, relevant.shape[1] + 1)
    ap = (relevant * hits / ranks).sum(axis=1) / np.maximum(relevant.sum(axis=1), 1)
    return {f"precision_at_{k}": float(p_at_k.mean()), "map": float(ap.mean()), "queries": len(names)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="Write the results here (JSON).")
    parser.add_argument("--backbone", action="append", help=f"Repeatable (default: {' '.join(DEFAULT_BACKBONES)}).")
    parser.add_argument("--weights", action="append", default=[], help="NAME=FILE: weights for one backbone.")
    parser.add_argument("--dataset", type=Path, default=SHARED / "datasets" / "flowers17")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--keep", type=Path, help="Keep the libraries under this folder (default: temporary).")
    args = parser.parse_args()

    gt = json.loads((args.dataset / "groundtruth.json").read_text())
    images = args.dataset / "images"
    overrides = dict(w.split("=", 1) for w in args.weights)
    results = []
    with tempfile.TemporaryDirectory(prefix="eval-flowers-") as tmp:
        root = args.keep or Path(tmp)
        for backbone in args.backbone or DEFAULT_BACKBONES:
            weights = overrides.get(backbone)
            if weights is None and backbone in SHARED_WEIGHTS:
                weights = str(SHARED / "weights" / SHARED_WEIGHTS[backbone])
            library = root / f"lib-{backbone}"
            load_before = os.getloadavg()[0]
            report = index_folder(backbone, weights, images, library, args.batch_size)
            names, vectors = stored_vectors(library, backbone)
            row = {
                "backbone": backbone,
                "weights": weights or "imagenet",
                "dim": int(vectors.shape[1]),
                "images": report["embedded"],
                "failed": report["failed"],
                "index_seconds": report["seconds"],
                "images_per_second": report["embedded"] / report["seconds"],
                "wall_seconds": report["wall_seconds"],
                "load_average_before": load_before,
                **retrieval_scores(names, vectors, gt["groups"]),
            }
            results.append(row)
            print(f"{backbone}: {row['images_per_second']:.1f} img/s, P@10 {row['precision_at_10']:.4f}", flush=True)
    meta = {
        "dataset": str(args.dataset),
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "load_average_after": os.getloadavg()[0],
        "batch_size": args.batch_size,
    }
    args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Flowers-17 ({results[0]['images'] if results else 0} images, {os.cpu_count()} CPUs)")
    for col in ("backbone", "dim", "img/s", "index s", "wall s", "P@10", "mAP", "load before"):
        table.add_column(col, justify="left" if col == "backbone" else "right", no_wrap=col == "backbone")
    for r in results:
        table.add_row(
            r["backbone"], str(r["dim"]), f"{r['images_per_second']:.1f}", f"{r['index_seconds']:.1f}",
            f"{r['wall_seconds']:.1f}", f"{r['precision_at_10']:.4f}", f"{r['map']:.4f}",
            f"{r['load_average_before']:.1f}",
        )  # fmt: skip
    Console().print(table)
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
