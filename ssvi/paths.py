"""Where the repository, the stored results and the run folders are.

Notebooks execute with their own folder as working directory, so a relative default such as
``./results`` would point into ``notebooks/``; every default folder is resolved here, against the
repository (:func:`repo_dir`). The data folder is resolved once too, by
:func:`ssvi.cifar.data_root` (``$SSVI_DATA``, else ``<repository>/data``).
"""
from __future__ import annotations

import os
from pathlib import Path


def repo_dir() -> Path:
    """The checkout holding the ``ssvi`` package (where ``results/``, ``data/``, ``runs/`` live),
    else the first folder above the working directory with a pyproject.toml and an ``ssvi/``
    folder, else the working directory."""
    here = Path(__file__).resolve().parent.parent
    if (here / "pyproject.toml").is_file():
        return here
    cwd = Path.cwd().resolve()
    for p in (cwd, *cwd.parents):
        if (p / "pyproject.toml").is_file() and (p / "ssvi").is_dir():
            return p
    return cwd


def results_root(results_dir=None) -> str:
    """``results_dir``, else $SSVI_RESULTS, else <repository>/results."""
    return str(results_dir or os.environ.get("SSVI_RESULTS") or repo_dir() / "results")


def runs_root(runs_dir=None) -> str:
    """``runs_dir`` (checkpoint folders), else $SSVI_RUNS, else <repository>/runs."""
    return str(runs_dir or os.environ.get("SSVI_RUNS") or repo_dir() / "runs")
