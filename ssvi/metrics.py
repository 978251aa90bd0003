"""Evaluation: the paper's K-sample predictive protocol and the metrics reported in its tables.

Predictive distribution (paper Section 4.1, "five samples from the posterior"; recipe
"Evaluation"): for each of K posterior samples draw ONE full weight vector
``theta_k = mu + sigma * eps_k`` (masked) and use it for the whole test set; average the K
softmax outputs,

    p(y | x) = 1/K * sum_k softmax(f(x; theta_k)).

The Bayesian layers draw a fresh weight on every forward call in their "sample" mode, so one
draw would not be shared across batches; :func:`sampled_weights` therefore draws ``theta_k``
once, swaps it in for ``mu`` and runs every batch in "mean" mode.

Metrics, all computed in float64 from the averaged probabilities ``p`` (N, C) and labels ``y``:

* ``accuracy``: mean of ``argmax_c p == y`` (ties -> lowest class index).
* ``nll``: mean of ``-log max(p[y], NLL_EPS)`` (the averaged probability, not the average log).
* ``brier``: mean over examples of ``sum_c (p_c - onehot(y)_c)^2`` (range [0, 2]; some papers
  divide by C).
* ``ece``: top-label L1 ECE with 15 equal-width bins ``(k/15, (k+1)/15]`` (Guo et al. 2017).
* ``ece_release``: what the authors' release reports, ``calibration.get_calibration_error``
  (PyPI package uncertainty-calibration) with its defaults: marginal (class-wise), L2, debiased,
  15 equal-mass bins per class (or, when every class column has few distinct values, the
  package's discrete-value bins). Re-implemented here, vectorised, without the package.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn as nn

from .layers import bayes_layers, mode as layer_mode

NLL_EPS = 1e-12
ECE_BINS = 15
PREDICT_MODES = ("sample", "mean")


# -- prediction -----------------------------------------------------------------------------------
@contextlib.contextmanager
def sampled_weights(model: nn.Module, generator: torch.Generator | None = None):
    """Context manager: fix ONE posterior draw ``theta = (mu + sigma * eps) * mask`` per
    Bayesian layer and run the model in "mean" mode with ``mu`` replaced by ``theta``.

    Every forward call inside the block uses the same weights. ``mu`` (same Parameter object)
    and the layers' modes are restored on exit, also on exceptions. Deterministic layers
    (no rho) are left as they are. ``eps`` comes from ``generator`` (on the layers' device)
    or, when None, from the global torch RNG in module order.
    """
    saved = []
    try:
        with torch.no_grad():
            for _, layer in bayes_layers(model):
                if layer.rho is None:
                    continue
                mu = layer.mu.data
                eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
                theta = (mu + layer.sigma * eps) * layer.mask.to(mu.dtype)
                saved.append((layer, mu))
                layer.mu.data = theta
        with layer_mode(model, "mean"):
            yield model
    finally:
        for layer, mu in saved:
            layer.mu.data = mu


@contextlib.contextmanager
def _eval_state(model: nn.Module):
    """model.eval() inside the block; every module's own training flag restored afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def _softmax_pass(model, loader):
    probs, labels = [], []
    for x, y in loader:
        probs.append(torch.softmax(model(x).float(), dim=-1))
        labels.append(y)
    if not probs:
        raise ValueError("predict_probs: the loader yielded no batches")
    return torch.cat(probs), torch.cat(labels)


def predict_probs(model: nn.Module, loader, samples: int = 5, mode: str = "sample",
                  seed: int | None = None):
    """Posterior predictive probabilities of the paper's protocol (module docstring).

    ``mode="sample"``: average of ``samples`` softmax outputs, each from one weight draw shared
    by every batch of ``loader``. ``mode="mean"``: one pass with the mean weights (``samples``
    ignored). A model without stochastic layers needs, and gets, a single pass.
    ``seed`` fixes the draws (a generator on the model's device); None uses the global RNG.
    ``loader`` yields ``(x, y)`` in the same order on every pass (e.g. an eval
    :class:`ssvi.loader.Loader`). BatchNorm runs in eval mode; the model's train/eval state
    is restored. Returns ``(probs, labels)``: float64 (N, C) and int64 (N,) on the
    loader's device.
    """
    if mode not in PREDICT_MODES:
        raise ValueError(f"predict_probs: mode={mode!r}; choose one of {', '.join(PREDICT_MODES)}")
    if int(samples) < 1:
        raise ValueError(f"predict_probs: samples={samples} must be a positive integer")
    if getattr(loader, "augment", False):
        raise ValueError("predict_probs: the loader augments its images; evaluate with an eval "
                         "loader (Loader(..., augment=False))")
    stochastic = any(m.rho is not None for _, m in bayes_layers(model))
    with torch.no_grad(), _eval_state(model):
        if mode == "mean" or not stochastic:
            with layer_mode(model, "mean"):
                probs, labels = _softmax_pass(model, loader)
            return probs.double(), labels
        generator = None
        if seed is not None:
            device = next(model.parameters()).device
            generator = torch.Generator(device=device).manual_seed(int(seed))
        total, labels = None, None
        for _ in range(int(samples)):
            with sampled_weights(model, generator):
                probs, y = _softmax_pass(model, loader)
            if total is None:
                total, labels = probs.double(), y
            else:
                if y.shape != labels.shape or not torch.equal(y, labels):
                    raise ValueError("predict_probs: the loader served the examples in a "
                                     "different order on a second pass; use a loader without "
                                     "shuffling")
                total += probs.double()
        return total / int(samples), labels


# -- metrics ---------------------------------------------------------------------------------------
def _as_arrays(probs, labels):
    if isinstance(probs, torch.Tensor):
        probs = probs.detach().cpu().numpy()
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    probs = np.asarray(probs)
    labels = np.asarray(labels)
    if probs.ndim != 2 or labels.shape != (probs.shape[0],):
        raise ValueError(f"expected probs (N, C) and labels (N,), got {probs.shape} and "
                         f"{labels.shape}")
    if probs.shape[0] == 0:
        raise ValueError("metrics of an empty set are undefined (N = 0)")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    if labels.min() < 0 or labels.max() >= probs.shape[1]:
        raise ValueError(f"labels must lie in [0, {probs.shape[1]}), got range "
                         f"[{labels.min()}, {labels.max()}]")
    return probs, labels.astype(np.int64)


def accuracy(probs, labels) -> float:
    """Fraction of examples whose most probable class is the label."""
    p, y = _as_arrays(probs, labels)
    return float(np.mean(p.argmax(1) == y))


def nll(probs, labels) -> float:
    """Mean negative log of the (averaged) predictive probability of the label, p clamped at
    ``NLL_EPS``."""
    p, y = _as_arrays(probs, labels)
    return float(-np.mean(np.log(np.maximum(p[np.arange(len(y)), y].astype(np.float64), NLL_EPS))))


def brier(probs, labels) -> float:
    """Brier score: mean over examples of ``sum_c (p_c - 1[c = y])^2`` (not divided by C)."""
    p, y = _as_arrays(probs, labels)
    d = p.astype(np.float64).copy()
    d[np.arange(len(y)), y] -= 1.0
    return float(np.mean(np.sum(d * d, axis=1)))


def reliability_bins(probs, labels, n_bins: int = ECE_BINS) -> dict:
    """Top-label reliability diagram data: equal-width bins ``(k/n, (k+1)/n]`` of confidence
    ``max_c p_c``. Returns lists: ``edges`` (n_bins + 1), per-bin mean ``confidence``,
    ``accuracy`` (NaN for empty bins) and ``count``."""
    if int(n_bins) < 1:
        raise ValueError(f"n_bins={n_bins} must be a positive integer")
    p, y = _as_arrays(probs, labels)
    conf = p.max(1).astype(np.float64)
    correct = (p.argmax(1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.searchsorted(edges[1:-1], conf, side="left"), 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(idx, conf, n_bins) / count
        mean_acc = np.bincount(idx, correct, n_bins) / count
    return {"edges": edges.tolist(), "confidence": mean_conf.tolist(),
            "accuracy": mean_acc.tolist(), "count": count.astype(int).tolist()}


def ece(probs, labels, n_bins: int = ECE_BINS) -> float:
    """Top-label expected calibration error, L1, equal-width bins (Guo et al. 2017):
    ``sum_b |B_b|/N * |acc(B_b) - conf(B_b)|``."""
    bins = reliability_bins(probs, labels, n_bins)
    count = np.asarray(bins["count"], dtype=np.float64)
    gap = np.abs(np.nan_to_num(np.asarray(bins["accuracy"]) - np.asarray(bins["confidence"])))
    return float(np.sum(count / count.sum() * gap))


def _equal_mass_edges(col: np.ndarray, n_bins: int) -> np.ndarray:
    """Upper bin edges of uncertainty-calibration's ``get_equal_bins``: split the sorted values
    into ``n_bins`` near-equal parts (numpy.array_split sizes), cut half-way between parts,
    last edge 1.0, duplicates removed. Midpoints stay in the input's float precision."""
    s = np.sort(col)
    n_bins = min(n_bins, len(s))
    sizes = np.full(n_bins, len(s) // n_bins)
    sizes[:len(s) % n_bins] += 1
    ends = np.cumsum(sizes)[:-1]                        # first index of parts 1 .. n_bins - 1
    mids = (s[ends - 1] + s[ends]) / np.asarray(2.0, dtype=s.dtype)
    return np.unique(np.append(mids.astype(np.float64), 1.0))


def _discrete_edges(col: np.ndarray) -> np.ndarray:
    """Upper bin edges of the package's ``get_discrete_bins``: half-way between distinct values."""
    u = np.unique(col)
    mids = (u[:-1] + u[1:]) / np.asarray(2.0, dtype=u.dtype)
    return np.append(mids.astype(np.float64), 1.0)


def _debiased_sq_ce(col: np.ndarray, hit: np.ndarray, edges: np.ndarray) -> float:
    """The package's ``unbiased_square_ce``: sum over bins with >= 2 points of
    ``n_b/N * ((mean p - mean y)^2 - mean y (1 - mean y) / (n_b - 1))``."""
    n_edges = len(edges)
    # np.searchsorted(side="left") puts a value equal to an edge in the lower bin; values above
    # the last edge (1.0) join the last bin, as the package's np.split does.
    idx = np.minimum(np.searchsorted(edges, col.astype(np.float64), side="left"), n_edges - 1)
    n = np.bincount(idx, minlength=n_edges).astype(np.float64)
    sp = np.bincount(idx, col.astype(np.float64), n_edges)
    sy = np.bincount(idx, hit, n_edges)
    ok = n >= 2
    mp, my = sp[ok] / n[ok], sy[ok] / n[ok]
    err = (mp - my) ** 2 - my * (1.0 - my) / (n[ok] - 1.0)
    return float(np.sum(n[ok] / len(col) * err))


def ece_release(probs, labels, n_bins: int = ECE_BINS) -> float:
    """The authors' release metric: ``calibration.get_calibration_error(probs, labels)`` of the
    package uncertainty-calibration (Kumar et al. 2019) with its defaults -- marginal
    (class-wise) L2 calibration error, debiased, 15 equal-mass bins per class:

        CE = sqrt( 1/C * sum_c max(0, sum_b n_b/N * [(pbar_b - ybar_b)^2
                                                     - ybar_b (1 - ybar_b)/(n_b - 1)]) )

    If every class column has fewer than N/4 distinct values the package treats the model as
    a binned one and uses one bin per distinct value instead; that rule is reproduced.
    Not the top-label ECE of :func:`ece`.
    """
    p, y = _as_arrays(probs, labels)
    n, c = p.shape
    onehot = np.zeros((n, c), dtype=np.float64)
    onehot[np.arange(n), y] = 1.0
    discrete = all(len(np.unique(p[:, k])) < n / 4.0 for k in range(c))
    per_class = []
    for k in range(c):
        col = p[:, k]
        edges = _discrete_edges(col) if discrete else _equal_mass_edges(col, n_bins)
        per_class.append(max(_debiased_sq_ce(col, onehot[:, k], edges), 0.0))
    return float(np.sqrt(np.mean(per_class)))


def all_metrics(probs, labels, n_bins: int = ECE_BINS) -> dict:
    """accuracy, nll, brier, ece, ece_release and the reliability bins of ``(probs, labels)``."""
    return {"accuracy": accuracy(probs, labels), "nll": nll(probs, labels),
            "brier": brier(probs, labels), "ece": ece(probs, labels, n_bins),
            "ece_release": ece_release(probs, labels, n_bins),
            "reliability": reliability_bins(probs, labels, n_bins)}


def evaluate(model: nn.Module, loader, samples: int = 5, mode: str = "sample",
             seed: int | None = None) -> dict:
    """:func:`predict_probs` then :func:`all_metrics`; also records ``samples``, ``mode``, ``n``."""
    probs, labels = predict_probs(model, loader, samples=samples, mode=mode, seed=seed)
    out = all_metrics(probs, labels)
    out.update(samples=int(samples) if mode == "sample" else 1, mode=mode, n=int(len(labels)))
    return out
