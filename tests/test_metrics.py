"""ssvi.metrics: the metrics against explicit loops and references, and the K-sample protocol."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ssvi.loader import Loader
from ssvi.layers import bayes_layers, inverse_softplus, set_mode
from ssvi.metrics import (accuracy, brier, ece, ece_release, evaluate, nll, predict_probs,
                          reliability_bins, sampled_weights)
from ssvi.models import build_model

P = np.array([[0.7, 0.2, 0.1],
              [0.1, 0.6, 0.3],
              [0.3, 0.3, 0.4],
              [0.5, 0.4, 0.1],
              [0.05, 0.05, 0.9]])
Y = np.array([0, 2, 2, 1, 2])


# -- metrics by hand -------------------------------------------------------------------------------
def test_accuracy_nll_brier_by_hand():
    assert accuracy(P, Y) == pytest.approx(3 / 5)
    assert nll(P, Y) == pytest.approx(-(math.log(.7) + math.log(.3) + math.log(.4)
                                        + math.log(.4) + math.log(.9)) / 5)
    total = 0.0
    for p, y in zip(P, Y):
        total += sum((p[c] - (c == y)) ** 2 for c in range(3))
    assert brier(P, Y) == pytest.approx(total / 5)
    assert brier(np.eye(3), np.arange(3)) == 0.0
    assert brier(np.full((4, 5), 0.2), np.arange(4)) == pytest.approx(1 - 1 / 5)
    assert nll(np.array([[1.0, 0.0]]), np.array([1])) == pytest.approx(-math.log(1e-12))
    # torch inputs give the same numbers
    assert nll(torch.tensor(P), torch.tensor(Y)) == pytest.approx(nll(P, Y))


def _ece_loop(p, y, n_bins=15):
    """Guo et al.: bins (k/n, (k+1)/n], sum_b |B_b|/N |acc_b - conf_b|, by explicit loops."""
    conf = [max(row) for row in p]
    pred = [int(np.argmax(row)) for row in p]
    total = 0.0
    for k in range(n_bins):
        lo, hi = k / n_bins, (k + 1) / n_bins
        members = [i for i in range(len(p)) if lo < conf[i] <= hi]
        if members:
            acc = sum(pred[i] == y[i] for i in members) / len(members)
            cf = sum(conf[i] for i in members) / len(members)
            total += len(members) / len(p) * abs(acc - cf)
    return total


def test_ece_and_reliability_bins_by_hand():
    assert ece(P, Y) == pytest.approx(_ece_loop(P, Y))
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(10) * 0.3, size=500)
    y = rng.integers(0, 10, 500)
    assert ece(p, y) == pytest.approx(_ece_loop(p, y))
    assert ece(p, y, n_bins=7) == pytest.approx(_ece_loop(p, y, 7))
    bins = reliability_bins(P, Y)
    assert sum(bins["count"]) == 5 and len(bins["edges"]) == 16
    k = 10  # confidence 0.7 lies in (10/15, 11/15]
    assert bins["count"][k] == 1 and bins["confidence"][k] == pytest.approx(0.7)
    assert bins["accuracy"][k] == 1.0
    assert math.isnan(bins["accuracy"][0])  # empty bins are NaN, not 0
    # confidence exactly 1 is in the last bin
    assert reliability_bins(np.array([[1.0, 0.0]]), np.array([0]))["count"][-1] == 1


def _calibrated(n, c, rng, shift=0.0):
    """Top-label data whose accuracy in each confidence level is conf - shift."""
    conf = rng.uniform(1.0 / c + 0.05, 0.98, n)
    p = np.empty((n, c))
    pred = rng.integers(0, c, n)
    p[:] = ((1 - conf) / (c - 1))[:, None]
    p[np.arange(n), pred] = conf
    correct = rng.uniform(size=n) < conf - shift
    other = (pred + rng.integers(1, c, n)) % c
    return p, np.where(correct, pred, other)


def test_ece_near_zero_on_calibrated_data_and_detects_overconfidence():
    rng = np.random.default_rng(1)
    n = 20000
    p, y = _calibrated(n, 10, rng)
    counts = np.asarray(reliability_bins(p, y)["count"], dtype=float)
    # E|acc_b - conf_b| <= sqrt(1/(4 n_b)) per bin: the standard-error bound of the estimator
    bound = np.sum(counts / n * np.sqrt(0.25 / np.maximum(counts, 1)))
    assert ece(p, y) < 2 * bound
    p2, y2 = _calibrated(n, 10, rng, shift=0.2)
    assert abs(ece(p2, y2) - 0.2) < 0.02


def test_metric_input_validation():
    with pytest.raises(ValueError, match="labels must lie"):
        accuracy(P, np.array([0, 1, 2, 3, 0]))
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        nll(P[0], Y[:1])
    with pytest.raises(ValueError, match="integers"):
        brier(P, Y.astype(float))


# -- the release ECE -------------------------------------------------------------------------------
def _random_probs(rng, n, c, conc, dtype):
    logits = rng.normal(size=(n, c)) * conc
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    y = np.array([rng.choice(c, p=row) for row in p])  # calibrated labels
    y[: n // 5] = rng.integers(0, c, n // 5)            # plus some miscalibration
    return p.astype(dtype), y


@pytest.mark.parametrize("n,c,conc,dtype", [(1000, 10, 3.0, np.float64), (537, 10, 1.0, np.float32),
                                            (300, 3, 5.0, np.float64), (2000, 100, 2.0,
                                                                        np.float32)])
def test_ece_release_matches_the_uncertainty_calibration_package(n, c, conc, dtype):
    calibration = pytest.importorskip("calibration")  # PyPI uncertainty-calibration
    rng = np.random.default_rng(n)
    p, y = _random_probs(rng, n, c, conc, dtype)
    ref = calibration.get_calibration_error(p, y)
    assert ece_release(p, y) == pytest.approx(ref, rel=1e-9, abs=1e-12)


def test_ece_release_discrete_branch_matches_the_package():
    calibration = pytest.importorskip("calibration")
    rng = np.random.default_rng(5)
    levels = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.4, 0.3, 0.3],
                       [0.3, 0.4, 0.3], [0.3, 0.3, 0.4]])
    p = levels[rng.integers(0, 6, 800)]
    y = rng.integers(0, 3, 800)
    assert calibration.utils.is_discrete(p)
    assert ece_release(p, y) == pytest.approx(calibration.get_calibration_error(p, y), rel=1e-9)


def test_ece_release_properties_without_the_package():
    rng = np.random.default_rng(2)
    # debiased: near zero (not biased upwards) for calibrated data; large for a bad model
    p, y = _random_probs(rng, 4000, 10, 2.0, np.float64)
    y = np.array([rng.choice(10, p=row) for row in p])
    assert ece_release(p, y) < 0.02
    sharp = np.full((4000, 10), 0.01)
    sharp[np.arange(4000), rng.integers(0, 10, 4000)] = 0.91  # confident, 10% accurate
    y = rng.integers(0, 10, 4000)
    # class-wise L2: the top entry is 0.91 vs a hit rate of 0.1 in ~1/10 of rows per class
    assert ece_release(sharp, y) == pytest.approx(math.sqrt(0.1 * 0.81 ** 2 + 0.9 * 0.09 ** 2),
                                                  rel=0.05)


# -- the K-sample predictive protocol --------------------------------------------------------------
def _model(sigma: float, seed: int = 0, arch: str = "mlp", width: float = 0.05):
    torch.manual_seed(seed)
    model = build_model(arch, num_classes=10, width=width)
    with torch.no_grad():
        for _, layer in bayes_layers(model):
            layer.mu.normal_(0.0, 0.05)
            layer.rho.fill_(float(inverse_softplus(torch.tensor(sigma))))
            layer.mask[..., ::3] = False  # some inactive weights
    return model


def _inputs(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)


def _loader(x, bs=4):
    return Loader(x, torch.arange(len(x)) % 10, bs)


def test_sigma_to_zero_every_sample_is_the_mean_prediction():
    model = _model(sigma=1e-12)
    loader = _loader(_inputs())
    p_mean, y = predict_probs(model, loader, mode="mean")
    p_sample, y2 = predict_probs(model, loader, samples=3, seed=0)
    assert p_sample.dtype == torch.float64 and p_sample.shape == (12, 10)
    assert torch.equal(y, y2)
    torch.testing.assert_close(p_sample, p_mean, atol=1e-9, rtol=0)


def test_positive_sigma_samples_differ_and_are_seeded():
    model = _model(sigma=0.05)
    loader = _loader(_inputs())
    a = predict_probs(model, loader, samples=1, seed=0)[0]
    b = predict_probs(model, loader, samples=1, seed=1)[0]
    assert (a - b).abs().max() > 1e-3
    torch.testing.assert_close(predict_probs(model, loader, samples=1, seed=0)[0], a,
                               atol=0, rtol=0)
    p_mean = predict_probs(model, loader, mode="mean")[0]
    assert (a - p_mean).abs().max() > 1e-3


def test_one_draw_is_shared_by_every_batch_of_a_sample():
    model = _model(sigma=0.05)
    x = _inputs()
    x[9] = x[1]  # the same image in batch 0 and in batch 2 (batch size 4)
    probs, _ = predict_probs(model, _loader(x), samples=1, seed=3)
    torch.testing.assert_close(probs[9], probs[1], atol=1e-6, rtol=0)
    # the layers' own "sample" mode draws per forward call, so the naive loop would differ
    set_mode(model, "sample")
    with torch.no_grad():
        naive = [torch.softmax(model(xb), -1) for xb, _ in _loader(x)]
    assert (naive[0][1] - naive[2][1]).abs().max() > 1e-3


def test_protocol_equals_whole_set_forwards_in_layer_sample_mode():
    """K passes of batches inside sampled_weights == K forwards of the whole set at once in the
    layers' "sample" mode (one draw per layer per forward), with the same RNG stream."""
    model = _model(sigma=0.05)
    x = _inputs(10)
    loader = _loader(x, bs=3)
    torch.manual_seed(11)
    probs, _ = predict_probs(model, loader, samples=3)
    torch.manual_seed(11)
    set_mode(model, "sample")
    with torch.no_grad():
        xf = torch.cat([xb for xb, _ in loader])
        ref = sum(torch.softmax(model(xf), -1).double() for _ in range(3)) / 3
    torch.testing.assert_close(probs, ref, atol=1e-6, rtol=0)


