"""Evaluations an artefact adds to its runs, beyond the trainer's own test metrics.

Each one is declared by :mod:`ssvi.registry` in a run's ``cfg.extra["evaluation"]`` (its name,
version and settings, so they are part of the run id), executed by :mod:`ssvi.runner`, and
stored in the run's standard results record:

* ``removal_iou`` (appendix_iou): before every subspace update, for every pair of removal
  criteria, the IoU of the weight sets each would remove now (pooled over the sparse tensors).
  A trainer ``on_update`` hook; its rows are the record's ``update_log``.
* ``shift`` (appendix_shift): after training, accuracy, NLL, ECE and Brier score on the clean
  test set and on corrupted copies of it (:mod:`ssvi.corruptions`, or the released CIFAR-10-C).
  Stored as ``record["evaluations"]["shift"] = {"spec": ..., "rows": [...]}``.
* ``regrow_sigma_ratio`` (figure3_ablations): after training, per sparse layer, the paper's
  re-grown sigma (mean of the active sigma) over the release's (softplus of the mean active rho),
  :func:`ssvi.subspace.regrow_sigma_ratio`. Stored as
  ``record["evaluations"]["regrow_sigma_ratio"] = {"layers": {...}, "mean": ..., ...}``.
"""
from __future__ import annotations

import math

import torch

#: name -> version; a changed evaluation gets a new version, hence new run ids
VERSIONS = {"removal_iou": 1, "shift": 1, "regrow_sigma_ratio": 1}
#: evaluations that need the trained network after training (the runner keeps a checkpoint)
AFTER_TRAINING = ("shift", "regrow_sigma_ratio")


def spec(name: str, **settings) -> dict:
    """The ``cfg.extra["evaluation"]`` entry of evaluation ``name`` with ``settings``."""
    if name not in VERSIONS:
        raise ValueError(f"unknown evaluation {name!r}; choose one of {', '.join(VERSIONS)}")
    return {"name": name, "version": VERSIONS[name], **settings}


def on_update_hook(evaluation: dict | None):
    """The trainer's ``on_update`` callback for ``evaluation`` (a :func:`spec`), or None."""
    if not evaluation or evaluation["name"] != "removal_iou":
        return None
    return removal_iou(list(evaluation["criteria"]))


def removal_iou(criteria: list[str]):
    """``on_update(controller, step)``: pairwise IoU |A ∩ B| / |A ∪ B| of the weight sets that
    each criterion in ``criteria`` would remove at this update (n = floor(target · r_t) per
    sparse tensor, Section 3.3.1), pooled over tensors. Changes nothing in the model."""
    from .subspace import replacement_fraction

    @torch.no_grad()
    def hook(controller, step: int) -> dict:
        r = replacement_fraction(step, controller.t_end, controller.alpha)
        sets = {c: [] for c in criteria}
        n_removed = n_active = 0
        for name, layer in controller.sparse_layers:
            n = math.floor(controller.targets[name] * r)
            n_active += controller.targets[name]
            if n == 0:
                continue
            n_removed += n
            for c in criteria:
                sets[c].append(controller.prune(layer, n, criterion=c).flatten())
        iou = None
        if n_removed:
            pooled = {c: torch.cat(v) for c, v in sets.items()}
            iou = [[float((pooled[a] & pooled[b]).sum()) / float((pooled[a] | pooled[b]).sum())
                    for b in criteria] for a in criteria]
        return {"step": int(step), "r": r, "n_removed": n_removed, "n_active": n_active,
                "criteria": list(criteria), "iou": iou}

    return hook


def after_training(model: torch.nn.Module, cfg, evaluation: dict, device) -> dict:
    """The after-training evaluation ``evaluation`` (a :func:`spec` named in
    :data:`AFTER_TRAINING`) of the trained ``model`` of ``cfg``."""
    if evaluation["name"] == "shift":
        return shift_metrics(model, cfg, evaluation, device)
    if evaluation["name"] == "regrow_sigma_ratio":
        return sigma_ratio(model)
    raise ValueError(f"{evaluation['name']!r} is not an after-training evaluation; those are "
                     f"{', '.join(AFTER_TRAINING)}")


def sigma_ratio(model: torch.nn.Module) -> dict:
    """mean(sigma) / softplus(mean rho) over the active weights of each sparse layer
    (:func:`ssvi.subspace.regrow_sigma_ratio`), with the mean, min and max over layers."""
    from .subspace import regrow_sigma_ratio
    layers = regrow_sigma_ratio(model)
    vals = list(layers.values())
    if not vals:
        return {"layers": {}, "mean": None, "min": None, "max": None}
    return {"layers": layers, "mean": sum(vals) / len(vals), "min": min(vals), "max": max(vals)}


def _loader_api():
    try:
        from .loader import Loader, load_dataset
    except ImportError:  # before the data split (ssvi.data)
        from .data import GPULoader as Loader, load_dataset
    return Loader, load_dataset


def shift_metrics(model: torch.nn.Module, cfg, evaluation: dict, device) -> dict:
    """Metrics of the trained ``model`` of ``cfg`` on the clean and on every corrupted test set.

    ``evaluation``: a :func:`spec` with ``corruptions``, ``severities``, ``corruption_seed`` and
    ``cifar10c_dir`` (None: regenerate the corruptions with :func:`ssvi.corruptions.corrupt`).
    The test images are those the run evaluated on (its ``test_subset``); each evaluation uses
    the run's protocol (``eval_samples`` posterior draws shared by the whole set; one pass for
    the deterministic methods). Severity 0 is the clean test set.
    """
    from .corruptions import corrupt, load_cifar10c
    from .metrics import evaluate
    Loader, load_dataset = _loader_api()
    ds = load_dataset(cfg.dataset, cfg.data_dir)
    released = evaluation.get("cifar10c_dir")
    bayesian = cfg.method in ("ssvi", "dense_vi")
    n = cfg.test_subset or len(ds.x_test)
    rows = []
    blocks = [(None, 0)] + [(c, s) for c in evaluation["corruptions"]
                            for s in evaluation["severities"]]
    model.eval()
    for name, severity in blocks:
        if name is not None and released:
            x, y = load_cifar10c(released, name, severity)
            x, y = x[:n], y[:n]
        else:
            x, y = ds.x_test[:n], ds.y_test[:n]
            if name is not None:
                x = corrupt(x, name, severity, seed=evaluation.get("corruption_seed", 0))
        loader = Loader(x, y, max(cfg.batch_size, 500), device=device, mean=ds.mean, std=ds.std)
        m = evaluate(model, loader, samples=cfg.eval_samples if bayesian else 1,
                     mode="sample" if bayesian else "mean", seed=cfg.seed)
        rows.append({"corruption": name or "clean", "severity": int(severity),
                     **{k: float(m[k]) for k in ("accuracy", "nll", "ece", "ece_release",
                                                 "brier")}})
    return {"spec": dict(evaluation), "source": ("released CIFAR-10-C" if released
                                                 else "regenerated (ssvi.corruptions)"),
            "rows": rows}
