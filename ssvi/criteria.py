"""Subspace removal criteria (paper Section 3.3.1, eqs. 6-8) and the addition score (eq. 9).

Every removal score is a function of a weight's variational mean ``mu`` and standard deviation
``sigma`` (theta ~ N(mu, sigma^2)); HIGHER means more important, and the controller removes the
active weights with the LOWEST scores.

=================  ===============================  ============
name               score                            paper
=================  ===============================  ============
``abs_mu``         |mu|                             Criteria 1
``snr``            |mu| / sigma                     Criteria 2
``e_abs``          E|theta|                         eq. 6
``snr_abs``        E|theta| / sd|theta|             eq. 7 (SSVI default)
``e_exp_abs``      E exp(lam |theta|)               eq. 8
``snr_exp_abs``    E exp(lam|theta|) / sd(...)      eq. 8
=================  ===============================  ============

Numerics. All scores are computed in float64 on the inputs' device with vectorised torch ops.
The paper's formulas are evaluated in cancellation-free forms (derived in
``notebooks/derivation_criteria.ipynb``). With ``a = |mu|/sigma``, ``s = lam*sigma``,
``Q(x) = erfc(x/sqrt 2)/2`` and ``phi`` the standard normal density:

* ``h(a) = 2 phi(a) - 2 a Q(a) >= 0``; ``E|theta| = |mu| + sigma h`` and
  ``Var|theta| = sigma^2 (1 - 2 a h - h^2)`` (the bracket is >= 1 - 2/pi, so nothing cancels).
* ``G(s) = Q(a + s) - Q(a - s) exp(-2 s a) <= 0``, ``D1 = G(s)``, ``D2 = G(2s)``;
  ``E exp(lam|theta|) = exp(lam|mu| + s^2/2) (1 - D1)`` and
  ``Var exp(lam|theta|) = exp(s^2 + 2 lam|mu|) s^2 W`` with
  ``s^2 W = expm1(s^2)(1 - D2) + 2 D1 - D2 - D1^2``.  That difference cancels at first order in
  ``s``, so for ``s < SERIES_SWITCH`` ``W`` is evaluated from its Taylor series in ``s``
  (coefficients derived with sympy, written in ``a``, ``h`` and ``phi(a)``).

Accuracy (tested against 50-digit mpmath): relative error below 1e-6 (in practice 2e-11 or
better) for sigma in [1e-8, 1], |mu| <= 1 and lam in (0, 5]. Outside that range the formulas
stay stable; only exp(lam|mu|) itself overflows (to +inf) once lam|mu| > ~709.

Ranking facts (derived and shown in the notebook): ``snr_abs`` is a strictly increasing function
of ``|mu|/sigma``, so ``snr`` and ``snr_abs`` remove the same weights; ``snr_exp_abs`` is
~1/(lam sigma sd|Z|) for small lam*sigma, so it ranks mainly by sigma, and at fixed sigma it is
not increasing in |mu| (it tends to the log-normal value 1/sqrt(expm1(lam^2 sigma^2)) for
|mu| >> sigma and is up to ~1.66x larger at mu = 0).

sigma == 0 (only an inactive weight, or a float32 softplus underflow) is a point mass, and every
score takes its limit as sigma -> 0+ at fixed mu, which is finite or +inf, never NaN:
``snr``: +inf (0 if mu == 0); ``e_abs``: |mu|; ``snr_abs``: +inf (``1/sqrt(pi/2 - 1)`` if mu == 0);
``e_exp_abs``: exp(lam|mu|); ``snr_exp_abs``: +inf.  NaN or infinite inputs raise ValueError:
a NaN must never be read as "unimportant" (the authors' release did that, see recipe.md).
For a deterministic layer pass ``sigma=None`` (only ``abs_mu`` accepts it): passing its all-zero
``layer.sigma`` would give every weight the sigma -> 0 limit (+inf for the SNR criteria).
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

REMOVAL_CRITERIA = ("abs_mu", "snr", "e_abs", "snr_abs", "e_exp_abs", "snr_exp_abs")
NEEDS_SIGMA = frozenset(REMOVAL_CRITERIA) - {"abs_mu"}
SERIES_SWITCH = 1e-2  # below this s = lam*sigma, W(s) comes from its Taylor series

_SQRT2 = math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_SNR_ABS_AT_ZERO = 1.0 / math.sqrt(math.pi / 2.0 - 1.0)  # SNR(|theta|) for mu = 0, any sigma > 0


# -- input checks -------------------------------------------------------------------------------
def _as_f64(x, name: str) -> torch.Tensor:
    t = torch.as_tensor(x)
    if not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64)):
        raise ValueError(f"{name} must be a real tensor, got dtype {t.dtype}")
    t = t.detach().to(torch.float64)
    if not bool(torch.isfinite(t).all()):  # one pass (and one device sync) in the normal case
        n_nan, n_inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
        if n_nan:
            raise ValueError(f"{name} contains NaN ({n_nan} entries); a NaN weight statistic "
                             "means training diverged, and it must not be ranked as unimportant")
        raise ValueError(f"{name} contains inf ({n_inf} entries); scores need finite mu and sigma")
    return t


def _check(mu, sigma, needs_sigma: bool = True, criterion: str = ""):
    mu = _as_f64(mu, "mu")
    if sigma is None:
        if needs_sigma:
            raise ValueError(f"criterion {criterion!r} needs sigma, got sigma=None (a "
                             "deterministic layer); use 'abs_mu' for deterministic layers")
        return mu, None
    sigma = _as_f64(sigma, "sigma")
    if sigma.shape != mu.shape:
        raise ValueError(f"mu and sigma must have the same shape, got {tuple(mu.shape)} and "
                         f"{tuple(sigma.shape)}")
    if sigma.device != mu.device:
        raise ValueError(f"mu and sigma must be on the same device, got {mu.device} and "
                         f"{sigma.device}")
    if (sigma < 0).any():
        raise ValueError("sigma must be >= 0 (it is a standard deviation, softplus(rho))")
    return mu, sigma


def _check_lam(lam) -> float:
    lam = float(lam)
    if not (math.isfinite(lam) and lam > 0):
        raise ValueError(f"lam must be a finite number > 0 (eq. 8 needs lambda > 0), got {lam}")
    return lam


def _split(mu: torch.Tensor, sigma: torch.Tensor):
    """|mu|, a safe sigma (1 where sigma == 0), a = |mu|/sigma, and the sigma == 0 mask."""
    m = mu.abs()
    zero = sigma == 0
    sig = torch.where(zero, torch.ones_like(sigma), sigma)
    return m, sig, m / sig, zero


# -- special functions (float64, vectorised) ----------------------------------------------------
def _q(x: torch.Tensor) -> torch.Tensor:
    """Upper normal tail Q(x) = 1 - Phi(x) = erfc(x/sqrt 2)/2, relatively accurate for x >= 0."""
    return 0.5 * torch.special.erfc(x / _SQRT2)


def _phi(x: torch.Tensor) -> torch.Tensor:
    return _INV_SQRT_2PI * torch.exp(-0.5 * x * x)


def _h(a: torch.Tensor) -> torch.Tensor:
    """h(a) = E|Z| - a = 2 phi(a) - 2 a Q(a) >= 0 for Z ~ N(a, 1), a >= 0.

    For large a both terms are ~2 phi(a) and agree to a relative 1/a^2, so h loses ~log10(a^2)
    digits (1e-13 relative at a = 40, beyond which both underflow to 0). h only enters the scores
    next to O(1) terms (a + h, 1 - 2ah - h^2), so that loss is invisible in them (tested)."""
    return (2.0 * _phi(a) - 2.0 * a * _q(a)).clamp_min(0.0)


def _g_fold(a: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """G(s) = Q(a + s) - Q(a - s) exp(-2 s a)  (<= 0 for s >= 0)."""
    return _q(a + s) - _q(a - s) * torch.exp(-2.0 * s * a)


def _w_series(a: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Taylor series to O(s^4) of W(s) = [expm1(s^2)(1 - G(2s)) + 2G(s) - G(2s) - G(s)^2] / s^2.

    Coefficients from sympy (see the derivation notebook), grouped by h = h(a), p = phi(a) and
    t = a s (= lam |mu|). The truncation error is O(s^5) relative to W >= 1 - 2/pi, below 1e-10
    for s < SERIES_SWITCH (tested against mpmath)."""
    h, p, t = _h(a), _phi(a), a * s
    s2 = s * s
    poly_hh = -1.0 + t * (2.0 + t * (-7.0 / 3.0 + t * (2.0 - t * (62.0 / 45.0))))
    poly_h = 2.0 + s2 + t * (-4.0 - 2.0 * s2 + t * (16.0 / 3.0 - t * (16.0 / 3.0)))
    poly_hp = 2.0 / 3.0 - 0.1 * s2 + t * (-4.0 / 3.0 + t * (133.0 / 90.0))
    poly_p = (-2.0 - (7.0 / 6.0) * s2 + t * (14.0 / 3.0 + (201.0 / 90.0) * s2
                                            + t * (-5.5 + t * (403.0 / 90.0))))
    return (1.0 + s2 * (0.5 + s2 / 6.0) + h * (2.0 * a + h) * poly_hh
            + s * (h * poly_h + p * poly_p + s * p * (h * poly_hp - s2 * p / 9.0)))