def test_predict_restores_weights_modes_and_train_state_and_uses_eval_batchnorm():
    model = _model(sigma=0.05, arch="small_cnn", width=0.1)
    model.train()
    set_mode(model, "lrt")
    mus = [layer.mu for _, layer in bayes_layers(model)]
    before = [m.detach().clone() for m in mus]
    bn = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    stats = [b.running_mean.clone() for b in bn]
    loader = _loader(_inputs(8))
    predict_probs(model, loader, samples=2, seed=0)
    assert model.training and all(m.training for m in model.modules())
    assert all(layer.mode == "lrt" for _, layer in bayes_layers(model))
    assert all(layer.mu is m and torch.equal(m, b) for (_, layer), m, b in
               zip(bayes_layers(model), mus, before))
    assert all(torch.equal(b.running_mean, s) for b, s in zip(bn, stats))  # eval-mode BN

    class Failing:
        def __iter__(self):
            yield next(iter(loader))
            raise RuntimeError("disk on fire")

    model.eval()
    model.bn_flag_probe = torch.nn.Identity()
    model.bn_flag_probe.train()  # mixed flags must come back exactly
    with pytest.raises(RuntimeError, match="disk on fire"):
        predict_probs(model, Failing(), samples=2, seed=0)
    assert not model.training and model.bn_flag_probe.training
    assert all(layer.mode == "lrt" for _, layer in bayes_layers(model))
    assert all(torch.equal(m, b) for m, b in zip(mus, before))


