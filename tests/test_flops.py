"""FLOP and parameter counts, checked against MACs computed by hand from the layer shapes."""
import math

import pytest
import torch
import torch.nn as nn

from ssvi.flops import (PAPER_DENSE_TRAINING_FLOPS, active_weights, count_parameters,
                        flops_report, forward_flops_per_layer, training_flops)
from ssvi.layers import BayesLinear, bayes_layers
from ssvi.models import build_model


def conv_out(h, k, stride, pad):
    return (h + 2 * pad - k) // stride + 1


def resnet18_macs(width=1.0, num_classes=10, hw=32):
    """Hand count of the CIFAR ResNet-18's conv/fc multiply-adds per image, by layer name."""
    w = [max(1, int(round(c * width))) for c in (64, 128, 256, 512)]
    macs = {}
    h = conv_out(hw, 3, 1, 1)
    macs["conv1"] = 3 * w[0] * 9 * h * h
    cin = w[0]
    for i, planes in enumerate(w):
        for b in range(2):
            s = (1 if i == 0 else 2) if b == 0 else 1
            hout = conv_out(h, 3, s, 1)
            macs[f"layer{i + 1}.{b}.conv1"] = cin * planes * 9 * hout * hout
            macs[f"layer{i + 1}.{b}.conv2"] = planes * planes * 9 * hout * hout
            if s != 1 or cin != planes:
                assert conv_out(h, 1, s, 0) == hout
                macs[f"layer{i + 1}.{b}.shortcut.0"] = cin * planes * hout * hout
            cin, h = planes, hout
    macs["linear"] = w[3] * num_classes
    return macs


def small_cnn_macs(c1, c2, num_classes=10):
    return {"features.0": 3 * c1 * 9 * 32 * 32, "features.3": c1 * c1 * 9 * 32 * 32,
            "features.7": c1 * c2 * 9 * 16 * 16, "features.10": c2 * c2 * 9 * 16 * 16,
            "linear": c2 * num_classes}


def set_random_masks(model, densities, seed=0):
    """Exact-density random masks; inactive mu and rho set to 0 (the controller's invariant)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for (name, m), d in zip(bayes_layers(model), densities):
            n = m.mask.numel()
            keep = torch.randperm(n, generator=g)[: round(d * n)]
            mask = torch.zeros(n, dtype=torch.bool)
            mask[keep] = True
            m.mask.copy_(mask.view_as(m.mask))
            m.mu.mul_(m.mask)
            if m.rho is not None:
                m.rho.mul_(m.mask)


@pytest.fixture(scope="module")
def resnet18():
    """The full-width model on the meta device: shapes only, so it builds in a moment."""
    with torch.device("meta"):
        return build_model("resnet18", width=1.0)


def test_resnet18_forward_flops_match_hand_count(resnet18):
    macs = resnet18_macs()
    flops = forward_flops_per_layer(resnet18)
    assert set(flops) == set(macs) | {"other"}
    for name, m in macs.items():
        assert flops[name] == 2 * m, name          # FlopCounterMode: a multiply-add is 2 FLOPs
    assert flops["other"] == 0                     # every conv/fc of the model is Bayesian
    total_macs = sum(macs.values())
    assert abs(total_macs / 0.555e9 - 1) < 0.01    # the recipe's 0.555 GMAC per image
    assert sum(p.numel() for n, p in resnet18.named_parameters() if n.endswith("mu")) == 11_164_352


def test_resnet18_paper_convention(resnet18):
    rep = flops_report(resnet18, n_train=50_000, epochs=200, densities=1.0)
    six_nd = 6 * sum(resnet18_macs().values()) * 2 * 50_000 * 200   # 6 x MACs x 2 LRT convs
    assert rep["dense_training_flops"] == pytest.approx(six_nd, rel=1e-12)
    assert rep["dense_training_flops"] == pytest.approx(6.7e16, rel=0.01)
    assert rep["relative"] == 1.0
    assert rep["forward_macs_per_image"] == sum(resnet18_macs().values())
    assert rep["paper_dense_training_flops"]["cifar10"] == PAPER_DENSE_TRAINING_FLOPS["cifar10"]


def test_density_and_lrt_scaling_small_cnn():
    torch.manual_seed(0)
    model = build_model("small_cnn", width=0.5)
    dens = [0.5, 0.1, 0.05, 0.2, 0.3]
    set_random_masks(model, dens)
    macs = small_cnn_macs(16, 32)
    exact = {name: m.n_active() / m.mask.numel() for name, m in bayes_layers(model)}
    assert list(exact) == list(macs)
    n, e = 1000, 3
    expected = e * n * sum(2 * macs[k] * exact[k] * 2 for k in macs) * 3
    assert training_flops(model, n, e) == pytest.approx(expected, rel=1e-12)
    assert training_flops(model, n, e, lrt=False) == pytest.approx(expected / 2, rel=1e-12)
    # the batch size of the probe input does not change the per-image count
    assert training_flops(model, n, e, input_shape=(4, 3, 32, 32)) == pytest.approx(expected,
                                                                                    rel=1e-12)
    # a uniform density d scales the dense count by d (every conv/fc is masked here)
    set_random_masks(model, [0.1] * 5, seed=1)
    rep = flops_report(model, n, e)
    exact = [m.n_active() / m.mask.numel() for _, m in bayes_layers(model)]
    assert all(abs(d - 0.1) < 1e-3 for d in exact)
    assert rep["relative"] == pytest.approx(
        sum(2 * m * d for m, d in zip(macs.values(), exact)) / sum(2 * m for m in macs.values()),
        rel=1e-12)


def test_densities_override_and_validation():
    model = build_model("small_cnn", width=0.25)
    macs = small_cnn_macs(8, 16)
    full = training_flops(model, 10, 1)
    assert training_flops(model, 10, 1, densities=0.25) == pytest.approx(full / 4, rel=1e-12)
    got = training_flops(model, 10, 1, densities={"features.0": 0.5})
    assert got == pytest.approx(full - 10 * 2 * macs["features.0"] * 0.5 * 2 * 3, rel=1e-12)
    with pytest.raises(ValueError, match="unknown layers"):
        training_flops(model, 10, 1, densities={"nope": 0.5})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        training_flops(model, 10, 1, densities=1.5)
    with pytest.raises(ValueError, match="no ssvi"):
        training_flops(build_model("mlp", masked=False, bayesian=False), 10, 1)


def mixed_model():
    """Bayesian fc (12->7), deterministic masked fc (7->5), plain nn.Linear (5->3)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), BayesLinear(12, 7), nn.ReLU(),
                         BayesLinear(7, 5, deterministic=True), nn.ReLU(), nn.Linear(5, 3))


