"""Tests for ssvi.criteria: the removal criteria of Sec. 3.3.1 (eqs. 6-8) and eq. 9's score.

Math is checked against math: Monte Carlo with standard-error tolerances, and the paper's
textbook formulas evaluated in 50-digit mpmath (which does not cancel)."""
from __future__ import annotations

import math
import time

import mpmath as mp
import numpy as np
import pytest
import torch

from ssvi import criteria as C

F64 = torch.float64
RTOL = 1e-9  # the contract is 1e-6 relative; the implementation achieves ~1e-11 or better
LAMS = (1e-3, 0.01, 0.1, 1.0, 5.0)
SIGMAS = np.logspace(-8, 0, 17)
MUS = (0.0, 1e-9, 1e-6, 1e-3, 0.01, 0.1, 0.5, 1.0)
MUS_SIGNED = MUS + tuple(-m for m in MUS[1:])

FUNCS = {  # criterion/statistic -> f(mu, sigma, lam)
    "abs_mu": lambda m, s, lam: C.abs_mu(m),
    "snr": lambda m, s, lam: C.snr(m, s),
    "e_abs": lambda m, s, lam: C.expected_abs(m, s),
    "var_abs": lambda m, s, lam: C.var_abs(m, s),
    "snr_abs": lambda m, s, lam: C.snr_abs(m, s),
    "e_exp_abs": C.expected_exp_abs,
    "var_exp_abs": C.var_exp_abs,
    "snr_exp_abs": C.snr_exp_abs,
}


# -- references ---------------------------------------------------------------------------------
def mp_reference(mu: float, sigma: float, lam: float) -> dict[str, mp.mpf]:
    """The paper's formulas (eqs. 6-8, Var = E X^2 - (E X)^2) in 50-digit arithmetic."""
    with mp.workdps(50):
        mu, sigma, lam = mp.mpf(mu), mp.mpf(sigma), mp.mpf(lam)
        a = mu / sigma
        e_abs = mu * (2 * mp.ncdf(a) - 1) + 2 * sigma * mp.npdf(a)  # eq. 6
        var_abs = sigma ** 2 + mu ** 2 - e_abs ** 2  # eq. 7

        def e_exp(l):  # eq. 8
            return (mp.ncdf(a + l * sigma) * mp.exp(l ** 2 * sigma ** 2 / 2 + l * mu)
                    + mp.ncdf(-a + l * sigma) * mp.exp(l ** 2 * sigma ** 2 / 2 - l * mu))

        e1 = e_exp(lam)
        var_exp = e_exp(2 * lam) - e1 ** 2
        return {"abs_mu": abs(mu), "snr": abs(mu) / sigma, "e_abs": e_abs, "var_abs": var_abs,
                "snr_abs": e_abs / mp.sqrt(var_abs), "e_exp_abs": e1, "var_exp_abs": var_exp,
                "snr_exp_abs": e1 / mp.sqrt(var_exp)}


def rel_err(ours: torch.Tensor, refs: list) -> np.ndarray:
    return np.array([float(abs((mp.mpf(o) - r) / r)) if r != 0 else abs(o)
                     for o, r in zip(ours.tolist(), refs)])


@pytest.fixture(scope="module")
def grid():
    """(mu, sigma, lam) grid of the brief and its mpmath references, computed once."""
    rows = [(m, s, lam) for lam in LAMS for m in MUS_SIGNED for s in SIGMAS]
    refs = [mp_reference(*r) for r in rows]
    return rows, refs


# -- accuracy against mpmath --------------------------------------------------------------------
@pytest.mark.parametrize("stat", list(FUNCS))
def test_matches_mpmath_on_grid(grid, stat):
    rows, refs = grid
    for lam in LAMS:
        idx = [i for i, r in enumerate(rows) if r[2] == lam]
        mu = torch.tensor([rows[i][0] for i in idx], dtype=F64)
        sigma = torch.tensor([rows[i][1] for i in idx], dtype=F64)
        out = FUNCS[stat](mu, sigma, lam)
        assert out.dtype == F64 and torch.isfinite(out).all(), (stat, lam)
        err = rel_err(out, [refs[i][stat] for i in idx])
        worst = int(err.argmax())
        assert err.max() <= RTOL, (stat, lam, rows[idx[worst]], err.max())


