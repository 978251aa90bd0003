"""The protocol every Table-2 baseline (VD, SBP, AEB, mBNN) follows, so one trainer runs them all.

One :class:`Method` instance per run. The trainer calls, in order::

    method = get_method(cfg.method, cfg)
    model = method.build_model(cfg.model, num_classes, cfg.width, cfg)
    opt = method.make_optimizer(model, cfg)
    for each step:  logits = model(x)
                    loss = method.loss(model, logits, y, n_train, step, epoch); backward; opt.step()
                    log = method.after_step(model, step, epoch, (x, y))     # dict or None
    with torch.no_grad(): probs = method.predict(model, x, samples)     # model.eval() by the caller
    masks = method.masks(model)                   # the FINAL masks used by predict
    flops = method.training_flops(model, n_train, epochs, batch_size, history)

Conventions:

* ``step`` counts optimisation steps from 0, ``epoch`` counts epochs from 1 (as the SSVI trainer).
* ``masks`` maps layer names (as in ``model.named_modules()``) to boolean tensors of the layer's
  weight shape; sparsity and the active-weight count ("Complexity") are measured from them with
  :func:`mask_stats`, never from a target.
* ``training_flops`` returns ``{"training_flops", "dense_training_flops", "relative", "formula"}``
  (FLOPs as in :mod:`ssvi.flops`: a multiply-add is 2 FLOPs); ``history`` is the list of the
  dicts ``after_step`` returned (``None`` entries dropped), or None.
* Hyper-parameters: each method has a frozen dataclass ``Hparams`` with its paper's defaults.
  :func:`hparams_from` fills it from ``cfg``: field ``f`` is read from ``cfg.<name>_<f>``
  (e.g. ``cfg.vd_threshold``) if ``cfg`` has that attribute, else from ``cfg.extra["<name>_<f>"]``,
  else the default. A field name the method does not know in ``cfg.extra`` is an error.
"""
from __future__ import annotations

import dataclasses
import math
import numbers

import torch
import torch.nn as nn


def hparams_from(hparams_cls, name: str, cfg=None):
    """The method's frozen ``hparams_cls`` with fields ``<name>_<field>`` taken from ``cfg``."""
    if cfg is None:
        return hparams_cls()
    fields = {f.name for f in dataclasses.fields(hparams_cls)}
    extra = dict(getattr(cfg, "extra", None) or {})
    prefix = name + "_"
    unknown = sorted(k for k in extra if k.startswith(prefix) and k[len(prefix):] not in fields)
    if unknown:
        raise ValueError(f"unknown {name} hyper-parameters {unknown}; allowed: "
                         f"{', '.join(name + '_' + f for f in sorted(fields))}")
    values = {}
    for f in fields:
        key = f"{name}_{f}"
        if hasattr(cfg, key):
            values[f] = getattr(cfg, key)
        elif key in extra:
            values[f] = extra[key]
            if isinstance(getattr(hparams_cls, f, None), tuple) and isinstance(values[f], list):
                values[f] = tuple(values[f])      # JSON stores a tuple as a list
    return hparams_cls(**values)


def _coerce(key: str, value, default):
    """``value`` in the type of ``default`` (bool, int, float, str, tuple as a JSON list, None
    meaning "an optional number"); ValueError in one line if it cannot be."""
    def bad(want):
        return ValueError(f"{key}={value!r} is not allowed; it must be {want}")
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise bad("true or false")
    if isinstance(default, int):
        if isinstance(value, numbers.Real) and not isinstance(value, bool) \
                and math.isfinite(value) and float(value).is_integer():
            return int(value)
        raise bad("an integer")
    if default is None or isinstance(default, float):
        if value is None and default is None:
            return None
        if isinstance(value, numbers.Real) and not isinstance(value, bool) \
                and math.isfinite(value):
            return float(value)
        raise bad("a finite number" + (" or null" if default is None else ""))
    if isinstance(default, str):
        if isinstance(value, str):
            return value
        raise bad("a string")
    if isinstance(default, (tuple, list)):
        if isinstance(value, (tuple, list)) and all(
                isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)
                for v in value):
            return [float(v) for v in value]
        raise bad("a list of finite numbers, e.g. [0.7, 0.9]")
    raise AssertionError(f"{key}: no rule for a default of type {type(default).__name__}")


