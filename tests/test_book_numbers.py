"""Numbers typed into book/*.md are recomputed here from the code that produces them.

The book's .md pages cannot run code, so every number in them that is not quoted from the paper
is asserted against its source: a change of the code (or the prose) that makes them disagree
fails this test.
"""
import math
import pathlib

import pytest

from ssvi import flops

BOOK = pathlib.Path(__file__).resolve().parents[1] / "book"
METHOD = " ".join((BOOK / "method.md").read_text().split())   # prose may be re-wrapped
EXPERIMENTS = " ".join((BOOK / "experiments.md").read_text().split())


def sci(x: float) -> str:
    e = int(math.floor(math.log10(x)))
    return f"${x / 10 ** e:.2f} \\times 10^{{{e}}}$"


@pytest.fixture(scope="module")
def resnet_rows():
    return {r["density"]: r for r in flops.analytic_training_flops()}


@pytest.fixture(scope="module")
def small_rows():
    rows = flops.analytic_training_flops("small_cnn", width=0.25, n_train=5000, epochs=5,
                                         update_every=10)
    return {r["density"]: r for r in rows}


def test_resnet18_flops_table(resnet_rows):
    dense, r90, r95 = resnet_rows[1.0], resnet_rows[0.1], resnet_rows[0.05]
    assert f"| dense VI | 1 | {sci(dense['training_flops'])} | 1 | 0 |" in METHOD
    for label, r in (("SSVI 90%", r90), ("SSVI 95%", r95)):
        row = (f"| {label} | {r['density']:g} | {sci(r['training_flops'])} | "
               f"{r['relative']:.3f} ({1 / r['relative']:.1f}× fewer) | {r['update_relative']:.4f} | "
               f"{r['paper_relative']:.2f}× |")
        assert row in METHOD, row
    assert f"only {r90['first_layer_share']:.1%} of the" in METHOD
    assert (f"costs {r90['masked_relative']:.3f}× and {r95['masked_relative']:.3f}×, and the mask "
            f"updates add {r90['update_relative']:.4f}") in METHOD


def test_small_network_flops_explanation(small_rows):
    r90, r95 = small_rows[0.1], small_rows[0.05]
    assert f"is {r90['first_layer_share']:.1%} of the forward FLOPs" in METHOD
    assert f"every 10 steps adds {r90['update_relative']:.3f}" in METHOD
    assert f"{r90['relative']:.3f} at 90% sparsity and {r95['relative']:.3f} at 95%" in METHOD


def test_analytic_flops_decomposition(resnet_rows, small_rows):
    """masked part = first-layer share + d (1 - share); update part = floor(T_end/dT) B / (E N)."""
    for rows, n, epochs, dt in ((resnet_rows, 50_000, 200, 100), (small_rows, 5000, 5, 10)):
        steps = epochs * math.ceil(n / 128)
        for d, r in rows.items():
            share = r["first_layer_share"]
            assert r["masked_relative"] == pytest.approx(share + d * (1 - share), rel=1e-12)
            want = 0.0 if d == 1.0 else math.floor(0.75 * steps / dt) * 128 / (epochs * n)
            assert r["update_relative"] == pytest.approx(want, rel=1e-12, abs=1e-15)
            assert r["relative"] == pytest.approx(r["masked_relative"] + r["update_relative"])


def test_regrow_sigma_ratio_at_the_recipe_initialisation():
    """E sigma / softplus(E rho) for sigma ~ |N(6e-4, (5e-4)^2)|, by quadrature."""
    integrate = pytest.importorskip("scipy.integrate")
    from ssvi.config import TrainConfig
    cfg = TrainConfig()
    m, s = cfg.sigma_init_mean, cfg.sigma_init_std

    def pdf(x):
        return (math.exp(-0.5 * ((x - m) / s) ** 2) + math.exp(-0.5 * ((x + m) / s) ** 2)) / (
            s * math.sqrt(2 * math.pi))

    top = m + 12 * s
    e_sigma = integrate.quad(lambda x: x * pdf(x), 0, top, points=[m], limit=200)[0]
    e_rho = integrate.quad(lambda x: math.log(math.expm1(x)) * pdf(x), 0, top,
                           points=[1e-8, 1e-6, 1e-4, m], limit=400)[0]
    ratio = e_sigma / math.log1p(math.exp(e_rho))
    assert f"the release's value is {ratio:.2f}× smaller than ours" in METHOD
    assert f"(1.54 at $\\tau = 1$)" in METHOD and f"{math.cosh(1):.2f}" == "1.54"


def test_binomial_standard_errors_in_experiments_md():
    from ssvi.stats import binomial_se
    text = EXPERIMENTS
    assert (f"at 70% accuracy it is {100 * binomial_se(0.7, 1000):.1f} points on 1,000 images and "
            f"{100 * binomial_se(0.7, 10_000):.2f} points on the full 10,000") in text