@pytest.mark.parametrize("a", [0.0, 0.3, 1.0, 2.0, 3.0, 5.0, 10.0])
def test_dense_sweep_around_series_switch(a):
    """W(s) switches from its Taylor series to the direct form at s = SERIES_SWITCH: both sides
    of the switch match mpmath, and the two forms agree at the switch point itself."""
    lam = 1.0
    s = np.geomspace(C.SERIES_SWITCH / 4, C.SERIES_SWITCH * 4, 81)
    sigma = torch.tensor(s / lam, dtype=F64)
    mu = a * sigma
    refs = [mp_reference(m, sg, lam) for m, sg in zip(mu.tolist(), sigma.tolist())]
    for stat in ("var_exp_abs", "snr_exp_abs"):
        err = rel_err(FUNCS[stat](mu, sigma, lam), [r[stat] for r in refs])
        assert err.max() <= RTOL, (stat, a, s[int(err.argmax())], err.max())
    # both evaluations of W at the same s, on either side of the switch
    s_sw = torch.tensor([C.SERIES_SWITCH, C.SERIES_SWITCH / 2], dtype=F64)
    a_t = torch.full_like(s_sw, a)
    d1, d2 = C._g_fold(a_t, s_sw), C._g_fold(a_t, 2 * s_sw)
    w_direct = (torch.expm1(s_sw ** 2) * (1 - d2) + 2 * d1 - d2 - d1 ** 2) / s_sw ** 2
    w_series = C._w_series(a_t, s_sw)
    assert torch.allclose(w_series, w_direct, rtol=1e-9, atol=0), (a, w_series, w_direct)


def test_h_loses_digits_at_moderate_a_but_scores_do_not():
    """h(a) = 2 phi(a) - 2 a Q(a) subtracts two numbers that agree to ~1/a^2. Its own relative
    error grows like a^2 * eps (still < 1e-9 while not subnormal), but h only enters the scores next to
    O(1) terms, so E|theta|, Var|theta| and SNR(|theta|) stay at machine precision."""
    a_vals = np.concatenate([np.linspace(5, 37, 65), [38.0, 40.0, 100.0, 1e4, 1e8]])
    a = torch.tensor(a_vals, dtype=F64)
    h = C._h(a)
    assert (h >= 0).all() and torch.isfinite(h).all()
    with mp.workdps(50):
        h_ref = [2 * mp.npdf(x) - 2 * x * mp.ncdf(-mp.mpf(x)) for x in a_vals]
    normal = np.array([float(r) > 1e-290 for r in h_ref])  # below that h is subnormal / zero
    err_h = rel_err(h, h_ref)[normal]
    assert err_h.max() < 1e-9, err_h.max()
    sigma = torch.full_like(a, 0.01)
    mu = a * sigma
    refs = [mp_reference(m, s, 1.0) for m, s in zip(mu.tolist(), sigma.tolist())]
    for stat in ("e_abs", "var_abs", "snr_abs"):
        err = rel_err(FUNCS[stat](mu, sigma, 1.0), [r[stat] for r in refs])
        assert err.max() < 1e-13, (stat, err.max())


# -- Monte Carlo ------------------------------------------------------------------------------
MC_CASES = [(0.0, 1.0, 1.0), (-0.7, 0.3, 2.0), (0.05, 0.1, 5.0), (0.2, 0.05, 1.0),
            (1e-3, 1e-2, 0.1)]  # the last has s = 1e-3: the series branch


def _mean_se(x):
    return x.mean(), x.std() / math.sqrt(x.numel())


def _var_se(x):
    d2 = (x - x.mean()) ** 2
    return d2.mean(), d2.std() / math.sqrt(x.numel())


def _snr_se(x):
    """SNR = m/sqrt(v) and its delta-method standard error (influence function)."""
    m, v = x.mean(), x.var()
    infl = (x - m) / v.sqrt() - m / (2 * v ** 1.5) * ((x - m) ** 2 - v)
    return m / v.sqrt(), infl.std() / math.sqrt(x.numel())


