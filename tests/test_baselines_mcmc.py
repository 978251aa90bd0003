"""The MCMC baselines (AEB, mBNN) and their SGHMC sampler, mathematics against mathematics.

* SGHMC on Gaussian targets: many independent chains (their final states are i.i.d. draws, so
  the standard errors need no autocorrelation correction) against the closed-form mean and
  variance, at T = 1 and T = 0.25, with a masked coordinate that must stay at zero.
* AEB on a linear regression with an orthogonal design, where its target factorises into 1-D
  densities computed by quadrature: (a) with the inclusion probabilities rho frozen, the
  sampler's moments against quadrature; (b) with the stochastic approximation running, rho
  against the fixed point rho* = E_{pi(theta | rho*)}[rho(theta)] (AEB is an empirical-Bayes
  method: it does not sample the joint spike-and-slab posterior, so its own fixed point is the
  closed form to test against).
* mBNN's birth-and-death kernel: the exact transition matrix of a 4-node toy satisfies detailed
  balance for every pair of masks; a chain of moves visits masks with the exact probabilities.
* mBNN's whole sampler (SGHMC on the active weights + reversible-jump birth-death) on a
  spike-and-slab linear regression with known inclusion probabilities: posterior inclusion
  probabilities and means against the exact ones from enumerating the models (batch-means SEs).
* The protocol end to end on a tiny network.
"""
import itertools
import math

import pytest
import torch

from ssvi.baselines import get_method, mask_stats
from ssvi.baselines.aeb import SpikeSlabSA, inclusion_prob, spike_slab_penalty
from ssvi.baselines.mbnn import BirthDeath, gaussian_log_prob, log_count_prior, selection_log_prob
from ssvi.baselines.sghmc import SGHMC
from ssvi.config import TrainConfig


def batch_means_se(x: torch.Tensor, n_batches: int = 40) -> torch.Tensor:
    """Standard error of the mean of the series x (steps along dim 0) by batch means."""
    b = x.shape[0] // n_batches
    means = x[: b * n_batches].reshape(n_batches, b, *x.shape[1:]).double().mean(1)
    return means.std(0) / math.sqrt(n_batches)


# -- SGHMC -------------------------------------------------------------------------------------
@pytest.mark.parametrize("temperature", [1.0, 0.25])
def test_sghmc_gaussian_moments(temperature):
    """U = sum (theta - m)^2 / (2 s^2): theta ~ N(m, T s^2). 20000 chains, 600 steps.
    The scheme's discretisation bias in the variance is +0.26% (exact stationary covariance
    of the linear recursion at lr 0.01, friction 0.1), far below the 4-SE tolerance (~4%)."""
    torch.manual_seed(0)
    m, s, chains = 1.5, 2.0, 20000
    theta = torch.zeros(chains + 1, requires_grad=True)   # the last coordinate is masked
    mask = torch.ones(chains + 1, dtype=torch.bool)
    mask[-1] = False
    opt = SGHMC([theta], lr=0.01 * s * s, alpha=0.1, temperature=temperature)
    opt.set_mask(theta, mask)
    for _ in range(600):
        opt.zero_grad()
        ((theta - m).square() / (2 * s * s)).sum().backward()
        opt.step()
    x = theta.detach()[:-1].double()
    assert theta[-1].item() == 0.0 and opt.state[theta]["momentum"][-1].item() == 0.0
    var = temperature * s * s
    se_mean = math.sqrt(var / chains)
    se_var = var * math.sqrt(2.0 / (chains - 1))
    assert abs(x.mean().item() - m) < 4 * se_mean
    assert abs(x.var().item() - var) < 4 * se_var + 0.003 * var


def test_sghmc_rejects_bad_input():
    p = torch.zeros(3, requires_grad=True)
    with pytest.raises(ValueError, match="alpha"):
        SGHMC([p], lr=0.1, alpha=0.0)
    with pytest.raises(ValueError, match="lr"):
        SGHMC([p], lr=-1.0)
    with pytest.raises(ValueError, match="bool mask"):
        SGHMC([p], lr=0.1).set_mask(p, torch.ones(2, dtype=torch.bool))