def _exp_abs_parts(mu, sigma, lam):
    """(|mu|, s, 1 - D1, W, sigma == 0 mask) for the eq. 8 criteria."""
    m, sig, a, zero = _split(mu, sigma)
    s = lam * sig
    d1 = _g_fold(a, s)
    small = s < SERIES_SWITCH
    n_small = int(small.sum())  # evaluate only the branch(es) in use: usually all-series
    w_series = w_direct = None
    if n_small > 0:
        w_series = _w_series(a, s)
    if n_small < small.numel():
        s_direct = torch.where(small, torch.ones_like(s), s)  # keeps the unused branch finite
        d2 = _g_fold(a, 2.0 * s)
        w_direct = (torch.expm1(s * s) * (1.0 - d2) + 2.0 * d1 - d2 - d1 * d1) / (s_direct * s_direct)
    if w_direct is None:
        w = w_series
    elif w_series is None:
        w = w_direct
    else:
        w = torch.where(small, w_series, w_direct)
    return m, s, 1.0 - d1, w, zero


# -- removal criteria (eqs. 6-8) ----------------------------------------------------------------
def abs_mu(mu: torch.Tensor, sigma: torch.Tensor | None = None) -> torch.Tensor:
    """Criteria 1 (Sec. 3.3.1): |mu| = |E theta|. sigma is accepted and ignored."""
    mu, _ = _check(mu, None, needs_sigma=False)
    return mu.abs()