def canonical_hparams(hparams_cls, name: str, given: dict) -> dict:
    """``given`` (``{"<name>_<field>": value}``, e.g. from ``cfg.extra`` / ``--hp``) checked
    against ``hparams_cls`` and in canonical form: every key a field, every value of the field's
    type (ints as int, numbers as float, tuples as lists), the method's own checks
    (``__post_init__``) passed; entries equal to the default left out. ValueError (one line)
    naming the key for an unknown field or a bad value."""
    fields = {f.name for f in dataclasses.fields(hparams_cls)}
    defaults = hparams_cls()
    prefix = name + "_"
    out, values = {}, {}
    for key in sorted(given):
        field = key[len(prefix):] if key.startswith(prefix) else None
        if field not in fields:
            raise ValueError(f"unknown {name} hyper-parameter {key!r}; allowed: "
                             f"{', '.join(prefix + f for f in sorted(fields))}")
        default = getattr(defaults, field)
        value = _coerce(key, given[key], default)
        values[field] = tuple(value) if isinstance(default, tuple) else value
        plain_default = list(default) if isinstance(default, tuple) else default
        if value != plain_default or type(value) is not type(plain_default):
            out[key] = value
    hparams_cls(**values)          # the method's own range checks
    return out


@torch.no_grad()
def average_draws(model: nn.Module, x: torch.Tensor, noisy, samples: int) -> torch.Tensor:
    """Predictive probabilities (N, C) of the pruned model in eval mode: the average of
    ``samples`` softmax outputs, each from one draw of the ``noisy`` modules (those with a
    ``mode`` attribute, set to "sample"); ``samples=0`` uses their means ("mean" mode)."""
    was = model.training
    old = [m.mode for m in noisy]
    model.eval()
    try:
        for m in noisy:
            m.mode = "sample" if samples >= 1 else "mean"
        n = max(int(samples), 1)
        return sum(torch.softmax(model(x).float(), -1) for _ in range(n)) / n
    finally:
        for m, o in zip(noisy, old):
            m.mode = o
        model.train(was)


def mask_stats(masks: dict[str, torch.Tensor]) -> dict:
    """Active weights (sum of masks), total weights, density and sparsity = 1 - density."""
    if not masks:
        raise ValueError("mask_stats: no masks given; the method's masks(model) returned nothing")
    active = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    return {"active_weights": active, "total_weights": total, "density": active / total,
            "sparsity": 1.0 - active / total}


def flops_dict(total: float, dense: float, formula: str, **extra) -> dict:
    """What ``training_flops`` returns: total, its dense equivalent, their ratio, the formula."""
    return {"training_flops": float(total), "dense_training_flops": float(dense),
            "relative": float(total) / float(dense), "formula": formula, **extra}


class Method:
    """Base class of a sparse-BNN baseline; subclasses override every method below."""

    name: str = ""
    bayesian_eval: bool = True     # prediction averages posterior draws / stored samples
    Hparams = None                 # frozen dataclass of the method's hyper-parameters

    def __init__(self, cfg=None):
        self.cfg = cfg
        self.hp = hparams_from(self.Hparams, self.name, cfg) if self.Hparams else None

    def build_model(self, model_name: str, num_classes: int, width: float, cfg=None) -> nn.Module:
        """The network of ``ssvi.models.ARCHS[model_name]`` converted to this method's layers."""
        raise NotImplementedError

    def make_optimizer(self, model: nn.Module, cfg=None) -> torch.optim.Optimizer:
        raise NotImplementedError

    def loss(self, model: nn.Module, logits: torch.Tensor, y: torch.Tensor, n_train: int,
             step: int, epoch: int) -> torch.Tensor:
        """Per-step objective: mean CE + regulariser / N_train (or -log posterior / N_train)."""
        raise NotImplementedError

    def after_step(self, model: nn.Module, step: int, epoch: int, batch) -> dict | None:
        """Per-step extras (SA updates, birth-death moves, sample storage); optional log dict."""
        return None

    def predict(self, model: nn.Module, x: torch.Tensor, samples: int) -> torch.Tensor:
        """Predictive probabilities (N, C), averaged over ``samples`` draws / stored samples."""
        raise NotImplementedError

    def masks(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The final boolean masks actually used by :meth:`predict`, one per weight tensor."""
        raise NotImplementedError

    def training_flops(self, model: nn.Module, n_train: int, epochs: int, batch_size: int,
                       history=None) -> dict:
        """Training FLOPs as Table 2 counts them (see :func:`flops_dict`)."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        """The method's own state (not the model's): sample stores, SA variables, counters."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        if state:
            raise ValueError(f"{self.name}: unexpected method state keys {sorted(state)}")
