"""How the ``category`` preset was chosen: a grid on one half of Flowers-17, confirmed on the other.

Each species' 80 photos are split by position (even / odd); every photo of a half queries the rest
of that half with :class:`searcher.evaluate.Ranker` (the same re-ranking as ``searcher query``).
The setting with the best precision@10 on half A is reported on half B next to plain search and to
the best setting for B. Vectors come from a library that has indexed Flowers-17 (indexed if not).

    .venv/bin/python scripts/tune_category.py     # ~15 min on 2 cores; writes bench-out/tune_category.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
SHARED = Path(os.environ.get("SEARCHER_SHARED", REPO.parent / "shared"))
FLOWERS = SHARED / "datasets" / "flowers17"


def halves(paths: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Rows and species labels of half A and half B (every other photo of each species)."""
    gt = json.loads((FLOWERS / "groundtruth.json").read_text())
    label = {Path(n).name: g for g, group in enumerate(gt["groups"]) for n in group}
    labels = np.array([label[Path(p).name] for p in paths])
    out = []
    for parity in (0, 1):
        rows = np.array(
            [r for g in range(len(gt["groups"])) for j, r in enumerate(np.flatnonzero(labels == g)) if j % 2 == parity]
        )
        out.append({"rows": rows, "labels": labels[rows]})
    return out[0], out[1]


def precision_at_10(vectors: np.ndarray, half: dict[str, Any], options: Any) -> float:
    from searcher.evaluate import Ranker

    rows, labels = half["rows"], half["labels"]
    ranker = Ranker(np.arange(len(rows)), vectors[rows], options)
    hits = []
    for q in range(len(rows)):
        top = ranker.rank(vectors[rows[q]][None], k=10, exclude=[q]).ids
        hits.append(float(np.mean(labels[top] == labels[q])))
    return round(float(np.mean(hits)), 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--library", default=str(REPO / "bench-out" / "quality-libraries" / "efficientnet_lite0"))
    parser.add_argument("--out", default=str(REPO / "bench-out" / "tune_category.json"))
    args = parser.parse_args()
    from searcher import Library
    from searcher.evaluate import RetrievalOptions, folder_vectors

    with Library.open(args.library) as lib:
        lib.index([FLOWERS / "images"])
        _, paths, vectors = folder_vectors(lib, lib.find_model(None, "avg"), str(FLOWERS / "images"))
    half_a, half_b = halves(paths)
    grid = {}
    for power, dba_k, qe_k in itertools.product((1.0, 0.75, 0.5, 0.35), (0, 2, 5, 8), (0, 2, 5, 8)):
        opts = RetrievalOptions(power=power, dba_k=dba_k, qe_k=qe_k, dba_local=True, shortlist=500)
        name = f"power {power:g}, dba {dba_k}, qe {qe_k}"
        grid[name] = {"A": precision_at_10(vectors, half_a, opts), "B": precision_at_10(vectors, half_b, opts)}
        print(name, grid[name], flush=True)
    chosen = max(grid, key=lambda n: grid[n]["A"])
    best_b = max(grid, key=lambda n: grid[n]["B"])
    plain = "power 1, dba 0, qe 0"
    result = {
        "chosen_on_A": chosen, "A": grid[chosen]["A"], "B_with_it": grid[chosen]["B"], "B_plain": grid[plain]["B"],
        "best_for_B": best_b, "B_best": grid[best_b]["B"], "grid_P@10": grid,
    }  # fmt: skip
    print(json.dumps({k: v for k, v in result.items() if k != "grid_P@10"}, indent=1))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
