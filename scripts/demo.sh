#!/usr/bin/env bash
# Set up (if needed), then run the main job on the bundled sample photos:
# index data/sample-photos, query with a photo, find the original of an edited copy, and list
# duplicates. Works offline.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export SEARCHER_LIBRARY="${SEARCHER_LIBRARY:-$PWD/.demo-library}"
S=.venv/bin/searcher
echo "== searcher index data/sample-photos   (library: $SEARCHER_LIBRARY)"
$S index data/sample-photos
echo "== searcher query data/sample-photos/chelsea_small_copy.jpg -k 5"
$S query data/sample-photos/chelsea_small_copy.jpg -k 5
echo "== an edited copy (turned, shrunk, recompressed) of astronaut.jpg, not in the library: find its original"
TMP_DIR="$(mktemp -d)"
trap 'rm -rf "$TMP_DIR"' EXIT
COPY="$TMP_DIR/astronaut_edited.jpg"
.venv/bin/python - "$COPY" <<'PY'
import sys

import numpy as np
from PIL import Image

from searcher.edits import apply_edit

image = Image.open("data/sample-photos/astronaut.jpg").convert("RGB")
apply_edit(image, "combo_rotated_thumb", np.random.default_rng(0)).save(sys.argv[1], quality=70)
PY
$S query "$COPY" -k 3 --verify 3
echo "== searcher duplicates"
$S duplicates
echo "== searcher info"
$S info
