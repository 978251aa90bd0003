"""Sparse-BNN baselines of the paper's Table 2, one module each, all following
:class:`ssvi.baselines.base.Method`:

* ``vd``   sparse variational dropout (Molchanov, Ashukha, Vetrov, ICML 2017)  -> :mod:`.vd`
* ``sbp``  structured Bayesian pruning (Neklyudov et al., NeurIPS 2017)         -> :mod:`.sbp`
* ``aeb``  adaptive empirical Bayes (Deng, Zhang, Liang, Lin, NeurIPS 2019)     -> :mod:`.aeb`
* ``mbnn`` masked BNN (Kong et al., 2023)                                       -> :mod:`.mbnn`

Modules are imported on first use, so one method's module never blocks another's.
"""
from __future__ import annotations

import importlib

from .base import Method, canonical_hparams, flops_dict, hparams_from, mask_stats

_REGISTRY = {"vd": ("vd", "VD"), "sbp": ("sbp", "SBP"), "aeb": ("aeb", "AEB"),
             "mbnn": ("mbnn", "MBNN")}
METHOD_NAMES = tuple(_REGISTRY)


def method_class(name: str) -> type:
    """The Method subclass registered under ``name``."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown baseline method {name!r}; choose one of {', '.join(_REGISTRY)}")
    module, cls = _REGISTRY[name]
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)


def get_method(name: str, cfg=None) -> Method:
    """A fresh Method instance for ``name`` configured from ``cfg`` (one per run)."""
    return method_class(name)(cfg)


def __getattr__(attr):
    if attr == "METHODS":   # {"vd": VD, "sbp": SBP, "aeb": AEB, "mbnn": MBNN}, imported on access
        return {name: method_class(name) for name in _REGISTRY}
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


__all__ = ["METHODS", "METHOD_NAMES", "Method", "canonical_hparams", "flops_dict", "get_method",
           "hparams_from", "mask_stats", "method_class"]