@pytest.mark.parametrize("mu,sigma,lam", MC_CASES)
def test_monte_carlo(mu, sigma, lam):
    gen = torch.Generator().manual_seed(12345)
    theta = mu + sigma * torch.randn(500_000, generator=gen, dtype=F64)
    m, s = torch.tensor([mu], dtype=F64), torch.tensor([sigma], dtype=F64)
    x_abs, x_exp = theta.abs(), torch.exp(lam * theta.abs())
    checks = {
        "e_abs": _mean_se(x_abs), "var_abs": _var_se(x_abs), "snr_abs": _snr_se(x_abs),
        "e_exp_abs": _mean_se(x_exp), "var_exp_abs": _var_se(x_exp), "snr_exp_abs": _snr_se(x_exp),
    }
    for stat, (est, se) in checks.items():
        ours = FUNCS[stat](m, s, lam).item()
        assert abs(ours - est.item()) <= 4.5 * se.item(), (stat, ours, est.item(), se.item())


# -- the release's float32 failure ----------------------------------------------------------------
def naive_snr_exp_abs_f32(mu, sigma, lam=1.0):
    """Eq. 8's SNR as printed, in float32 (what the authors' release computes)."""
    mu, sigma = mu.float(), sigma.float()

    def Phi(x):
        return 0.5 * (1 + torch.erf(x / math.sqrt(2)))

    def e_exp(l):
        return (Phi(mu / sigma + l * sigma) * torch.exp(l ** 2 * sigma ** 2 / 2 + l * mu)
                + Phi(-mu / sigma + l * sigma) * torch.exp(l ** 2 * sigma ** 2 / 2 - l * mu))

    e1 = e_exp(lam)
    return e1 / torch.sqrt(e_exp(2 * lam) - e1 ** 2)


def test_naive_float32_formula_fails_below_1e_4_and_ours_does_not():
    sig = np.logspace(-8, -4, 9)
    rows = [(m, s) for m in (0.0, 0.01, 0.3, -0.7, 1.0) for s in sig]
    mu = torch.tensor([r[0] for r in rows], dtype=F64)
    sigma = torch.tensor([r[1] for r in rows], dtype=F64)
    refs = [mp_reference(m, s, 1.0)["snr_exp_abs"] for m, s in rows]
    naive = naive_snr_exp_abs_f32(mu, sigma).double()
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(naive.numpy()) | (rel_err(naive, refs) > 0.5)
    assert bad.all(), [r for r, b in zip(rows, bad) if not b]
    assert torch.isnan(naive).any()  # negative float32 "variances"
    ours = C.snr_exp_abs(mu, sigma)
    assert rel_err(ours, refs).max() <= RTOL


def test_naive_nan_to_zero_drops_the_most_certain_weights():
    """The release sets NaN scores to 0; with tiny sigma that removes the most certain weights
    first. Our scores keep them (for SNR(e^{lam|theta|}) tiny sigma means a huge score)."""
    gen = torch.Generator().manual_seed(0)
    n = 2000
    certain = torch.arange(n) < n // 2  # large |mu|, sigma ~ 1e-6: the weights to keep
    mu = torch.where(certain, 0.3 + 0.4 * torch.rand(n, generator=gen, dtype=F64),
                     0.01 * torch.randn(n, generator=gen, dtype=F64))
    sigma = torch.where(certain, 1e-6 * (1 + torch.rand(n, generator=gen, dtype=F64)),
                        0.02 + 0.03 * torch.rand(n, generator=gen, dtype=F64))
    k = int(0.3 * n)  # remove 30%
    naive = torch.nan_to_num(naive_snr_exp_abs_f32(mu, sigma), nan=0.0)
    removed_naive = torch.topk(naive.double(), k, largest=False).indices
    removed_ours = torch.topk(C.snr_exp_abs(mu, sigma), k, largest=False).indices
    nan_certain = torch.isnan(naive_snr_exp_abs_f32(mu, sigma)) & certain
    assert nan_certain.sum() > 0.2 * k  # many certain weights got NaN -> 0 ...
    assert certain[removed_naive[: int(nan_certain.sum())]].all()  # ... and are removed first
    assert not certain[removed_ours].any()
    assert not certain[torch.topk(C.snr_abs(mu, sigma), k, largest=False).indices].any()


# -- ordering ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", [n for n in C.REMOVAL_CRITERIA if n != "snr_exp_abs"])
@pytest.mark.parametrize("sigma", [1e-8, 1e-4, 1e-2, 0.1, 1.0])
@pytest.mark.parametrize("lam", [1e-3, 1.0, 5.0])
def test_monotone_in_abs_mu(name, sigma, lam):
    mu = torch.linspace(0, 1, 1001, dtype=F64)
    for sign in (1, -1):
        score = C.removal_score(name, sign * mu, torch.full_like(mu, sigma), lam)
        assert (torch.diff(score) >= 0).all(), name
        assert score[-1] > score[0]


