"""How :func:`ssvi.trainer.train` runs a Table-2 baseline (``cfg.method`` in vd, sbp, aeb, mbnn):
the pieces that differ from SSVI, each a small function of the :class:`~.base.Method`.

Everything else is shared with SSVI: the data and loader, the epoch loop
(:func:`ssvi.loop.train_epoch`), the seeded evaluation (:func:`ssvi.trainer.evaluate_at`), the
metrics (:mod:`ssvi.metrics`), checkpoints and resume, divergence checks and the results record.

* Step (:class:`MethodStep`): ``logits = model(x)``, ``loss = method.loss(model, logits, y,
  N_train, step, epoch)``, backward, ``optimizer.step()``; then ``method.after_step(model, step,
  epoch, (x, y))`` (SA updates, pruning, birth-death moves, sample storage). ``step`` counts
  optimisation steps of the run from 0, ``epoch`` counts from 1.
* Learning rate (:func:`scheduled_lr`): param groups that carry ``base_lr`` (VD, SBP) follow the
  trainer's cosine schedule, lr = base_lr * (1 + cos(pi e / E)) / 2 per epoch; the MCMC methods
  (AEB, mBNN) set their SGHMC step size, temperature and N inside ``loss()`` every step and get
  no trainer schedule.
* Prediction (:func:`method_probs`): ``method.predict(model, x, cfg.eval_samples)`` batch by batch
  of the evaluation loader (VD and SBP draw their noise per batch; AEB and mBNN average their
  stored posterior samples), under the RNG seed of :func:`ssvi.trainer.eval_seed`.
* Counts (:func:`parameters`, :func:`training_flops`): sparsity and active weights from
  ``method.masks(model)``, the final masks prediction uses (never the target); training FLOPs
  from ``method.training_flops``, with its ``formula``.
"""
from __future__ import annotations

import dataclasses

import torch

from ..errors import ConfigError
from ..metrics import all_metrics
from .base import mask_stats


class MethodStep:
    """The step function of :func:`ssvi.loop.train_epoch` for a baseline, with the loop's
    ``before_step`` (:meth:`begin`) and ``after_step`` (:meth:`after`) hooks. Set ``epoch``
    (from 1) before each epoch."""

    def __init__(self, method, model, optimizer, n_train: int):
        self.method, self.model, self.optimizer = method, model, optimizer
        self.n_train = int(n_train)
        self.step = 0
        self.epoch = 1

    def begin(self, step: int) -> None:
        self.step = int(step)

    def __call__(self, x, y, kl_coef=None):
        """One optimisation step of the method's objective; returns the detached loss."""
        self.optimizer.zero_grad(set_to_none=True)
        logits = self.model(x)
        loss = self.method.loss(self.model, logits, y, self.n_train, self.step, self.epoch)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def after(self, step: int, x, y):
        """``method.after_step`` with the batch; its log dict (or None)."""
        return self.method.after_step(self.model, step, self.epoch, (x, y))


def summarise_logs(logs: list[dict]) -> dict | None:
    """One epoch's ``after_step`` logs in brief: their number, the last one, and the mean of
    every numeric key (e.g. mBNN's acceptance rate, AEB's scheduled sparsity)."""
    if not logs:
        return None
    keys = sorted({k for d in logs for k, v in d.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)})
    mean = {k: sum(float(d[k]) for d in logs if k in d) / sum(1 for d in logs if k in d)
            for k in keys}
    last = {k: v for k, v in logs[-1].items() if isinstance(v, (int, float, str, bool))}
    return {"n": len(logs), "mean": mean, "last": last}


def scheduled_lr(optimizer, factor: float) -> float:
    """Scale every param group that has ``base_lr`` to ``base_lr * factor`` (the cosine
    schedule); the first group's lr afterwards (unchanged groups: as the method set them)."""
    for g in optimizer.param_groups:
        if "base_lr" in g:
            g["lr"] = g["base_lr"] * factor
    return float(optimizer.param_groups[0]["lr"])


