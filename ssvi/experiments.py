"""Experiment plumbing: scale presets, run ids, cached runs.

Every run writes ``results/<experiment>/<run-id>.json`` (a schema-2 record, :mod:`ssvi.results`).
The run id is a hash of the configuration's result fields and of the data fingerprint
(:func:`run_id`), so a notebook asked for a run that already exists (made here, or on a GPU and
committed) loads it instead of training again.

Presets (``SSVI_PRESET`` or the notebook's ``preset`` parameter):

* ``tiny``: what CI executes on a 2-core CPU in seconds per run. Not meaningful as numbers.
* ``cpu``: the README's main job; a small CNN on 5,000 CIFAR-10 images for 5 epochs, about half
  a minute a run on a 2-core CPU. Accuracies are far below the paper's (25-35%, chance 10%).
* ``laptop``: the book's evidence (issue 10), chosen by measuring accuracy against CPU minutes
  (``book/experiments.md``): ResNet-18 at 1/8 width (~175k weights), all 50,000 training
  and 10,000 test images, the paper's 5 posterior draws, a few epochs at batch 128, bf16 autocast
  on the CPU. Its results are committed under ``results/``; the main job builds from them.
* ``paper``: the full recipe (ResNet-18, 200 epochs, batch 128, all data), for a GPU.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from importlib import resources
from pathlib import Path

from . import config as C
from .config import TrainConfig
from .errors import ConfigError, ResultsFileError
from .paths import repo_dir, results_root, runs_root  # noqa: F401 (re-exported)

#: epochs of the laptop preset (chosen from the measured accuracy against CPU minutes)
LAPTOP_EPOCHS = 4
PRESETS: dict[str, dict] = {
    "tiny": dict(model="small_cnn", width=0.25, epochs=2, batch_size=64, train_subset=1024,
                 test_subset=512, update_every=4, eval_samples=2, device="cpu"),
    # cpu: a 4.4k-weight CNN on 5k images for 5 epochs (~30 s a run on 2 cores); lr 0.05
    # instead of the recipe's 0.01, because 5 epochs at 0.01 barely leave chance level
    "cpu": dict(model="small_cnn", width=0.25, epochs=5, batch_size=128, train_subset=5000,
                test_subset=1000, update_every=10, eval_samples=3, lr=0.05),
    # laptop: the recipe's network family, data and evaluation, shortened to fit a 2-core CPU:
    # epochs, lr 0.05 (the recipe's 0.01 is tuned for 200 epochs), update every 50 steps (the
    # recipe's 100 leaves too few subspace updates in so few steps), one evaluation at the end
    # (eval_every 1000: the last epoch is always evaluated),
    # bf16 autocast (ssvi.fast; 1.3x faster on this CPU). Each departure is on book/experiments.md
    "laptop": dict(model="resnet18", width=0.125, epochs=LAPTOP_EPOCHS, batch_size=128, lr=0.05,
                   update_every=50, eval_samples=5, eval_every=1000, device="cpu",
                   fast=True),
    "paper": dict(),  # the TrainConfig defaults are the recipe
}
DEFAULT_PRESET = "cpu"


def resolve_preset(preset: str | None = None) -> str:
    """The preset name: the argument, else $SSVI_PRESET, else 'cpu'; checked."""
    name = preset or os.environ.get("SSVI_PRESET") or DEFAULT_PRESET
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return name


def preset_config(preset: str | None = None, **overrides) -> TrainConfig:
    """A TrainConfig at the given scale preset, with ``overrides`` applied (None values ignored).

    A preset value that the chosen method ignores (e.g. the tiny preset's ``update_every`` for a
    dense method) is left out silently; an override that the method ignores is normalised with
    an :class:`ssvi.config.IgnoredSettingWarning`.
    """
    name = resolve_preset(preset)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    bad = set(overrides) - fields
    if bad:
        raise ConfigError(f"unknown parameter(s) {', '.join(sorted(bad))}; "
                          f"allowed: {', '.join(sorted(fields))}")
    given = {k: v for k, v in overrides.items() if v is not None}
    kw = {**PRESETS[name], **given}
    kw["extra"] = dict(kw.get("extra") or {}, preset=name)
    values = {f: C.default_value(f) for f in fields} | kw
    if values["method"] in C.METHOD_SPECS:
        for k in C.normalise(values):
            if k in PRESETS[name] and k not in given:
                del kw[k]
    return TrainConfig(**kw)


def run_id(cfg: TrainConfig, data_fingerprint: dict | None = None) -> str:
    """``<method>-d<density>-s<seed>-<hash>``: the hash covers every result field whose value is
    not its default (so adding a field whose default keeps the old behaviour keeps every stored
    id) and the data fingerprint (dataset, variant, sha256 of the arrays used; default
    :func:`ssvi.loader.data_fingerprint`). Paths and resume-free fields are left out."""
    if data_fingerprint is None:
        from .loader import data_fingerprint as fingerprint
        data_fingerprint = fingerprint(cfg)
    settings = {k: v for k, v in cfg.result_dict().items() if v != C.default_value(k)}
    key = {"config": settings,
           "data": {k: data_fingerprint[k] for k in ("dataset", "variant", "sha256")}}
    blob = json.dumps(key, sort_keys=True, allow_nan=False).encode()
    return f"{cfg.method}-d{cfg.density:g}-s{cfg.seed}-{hashlib.sha256(blob).hexdigest()[:12]}"


def result_path(experiment: str, cfg: TrainConfig, results_dir: str | None = None,
                data_fingerprint: dict | None = None) -> str:
    """``<results>/<experiment>/<run id>.json``."""
    return os.path.join(results_root(results_dir), experiment,
                        run_id(cfg, data_fingerprint) + ".json")


def run(experiment: str, cfg: TrainConfig, *, force: bool = False, rerun_stale: bool = False,
        results_dir: str | None = None, on_update=None, **train_kw) -> dict:
    """Load ``results/<experiment>/<run-id>.json`` if it holds a valid record, else train ``cfg``
    and write it. ``force``: train even if stored; ``rerun_stale``: train again when the stored
    record is stale (:func:`ssvi.results.is_stale`).

    A corrupt or malformed file at that path raises :class:`ssvi.errors.ResultsFileError`
    naming it (it is never taken as done). ``on_update`` and ``train_kw`` go to
    :func:`ssvi.trainer.train`.
    """
    from . import results
    path = result_path(experiment, cfg, results_dir)
    if os.path.exists(path) and not force:
        rec = results.read_record(path)
        if rec["run_id"] != Path(path).stem:
            raise ResultsFileError(f"results file {path} holds run {rec['run_id']!r}, not the "
                                   f"run its name says; delete it and run again")
        if not (rerun_stale and results.is_stale(rec)):
            return rec
    from .trainer import train
    return train(dataclasses.replace(cfg, results_path=path), on_update=on_update, **train_kw)


def load_results(experiment: str, results_dir: str | None = None) -> list[dict]:
    """Every stored record of ``experiment`` (see :func:`ssvi.results.load_results`)."""
    from .results import load_results as load
    return load(experiment, results_dir)


def paper_numbers() -> dict:
    """The paper's own numbers, with their table/figure of origin (ssvi/paper_numbers.json)."""
    with resources.files("ssvi").joinpath("paper_numbers.json").open() as f:
        return json.load(f)