# -- AEB ---------------------------------------------------------------------------------------
def orthogonal_regression(n=40, p=3, beta=(1.0, 0.15, 0.0), noise=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, p, generator=g, dtype=torch.float64))
    x = q * math.sqrt(n)                                   # X'X = n I
    y = x @ torch.tensor(beta, dtype=torch.float64) + noise * torch.randn(n, generator=g,
                                                                          dtype=torch.float64)
    return x, y


GRID = torch.linspace(-3.0, 3.0, 20001, dtype=torch.float64)


def aeb_marginals(x, y, noise, kappa0, kappa1, sigma):
    """Quadrature densities of theta_j under exp(-lik - kappa1 t^2/(2 s^2) - kappa0 |t| / s)."""
    a = (x * x).sum(0) / noise ** 2
    b = x.T @ y / noise ** 2
    t = GRID[:, None]
    logd = -0.5 * (a + kappa1 / sigma ** 2) * t ** 2 + b * t - kappa0 * t.abs() / sigma
    w = torch.softmax(logd, 0)                             # normalised weights on the grid
    return w


def test_aeb_e_step_is_bayes_rule():
    """rho against the mixture posterior computed from torch.distributions densities."""
    theta = torch.linspace(-0.05, 0.05, 101, dtype=torch.float64)
    delta, v0, v1, sigma = 0.3, 0.005, 1e-5, 1.3
    slab = torch.distributions.Normal(0.0, sigma * math.sqrt(v1)).log_prob(theta).exp() * delta
    spike = torch.distributions.Laplace(0.0, sigma * v0).log_prob(theta).exp() * (1 - delta)
    torch.testing.assert_close(inclusion_prob(theta, delta, v0, v1, sigma), slab / (slab + spike))


def test_aeb_sampler_frozen_rho_matches_quadrature():
    """SGHMC on the adaptive posterior with rho frozen: moments of each theta_j."""
    torch.manual_seed(1)
    x, y = orthogonal_regression()
    noise, sigma, v0, v1, reps = 1.0, 1.0, 0.2, 0.5, 10000
    rho = torch.tensor([0.9, 0.5, 0.1], dtype=torch.float64)
    kappa0, kappa1 = (1 - rho) / v0, rho / v1
    theta = torch.zeros(reps, 3, dtype=torch.float64, requires_grad=True)
    opt = SGHMC([theta], lr=0.01 / 40.0, alpha=0.1, temperature=1.0)
    a, bhat = 40.0 / noise ** 2, x.T @ y / 40.0     # X'X = 40 I: the likelihood's statistics
    for _ in range(700):
        opt.zero_grad()
        lik = (a / 2) * (theta - bhat).square().sum()
        (lik + spike_slab_penalty(theta, kappa0.expand(reps, 3), kappa1.expand(reps, 3),
                                  sigma)).backward()
        opt.step()
    w = aeb_marginals(x, y, noise, kappa0, kappa1, sigma)
    mean = (w * GRID[:, None]).sum(0)
    var = (w * (GRID[:, None] - mean) ** 2).sum(0)
    got = theta.detach()
    se = (var / reps).sqrt()
    assert ((got.mean(0) - mean).abs() < 4 * se).all(), (got.mean(0), mean)
    se_var = got.var(0) * math.sqrt(2.0 / reps) * 1.5       # 1.5: a Laplace kink is not Gaussian
    assert ((got.var(0) - var).abs() < 4 * se_var + 0.003 * var).all(), (got.var(0), var)