def test_sampled_weights_masks_and_restores():
    model = _model(sigma=0.05)
    layer = bayes_layers(model)[0][1]
    mu = layer.mu.detach().clone()
    with sampled_weights(model, torch.Generator().manual_seed(0)):
        assert layer.mode == "mean"
        assert torch.all(layer.mu[~layer.mask] == 0)
        assert (layer.mu - mu)[layer.mask].std().item() == pytest.approx(0.05, rel=0.1)
    assert torch.equal(layer.mu, mu) and layer.mode == "lrt"


def test_predict_rejects_augmenting_loaders_and_bad_arguments():
    model = _model(sigma=0.05)
    x = _inputs(4)
    with pytest.raises(ValueError, match="augment"):
        predict_probs(model, Loader(x, torch.zeros(4), 2, augment=True))
    with pytest.raises(ValueError, match="mode"):
        predict_probs(model, _loader(x), mode="lrt")
    with pytest.raises(ValueError, match="samples"):
        predict_probs(model, _loader(x), samples=0)


def test_evaluate_scores_the_predictive_against_the_labels():
    """With sigma -> 0 every posterior draw is the mean network, so evaluate's metrics are those
    of one plain forward pass of it: labels equal to its argmax score accuracy 1, shifted labels
    accuracy 0, and the NLL is the mean -log softmax at the labels."""
    model = _model(sigma=1e-12)
    x = _inputs(20)
    set_mode(model, "mean")
    with torch.no_grad():
        p = torch.softmax(model(x.float() / 255.0), -1).double()
    set_mode(model, "lrt")
    pred = p.argmax(-1)
    right = evaluate(model, Loader(x, pred, 4), samples=3, seed=0)
    wrong = evaluate(model, Loader(x, (pred + 1) % 10, 4), samples=3, seed=0)
    assert right["accuracy"] == 1.0 and wrong["accuracy"] == 0.0
    assert right["nll"] == pytest.approx(-torch.log(p[torch.arange(20), pred]).mean().item(),
                                         rel=1e-6)
    assert wrong["nll"] > right["nll"] and wrong["brier"] > right["brier"]
    assert (right["samples"], right["mode"], right["n"]) == (3, "sample", 20)
    assert sum(right["reliability"]["count"]) == 20
    loader = _loader(x)
    # a deterministic network needs a single pass
    det = build_model("mlp", width=0.05, bayesian=False, masked=False)
    a = predict_probs(det, loader, samples=4)[0]
    torch.testing.assert_close(a, predict_probs(det, loader, mode="mean")[0])
