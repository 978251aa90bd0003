"""Structured Bayesian pruning (Neklyudov et al. 2017): KL, SNR, sampling, pruning, protocol."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from ssvi import flops
from ssvi.baselines import get_method, mask_stats
from ssvi.baselines.sbp import (plan_sbp, sample_truncated_normal, sbp_modules,
                                truncated_lognormal_kl, truncated_lognormal_snr)
from ssvi.models import ARCHS, build_model

from test_baselines_vd import run_protocol

# (mu, sigma, a, b): the paper's [-20, 0] at the release's init (sigma = e^-5) and far from it,
# mu beyond b, near a, below a (the stable right-tail branch of log Z), another interval.
CASES = [(0.0, math.exp(-5.0), -20.0, 0.0), (0.0, 1.0, -20.0, 0.0), (-3.0, 0.5, -20.0, 0.0),
         (-10.0, 3.0, -20.0, 0.0), (0.5, 0.2, -20.0, 0.0), (-19.0, 1.0, -20.0, 0.0),
         (-1.0, 2.0, -5.0, 1.0), (-21.0, 0.5, -20.0, 0.0)]


def _window(mu, sigma, a, b):
    return max(a, mu - 14 * sigma), min(b, mu + 14 * sigma)


def _quad(f, mu, sigma, a, b):
    lo, hi = _window(mu, sigma, a, b)
    pts = [p for p in (mu,) if lo < p < hi]
    val, _ = integrate.quad(f, lo, hi, points=pts or None, limit=500, epsabs=1e-13, epsrel=1e-12)
    return val


def _truncnorm(mu, sigma, a, b):
    return stats.truncnorm((a - mu) / sigma, (b - mu) / sigma, loc=mu, scale=sigma)


@pytest.mark.parametrize("mu,sigma,a,b", CASES)
def test_kl_matches_quadrature(mu, sigma, a, b):
    # KL(q || p) = int q log(q / p) over log theta in [a, b], q the truncated normal density,
    # p = 1 / (b - a). float64 closed form vs adaptive quadrature: |diff| < 1e-7 (quadrature
    # error ~1e-12; the 14-sigma window drops < 1e-40 of the mass).
    dist = _truncnorm(mu, sigma, a, b)
    truth = _quad(lambda x: dist.pdf(x) * (dist.logpdf(x) + math.log(b - a)), mu, sigma, a, b)
    ours = truncated_lognormal_kl(torch.tensor(mu, dtype=torch.float64),
                                  torch.tensor(sigma, dtype=torch.float64), a, b).item()
    assert ours == pytest.approx(truth, abs=1e-7, rel=1e-7)


@pytest.mark.parametrize("mu,sigma,a,b", CASES)
def test_snr_matches_quadrature_moments(mu, sigma, a, b):
    # SNR = E theta / sqrt(Var theta), theta = exp(log theta), moments by quadrature: rel 1e-6.
    dist = _truncnorm(mu, sigma, a, b)
    m1 = _quad(lambda x: math.exp(x) * dist.pdf(x), mu, sigma, a, b)
    m2 = _quad(lambda x: math.exp(2 * x) * dist.pdf(x), mu, sigma, a, b)
    var = _quad(lambda x: (math.exp(x) - m1) ** 2 * dist.pdf(x), mu, sigma, a, b)  # no cancellation
    assert var / m2 > 0
    ours = truncated_lognormal_snr(torch.tensor(mu, dtype=torch.float64),
                                   torch.tensor(sigma, dtype=torch.float64), a, b).item()
    assert ours == pytest.approx(m1 / math.sqrt(var), rel=1e-6)


@pytest.mark.parametrize("mu,sigma,a,b", [(0.0, 1.0, -20.0, 0.0), (-10.0, 3.0, -20.0, 0.0),
                                          (-1.0, 2.0, -5.0, 1.0), (-21.0, 0.5, -20.0, 0.0)])
def test_inverse_cdf_sampler_matches_truncated_normal(mu, sigma, a, b):
    # Mean and variance of 200k draws of log theta vs scipy's truncnorm: 5 standard errors.
    gen = torch.Generator().manual_seed(0)
    n = 200_000
    u = torch.rand(n, generator=gen, dtype=torch.float64)
    x = sample_truncated_normal(torch.tensor(mu, dtype=torch.float64),
                                torch.tensor(sigma, dtype=torch.float64), a, b, u)
    assert float(x.min()) >= a and float(x.max()) <= b
    dist = _truncnorm(mu, sigma, a, b)
    assert abs(float(x.mean()) - dist.mean()) <= 5 * dist.std() / math.sqrt(n)
    # SE of a sample variance: sqrt((mu4 - sigma^4) / n) = var sqrt((excess kurtosis + 2) / n)
    se_var = dist.var() * math.sqrt((float(dist.stats(moments="k")) + 2.0) / n)
    assert abs(float(x.var()) - dist.var()) <= 5 * se_var


def test_plan_sbp_skips_residual_inputs_and_the_classifier():
    sites, consumers = plan_sbp(ARCHS["resnet18"](num_classes=10, width=0.125))
    assert "linear" not in sites and sites["conv1"] == "bn1"
    assert sites["layer2.0.shortcut.0"] == "layer2.0.shortcut.1"
    assert consumers["layer1.0.conv2"] == "layer1.0.conv1"
    assert consumers["layer1.0.conv1"] == "conv1"       # relu(bn1(conv1)) feeds it directly
    for behind_add in ("layer1.1.conv1", "layer2.0.conv1", "layer2.0.shortcut.0", "linear"):
        assert behind_add not in consumers
    _, consumers = plan_sbp(ARCHS["small_cnn"](num_classes=10, width=0.25))
    assert consumers["linear"] == "features.10"          # through ReLU, max-pool, GAP, flatten


def _prune_half(method, model):
    """Channels alternately kept (mu 0, sigma e^-5: SNR ~ 1e2) and removed (mu -10, sigma 3)."""
    with torch.no_grad():
        for _, m in sbp_modules(model):
            off = torch.arange(m.mu.numel()) % 2 == 1
            m.mu[off], m.log_sigma[off] = -10.0, math.log(3.0)
    keep = method.channel_keep(model)
    for k in keep.values():
        assert torch.equal(k, torch.arange(k.numel()) % 2 == 0)
    return keep


@pytest.mark.parametrize("arch", ["mlp", "small_cnn"])
def test_removed_weights_change_nothing_at_eval_and_sparsity_counts_them(arch):
    torch.manual_seed(0)
    method = get_method("sbp")
    model = method.build_model(arch, 10, 0.05 if arch == "mlp" else 0.25, None)
    keep = _prune_half(method, model)
    masks = method.masks(model)
    layers = {n: m for n, m in model.named_modules() if n in masks}
    # expected count by hand: rows of every noisy layer, columns of every consumer
    removed = 0
    for name, layer in layers.items():
        rows = keep.get(name, torch.ones(layer.mu.shape[0], dtype=torch.bool))
        src = method.consumers.get(name)
        cols = keep[src] if src else torch.ones(layer.mu.shape[1], dtype=torch.bool)
        per = layer.mu[0].numel() // layer.mu.shape[1]          # kernel size
        removed += (layer.mu.numel() - int(rows.sum()) * int(cols.sum()) * per)
    total = sum(l.mu.numel() for l in layers.values())
    assert mask_stats(masks)["sparsity"] == pytest.approx(removed / total, abs=1e-12)
    assert mask_stats(masks)["sparsity"] > 0.4

    x = torch.randn(5, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        model(x)      # BN running stats are fixed in eval mode; nothing else to warm up

    def outputs():
        torch.manual_seed(1)
        return method.predict(model, x, 0), method.predict(model, x, 2)

    before = outputs()
    with torch.no_grad():   # scramble every weight the masks call removed
        for name, layer in layers.items():
            layer.mu[~masks[name]] = torch.randn(int((~masks[name]).sum())) * 10.0
    after = outputs()
    for b, a in zip(before, after):
        assert torch.allclose(b, a, atol=1e-6, rtol=0)
    with torch.no_grad():   # a kept weight does matter (the test can fail)
        name = next(iter(layers))
        layers[name].mu[masks[name]] += 1.0
    assert not torch.allclose(outputs()[0], before[0], atol=1e-6, rtol=0)


def test_training_flops_equal_dense_deterministic_count():
    method = get_method("sbp")
    model = method.build_model("small_cnn", 10, 0.25, None)
    out = method.training_flops(model, n_train=1000, epochs=3, batch_size=100)
    dense = build_model("small_cnn", 10, 0.25, bayesian=False, masked=True)
    expect = flops.training_flops(dense, 1000, 3, densities=1.0)
    assert out["training_flops"] == pytest.approx(expect, rel=1e-12)
    assert out["relative"] == 1.0 and "dense" in out["formula"]


def test_end_to_end_protocol_30_steps():
    method, model, losses, probs = run_protocol("sbp", "small_cnn", 0.25)
    assert all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.1
    assert probs.shape == (32, 10)
    assert torch.allclose(probs.sum(-1), torch.ones(32), atol=1e-5)
    state = method.state_dict()
    other = get_method("sbp")
    other.load_state_dict(state)
    assert other.consumers == method.consumers