def test_snr_exp_abs_is_not_monotone_in_abs_mu():
    """A property of eq. 8's SNR, not a numerical artefact: exp(lam|theta|) is lognormal-like
    for |mu| >> sigma (SNR -> 1/sqrt(expm1(s^2)), independent of mu), while folding at mu = 0
    shrinks the variance. Checked against mpmath, so it documents the math."""
    for sigma, lam in [(0.1, 1.0), (1e-4, 1.0), (0.5, 5.0)]:
        at0, at3 = (float(mp_reference(m, sigma, lam)["snr_exp_abs"]) for m in (0.0, 3 * sigma))
        assert at0 > 1.2 * at3
        ours = C.snr_exp_abs(torch.tensor([0.0, 3 * sigma], dtype=F64),
                             torch.tensor([sigma, sigma], dtype=F64), lam)
        assert ours[0] > ours[1]
        lognormal = 1 / math.sqrt(math.expm1((lam * sigma) ** 2))
        big = C.snr_exp_abs(torch.tensor([40 * sigma], dtype=F64), torch.tensor([sigma], dtype=F64), lam)
        assert big.item() == pytest.approx(lognormal, rel=1e-12)


@pytest.mark.parametrize("name", ["snr", "snr_abs"])
@pytest.mark.parametrize("mu", [1e-6, 1e-3, 0.1, -1.0])
def test_snr_criteria_decrease_with_sigma(name, mu):
    sigma = torch.logspace(-8, 0, 400, dtype=F64)
    score = C.removal_score(name, torch.full_like(sigma, mu), sigma)
    assert (torch.diff(score) <= 1e-14 * score[1:]).all() and score[0] > score[-1]  # ulp noise
    if name == "snr":  # snr_abs flattens to 1/sqrt(pi/2 - 1) as |mu|/sigma -> 0
        assert (torch.diff(score) < 0).all()


def test_sign_symmetry_and_dispatch():
    gen = torch.Generator().manual_seed(1)
    mu = torch.randn(1000, generator=gen, dtype=F64) * 0.1
    sigma = torch.rand(1000, generator=gen, dtype=F64) * 0.05 + 1e-6
    for name in C.REMOVAL_CRITERIA:
        a = C.removal_score(name, mu, sigma, 2.0)
        assert torch.equal(a, C.removal_score(name, -mu, sigma, 2.0))
    assert torch.equal(C.removal_score("snr_exp_abs", mu, sigma, 2.0), C.snr_exp_abs(mu, sigma, 2.0))
    assert torch.equal(C.removal_score("abs_mu", mu, None), mu.abs())


# -- sigma == 0 -----------------------------------------------------------------------------------
def test_sigma_zero_takes_the_sigma_to_zero_limit():
    mu = torch.tensor([0.0, 0.5, -0.2], dtype=F64)
    zero = torch.zeros_like(mu)
    tiny = torch.full_like(mu, 1e-300)
    inf = math.inf
    expected = {
        "abs_mu": mu.abs(), "snr": torch.tensor([0.0, inf, inf], dtype=F64),
        "e_abs": mu.abs(), "snr_abs": torch.tensor([1 / math.sqrt(math.pi / 2 - 1), inf, inf], dtype=F64),
        "e_exp_abs": torch.exp(2.0 * mu.abs()), "snr_exp_abs": torch.full_like(mu, inf),
    }
    for name, want in expected.items():
        got = C.removal_score(name, mu, zero, 2.0)
        assert not torch.isnan(got).any()
        assert torch.equal(got, want), (name, got, want)
        near = C.removal_score(name, mu, tiny, 2.0)  # the limit is approached continuously
        finite = torch.isfinite(want)
        assert torch.allclose(near[finite], want[finite], rtol=1e-12, atol=1e-290), name
        assert (near[~finite] > 1e200).all(), name
    assert torch.equal(C.var_abs(mu, zero), zero) and torch.equal(C.var_exp_abs(mu, zero), zero)


