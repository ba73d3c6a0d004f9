#!/usr/bin/env bash
# Set up (if needed), then run the main job on the bundled sample photos:
# index data/sample-photos, query with a photo, and list duplicates. Works offline.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export SEARCHER_LIBRARY="${SEARCHER_LIBRARY:-$PWD/.demo-library}"
S=.venv/bin/searcher
echo "== searcher index data/sample-photos   (library: $SEARCHER_LIBRARY)"
$S index data/sample-photos
echo "== searcher query data/sample-photos/chelsea_small_copy.jpg -k 5"
$S query data/sample-photos/chelsea_small_copy.jpg -k 5
if $S duplicates --help >/dev/null 2>&1; then
  echo "== searcher duplicates"
  $S duplicates
fi
echo "== searcher info"
$S info
