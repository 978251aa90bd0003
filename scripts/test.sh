#!/usr/bin/env bash
# The project's test command: unit tests, notebook regression tests, the book build and the
# headless-browser check of the built site, in that order. Exits non-zero if any stage fails
# (every stage runs, so one run reports all failures).
#
#   bash scripts/test.sh                  # every stage
#   bash scripts/test.sh book site        # only the named stages (unit gpu-dry notebooks book site)
#
# Runs the notebooks and the book at SSVI_PRESET=tiny unless SSVI_PRESET is set; at tiny the
# runs are stored under build_scratch/ (SSVI_RESULTS, SSVI_RUNS), not in results/.
#
# Each notebook executes once: the notebooks stage (nbval) stores every notebook that passed, with
# its outputs, in the book's Jupyter Cache (notebooks/conftest.py, SSVI_NB_CACHE), and the book
# stage renders those instead of executing the notebooks again (SSVI_BOOK_REUSE=1).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export PATH="$ROOT/.venv/bin:$PATH"
export SSVI_PRESET="${SSVI_PRESET:-tiny}"
# Notebooks execute with notebooks/ as working directory: pass the data folder as an absolute path.
export SSVI_DATA="$(realpath -m "${SSVI_DATA:-data}")"
if [ "$SSVI_PRESET" = tiny ]; then   # CI-scale runs are scratch, not results worth keeping
    export SSVI_RESULTS="$(realpath -m "${SSVI_RESULTS:-build_scratch/tiny/results}")"
    export SSVI_RUNS="$(realpath -m "${SSVI_RUNS:-build_scratch/tiny/runs}")"
fi
NB_CACHE="$ROOT/_build/.jupyter_cache"   # the book's cache (_config.yml: execute.cache default)
failed=()
stages=" ${*:-unit gpu-dry notebooks book site} "
for name in $stages; do
    case "$name" in unit|gpu-dry|notebooks|book|site) ;; *)
        echo "[test] unknown stage '$name'; choose from: unit gpu-dry notebooks book site" >&2; exit 2;;
    esac
done
want() { [[ "$stages" == *" $1 "* ]]; }

stage() { printf '\n[test] == %s ==\n' "$*"; }

if want unit; then
    stage "1/4 unit tests: pytest -q tests"
    pytest -q tests
    rc=$?
    if [ $rc -ne 0 ]; then   # includes rc 5, "no tests collected"
        failed+=("unit tests (pytest exit $rc)")
    fi
fi

if want gpu-dry; then
    stage "1b/4 the prepared GPU check, dry run on the CPU: bash scripts/gpu_check.sh --dry-run"
    bash scripts/gpu_check.sh --dry-run
    rc=$?
    if [ $rc -ne 0 ]; then failed+=("gpu_check.sh --dry-run (exit $rc)"); fi
fi

if want notebooks; then
    stage "2/4 notebooks: pytest --nbval --nbval-current-env notebooks/ (SSVI_PRESET=$SSVI_PRESET)"
    shopt -s nullglob
    notebooks=(notebooks/*.ipynb)
    shopt -u nullglob
    if [ ${#notebooks[@]} -eq 0 ]; then
        if [ -n "$(find notebooks -mindepth 1 -not -name '.*' -print -quit 2>/dev/null)" ]; then
            echo "[test] notebooks/ has files but no .ipynb notebook"
            failed+=("notebooks (no .ipynb in a non-empty notebooks/)")
        else
            echo "[test] notebooks/ is empty: nothing to run"
        fi
    else
        rm -rf "$NB_CACHE"
        SSVI_NB_CACHE="$NB_CACHE" pytest --nbval --nbval-current-env -q -p no:cacheprovider notebooks/
        rc=$?
        export SSVI_BOOK_REUSE=1   # the book stage renders what nbval executed
        if [ $rc -ne 0 ]; then failed+=("notebooks (pytest exit $rc)"); fi
    fi
fi

if want book; then
    how="executed"; [ "${SSVI_BOOK_REUSE:-0}" = 1 ] && how="from the nbval stage"
    stage "3/4 book: jupyter-book build --all -W -n --keep-going . (SSVI_PRESET=$SSVI_PRESET, notebooks $how)"
    SSVI_SKIP_SETUP=1 bash scripts/build_book.sh
    rc=$?
    if [ $rc -ne 0 ]; then failed+=("book build (exit $rc)"); fi
fi

if want site; then
    stage "4/4 site: python scripts/check_site.py"
    if [ -f _build/html/index.html ]; then
        python scripts/check_site.py
        rc=$?
        if [ $rc -ne 0 ]; then failed+=("site check (exit $rc)"); fi
    else
        echo "[test] no _build/html/index.html: the book did not build"
        failed+=("site check (no built site)")
    fi
fi

echo
if [ ${#failed[@]} -eq 0 ]; then
    echo "[test] passed:$stages"
    exit 0
fi
echo "[test] FAILED stages:"
printf '[test]   - %s\n' "${failed[@]}"
exit 1
