"""The Bayesian layers (paper Section 3.1-3.2) checked against mathematics.

* eq. 4 (local reparameterisation): LRT outputs have the per-element mean and variance of naive
  per-example weight sampling, by Monte Carlo with tolerances from the standard error, and the
  exact closed form mu.x + sqrt((sigma^2).(x^2) + 1e-8) eps for the same eps;
* the closed-form Gaussian KL (eq. 1/3) against Monte Carlo E_q[log q - log p];
* the sigma-gradient of eq. 5 against autograd, and its proportionality to sigma;
* masking (inactive weights have no effect and no gradient), numerics at extreme sigma,
  ``bayesianize`` and the error messages of the public helpers.
"""
import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import ssvi
from ssvi.layers import (MODES, BayesConv2d, BayesLayer, BayesLinear, bayes_layers,
                         bayesianize, inverse_softplus, kl, mode, set_mode)

Z = 5.0  # tolerance in standard errors for every Monte Carlo comparison



# -- helpers ----------------------------------------------------------------------------------------
def randomise(layer: BayesLayer, seed: int, density: float = 0.6, sigma=(0.1, 0.5),
              inactive_garbage: bool = True) -> None:
    """Random mu, sigma in ``sigma``, a random mask with some inactive entries and a random bias.

    With ``inactive_garbage`` the inactive mu/rho get large random values: a correct layer must
    ignore them, so the Monte Carlo tests also check the masking."""
    g = torch.Generator().manual_seed(seed)
    shape, dtype = layer.mu.shape, layer.mu.dtype
    with torch.no_grad():
        layer.mask.copy_(torch.rand(shape, generator=g) < density)
        layer.mask.view(-1)[0] = False  # at least one inactive and one active entry
        layer.mask.view(-1)[1] = True
        layer.mu.copy_(0.5 * torch.randn(shape, generator=g, dtype=dtype))
        lo, hi = sigma
        s = lo + (hi - lo) * torch.rand(shape, generator=g, dtype=dtype)
        layer.rho.copy_(inverse_softplus(s))
        if layer.bias is not None:
            layer.bias.copy_(torch.randn(layer.bias.shape, generator=g, dtype=dtype))
        if inactive_garbage:
            layer.mu.masked_scatter_(~layer.mask, 3.0 * torch.randn(shape, generator=g,
                                                                   dtype=dtype)[~layer.mask])
            layer.rho.masked_scatter_(~layer.mask, 2.0 + torch.randn(shape, generator=g,
                                                                    dtype=dtype)[~layer.mask])
        else:
            layer.mu.masked_fill_(~layer.mask, 0.0)
            layer.rho.masked_fill_(~layer.mask, 0.0)


def make(kind: str, seed: int = 0, **kw):
    """A small float64 layer of ``kind`` and a matching input batch."""
    g = torch.Generator().manual_seed(seed + 100)
    if kind == "linear":
        layer = BayesLinear(5, 3).double()
        x = torch.randn(4, 5, generator=g, dtype=torch.float64)
    else:
        layer = BayesConv2d(2, 3, 3, stride=1, padding=1).double()
        x = torch.randn(2, 2, 4, 4, generator=g, dtype=torch.float64)
    randomise(layer, seed, **kw)
    return layer, x


def active_weights(layer):
    """(masked mu, masked sigma) in float64, computed without the layer's forward."""
    m = layer.mask.double()
    return layer.mu.detach().double() * m, F.softplus(layer.rho.detach().double()) * m