def test_aeb_stochastic_approximation_reaches_its_fixed_point():
    """SGHMC + SA (2000 independent replicas): rho -> rho*, the root of rho = E[rho(theta)]."""
    torch.manual_seed(2)
    x, y = orthogonal_regression()
    noise, sigma, v0, v1, delta, reps = 1.0, 1.0, 0.2, 0.5, 0.5, 2000
    # the fixed point by quadrature (a contraction here: iterate)
    rho_star = torch.full((3,), 0.5, dtype=torch.float64)
    rho_of_grid = inclusion_prob(GRID, delta, v0, v1, sigma)[:, None]
    for _ in range(200):
        w = aeb_marginals(x, y, noise, (1 - rho_star) / v0, rho_star / v1, sigma)
        new = (w * rho_of_grid).sum(0)
        if (new - rho_star).abs().max() < 1e-10:
            break
        rho_star = new
    assert (new - rho_star).abs().max() < 1e-8                    # the iteration converged
    theta = torch.zeros(reps, 3, dtype=torch.float64, requires_grad=True)
    sa = SpikeSlabSA((reps, 3), "cpu", v0, v1, delta0=delta, update_delta=False)
    opt = SGHMC([theta], lr=0.01 / 40.0, alpha=0.1, temperature=1.0)
    a, bhat = 40.0 / noise ** 2, x.T @ y / 40.0     # X'X = 40 I: the likelihood's statistics
    for t in range(1, 3001):
        opt.zero_grad()
        lik = (a / 2) * (theta - bhat).square().sum()
        (lik + sa.penalty(theta, sigma)).backward()
        opt.step()
        sa.update(theta.detach(), omega=1.0 / (10.0 + t) ** 0.75, sigma=sigma)
    got = sa.rho.mean(0)
    se = sa.rho.std(0) / math.sqrt(reps)
    assert ((got - rho_star).abs() < 4 * se + 0.001).all(), (got, rho_star)
    # and the kappas follow rho
    torch.testing.assert_close(sa.kappa1.mean(0), got / v1, rtol=0.02, atol=0.0)


def test_aeb_rejects_bad_density():
    with pytest.raises(ValueError, match="density"):
        get_method("aeb", _ns(density=0.0))


def _ns(**kw):
    import types
    base = dict(epochs=2, batch_size=8, density=0.3, first_layer_dense=True, seed=0, extra={})
    base.update(kw)
    return types.SimpleNamespace(**base)


# -- mBNN birth-death --------------------------------------------------------------------------
def all_masks(sizes):
    p = sum(sizes)
    for bits in itertools.product([False, True], repeat=p):
        yield torch.tensor(bits)


@pytest.mark.parametrize("death", ["uniform", "grad"])
def test_birth_death_detailed_balance_exact(death):
    """pi(m) K(m, m') = pi(m') K(m', m) for every pair, K the exact MH kernel of the move
    (sum over move type, k and node sets), on 2 layers x 2 nodes with N_max = 3; target: the
    mBNN mask prior times an arbitrary fixed likelihood table; death scores an arbitrary
    state-dependent table (any state-dependent proposal must be corrected exactly)."""
    sizes, n_max = [2, 2], 3
    bd = BirthDeath(sizes, n_data=100, lam=0.15, n_max=n_max, death=death)
    g = torch.Generator().manual_seed(3)
    states = [m for m in all_masks(sizes) if all(s >= 1 for s in bd.counts(m))]
    key = lambda m: tuple(m.tolist())                                  # noqa: E731
    loglik = {key(m): float(torch.randn((), generator=g)) * 2 for m in states}
    scores = {key(m): torch.randn(4, generator=g, dtype=torch.float64) * 3 for m in states}
    log_pi = {key(m): bd.log_prior(m) + loglik[key(m)] for m in states}
    kernel = {}
    for m in states:
        for kind in ("death", "birth"):
            cand = (m if kind == "death" else ~m).nonzero().flatten().tolist()
            g_old = scores[key(m)] if kind == "death" else None
            probs = bd.proposal_probs(kind, m, g_old) if cand else None
            for k in range(1, n_max + 1):
                for picks in itertools.combinations(cand, k):
                    new = m.clone()
                    new[list(picks)] = kind == "birth"
                    if key(new) not in log_pi:
                        continue
                    g_new = scores[key(new)] if kind == "birth" else None
                    la = bd.log_acceptance(kind, m, new, list(picks),
                                           loglik[key(new)] - loglik[key(m)], g_old, g_new)
                    pr = 0.5 / n_max * math.exp(selection_log_prob(probs, picks))
                    kernel[(key(m), key(new))] = kernel.get((key(m), key(new)), 0.0) \
                        + pr * min(1.0, math.exp(la))
    pairs = 0
    for (a, b), k_ab in kernel.items():
        k_ba = kernel[(b, a)]
        lhs, rhs = math.exp(log_pi[a]) * k_ab, math.exp(log_pi[b]) * k_ba
        assert lhs == pytest.approx(rhs, rel=1e-10)
        pairs += 1
    assert pairs > 10