# -- bad input ------------------------------------------------------------------------------------
def test_bad_input_raises_helpful_errors():
    mu, sigma = torch.zeros(4), torch.ones(4)
    with pytest.raises(ValueError, match="unknown removal criterion 'snr2'.*snr_abs"):
        C.removal_score("snr2", mu, sigma)
    for lam in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="lam must be"):
            C.removal_score("snr_exp_abs", mu, sigma, lam)
        with pytest.raises(ValueError, match="lam must be"):
            C.expected_exp_abs(mu, sigma, lam)
    bad = torch.tensor([0.1, math.nan, 0.2, 0.3])
    for name in C.REMOVAL_CRITERIA:
        with pytest.raises(ValueError, match="mu contains NaN"):
            C.removal_score(name, bad, sigma)
        with pytest.raises(ValueError, match="sigma contains NaN"):
            C.removal_score(name, mu, bad)
        with pytest.raises(ValueError, match="same shape"):
            C.removal_score(name, mu, torch.ones(5))
    with pytest.raises(ValueError, match="contains inf"):
        C.snr_abs(torch.tensor([math.inf]), torch.ones(1))
    with pytest.raises(ValueError, match="sigma must be >= 0"):
        C.snr_abs(mu, -sigma)
    for name in C.NEEDS_SIGMA:
        with pytest.raises(ValueError, match="needs sigma.*abs_mu"):
            C.removal_score(name, mu, None)
    with pytest.raises(ValueError, match="needs sigma"):
        C.snr_abs(mu, None)


# -- dtypes, devices, speed -----------------------------------------------------------------------
def test_float32_input_gives_float64_output_fast():
    gen = torch.Generator().manual_seed(2)
    n = 1_000_000
    mu = (torch.randn(n, generator=gen) * 0.05).reshape(1000, 1000)  # float32, like a layer's mu
    sigma = (torch.rand(n, generator=gen) * 0.01).reshape(1000, 1000)
    sigma[0, :10] = 0.0
    for name in C.REMOVAL_CRITERIA:
        t0 = time.process_time()  # CPU time of this process: robust to a shared, loaded CPU
        out = C.removal_score(name, mu, sigma)
        cpu_s = time.process_time() - t0
        assert out.dtype == F64 and out.shape == mu.shape and out.device == mu.device
        assert not torch.isnan(out).any()
        # 0.03-0.3 s of CPU on one core (snr_exp_abs is the slowest); the bound leaves room
        assert cpu_s < 1.5, (name, cpu_s)
        part = (slice(0, 20), slice(None))  # float32 inputs are upcast exactly, then f64 math
        assert torch.equal(out[part], C.removal_score(name, mu[part].double(), sigma[part].double()))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    gen = torch.Generator().manual_seed(3)
    mu = torch.randn(100_000, generator=gen) * 0.1
    sigma = torch.exp(torch.empty(100_000).uniform_(math.log(1e-8), 0.0, generator=gen))
    for name in C.REMOVAL_CRITERIA:
        for lam in (1e-3, 1.0, 5.0):
            cpu = C.removal_score(name, mu, sigma, lam)
            gpu = C.removal_score(name, mu.cuda(), sigma.cuda(), lam)
            assert gpu.device.type == "cuda" and gpu.dtype == F64
            assert torch.allclose(gpu.cpu(), cpu, rtol=1e-12, atol=0), name


# -- addition score (eq. 9) -----------------------------------------------------------------------
def test_addition_score_is_mean_of_absolute_gradients():
    g1 = torch.tensor([[1.0, -2.0], [0.5, 0.0]])
    g2 = torch.tensor([[-1.0, -4.0], [0.25, 3.0]])
    one = C.addition_score(g1)
    assert one.dtype == F64 and torch.equal(one, g1.double().abs())
    assert torch.equal(C.addition_score([g1]), one)
    both = C.addition_score([g1, g2])
    want = np.mean(np.abs(np.stack([g1.numpy(), g2.numpy()])), axis=0)
    np.testing.assert_allclose(both.numpy(), want, rtol=0, atol=0)
    assert both[0, 0] == 1.0  # mean of |g|, not |mean of g| (eq. 9, criterion 3)


def test_addition_score_bad_input():
    with pytest.raises(ValueError, match="at least one"):
        C.addition_score([])
    with pytest.raises(ValueError, match="same shape"):
        C.addition_score([torch.zeros(3), torch.zeros(4)])
    with pytest.raises(ValueError, match="gradient 1 contains NaN"):
        C.addition_score([torch.zeros(3), torch.tensor([0.0, math.nan, 1.0])])
