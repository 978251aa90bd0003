#!/usr/bin/env bash
# Build the book into _build/html, executing every notebook once, with warnings as errors.
#
#   bash scripts/build_book.sh            # SSVI_PRESET=laptop: from the committed results
#   SSVI_PRESET=cpu bash scripts/build_book.sh    # a quick look that trains everything (minutes)
#   SSVI_PRESET=tiny bash scripts/build_book.sh   # the CI build
#
# The notebooks read SSVI_PRESET (tiny | cpu | laptop | paper). At laptop and paper the runs
# are read from results/ and only the missing ones are trained (stale ones are shown marked;
# `make grid GRID_ARGS=--stale` recomputes them). scripts/setup.sh runs first unless
# SSVI_SKIP_SETUP=1. Open _build/html/index.html in a browser afterwards.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [ "${SSVI_SKIP_SETUP:-0}" != "1" ]; then
    bash scripts/setup.sh
fi
export SSVI_PRESET="${SSVI_PRESET:-laptop}"
# Notebooks execute with notebooks/ as working directory: pass the data folder as an absolute path.
export SSVI_DATA="$(realpath -m "${SSVI_DATA:-data}")"
export PATH="$ROOT/.venv/bin:$PATH"
# Runs of the small presets are rebuilt wherever they are needed: keep them out of results/,
# which holds only results worth committing (paper and laptop scale, with provenance).
case "$SSVI_PRESET" in tiny|cpu)
    export SSVI_RESULTS="$(realpath -m "${SSVI_RESULTS:-build_scratch/$SSVI_PRESET/results}")"
    export SSVI_RUNS="$(realpath -m "${SSVI_RUNS:-build_scratch/$SSVI_PRESET/runs}")";;
esac
# The notebooks are rendered from Jupyter Book's cache (_config.yml: execute_notebooks: cache).
# Empty it, so that every notebook executes once against the results as they are now, unless
# this build comes right after scripts/test.sh's nbval stage filled it (SSVI_BOOK_REUSE=1).
if [ "${SSVI_BOOK_REUSE:-0}" != "1" ]; then
    rm -rf _build/.jupyter_cache
fi
# SSVI_RERUN=1 recomputes every result once per build, also those several notebooks share.
if [ "${SSVI_RERUN:-0}" = "1" ] && [ -z "${SSVI_RERUN_SINCE:-}" ]; then
    export SSVI_RERUN_SINCE="$(date +%s)"
fi
echo "[build_book] SSVI_PRESET=$SSVI_PRESET"
# --all: rebuild every page, so that no warning is hidden by Sphinx's incremental build.
jupyter-book build --all -W -n --keep-going .
echo "[build_book] open $ROOT/_build/html/index.html"