def test_selection_probability_against_enumeration():
    """selection_log_prob sums to 1 over all k-subsets (a proper distribution)."""
    probs = torch.tensor([0.1, 0.4, 0.2, 0.3], dtype=torch.float64)
    for k in (1, 2, 3):
        total = sum(math.exp(selection_log_prob(probs, s))
                    for s in itertools.combinations(range(4), k))
        assert total == pytest.approx(1.0, abs=1e-12)


def test_birth_death_chain_visits_masks_with_exact_probabilities():
    """40000 moves with the gradient-informed deaths; visit frequencies of the 9 masks against
    the exact target (batch-means SE per mask, 4.5 SE)."""
    sizes = [2, 2]
    bd = BirthDeath(sizes, n_data=100, lam=0.15, n_max=3, death="grad")
    g = torch.Generator().manual_seed(4)
    states = [m for m in all_masks(sizes) if all(s >= 1 for s in bd.counts(m))]
    key = lambda m: tuple(m.tolist())                                  # noqa: E731
    loglik = {key(m): float(torch.randn((), generator=g)) for m in states}
    scores = {key(m): torch.randn(4, generator=g, dtype=torch.float64) for m in states}
    log_pi = torch.tensor([bd.log_prior(m) + loglik[key(m)] for m in states])
    exact = torch.softmax(log_pi, 0)
    alive = states[0].clone()
    index = {key(m): i for i, m in enumerate(states)}
    cur = {}

    def apply(kind, picks):
        cur["old"] = key(alive)
        new = alive.clone()
        new[picks] = kind == "birth"
        cur["new"] = key(new)

    def delta(kind, picks):
        return loglik[cur["new"]] - loglik[cur["old"]]

    visits = torch.zeros(40000, len(states))
    for t in range(40000):
        bd.move(alive, apply, lambda k, p: None, delta, lambda a: scores[key(a)], g)
        assert alive.dtype == torch.bool and all(s >= 1 for s in bd.counts(alive))
        visits[t, index[key(alive)]] = 1.0
    freq = visits.mean(0).double()
    se = batch_means_se(visits)
    assert ((freq - exact).abs() < 4.5 * se + 1e-3).all(), (freq, exact)


def test_mbnn_count_prior():
    """log pi(m_l) differences: -(lam log n)^5 (s'^2 - s^2) - log binom ratio."""
    lam, n, m = 0.05, 50000, 10
    c = (lam * math.log(n)) ** 5
    diff = log_count_prior(4, m, lam, n) - log_count_prior(3, m, lam, n)
    assert diff == pytest.approx(-c * 7 - math.log(math.comb(10, 4) / math.comb(10, 3)))
    assert log_count_prior(0, m, lam, n) == -math.inf


ITERS = 12000


