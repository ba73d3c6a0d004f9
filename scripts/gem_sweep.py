"""GeM pooling: which p? One pass of the default backbone over Holidays and Flowers-17 keeps the
feature maps; every p is then pooled in numpy and scored with plain search (no re-ranking).

p = 1 is average pooling (the default), p -> infinity max pooling. Chosen on Flowers-17, confirmed
on Holidays (the report set), as in the README's "Retrieval quality".

    .venv/bin/python scripts/gem_sweep.py        # ~3 min on 2 cores; writes bench-out/gem_sweep.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
SHARED = Path(os.environ.get("SEARCHER_SHARED", REPO.parent / "shared"))
POWERS = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 10.0, float("inf"))


def feature_maps(embedder, paths: list[Path], batch: int = 32) -> np.ndarray:
    """(n, h, w, c) float16 feature maps of the squashed images (what indexing feeds the network)."""
    from searcher.decode import load_for_model

    out = []
    for start in range(0, len(paths), batch):
        pixels = np.stack([load_for_model(p, embedder.input_size)[0] for p in paths[start : start + batch]])
        x = embedder.spec.preprocess(pixels.astype(np.float32))
        out.append(np.asarray(embedder.model(x, training=False), np.float16))
    return np.concatenate(out)


def gem(fmaps: np.ndarray, p: float) -> np.ndarray:
    f = np.maximum(fmaps.astype(np.float32), 1e-6)
    pooled = f.max(axis=(1, 2)) if np.isinf(p) else (f**p).mean(axis=(1, 2)) ** (1 / p)
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


def score(vectors: np.ndarray, names: list[str], queries: dict[str, list[str]]) -> dict[str, float]:
    from searcher.evaluate import score_rankings

    row = {n: i for i, n in enumerate(names)}
    sims = vectors @ vectors.T
    rankings, positives = {}, {}
    for q, pos in queries.items():
        s = sims[row[q]].copy()
        s[row[q]] = -np.inf
        rankings[q] = [names[i] for i in np.argsort(-s, kind="stable")[:-1]]
        positives[q] = pos
    m = score_rankings(rankings, positives, (10,))
    return {"mAP": round(m.map, 4), "P@10": round(m.precision[10], 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "bench-out" / "gem_sweep.json"))
    args = parser.parse_args()
    from searcher.embed import Embedder
    from searcher.evaluate import GroundTruth

    embedder = Embedder("efficientnet_lite0")
    result: dict = {"backbone": "efficientnet_lite0", "powers": {}, "seconds": {}}
    for label, folder in (
        ("holidays", SHARED / "datasets" / "holidays-dev"),
        ("flowers17", SHARED / "datasets" / "flowers17"),
    ):
        gt = GroundTruth.load(folder / "groundtruth.json")
        names = sorted(p.name for p in (folder / "images").iterdir())
        started = time.monotonic()
        maps = feature_maps(embedder, [folder / "images" / n for n in names])
        result["seconds"][label] = round(time.monotonic() - started, 1)
        queries = {Path(q).name: [Path(p).name for p in pos] for q, pos in gt.queries.items()}
        for p in POWERS:
            key = "max" if np.isinf(p) else f"{p:g}"
            result["powers"].setdefault(key, {})[label] = score(gem(maps, p), names, queries)
            print(label, f"p={key}", result["powers"][key][label], flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"JSON: {out}")


if __name__ == "__main__":
    main()
