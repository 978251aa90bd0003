"""Experiment plumbing for the notebooks: scale presets, cached runs and results as data.

Every run writes ``results/<experiment>/<run-id>.json`` (config, metrics, per-epoch history,
provenance). The run id is a hash of the configuration, so a notebook asked for a run that already
exists (made here, or on a GPU and committed) loads it instead of training again.

Presets (``SSVI_PRESET`` or the notebook's ``preset`` parameter):

* ``tiny``: what CI executes on a 2-core CPU in seconds per run. Not meaningful as numbers.
* ``cpu``: the README's main job; a small CNN on 5,000 CIFAR-10 images for 5 epochs, about half
  a minute a run on a 2-core CPU. Accuracies are far below the paper's (25-35%, chance 10%).
* ``paper``: the full recipe (ResNet-18, 200 epochs, batch 128, all data), for a GPU.
"""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
from importlib import resources
from pathlib import Path

from .config import TrainConfig

PRESETS: dict[str, dict] = {
    "tiny": dict(model="small_cnn", width=0.25, epochs=2, batch_size=64, train_subset=1024,
                 test_subset=512, update_every=4, eval_samples=2, device="cpu"),
    # cpu: a 4.4k-weight CNN on 5k images for 5 epochs (~30 s a run on 2 cores); lr 0.05
    # instead of the recipe's 0.01, because 5 epochs at 0.01 barely leave chance level
    "cpu": dict(model="small_cnn", width=0.25, epochs=5, batch_size=128, train_subset=5000,
                test_subset=1000, update_every=10, eval_samples=3, lr=0.05),
    "paper": dict(),  # the TrainConfig defaults are the recipe
}
DEFAULT_PRESET = "cpu"


def repo_dir() -> Path:
    """The checkout holding the ``ssvi`` package (where ``results/``, ``data/``, ``runs/`` live),
    else the first folder above the working directory with a pyproject.toml, else the cwd.

    Notebooks execute with their own folder as working directory, so relative paths would
    point into ``notebooks/``; every default path is resolved against this folder.
    """
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


def resolve_preset(preset: str | None = None) -> str:
    """The preset name: the argument, else $SSVI_PRESET, else 'cpu'; checked."""
    name = preset or os.environ.get("SSVI_PRESET") or DEFAULT_PRESET
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return name


def preset_config(preset: str | None = None, **overrides) -> TrainConfig:
    """A TrainConfig at the given scale preset, with ``overrides`` applied (None values ignored)."""
    name = resolve_preset(preset)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    bad = set(overrides) - fields
    if bad:
        raise ValueError(f"unknown parameter(s) {', '.join(sorted(bad))}; "
                         f"allowed: {', '.join(sorted(fields))}")
    kw = dict(PRESETS[name])
    kw.update({k: v for k, v in overrides.items() if v is not None})
    kw.setdefault("extra", {})
    kw["extra"] = dict(kw["extra"], preset=name)
    return TrainConfig(**kw)


def run_id(cfg: TrainConfig) -> str:
    """A short stable hash of everything that changes the result (not paths or verbosity)."""
    d = cfg.to_dict()
    for k in ("progress", "run_dir", "results_path", "data_dir"):
        d.pop(k, None)
    blob = json.dumps(d, sort_keys=True, default=str).encode()
    preset = cfg.extra.get("preset", "custom")
    tag = f"{preset}-{cfg.method}-d{cfg.density:g}-s{cfg.seed}"
    return f"{tag}-{hashlib.sha256(blob).hexdigest()[:10]}"


def result_path(experiment: str, cfg: TrainConfig, results_dir: str | None = None) -> str:
    return os.path.join(results_root(results_dir), experiment, run_id(cfg) + ".json")


def run(experiment: str, cfg: TrainConfig, *, force: bool = False,
        results_dir: str | None = None, on_update=None) -> dict:
    """Load ``results/<experiment>/<run-id>.json`` if it exists, else train ``cfg`` and write it.

    ``on_update`` is passed to :func:`ssvi.trainer.train` (e.g. to log removal sets).
    """
    path = result_path(experiment, cfg, results_dir)
    if os.path.exists(path) and not force:
        with open(path) as f:
            return json.load(f)
    from .trainer import train
    cfg = dataclasses.replace(cfg, results_path=path)
    return train(cfg, on_update=on_update)


def load_results(experiment: str, results_dir: str | None = None) -> list[dict]:
    """Every stored result of ``experiment`` (runs made here and runs committed from elsewhere)."""
    out = []
    for path in sorted(glob.glob(os.path.join(results_root(results_dir), experiment, "*.json"))):
        with open(path) as f:
            rec = json.load(f)
        rec["_path"] = path
        out.append(rec)
    return out


def paper_numbers() -> dict:
    """The paper's own numbers, with their table/figure of origin (ssvi/paper_numbers.json)."""
    with resources.files("ssvi").joinpath("paper_numbers.json").open() as f:
        return json.load(f)