def test_mbnn_sampler_on_spike_and_slab_regression():
    """SGHMC on the active coefficients + reversible-jump birth-death (births draw from q), on
    y = X b + e with b_j = gamma_j N(0, tau^2), P(gamma_j) = (0.5, 0.3, 0.6), at least one
    coefficient active (the mask prior's support): posterior inclusion probabilities and means
    against the exact ones over the 7 models, within 4.5 batch-means SE."""
    g = torch.Generator().manual_seed(5)
    torch.manual_seed(5)
    n, p, noise, tau, q_std = 30, 3, 1.0, 1.0, 0.4
    x = torch.randn(n, p, generator=g, dtype=torch.float64)
    y = x @ torch.tensor([0.9, 0.35, 0.0], dtype=torch.float64) + noise * torch.randn(
        n, generator=g, dtype=torch.float64)
    incl = torch.tensor([0.5, 0.3, 0.6], dtype=torch.float64)

    def log_mask_prior(m):
        mm = m.double()
        return float((mm * incl.log() + (1 - mm) * (1 - incl).log()).sum())

    # exact posterior by enumeration
    log_post, means = [], []
    models = [m for m in all_masks([p]) if m.any()]
    for m in models:
        xm = x[:, m]
        cov = noise ** 2 * torch.eye(n, dtype=torch.float64) + tau ** 2 * xm @ xm.T
        lml = torch.distributions.MultivariateNormal(torch.zeros(n, dtype=torch.float64),
                                                     cov).log_prob(y)
        log_post.append(log_mask_prior(m) + float(lml))
        prec = xm.T @ xm / noise ** 2 + torch.eye(int(m.sum()), dtype=torch.float64) / tau ** 2
        mu = torch.zeros(p, dtype=torch.float64)
        mu[m] = torch.linalg.solve(prec, xm.T @ y / noise ** 2)
        means.append(mu)
    w = torch.softmax(torch.tensor(log_post), 0)
    pip = sum(wi * m.double() for wi, m in zip(w, models))
    post_mean = sum(wi * mu for wi, mu in zip(w, means))

    bd = BirthDeath([p], n_data=n, n_max=2, death="uniform", log_mask_prior=log_mask_prior)
    alive = torch.tensor([True, False, True])
    beta = torch.zeros(p, dtype=torch.float64, requires_grad=True)
    mask = alive.clone()
    opt = SGHMC([beta], lr=0.01 / n, alpha=0.2, temperature=1.0)
    opt.set_mask(beta, mask)

    def log_target():
        b = beta.detach() * mask
        return float(-(y - x @ b).square().sum() / (2 * noise ** 2))

    saved = {}

    def apply(kind, picks):
        saved["ll"], saved["b"] = log_target(), beta.detach().clone()
        extra = 0.0
        with torch.no_grad():
            for i in picks:
                if kind == "birth":
                    beta[i] = torch.randn((), generator=g, dtype=torch.float64) * q_std
                    mask[i] = True
                    extra += float(gaussian_log_prob(beta[i], tau) - gaussian_log_prob(beta[i],
                                                                                       q_std))
                else:
                    extra -= float(gaussian_log_prob(beta[i], tau)
                                   - gaussian_log_prob(beta[i], q_std))
                    mask[i] = False
                    beta[i] = 0.0
        saved["extra"] = extra

    def revert(kind, picks):
        with torch.no_grad():
            beta.copy_(saved["b"])
        for i in picks:
            mask[i] = kind == "death"

    def delta(kind, picks):
        return log_target() - saved["ll"] + saved["extra"]

    xtx, xty = x.T @ x / noise ** 2, x.T @ y / noise ** 2
    iters, inner = ITERS, 3
    trace_m = torch.zeros(iters, p)
    trace_b = torch.zeros(iters, p, dtype=torch.float64)
    for t in range(iters):
        for _ in range(inner):      # the gradient of U written out (autograd is slow here)
            b = beta.detach() * mask
            beta.grad = (xtx @ b - xty + b / tau ** 2) * mask
            opt.step()
        info = bd.move(alive, apply, revert, delta, None, g)
        if info["accepted"]:
            where = torch.zeros(p, dtype=torch.bool)
            where[info["picks"]] = True
            if info["kind"] == "birth":
                opt.refresh_momentum(beta, where)
            else:
                opt.clear_momentum(beta, where)
        assert torch.equal(alive, mask) and (beta.detach()[~mask] == 0).all()
        trace_m[t] = alive.double()
        trace_b[t] = beta.detach()
    burn = 1000
    tm, tb = trace_m[burn:], trace_b[burn:]
    got_pip, got_mean = tm.double().mean(0), tb.mean(0)
    se_pip, se_mean = batch_means_se(tm), batch_means_se(tb)
    assert ((got_pip - pip).abs() < 4.5 * se_pip + 0.01).all(), (got_pip, pip, se_pip)
    assert ((got_mean - post_mean).abs() < 4.5 * se_mean + 0.01).all(), (got_mean, post_mean)