def closed_form_moments(layer, x):
    """Exact mean mu.x + b and variance (sigma^2).(x^2) of eq. 4, via explicit sums
    (einsum for linear, unfold + einsum for conv: a different code path from the layer's)."""
    mu, sigma = active_weights(layer)
    b = layer.bias.detach().double() if layer.bias is not None else 0.0
    if isinstance(layer, BayesLinear):
        mean = torch.einsum("bi,oi->bo", x, mu) + b
        var = torch.einsum("bi,oi->bo", x * x, sigma * sigma)
        return mean, var
    cols = F.unfold(x, layer.kernel_size, dilation=layer.dilation, padding=layer.padding,
                    stride=layer.stride)                                     # (B, C*kh*kw, L)
    hout = (x.shape[-2] + 2 * layer.padding - layer.dilation * (layer.kernel_size[0] - 1) - 1) \
        // layer.stride + 1
    mean = torch.einsum("bkl,ok->bol", cols, mu.flatten(1)) + (b[:, None] if torch.is_tensor(b) else 0)
    var = torch.einsum("bkl,ok->bol", cols * cols, (sigma * sigma).flatten(1))
    return (mean.reshape(x.shape[0], -1, hout, mean.shape[-1] // hout),
            var.reshape(x.shape[0], -1, hout, var.shape[-1] // hout))


def assert_moments_match(a, b, label):
    """Two independent samples (dim 0 = draws) have equal per-element mean and variance.

    Mean: |m_a - m_b| <= Z sqrt(v_a/n_a + v_b/n_b). Variance (Gaussian samples):
    SE(s^2) = s^2 sqrt(2/(n-1))."""
    na, nb = a.shape[0], b.shape[0]
    ma, mb, va, vb = a.mean(0), b.mean(0), a.var(0), b.var(0)
    se_mean = torch.sqrt(va / na + vb / nb)
    se_var = torch.sqrt(va ** 2 * 2 / (na - 1) + vb ** 2 * 2 / (nb - 1))
    zm = ((ma - mb).abs() / se_mean).max().item()
    zv = ((va - vb).abs() / se_var).max().item()
    assert zm < Z, f"{label}: means differ by {zm:.1f} standard errors"
    assert zv < Z, f"{label}: variances differ by {zv:.1f} standard errors"


# -- eq. 4: local reparameterisation ----------------------------------------------------------------
@pytest.mark.parametrize("kind,n", [("linear", 20000), ("conv", 6000)])
def test_lrt_matches_per_example_weight_sampling(kind, n):
    """LRT output ~ the output of a fresh full weight draw per example (eq. 4), per element."""
    torch.manual_seed(1)
    layer, x = make(kind)
    x1 = x[:1]
    # LRT: n copies of one example in one batch -> n independent draws of every output element
    with mode(layer, "lrt"):
        y_lrt = layer(x1.expand(n, *x1.shape[1:]))
    # naive: one full weight theta ~ q per forward call ("sample"), y = theta . x, n calls
    with mode(layer, "sample"), torch.no_grad():
        y_naive = torch.cat([layer(x1) for _ in range(n)])
    assert_moments_match(y_lrt.detach(), y_naive, f"{kind}: LRT vs per-example sampling")
    # both agree with the exact moments (mean mu.x + b, variance (sigma^2).(x^2))
    mean, var = closed_form_moments(layer, x1)
    for y, label in ((y_lrt.detach(), "LRT"), (y_naive, "naive")):
        zm = ((y.mean(0) - mean[0]).abs() / (var[0] / n).sqrt()).max().item()
        zv = ((y.var(0) - var[0]).abs() / (var[0] * math.sqrt(2 / (n - 1)))).max().item()
        assert zm < Z and zv < Z, f"{kind} {label}: z(mean)={zm:.1f}, z(var)={zv:.1f}"


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_lrt_is_the_closed_form_for_its_noise(kind):
    """y = mu.x + b + sqrt((sigma^2).(x^2) + 1e-8) * eps exactly, eps the layer's own draw."""
    layer, x = make(kind, seed=3)
    mean, var = closed_form_moments(layer, x)
    torch.manual_seed(7)
    y = layer(x)
    torch.manual_seed(7)
    eps = torch.randn_like(y)
    torch.testing.assert_close(y, mean + torch.sqrt(var + 1e-8) * eps, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_mean_mode_is_the_masked_mean_network(kind):
    layer, x = make(kind, seed=4)
    w = layer.mu.detach() * layer.mask
    if kind == "linear":
        ref = F.linear(x, w, layer.bias)
    else:
        ref = F.conv2d(x, w, layer.bias, layer.stride, layer.padding, layer.dilation, layer.groups)
    with mode(layer, "mean"):
        torch.testing.assert_close(layer(x), ref, rtol=0, atol=0)
        torch.testing.assert_close(layer(x), layer(x), rtol=0, atol=0)  # deterministic


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_sample_mode_draws_one_weight_per_forward(kind):
    layer, x = make(kind, seed=5)
    xx = torch.cat([x[:1], x[:1], x[1:2]])
    set_mode(layer, "sample")
    y1, y2 = layer(xx), layer(xx)
    torch.testing.assert_close(y1[0], y1[1], rtol=0, atol=0)  # same weight for the whole batch
    assert not torch.allclose(y1, y2)                          # a new weight on the next call
    # one shared weight means the map is affine within a call: y(a + b) = y(a) + y(b) - y(0)
    a, b = x[:1], x[1:2]
    y = layer(torch.cat([a, b, a + b, torch.zeros_like(a)]))
    torch.testing.assert_close(y[2], y[0] + y[1] - y[3], rtol=1e-10, atol=1e-10)
    # its per-element moments are those of q (eq. 4's mean and variance)
    torch.manual_seed(2)
    with torch.no_grad():
        ys = torch.cat([layer(x[:1]) for _ in range(4000)])
    mean, var = closed_form_moments(layer, x[:1])
    assert ((ys.mean(0) - mean[0]).abs() / (var[0] / 4000).sqrt()).max() < Z


# -- KL (eq. 1 / eq. 3) -----------------------------------------------------------------------------
def kl_monte_carlo(mu, sigma, prior_sigma, n=200_000, seed=0):
    """E_q[log q(theta) - log p(theta)], theta ~ N(mu, sigma^2), and its standard error (float64)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, generator=g, dtype=torch.float64)
    theta = mu + sigma * z
    d = (-math.log(sigma) - 0.5 * z * z) - (-math.log(prior_sigma) - 0.5 * (theta / prior_sigma) ** 2)
    return d.mean().item(), (d.std() / math.sqrt(n)).item()


@pytest.mark.parametrize("mu,sigma,prior_sigma", [
    (0.0, 1e-6, 0.005), (0.01, 1e-6, 0.005), (0.003, 6e-4, 0.005), (0.3, 1.0, 0.005),
    (-0.2, 0.5, 1.0), (0.0, 1.0, 1.0), (1.5, 1e-6, 1.0)])
def test_kl_closed_form_matches_monte_carlo(mu, sigma, prior_sigma):
    layer = BayesLinear(1, 1, bias=False, prior_sigma=prior_sigma).double()
    with torch.no_grad():
        layer.mu.fill_(mu)
        layer.rho.copy_(inverse_softplus(torch.tensor(sigma, dtype=torch.float64)).view(1, 1))
    value = layer.kl().item()
    mc, se = kl_monte_carlo(mu, sigma, prior_sigma)
    assert math.isfinite(value)
    # float32 evaluation of the closed form (the layer's documented precision) adds ~1e-7 relative
    assert abs(value - mc) <= Z * se + 1e-6 * abs(mc) + 1e-9, (value, mc, se)


def test_kl_sums_active_weights_only():
    layer, _ = make("conv", seed=6)
    mu, sigma = active_weights(layer)
    ps = layer.prior_sigma
    m = layer.mask
    # KL(N(mu, s^2) || N(0, p^2)) = 0.5 (s^2/p^2 + mu^2/p^2 - 1 - log(s^2/p^2)), active entries
    ref = 0.5 * ((sigma / ps) ** 2 + (mu / ps) ** 2 - 1 - torch.log((sigma / ps) ** 2))
    value = layer.kl()
    assert math.isclose(value.item(), ref[m].sum().item(), rel_tol=1e-5)
    # inactive mu / rho do not enter, exactly
    with torch.no_grad():
        layer.mu.masked_fill_(~m, 123.0)
        layer.rho.masked_fill_(~m, -50.0)
    assert layer.kl().item() == value.item()
    # all inactive: exactly 0
    with torch.no_grad():
        layer.mask.zero_()
    assert layer.kl().item() == 0.0


def test_kl_of_a_float64_layer_is_float64():
    """The docstring promises "fp32+": a float64 layer's KL must not be rounded to float32."""
    layer, _ = make("linear", seed=7)
    assert layer.kl().dtype == torch.float64
    mu, sigma = active_weights(layer)
    ref = ssvi.layers.gaussian_kl(mu, sigma, layer.prior_sigma)[layer.mask].sum()
    assert math.isclose(layer.kl().item(), ref.item(), rel_tol=1e-12)


def test_model_kl_is_the_sum_of_layer_kls():
    net = nn.Sequential(BayesLinear(4, 6), nn.ReLU(), nn.Sequential(BayesLinear(6, 2)),
                        BayesLinear(2, 2, deterministic=True))
    randomise(net[0], 1)
    randomise(net[2][0], 2)
    total = kl(net)
    assert torch.allclose(total, net[0].kl() + net[2][0].kl())
    assert net[3].kl().item() == 0.0


# -- eq. 5: the sigma-gradient of the LRT ------------------------------------------------------------
def lrt_with_noise(layer, x, seed):
    """Forward in LRT mode and the eps it used (same generator state, same shape and dtype)."""
    torch.manual_seed(seed)
    y = layer(x)
    torch.manual_seed(seed)
    return y, torch.randn_like(y)


def eq5_sigma_grad(layer, x, dl_dy, eps):
    """Eq. 5 for a linear layer: dl/dsigma_ji = sum_b dl/dy_bj eps_bj sigma_ji x_bi^2
    / sqrt(sum_i sigma_ji^2 x_bi^2 + 1e-8), active entries (sigma of inactive entries is 0)."""
    _, sigma = active_weights(layer)
    s = torch.sqrt((x * x) @ (sigma * sigma).T + 1e-8)                  # (B, out)
    return torch.einsum("bj,bj,bi->ji", dl_dy, eps / s, x * x) * sigma


def test_sigma_gradient_matches_eq5():
    layer, x = make("linear", seed=8, inactive_garbage=False)
    layer.mode = "lrt"
    y, eps = lrt_with_noise(layer, x, seed=11)
    loss = torch.tanh(y).sum()                    # a non-linear loss: dl/dy = 1 - tanh(y)^2
    loss.backward()
    dl_dy = 1 - torch.tanh(y.detach()) ** 2
    expected = eq5_sigma_grad(layer, x, dl_dy, eps)
    # autograd differentiates w.r.t. rho: dl/drho = dl/dsigma * sigmoid(rho) (sigma = softplus(rho))
    expected_rho = expected * torch.sigmoid(layer.rho.detach()) * layer.mask
    torch.testing.assert_close(layer.rho.grad, expected_rho, rtol=1e-10, atol=1e-14)
    # and the mu-gradient is the ordinary one, dl/dmu_ji = sum_b dl/dy_bj x_bi (active entries)
    torch.testing.assert_close(layer.mu.grad, (dl_dy.T @ x) * layer.mask, rtol=1e-10, atol=1e-14)


def test_sigma_gradient_is_proportional_to_sigma():
    """Section 3.2: eq. 5 is linear in sigma_ji, so a weight with sigma ~ 0 gets no sigma-gradient."""
    layer, x = make("linear", seed=9, inactive_garbage=False)
    layer.mode = "lrt"
    grads = {}
    for s in (1e-12, 1e-9, 1e-7, None):
        layer.zero_grad()
        with torch.no_grad():
            if s is not None:
                layer.rho[0, 1] = inverse_softplus(torch.tensor(s, dtype=torch.float64))
        y, _ = lrt_with_noise(layer, x, seed=12)
        torch.tanh(y).sum().backward()
        sig = F.softplus(layer.rho.detach()[0, 1])
        grads[s] = (layer.rho.grad / torch.sigmoid(layer.rho.detach()))[0, 1].item(), sig.item()
    typical = (layer.rho.grad / torch.sigmoid(layer.rho.detach()))[layer.mask].abs().median().item()
    g12, g9, g7 = grads[1e-12][0], grads[1e-9][0], grads[1e-7][0]
    assert abs(g12) < 1e-9 * typical and abs(g9) < 1e-6 * typical
    # ratio of gradients = ratio of sigmas (the entry's own share of the sqrt is negligible)
    assert math.isclose(g7 / g9, grads[1e-7][1] / grads[1e-9][1], rel_tol=1e-6)
    assert math.isclose(g9 / g12, grads[1e-9][1] / grads[1e-12][1], rel_tol=1e-6)


# -- masking --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["linear", "conv"])
@pytest.mark.parametrize("fwd", MODES)
def test_inactive_weights_have_no_effect(kind, fwd):
    layer, x = make(kind, seed=10, inactive_garbage=False)
    layer.mode = fwd
    torch.manual_seed(0)
    y0 = layer(x)
    with torch.no_grad():
        layer.mu.masked_fill_(~layer.mask, 0.7)
        layer.rho.masked_fill_(~layer.mask, 1.3)
    torch.manual_seed(0)
    y1 = layer(x)
    torch.testing.assert_close(y0, y1, rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["linear", "conv"])
@pytest.mark.parametrize("fwd", MODES)
def test_inactive_weights_get_exactly_zero_gradient(kind, fwd):
    """Inactive mu/rho (the controller keeps them at 0) receive gradient exactly 0, in every
    mode. A NaN here would be copied into rho by the optimizer and then poison every output."""
    layer, x = make(kind, seed=11, inactive_garbage=False)
    layer.mode = fwd
    (layer(x).square().sum() + layer.kl()).backward()
    off = ~layer.mask
    assert torch.isfinite(layer.mu.grad).all() and torch.isfinite(layer.rho.grad).all()
    assert (layer.mu.grad[off] == 0).all()
    assert (layer.rho.grad[off] == 0).all()
    assert layer.mu.grad[layer.mask].abs().sum() > 0


def test_reset_parameters_keeps_inactive_entries_zero():
    layer, _ = make("linear", seed=12, inactive_garbage=False)
    layer.reset_parameters()
    assert (layer.mu[~layer.mask] == 0).all()
    assert (layer.rho[~layer.mask] == 0).all(), "reset_parameters left inactive rho non-zero"


# -- numerics ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("sigma", [1e-8, 1e-6, 6e-4, 0.5, 1.0, 30.0])
def test_inverse_softplus_round_trip(dtype, sigma):
    rho = inverse_softplus(torch.tensor(sigma, dtype=torch.float64)).to(dtype)
    back = F.softplus(rho).double().item()
    # float32: rounding rho to the nearest float32 moves softplus(rho) by up to (|rho| + 1) 2^-24
    # relative (9.5e-7 at sigma = 1e-8, rho = -18.4); float64 is exact to ~1e-15
    tol = max(1e-6, (abs(rho.item()) + 1) * 2.0 ** -24) if dtype is torch.float32 else 1e-12
    assert math.isfinite(rho.item())
    assert abs(back - sigma) <= tol * sigma, (sigma, back)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("sigma", [1e-8, 1.0])
def test_extreme_sigma_kl_and_forward_are_finite(dtype, sigma):
    layer = BayesLinear(3, 2).to(dtype)
    with torch.no_grad():
        layer.mu.copy_(torch.tensor([[1.0, -1.0, 0.0], [1e-3, 0.0, -5.0]]))
        layer.rho.fill_(inverse_softplus(torch.tensor(sigma, dtype=torch.float64)).item())
    value = layer.kl()
    mu = layer.mu.detach().double()
    ref = ssvi.layers.gaussian_kl(mu, torch.full_like(mu, sigma), layer.prior_sigma).sum()
    assert torch.isfinite(value) and math.isclose(value.item(), ref.item(), rel_tol=1e-5)
    for fwd in MODES:
        layer.mode = fwd
        out = layer(torch.randn(4, 3, dtype=dtype))
        out.sum().backward()
        assert torch.isfinite(out).all() and torch.isfinite(layer.rho.grad).all()


# -- bayesianize and the public helpers ------------------------------------------------------------------
class Custom(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(4, 6, 3, stride=2, padding=1, dilation=2, groups=2),
                                   nn.BatchNorm2d(6), nn.ReLU(),
                                   nn.Conv2d(6, 4, (3, 1), padding="valid", bias=False))
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.block(x).mean((-2, -1)))


def test_bayesianize_converts_nested_layers_and_keeps_the_rest():
    torch.manual_seed(0)
    net = Custom().double()
    bn = net.block[1]
    assert bayesianize(net) is net
    assert isinstance(net.block[0], BayesConv2d) and isinstance(net.block[3], BayesConv2d)
    assert isinstance(net.head, BayesLinear)
    assert net.block[1] is bn and isinstance(net.block[2], nn.ReLU)
    assert [n for n, _ in bayes_layers(net)] == ["block.0", "block.3", "head"]
    assert net.block[3].bias is None and net.head.bias is not None
    assert net.head.mu.dtype == torch.float64
    c = net.block[0]
    assert (c.stride, c.padding, c.dilation, c.groups) == ((2, 2), (1, 1), (2, 2), 2)
    assert c.mu.shape == (6, 2, 3, 3)
    # the layers return plain tensors, so nn.Sequential chains them
    y = net(torch.randn(2, 4, 9, 9, dtype=torch.float64))
    assert isinstance(y, torch.Tensor) and y.shape == (2, 3)
    assert bayesianize(net) is net  # idempotent: Bayesian layers are left alone


def test_bayesianize_keep_weights_reproduces_the_network_in_mean_mode():
    torch.manual_seed(0)
    net = Custom().double().eval()
    x = torch.randn(3, 4, 11, 9, dtype=torch.float64)
    ref = net(x)
    bnet = bayesianize(copy.deepcopy(net), keep_weights=True)
    with mode(bnet, "mean"):
        torch.testing.assert_close(bnet(x), ref, rtol=1e-12, atol=1e-12)
    # deterministic masked layers (RigL) behave the same in every mode
    dnet = bayesianize(copy.deepcopy(net), keep_weights=True, deterministic=True)
    assert all(m.rho is None for _, m in bayes_layers(dnet))
    torch.testing.assert_close(dnet(x), ref, rtol=1e-12, atol=1e-12)


def test_bayesianize_skip():
    net = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2))
    bayesianize(net, skip=("0",))
    assert type(net[0]) is nn.Linear and isinstance(net[1], BayesLinear)


def test_bayesianize_errors():
    with pytest.raises(ValueError, match="no nn.Linear or nn.Conv2d"):
        bayesianize(nn.Sequential(nn.ReLU(), nn.BatchNorm1d(3)))
    with pytest.raises(ValueError, match="same"):
        bayesianize(nn.Sequential(nn.Conv2d(2, 2, 3, padding="same")))
    with pytest.raises(ValueError, match="padding_mode"):
        bayesianize(nn.Sequential(nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect")))
    with pytest.raises(ValueError, match="bayesianize"):
        kl(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(ValueError, match="prior_sigma"):
        BayesLinear(2, 2, prior_sigma=0.0)


def test_wrong_input_shapes_raise_naming_the_expected_shape():
    with pytest.raises(ValueError, match=r"\(\.\.\., 5\)"):
        BayesLinear(5, 3)(torch.randn(2, 4))
    with pytest.raises(ValueError, match=r"\(N, 2, H, W\)"):
        BayesConv2d(2, 3, 3)(torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"\(N, 2, H, W\)"):
        BayesConv2d(2, 3, 3)(torch.randn(2, 8))


def test_set_mode_and_mode_context():
    net = nn.Sequential(BayesLinear(2, 2), BayesLinear(2, 2))
    with pytest.raises(ValueError) as err:
        set_mode(net, "mc")
    assert all(m in str(err.value) for m in MODES)
    net[1].mode = "sample"
    with mode(net, "mean"):
        assert [m.mode for m in net] == ["mean", "mean"]
    assert [m.mode for m in net] == ["lrt", "sample"]
    with pytest.raises(RuntimeError, match="boom"):
        with mode(net, "mean"):
            raise RuntimeError("boom")
    assert [m.mode for m in net] == ["lrt", "sample"]
    with pytest.raises(ValueError):
        with mode(net, "bad"):
            pass
    assert [m.mode for m in net] == ["lrt", "sample"]