def test_deterministic_layers_get_no_lrt_factor_and_other_is_counted():
    model = mixed_model()
    set_random_masks(model, [3 / 7, 0.2])   # 36 of 84 and 7 of 35 weights active
    shape = (1, 3, 2, 2)
    flops = forward_flops_per_layer(model, shape)
    assert flops == {"1": 2 * 84, "3": 2 * 35, "other": 2 * 15}
    per_image = 2 * 84 * (36 / 84) * 2 + 2 * 35 * (7 / 35) * 1 + 2 * 15
    assert training_flops(model, 7, 2, shape) == pytest.approx(2 * 7 * per_image * 3, rel=1e-12)
    assert training_flops(model, 7, 2, shape, backward_factor=0) == pytest.approx(
        2 * 7 * per_image, rel=1e-12)
    det = build_model("small_cnn", width=0.25, bayesian=False)
    assert training_flops(det, 10, 1) == pytest.approx(training_flops(det, 10, 1, lrt=False))


def test_mask_update_overhead():
    model = mixed_model()
    set_random_masks(model, [3 / 7, 0.2])
    shape = (1, 3, 2, 2)
    base = training_flops(model, 100, 2, shape)
    dense_step = (2 * 84 * 2 + 2 * 35 + 2 * 15) * 3          # one image, d = 1, fwd + bwd
    # 2 epochs x ceil(100 / 10) = 20 steps; updates at every 3rd step: floor(20 / 3) = 6
    got = training_flops(model, 100, 2, shape, update_every=3, batch_size=10)
    assert got == pytest.approx(base + 6 * 10 * dense_step, rel=1e-12)
    got = training_flops(model, 100, 2, shape, update_every=3, batch_size=10, t_end_frac=0.5)
    assert got == pytest.approx(base + math.floor(10 / 3) * 10 * dense_step, rel=1e-12)


def test_measurement_leaves_model_state_alone():
    model = build_model("small_cnn", width=0.25)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    forward_flops_per_layer(model)
    assert model.training
    assert all(m.mode == "lrt" for _, m in bayes_layers(model))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_active_weights_and_parameter_counts():
    model = build_model("small_cnn", width=0.25)
    set_random_masks(model, [0.5, 0.1, 0.05, 0.2, 0.3])
    masks = [v for k, v in model.state_dict().items() if k.endswith("mask")]
    assert active_weights(model) == sum(int(m.sum()) for m in masks)
    c1, c2 = 8, 16
    total = 27 * c1 + 9 * c1 * c1 + 9 * c1 * c2 + 9 * c2 * c2 + 10 * c2
    counts = count_parameters(model)
    assert counts["total_weights"] == total
    assert counts["active_weights"] == active_weights(model)
    assert counts["density"] == active_weights(model) / total
    assert counts["variational_params"] == 2 * active_weights(model)
    assert counts["deterministic_weights"] == 0
    assert counts["other_params"] == 2 * (c1 + c1 + c2 + c2) + 10   # BN affine + fc bias
    det = build_model("small_cnn", width=0.25, bayesian=False)
    counts = count_parameters(det)
    assert counts["variational_params"] == 0
    assert counts["deterministic_weights"] == total