# -- the protocol end to end ---------------------------------------------------------------------
def _run(name, steps_per_epoch=15, epochs=2, batch=8, **extra):
    torch.manual_seed(0)
    cfg = TrainConfig(method=name, model="mlp", width=1 / 16,
                      density=0.3 if name == "aeb" else 1.0,   # mBNN has no target density
                      epochs=epochs, batch_size=batch, extra=extra)
    method = get_method(name, cfg)
    model = method.build_model("mlp", 10, cfg.width, cfg)
    opt = method.make_optimizer(model, cfg)
    n_train = steps_per_epoch * batch
    x_all = torch.randn(n_train, 3, 32, 32)
    y_all = torch.randint(0, 10, (n_train,))
    step = 0
    for epoch in range(1, epochs + 1):
        for i in range(steps_per_epoch):
            x, y = x_all[i * batch:(i + 1) * batch], y_all[i * batch:(i + 1) * batch]
            opt.zero_grad()
            loss = method.loss(model, model(x), y, n_train, step, epoch)
            assert torch.isfinite(loss)
            loss.backward()
            opt.step()
            method.after_step(model, step, epoch, (x, y))
            step += 1
    return method, model, opt, n_train, x_all[:16]


def test_aeb_end_to_end():
    method, model, opt, n_train, x = _run("aeb")
    probs = method.predict(model, x, 5)
    assert probs.shape == (16, 10)
    torch.testing.assert_close(probs.sum(1), torch.ones(16))
    assert len(method.samples.samples) == 5
    masks = method.masks(model)
    layers = dict((n, l) for n, l in __import__("ssvi.layers", fromlist=["x"]).bayes_layers(model))
    names = list(layers)
    assert masks[names[0]].all()                                    # the stem stays dense
    for n in names[1:]:
        m = masks[n]
        assert int(m.sum()) == max(1, round(m.numel() * 0.3))        # measured, = target here
        assert (layers[n].mu[~m] == 0).all()
        assert (opt.state[layers[n].mu]["momentum"][~m] == 0).all()
    stats = mask_stats(masks)
    assert stats["active_weights"] == sum(int(m.sum()) for m in masks.values())
    fl = method.training_flops(model, n_train, 2, 8)
    assert fl["training_flops"] < fl["dense_training_flops"] and "formula" in fl
    # checkpoint round trip of the method state
    state = method.state_dict()
    other = get_method("aeb", method.cfg)
    other.load_state_dict(state)
    torch.testing.assert_close(other.predict(model, x, 5), probs)


def test_mbnn_end_to_end():
    method, model, opt, n_train, x = _run("mbnn", mbnn_update_period=2)
    assert method.moves == 15
    probs = method.predict(model, x, 5)
    assert probs.shape == (16, 10)
    torch.testing.assert_close(probs.sum(1), torch.ones(16))
    gates = method.gates
    for name, layer in gates.layers.items():
        rows = layer.mask.flatten(1)
        assert (rows.all(1) | ~rows.any(1)).all()                    # whole rows: node masks
        torch.testing.assert_close(rows.all(1), gates.alive[name])
        assert (layer.mu[~layer.mask] == 0).all()
        assert gates.alive[name].sum() >= 1
    masks = method.masks(model)
    stats = mask_stats(masks)
    assert 0 < stats["density"] < 1
    fl = method.training_flops(model, n_train, 2, 8)
    assert fl["moves"] == 15 and fl["training_flops"] > 0


