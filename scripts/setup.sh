#!/usr/bin/env bash
# Prepare everything the tests and the book build need. Safe to run repeatedly: each step is
# skipped when its result is already there.
#
#   bash scripts/setup.sh
#
# 1. a virtual environment in .venv with the package installed editable, with the book and
#    test extras (pip install -e '.[book,test]');
# 2. Chromium at /usr/bin/chromium for scripts/check_site.py (Debian package, via apt-get);
# 3. CIFAR-10 (JPEG-75 copy) in ${SSVI_DATA:-data}/cifar-10-batches-py, unpacked from
#    ../shared/data/cifar10-jpeg75 when that folder exists.
#
# Environment: PYTHON (default python3) creates the venv; SSVI_DATA is the data folder;
# SSVI_SKIP_APT=1 skips the Chromium install.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"

say() { printf '[setup] %s\n' "$*"; }

# -- 1. Python environment ----------------------------------------------------------------------
if [ ! -x "$PY" ]; then
    say "creating $VENV"
    "${PYTHON:-python3}" -m venv "$VENV"
fi
# Reinstall only when pyproject.toml changed since the last successful install.
STAMP="$VENV/.ssvi-installed"
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ] \
        || ! "$PY" -c 'import ssvi, jupyter_book, nbval, papermill' >/dev/null 2>&1; then
    say "installing the package with the book and test extras"
    "$PY" -m pip install --quiet --upgrade pip
    "$PY" -m pip install --quiet -e '.[book,test]'
    touch "$STAMP"
else
    say "virtual environment is up to date"
fi
# The notebooks run on a kernel named python3; make it the one of this environment.
"$PY" -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (ssvi)" \
    >/dev/null 2>&1 || say "warning: could not register the ipykernel"

# -- 2. Chromium for the site check -------------------------------------------------------------
if [ -x /usr/bin/chromium ]; then
    say "chromium present"
elif [ "${SSVI_SKIP_APT:-0}" = "1" ]; then
    say "SSVI_SKIP_APT=1: not installing chromium (scripts/check_site.py will fail without it)"
else
    SUDO=""
    if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
    say "installing chromium with apt-get"
    $SUDO apt-get update
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends chromium
fi

# -- 3. data ------------------------------------------------------------------------------------
DATA="${SSVI_DATA:-data}"
MAKER="$ROOT/../shared/data/cifar10-jpeg75/make_cifar10.py"
if [ -d "$DATA/cifar-10-batches-py" ]; then
    say "CIFAR-10 (JPEG-75 copy) present in $DATA/cifar-10-batches-py"
elif [ -f "$MAKER" ]; then
    say "unpacking CIFAR-10 (JPEG-75 copy) into $DATA (about 20 s)"
    mkdir -p "$DATA"
    "$PY" "$MAKER" "$DATA"
else
    say "no CIFAR-10 in $DATA and no $MAKER; notebooks that need it will say so"
fi
say "done"