def kl_term(method, model, cfg, epoch: int, n_train: int) -> tuple[float, float]:
    """(coefficient, KL_sum) of a variational baseline's KL term at ``epoch`` (from 1);
    (0, 0) for a method without one (the MCMC baselines)."""
    if not hasattr(method, "kl") or not hasattr(method.hp, "kl_weight"):
        return 0.0, 0.0
    from .vd import kl_beta
    with torch.no_grad():
        kl = float(method.kl(model))
    return kl_beta(cfg, epoch) * method.hp.kl_weight / n_train, kl


@torch.no_grad()
def method_probs(method, model, loader, samples: int):
    """(probs float64 (N, C), labels) of ``method.predict`` over the batches of ``loader``."""
    probs, labels = [], []
    for x, y in loader:
        probs.append(method.predict(model, x, samples).double())
        labels.append(y)
    if not probs:
        raise ValueError("method_probs: the loader yielded no batches")
    return torch.cat(probs), torch.cat(labels)


def samples_used(method, samples: int) -> int:
    """Posterior draws behind a prediction: ``samples`` (VD, SBP), or for AEB/mBNN the stored
    chain states actually averaged (at most ``samples``)."""
    store = getattr(method, "samples", None)
    if store is not None and hasattr(store, "samples"):
        return max(1, min(int(samples), len(store.samples)))
    return int(samples)


def evaluate_method(method, model, loader, samples: int) -> dict:
    """The metrics of :func:`ssvi.metrics.all_metrics` for ``method.predict``; the caller seeds
    the RNG (:func:`ssvi.trainer.evaluate_at`)."""
    probs, labels = method_probs(method, model, loader, samples)
    out = all_metrics(probs, labels)
    out.update(samples=samples_used(method, samples), mode="method", n=int(len(labels)))
    return out


def parameters(method, model) -> dict:
    """Active weights, total weights, density and sparsity measured from ``method.masks``."""
    masks = method.masks(model)
    stats = mask_stats(masks)
    weight_ids = set()
    for name in masks:
        layer = model.get_submodule(name)
        weight_ids.add(id(getattr(layer, "mu", getattr(layer, "weight", None))))
    stats["other_params"] = sum(p.numel() for p in model.parameters() if id(p) not in weight_ids)
    stats["measured_from"] = "method.masks(model): the final masks used by predict"
    return stats


def training_flops(method, model, n_train: int, epochs: int, batch_size: int) -> dict:
    """``method.training_flops`` with the run's sizes and its formula as ``convention``."""
    out = dict(method.training_flops(model, n_train, epochs, batch_size, None))
    out.update(n_train=int(n_train), epochs=int(epochs), convention=out["formula"])
    return out


def method_section(method) -> dict:
    """What the record stores about the method: its name and every hyper-parameter used."""
    return {"name": method.name, "hparams": dataclasses.asdict(method.hp)}


def build(cfg, num_classes: int, device):
    """(method, model, optimizer) of ``cfg``; ConfigError in one line when the method cannot
    reach the configuration (e.g. a target density that keeps every weight of a layer)."""
    from . import get_method
    try:
        method = get_method(cfg.method, cfg)
        model = method.build_model(cfg.model, num_classes, cfg.width, cfg).to(device)
    except ValueError as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"method {cfg.method!r} cannot run this configuration: "
                          f"{' '.join(str(e).split())}") from None
    return method, model, method.make_optimizer(model, cfg)


def lr_knob(cfg, method, epoch: int) -> tuple[str, float, bool]:
    """(name, value, is_hyper_parameter) of the learning rate to lower after a divergence in
    ``epoch`` (from 1): --lr for SGD-trained VD/SBP, else the method's own ``--hp`` lr."""
    name = method.name
    if name in ("vd", "sbp"):
        if method.hp.optimizer == "sgd":
            return "lr", float(cfg.lr), False
        return f"{name}_lr", float(method.hp.lr), True
    if name == "aeb":
        field = "lr_sparse" if method.in_sparse_phase(epoch) else "lr_dense"
        return f"aeb_{field}", float(getattr(method.hp, field)), True
    return f"{name}_lr", float(method.hp.lr), True