def test_mbnn_dead_node_outputs_zero():
    """A dead node's output is exactly zero after its gate (BN shift included)."""
    torch.manual_seed(0)
    cfg = TrainConfig(model="small_cnn", width=0.25, epochs=1, batch_size=4)
    method = get_method("mbnn", cfg)
    model = method.build_model("small_cnn", 10, cfg.width, cfg)
    gates = method.gates
    first = gates.names[0]
    bn = model.features[1]
    with torch.no_grad():
        bn.bias.fill_(1.0)
    seen = {}
    h = bn.register_forward_hook(lambda m, a, o: seen.__setitem__("o", o))
    model(torch.randn(2, 3, 32, 32))
    h.remove()
    dead = ~gates.alive[first]
    assert dead.any() and (seen["o"][:, dead] == 0).all() and (seen["o"][:, ~dead] != 0).any()


def test_aeb_release_schedule_flops_closed_form():
    """The release's schedule (1000 dense epochs, then 1000 epochs of 50 steps at sparsity
    s (1 - 0.99^(t/50))): the step sum against the geometric series
    sum_{t=1}^T r^(t/g) = r^(1/g) (1 - r^(T/g)) / (1 - r^(1/g))."""
    from ssvi.baselines.mcmc_common import forward_costs
    cfg = _ns(density=0.1)
    method = get_method("aeb", cfg)
    model = method.build_model("mlp", 10, 1 / 16, cfg)
    per, other = forward_costs(model)
    names = list(per)
    big_t, g, r, s = 50000, 50.0, 0.99, 0.9
    q = r ** (1 / g)
    dbar = 1 - s * (1 - q * (1 - r ** (big_t / g)) / (1 - q) / big_t)
    dense = sum(per.values()) + other
    sparse = per[names[0]] + dbar * sum(per[n] for n in names[1:]) + other
    expected = 3 * 50000 * (1000 * dense + 1000 * sparse)
    assert method.release_schedule_flops(model, 50000) == pytest.approx(expected, rel=1e-9)


def test_aeb_meter_matches_the_schedule():
    """The FLOPs' time-averaged densities are the masks each step ran with: for every prunable
    layer the mean over steps t of round(numel (1 - s(t - 1))) / numel, s the ramp (s = 0 before
    the sparse phase; pruning happens after a step)."""
    method, model, opt, n_train, x = _run("aeb")
    dens = method.training_flops(model, n_train, 2, 8)["mean_densities"]
    from ssvi.layers import bayes_layers
    layers = bayes_layers(model)
    assert dens[layers[0][0]] == 1.0
    for name, layer in layers[1:]:
        n = layer.mask.numel()
        want = sum(max(1, round(n * (1 - method.scheduled_sparsity(t - 1)))) / n
                   for t in range(30)) / 30
        assert dens[name] == pytest.approx(want, rel=1e-12)


def test_mbnn_effective_masks_change_no_output():
    """Zeroing every weight outside :meth:`MBNN.effective_masks` leaves the outputs unchanged
    (eval mode), and the inputs of a dead node are dropped: in SmallCNN a dead channel of the
    first conv removes that input column of the second conv; in ResNet-18 the same holds for
    a block's conv1 -> conv2."""
    torch.manual_seed(0)
    for arch, width, first, second in (("small_cnn", 0.25, "features.0", "features.3"),
                                       ("resnet18", 0.125, "layer1.0.conv1", "layer1.0.conv2")):
        cfg = TrainConfig(model=arch, width=width, epochs=1, batch_size=4)
        method = get_method("mbnn", cfg)
        model = method.build_model(arch, 10, width, cfg)
        for mod in model.modules():                       # non-trivial BatchNorm statistics
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
                mod.bias.data.uniform_(-0.5, 0.5)
        model.eval()
        x = torch.randn(4, 3, 32, 32)
        before = model(x)
        eff = method.masks(model)
        dead = ~method.gates.alive[first]
        assert dead.any()
        assert not eff[second][:, dead].any() and eff[second][:, ~dead].any()
        layers = dict(bayes_layers_of(model))
        with torch.no_grad():
            for name, m in eff.items():
                layers[name].mu.mul_(m)
        torch.testing.assert_close(model(x), before, rtol=0, atol=0)
        stats = mask_stats(eff)
        assert stats["active_weights"] < sum(int(l.mask.sum()) for l in layers.values())


def bayes_layers_of(model):
    from ssvi.layers import bayes_layers
    return bayes_layers(model)