def snr(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Criteria 2 (Sec. 3.3.1): SNR(theta) = |mu|/sigma. sigma = 0 gives +inf (0 if mu = 0)."""
    mu, sigma = _check(mu, sigma, criterion="snr")
    m, _, a, zero = _split(mu, sigma)
    return torch.where(zero & (m > 0), torch.full_like(a, math.inf), a)


def expected_abs(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Criteria 3, eq. 6: E|theta| = mu(2 Phi(mu/sigma) - 1) + 2 sigma phi(mu/sigma),
    evaluated as |mu| + sigma h(|mu|/sigma). sigma = 0 gives |mu|."""
    mu, sigma = _check(mu, sigma, criterion="e_abs")
    m, sig, a, zero = _split(mu, sigma)
    return torch.where(zero, m, m + sig * _h(a))


def var_abs(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Var|theta| = sigma^2 + mu^2 - (E|theta|)^2 (eq. 7's denominator squared), evaluated
    cancellation-free as sigma^2 (1 - 2ah - h^2). sigma = 0 gives 0."""
    mu, sigma = _check(mu, sigma, criterion="var_abs")
    m, sig, a, zero = _split(mu, sigma)
    h = _h(a)
    return torch.where(zero, torch.zeros_like(m), sig * sig * (1.0 - 2.0 * a * h - h * h))


def snr_abs(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Criteria 4, eq. 7 (the SSVI default): SNR(|theta|) = E|theta| / sqrt(Var|theta|)
    = (a + h)/sqrt(1 - 2ah - h^2) with a = |mu|/sigma. A function of a alone.
    sigma = 0 gives +inf (1/sqrt(pi/2 - 1) if mu = 0, the value for every sigma > 0)."""
    mu, sigma = _check(mu, sigma, criterion="snr_abs")
    m, _, a, zero = _split(mu, sigma)
    h = _h(a)
    out = (a + h) / torch.sqrt(1.0 - 2.0 * a * h - h * h)
    limit = torch.where(m > 0, torch.full_like(m, math.inf), torch.full_like(m, _SNR_ABS_AT_ZERO))
    return torch.where(zero, limit, out)


def expected_exp_abs(mu: torch.Tensor, sigma: torch.Tensor, lam: float = 1.0) -> torch.Tensor:
    """Criteria 5, eq. 8: E exp(lam|theta|) = Phi(a + s) e^{s^2/2 + lam mu} + Phi(s - a) e^{s^2/2 - lam mu}
    (a = |mu|/sigma, s = lam sigma), evaluated as e^{lam|mu| + s^2/2}(1 - G(s)).
    sigma = 0 gives exp(lam|mu|)."""
    lam = _check_lam(lam)
    mu, sigma = _check(mu, sigma, criterion="e_exp_abs")
    m, sig, a, zero = _split(mu, sigma)
    s = lam * sig
    out = torch.exp(lam * m + 0.5 * s * s) * (1.0 - _g_fold(a, s))
    return torch.where(zero, torch.exp(lam * m), out)


def var_exp_abs(mu: torch.Tensor, sigma: torch.Tensor, lam: float = 1.0) -> torch.Tensor:
    """Var exp(lam|theta|) = E e^{2 lam|theta|} - (E e^{lam|theta|})^2 (eq. 8's denominator
    squared), evaluated as e^{s^2 + 2 lam|mu|} s^2 W(s) without cancellation. sigma = 0 gives 0."""
    lam = _check_lam(lam)
    mu, sigma = _check(mu, sigma, criterion="var_exp_abs")
    m, s, _, w, zero = _exp_abs_parts(mu, sigma, lam)
    out = torch.exp(s * s + 2.0 * lam * m) * s * s * w
    return torch.where(zero, torch.zeros_like(out), out)


def snr_exp_abs(mu: torch.Tensor, sigma: torch.Tensor, lam: float = 1.0) -> torch.Tensor:
    """Criteria 6, eq. 8: SNR(exp(lam|theta|)) = E e^{lam|theta|} / sd(e^{lam|theta|})
    = (1 - G(s)) / (s sqrt(W(s))), stable for all s = lam sigma > 0 (the float32 textbook formula
    is NaN for sigma < ~1e-4). sigma = 0 gives +inf.

    Note: for small s this is ~1/(lam sigma sd|Z|), i.e. it ranks mostly by sigma."""
    lam = _check_lam(lam)
    mu, sigma = _check(mu, sigma, criterion="snr_exp_abs")
    _, s, num, w, zero = _exp_abs_parts(mu, sigma, lam)
    out = num / (torch.where(zero, torch.ones_like(s), s) * torch.sqrt(w))
    return torch.where(zero, torch.full_like(out, math.inf), out)


_SCORES: dict[str, Callable[..., torch.Tensor]] = {
    "abs_mu": lambda mu, sigma, lam: abs_mu(mu),
    "snr": lambda mu, sigma, lam: snr(mu, sigma),
    "e_abs": lambda mu, sigma, lam: expected_abs(mu, sigma),
    "snr_abs": lambda mu, sigma, lam: snr_abs(mu, sigma),
    "e_exp_abs": expected_exp_abs,
    "snr_exp_abs": snr_exp_abs,
}


def removal_score(name: str, mu: torch.Tensor, sigma: torch.Tensor | None,
                  lam: float = 1.0) -> torch.Tensor:
    """Removal score ``name`` (one of REMOVAL_CRITERIA, Sec. 3.3.1) for every weight.

    Returns float64 on mu's device, same shape as mu; higher = more important (kept).
    ``sigma=None`` (deterministic layer) is allowed only for ``abs_mu``. ``lam`` (eq. 8's lambda,
    > 0) is validated for every criterion and used by the two exp criteria."""
    if name not in _SCORES:
        raise ValueError(f"unknown removal criterion {name!r}; allowed: {', '.join(REMOVAL_CRITERIA)}")
    lam = _check_lam(lam)
    if sigma is None and name in NEEDS_SIGMA:
        raise ValueError(f"criterion {name!r} needs sigma, got sigma=None (a deterministic "
                         "layer); use 'abs_mu' for deterministic layers")
    if name == "abs_mu" and sigma is not None:
        _check(mu, sigma)  # still reject NaN / mismatched sigma
    return _SCORES[name](mu, sigma, lam)


# -- addition score (eq. 9) ---------------------------------------------------------------------
def addition_score(grads: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """Addition score of eq. 9: (1/K) sum_k |g_k| over K gradient tensors (float64).

    One gradient from a sampled forward is eq. 9's criterion 1 (the SSVI default), one from the
    mean-weight forward is criterion 2, K gradients from K sampled forwards criterion 3; the caller
    decides how they were produced. A single tensor is treated as K = 1."""
    if isinstance(grads, torch.Tensor):
        grads = [grads]
    grads = list(grads)
    if not grads:
        raise ValueError("addition_score needs at least one gradient tensor, got none")
    shape = grads[0].shape
    total = None
    for k, g in enumerate(grads):
        if g.shape != shape:
            raise ValueError(f"all gradients must have the same shape; gradient 0 has "
                             f"{tuple(shape)}, gradient {k} has {tuple(g.shape)}")
        g = _as_f64(g, f"gradient {k}").abs()
        total = g if total is None else total + g
    return total / len(grads)
