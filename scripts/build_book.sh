#!/usr/bin/env bash
# Build the book into _build/html, executing every notebook, with warnings as errors.
#
#   bash scripts/build_book.sh            # SSVI_PRESET=cpu (the default book build)
#   SSVI_PRESET=tiny bash scripts/build_book.sh
#
# The notebooks read SSVI_PRESET (tiny | cpu | paper). scripts/setup.sh runs first unless
# SSVI_SKIP_SETUP=1. Open _build/html/index.html in a browser afterwards.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [ "${SSVI_SKIP_SETUP:-0}" != "1" ]; then
    bash scripts/setup.sh
fi
export SSVI_PRESET="${SSVI_PRESET:-cpu}"
# Notebooks execute with notebooks/ as working directory: pass the data folder as an absolute path.
export SSVI_DATA="$(realpath -m "${SSVI_DATA:-data}")"
export PATH="$ROOT/.venv/bin:$PATH"
echo "[build_book] SSVI_PRESET=$SSVI_PRESET"
# --all: rebuild every page, so that no warning is hidden by Sphinx's incremental build.
jupyter-book build --all -W -n --keep-going .
echo "[build_book] open $ROOT/_build/html/index.html"
