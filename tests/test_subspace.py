"""The sparse subspace controller (Algorithm 1, paper Section 3.2-3.3) checked by invariants.

The long tests alternate SGD steps (momentum + weight decay, two parameter groups as the trainer
builds them) and gamma-updates with a replacement fraction of up to 30% per update, and after
EVERY step and update check: exact active counts, inactive mu = rho = momentum = 0, outputs
independent of inactive values, which entries were dropped/grown (against scores recomputed
independently: removal scores from ``ssvi.criteria`` and dense gradients from a copy of the
model whose masks are all ones), and the initial values of re-grown weights (Section 3.2).
"""
import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from ssvi import criteria
from ssvi.layers import bayes_layers, bayesianize, inverse_softplus, mode
from ssvi.models import build_model
from ssvi.subspace import SubspaceController, allocate_densities, replacement_fraction



# -- fixtures -----------------------------------------------------------------------------------------
class Tiny(nn.Module):
    """conv (dense first layer) -> BN -> strided conv -> fc, on 2 x 6 x 6 inputs."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=False)
        self.fc = nn.Linear(6 * 3 * 3, 5)

    def forward(self, x):
        x = F.relu(self.bn(self.conv1(x)))
        return self.fc(F.relu(self.conv2(x)).flatten(1))


def tiny_model(bayesian=True, seed=0):
    torch.manual_seed(seed)
    net = Tiny()
    bayesianize(net, deterministic=not bayesian, mu_init_std=0.3, sigma_init=(0.05, 0.02))
    return net.double()


def make_optimizer(model, lr=0.05):
    """SGD as the trainer builds it: mu/bias/BN with weight decay, rho without."""
    rho = [l.rho for _, l in bayes_layers(model) if l.rho is not None]
    ids = {id(p) for p in rho}
    groups = [{"params": [p for p in model.parameters() if id(p) not in ids],
               "weight_decay": 5e-4}]
    if rho:
        groups.append({"params": rho, "weight_decay": 0.0})
    return torch.optim.SGD(groups, lr=lr, momentum=0.9)


class Data:
    """A fixed random classification problem; loss_fn(k) seeds draw k reproducibly."""

    def __init__(self, n=16, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 2, 6, 6, generator=g, dtype=torch.float64)
        self.y = torch.randint(0, 5, (n,), generator=g)
        self.base = 0
        self.calls = []

    def loss(self, model, k=0):
        torch.manual_seed(1000 * self.base + k)
        return F.cross_entropy(model(self.x), self.y)

    def loss_fn(self, model):
        def fn(k):
            self.calls.append((k, [l.mode for _, l in bayes_layers(model)]))
            return self.loss(model, k)
        return fn


def momentum(opt, p):
    return opt.state.get(p, {}).get("momentum_buffer")


def dense_grads(model, data, fwd_mode, draws):
    """|dL/dw| for every entry (active or not), averaged over ``draws``, computed independently:
    a copy of the model with all-ones masks and sigma = 0 on the inactive entries computes the
    same outputs, so its mu-gradient is the dense gradient w.r.t. the masked weight."""
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for _, l in bayes_layers(twin):
            if l.rho is not None:
                l.rho.masked_fill_(~l.mask, -1000.0)  # softplus(-1000) == 0 in float64
            l.mask.fill_(True)
    out = {n: torch.zeros_like(l.mu) for n, l in bayes_layers(twin)}
    for k in draws:
        twin.zero_grad()
        with mode(twin, fwd_mode):
            data.loss(twin, k).backward()
        for n, l in bayes_layers(twin):
            out[n] += l.mu.grad.abs()
    return {n: g / len(draws) for n, g in out.items()}


def check_inactive_zero(ctrl, opt):
    for name, l in ctrl.layers:
        off = ~l.mask
        assert int(l.mask.sum()) == ctrl.targets[name], name
        assert (l.mu[off] == 0).all(), f"{name}: inactive mu != 0"
        if l.rho is not None:
            assert (l.rho[off] == 0).all(), f"{name}: inactive rho != 0"
        for p in (l.mu, l.rho):
            if p is not None and momentum(opt, p) is not None:
                assert (momentum(opt, p)[off] == 0).all(), f"{name}: inactive momentum != 0"


def check_outputs_ignore_inactive(model, data, seed):
    """Random inactive mu/rho change no output in any mode (then they are restored)."""
    model.eval()
    saved = copy.deepcopy(model.state_dict())
    outs = {}
    for fwd in ("mean", "lrt", "sample"):
        torch.manual_seed(seed)
        with mode(model, fwd), torch.no_grad():
            outs[fwd] = model(data.x)
    with torch.no_grad():
        for _, l in bayes_layers(model):
            l.mu.masked_scatter_(~l.mask, torch.randn_like(l.mu)[~l.mask])
            if l.rho is not None:
                l.rho.masked_scatter_(~l.mask, torch.randn_like(l.rho)[~l.mask])
    for fwd, ref in outs.items():
        torch.manual_seed(seed)
        with mode(model, fwd), torch.no_grad():
            assert torch.equal(model(data.x), ref), f"inactive values changed the {fwd} output"
    model.load_state_dict(saved)
    model.train()


# -- the long invariant runs ------------------------------------------------------------------------------
RUNS = {
    "ssvi": dict(bayesian=True, removal="snr_abs", addition="mc1", regrow_sigma="mean"),
    "ssvi_mck_const": dict(bayesian=True, removal="e_exp_abs", addition="mck",
                           regrow_sigma="const"),
    "rigl": dict(bayesian=False, removal="abs_mu", addition="mean", regrow_sigma="mean"),
}


@pytest.mark.parametrize("run", list(RUNS))
def test_invariants_over_many_updates(run):
    spec = RUNS[run]
    n_updates = 150 if run == "ssvi" else 60
    model = tiny_model(spec["bayesian"])
    opt = make_optimizer(model)
    t_end = 2 * n_updates  # r_t sweeps from alpha = 0.3 down to ~alpha/2
    ctrl = SubspaceController(model, 0.2, removal=spec["removal"], addition=spec["addition"],
                              addition_k=2, regrow_sigma=spec["regrow_sigma"],
                              regrow_sigma_const=1e-3, update_every=1, t_end=t_end, alpha=0.3,
                              optimizer=opt, seed=3)
    data = Data()
    fwd_mode = "mean" if spec["addition"] == "mean" else "lrt"
    draws = range(2) if spec["addition"] == "mck" else range(1)
    names = [n for n, _ in ctrl.layers]
    assert ctrl.targets[names[0]] == ctrl.layers[0][1].mu.numel()  # first layer dense
    assert [n for n, _ in ctrl.sparse_layers] == names[1:]
    for n, l in ctrl.sparse_layers:
        assert ctrl.targets[n] == round(0.2 * l.mu.numel())
    check_inactive_zero(ctrl, opt)
    total_replaced = 0
    for step in range(1, n_updates + 1):
        # -- an optimizer step never revives a pruned weight ---------------------------------------
        masks = {n: l.mask.clone() for n, l in ctrl.layers}
        data.base = 2 * step
        opt.zero_grad()
        data.loss(model).backward()
        opt.step()
        assert all(torch.equal(masks[n], l.mask) for n, l in ctrl.layers)
        check_inactive_zero(ctrl, opt)
        # -- what the update must do, computed independently -----------------------------------------
        data.base = 2 * step + 1
        before = {n: (l.mask.clone(), l.mu.detach().clone(),
                      None if l.rho is None else l.rho.detach().clone(),
                      None if l.rho is None else l.sigma.detach().clone(),
                      momentum(opt, l.mu).clone())
                  for n, l in ctrl.layers}
        grads = dense_grads(model, data, fwd_mode, draws)
        r = 0.5 * 0.3 * (1 + math.cos(math.pi * step / t_end))
        assert math.isclose(replacement_fraction(step, t_end, 0.3), r, rel_tol=1e-12)
        stats = ctrl.update(step, data.loss_fn(model))
        check_inactive_zero(ctrl, opt)
        replaced = 0
        for name, l in ctrl.sparse_layers:
            old, mu0, rho0, sig0, mom0 = before[name]
            new = l.mask
            n_prune = math.floor(ctrl.targets[name] * r)
            assert n_prune > 0
            # removal: the n_prune active entries with the lowest score (ties: lowest index)
            score = criteria.removal_score(spec["removal"], mu0, sig0).flatten()
            act = old.flatten().nonzero().squeeze(1)
            order = act[torch.sort(score[act], stable=True).indices]
            drop = torch.zeros_like(old.flatten())
            drop[order[:n_prune]] = True
            drop = drop.view_as(old)
            kept = old & ~drop
            assert score.view_as(old)[drop].max() <= score.view_as(old)[kept].min()
            # addition: n_prune entries not kept, with the largest |grad| (eq. 9)
            grown = new & ~kept
            assert int(grown.sum()) == n_prune and (kept & ~new).sum() == 0
            cand = ~kept
            g = grads[name]
            if (cand & ~grown).any():
                assert g[grown].min() >= g[cand & ~grown].max() - 1e-12 * g.abs().max()
            born, died, regrown = new & ~old, old & ~new, drop & new
            replaced += int(born.sum())
            # values: kept and re-grown-after-drop keep theirs, born start at mu = 0, sigma0
            same = kept | regrown
            assert torch.equal(l.mu.detach()[same], mu0[same])
            assert torch.equal(momentum(opt, l.mu)[same], mom0[same])
            assert (l.mu[born] == 0).all() and (momentum(opt, l.mu)[born] == 0).all()
            if l.rho is not None:
                assert torch.equal(l.rho.detach()[same], rho0[same])
                want = sig0[kept].mean().item() if spec["regrow_sigma"] == "mean" else 1e-3
                if born.any():
                    torch.testing.assert_close(l.sigma.detach()[born],
                                               torch.full_like(l.sigma[born], want),
                                               rtol=1e-9, atol=0)
                    assert math.isclose(stats["regrown_sigma"][name], want, rel_tol=1e-9)
                    assert (momentum(opt, l.rho)[born] == 0).all()
            assert int(died.sum()) == int(born.sum())
        assert stats["replaced"] == replaced
        total_replaced += replaced
        if step % 25 == 0:
            check_outputs_ignore_inactive(model, data, seed=step)
    assert total_replaced > 0 and ctrl.n_updates == n_updates
    # at and after T_end nothing changes
    masks = {n: l.mask.clone() for n, l in ctrl.layers}
    for step in (t_end, t_end + 5):
        stats = ctrl.update(step, data.loss_fn(model))
        assert stats["r"] == 0.0 and stats["replaced"] == 0
    assert all(torch.equal(masks[n], l.mask) for n, l in ctrl.layers)


# -- one update on a layer with known values -------------------------------------------------------------
def known_layer(regrow_sigma="mean"):
    """One BayesLinear(4, 5) (20 weights, target 10), whose addition gradient is a known matrix."""
    net = nn.Sequential(nn.Linear(4, 5, bias=False))
    bayesianize(net)
    net.double()
    opt = make_optimizer(net)
    ctrl = SubspaceController(net, 0.5, first_layer_dense=False, removal="snr_abs",
                              addition="mean", regrow_sigma=regrow_sigma, regrow_sigma_const=1e-6,
                              update_every=1, t_end=100, alpha=0.3, optimizer=opt)
    layer = net[0]
    # flat index: 0..19; active = even indices. a = |mu|/sigma decides snr_abs.
    active = torch.zeros(20, dtype=torch.bool)
    active[::2] = True
    mu = torch.zeros(20, dtype=torch.float64)
    sigma = torch.full((20,), 0.1, dtype=torch.float64)
    mu[::2] = torch.tensor([0.5, 0.01, 0.9, 0.02, 0.7, 0.6, 0.03, 0.8, 0.4, 0.3], dtype=torch.float64)
    sigma[::2] = torch.tensor([0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 5.0, 0.1], dtype=torch.float64)
    # a = 5, 0.1, 9, 0.2, 7, 6, 0.3, 8, 0.08, 3  -> lowest three: index 16 (a=0.08, the large |mu|
    # with a huge sigma), 2 (0.1), 6 (0.2); |mu| alone would drop 2, 6 and 12 instead.
    with torch.no_grad():
        layer.mask.copy_(active.view(5, 4))
        layer.mu.copy_(mu.view(5, 4))
        layer.rho.copy_(torch.where(active, inverse_softplus(sigma), torch.zeros(20, dtype=torch.float64)).view(5, 4))
    # dL/dw = C: largest on 6 (a dropped weight: re-grown, keeps its values), then 9 and 13
    # (inactive: born), then 0 (active and kept: not a candidate), the rest small.
    c = torch.full((20,), 0.01, dtype=torch.float64)
    c[6], c[9], c[13], c[0], c[17] = -3.0, 2.0, -1.5, 10.0, 1.0
    c = c.view(5, 4)
    x = torch.eye(4, dtype=torch.float64)

    def loss_fn(k):
        return (net(x) * c.T).sum()  # y = x w^T = w^T, so dL/dw = c

    return net, layer, opt, ctrl, loss_fn


@pytest.mark.parametrize("regrow_sigma", ["mean", "mean_rho", "const"])
def test_update_drops_lowest_scores_and_grows_largest_gradients(regrow_sigma):
    net, layer, opt, ctrl, loss_fn = known_layer(regrow_sigma)
    assert ctrl.targets == {"0": 10}
    # one SGD step creates the momentum buffers; then restore the known values and set the
    # momentum to 1 on active entries (0 on inactive ones)
    opt.zero_grad()
    loss_fn(0).backward()
    opt.step()
    _, layer2, _, _, _ = known_layer(regrow_sigma)
    with torch.no_grad():
        layer.mu.copy_(layer2.mu)
        layer.rho.copy_(layer2.rho)
        for p in (layer.mu, layer.rho):
            momentum(opt, p).copy_(layer.mask.double())
    mu0, rho0 = layer.mu.detach().clone().flatten(), layer.rho.detach().clone().flatten()
    stats = ctrl.update(0, loss_fn)  # r_0 = alpha = 0.3 -> floor(10 * 0.3) = 3
    assert stats["r"] == pytest.approx(0.3)
    new = layer.mask.flatten()
    expect = torch.zeros(20, dtype=torch.bool)
    expect[::2] = True
    expect[[16, 2]] = False          # dropped and not re-grown
    expect[[9, 13]] = True           # born
    assert torch.equal(new, expect), new.nonzero().flatten().tolist()
    assert stats["replaced"] == 2
    mu, rho = layer.mu.detach().flatten(), layer.rho.detach().flatten()
    sigma = F.softplus(rho)
    # index 6 was dropped and re-grown: it keeps mu, rho and momentum (as the release does)
    assert mu[6] == mu0[6] and rho[6] == rho0[6]
    assert momentum(opt, layer.mu).flatten()[6] == 1 and momentum(opt, layer.rho).flatten()[6] == 1
    # born: mu = 0, sigma = mean sigma over the kept active entries (not 6, 2, 16), momentum 0
    kept = [0, 4, 8, 10, 12, 14, 18]
    want = {"mean": F.softplus(rho0[kept]).mean().item(),
            "mean_rho": F.softplus(rho0[kept].mean()).item(), "const": 1e-6}[regrow_sigma]
    for i in (9, 13):
        assert mu[i] == 0 and math.isclose(sigma[i].item(), want, rel_tol=1e-9)
        assert momentum(opt, layer.mu).flatten()[i] == 0
        assert momentum(opt, layer.rho).flatten()[i] == 0
    # died: mu = rho = momentum = 0
    for i in (2, 16):
        assert mu[i] == 0 and rho[i] == 0
        assert momentum(opt, layer.mu).flatten()[i] == 0 and momentum(opt, layer.rho).flatten()[i] == 0
    # kept: untouched
    assert torch.equal(mu[kept], mu0[kept]) and torch.equal(rho[kept], rho0[kept])


def test_prune_never_selects_inactive_entries_even_with_infinite_scores():
    """sigma underflowing to 0 (rho < ~-104 in float32) makes SNR-type scores +inf. The active
    count must still stay exact: an inactive entry (score +inf by the masking) must never be
    counted as one of the n_prune removals."""
    net, layer, opt, ctrl, loss_fn = known_layer()
    with torch.no_grad():
        layer.rho.masked_fill_(layer.mask, -1000.0)  # sigma == 0 exactly -> snr_abs = +inf
    assert torch.isinf(ctrl.removal_scores(layer)[layer.mask]).all()
    ctrl.update(0, loss_fn)
    assert ctrl.active_counts() == {"0": 10}


def test_replacement_fraction_is_the_cosine_schedule():
    a = 0.3
    assert replacement_fraction(0, 900, a) == pytest.approx(a)
    assert replacement_fraction(300, 900, a) == pytest.approx(0.75 * a)   # cos(pi/3) = 1/2
    assert replacement_fraction(450, 900, a) == pytest.approx(0.5 * a)
    assert replacement_fraction(600, 900, a) == pytest.approx(0.25 * a)
    assert replacement_fraction(900, 900, a) == 0.0
    assert replacement_fraction(5000, 900, a) == 0.0
    assert replacement_fraction(10, 0, a) == 0.0
    ctrl = SubspaceController(tiny_model(), 0.2, update_every=100, t_end=1000)
    assert [s for s in range(0, 1201, 50) if ctrl.is_update_step(s)] == list(range(100, 1000, 100))


# -- the addition criteria (eq. 9) ------------------------------------------------------------------------
@pytest.mark.parametrize("addition,fwd,draws", [("mean", "mean", [0]), ("mc1", "lrt", [0]),
                                                ("mck", "lrt", [0, 1, 2])])
def test_addition_scores_are_the_dense_gradients_of_eq9(addition, fwd, draws):
    model = tiny_model()
    ctrl = SubspaceController(model, 0.3, addition=addition, addition_k=3, t_end=10)
    data = Data(seed=1)
    data.base = 7
    want = dense_grads(model, data, fwd, draws)
    got = ctrl.addition_scores(data.loss_fn(model))
    assert [k for k, _ in data.calls] == draws
    assert all(set(modes) == {fwd} for _, modes in data.calls)
    assert set(got) == {n for n, _ in ctrl.sparse_layers}
    for n, g in got.items():
        assert g.dtype == torch.float64
        torch.testing.assert_close(g, want[n], rtol=1e-10, atol=1e-14)
        l = dict(ctrl.layers)[n]
        assert g[~l.mask].abs().sum() > 0  # the dense gradient: inactive entries are scored
    assert all(l.mode == "lrt" and not l.capture_grad and l.weight_for_grad is None
               for _, l in ctrl.layers)
    assert all(p.grad is None for p in model.parameters())  # .grad is not touched


# -- deterministic (RigL) layers ---------------------------------------------------------------------------
def test_rigl_rejects_sigma_criteria():
    model = build_model("mlp", width=0.05, bayesian=False, masked=True)
    assert all(l.rho is None for _, l in bayes_layers(model))
    with pytest.raises(ValueError, match="abs_mu"):
        SubspaceController(model, 0.2, removal="snr_abs")
    SubspaceController(model, 0.2, removal="abs_mu", addition="mean")


# -- allocation ------------------------------------------------------------------------------------------------
def shapes_model():
    return bayesianize(nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 16, 3), nn.Conv2d(16, 32, 1),
                                     nn.Conv2d(32, 32, 3), nn.Flatten(), nn.Linear(128, 10),
                                     nn.Linear(2, 2)))


@pytest.mark.parametrize("density", [0.05, 0.1, 0.3])
@pytest.mark.parametrize("first_dense", [False, True])
def test_erk_allocation(density, first_dense):
    layers = bayes_layers(shapes_model())
    sizes = {n: l.mu.numel() for n, l in layers}
    raw = {n: sum(l.mu.shape) / l.mu.numel() for n, l in layers}  # Erdos-Renyi-Kernel
    d = allocate_densities(layers, density, "erk", first_layer_dense=first_dense)
    total = sum(sizes.values())
    assert all(0 < v <= 1 for v in d.values())
    assert math.isclose(sum(d[n] * sizes[n] for n in d), density * total, rel_tol=1e-9)
    names = list(d)
    if first_dense:
        assert d[names[0]] == 1.0
    free = [n for n in names if d[n] < 1.0]
    assert free
    ratio = [d[n] / raw[n] for n in free]
    assert max(ratio) == pytest.approx(min(ratio), rel=1e-9)  # density proportional to ERK score
    capped = [n for n in names if d[n] == 1.0 and not (first_dense and n == names[0])]
    assert all(raw[c] >= max(raw[n] for n in free) for c in capped)
    for a in names:  # larger, denser-shaped tensors get lower density
        for b in names:
            if raw[a] > raw[b] and not (first_dense and names[0] in (a, b)):
                assert d[a] >= d[b]
    # the controller's integer targets hit the budget within one weight per layer
    ctrl = SubspaceController(shapes_model(), density, allocation="erk",
                              first_layer_dense=first_dense)
    assert abs(sum(ctrl.targets.values()) - density * total) <= len(layers)
    assert ctrl.active_counts() == ctrl.targets


def test_uniform_allocation_is_exact_per_tensor():
    model = shapes_model()
    ctrl = SubspaceController(model, 0.1, allocation="uniform", first_layer_dense=False)
    for n, l in ctrl.layers:
        assert ctrl.densities[n] == 0.1
        assert int(l.mask.sum()) == ctrl.targets[n] == max(1, round(0.1 * l.mu.numel()))
    ctrl = SubspaceController(shapes_model(), 0.1)
    first = ctrl.layers[0]
    assert ctrl.densities[first[0]] == 1.0 and bool(first[1].mask.all())


# -- bad input --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("density", [0.0, 1.5, float("nan"), -0.1])
def test_bad_density(density):
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        SubspaceController(tiny_model(), density)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        allocate_densities(bayes_layers(tiny_model()), density)


@pytest.mark.parametrize("kw,names", [
    (dict(removal="magnitude"), criteria.REMOVAL_CRITERIA),
    (dict(addition="grad"), ("mc1", "mean", "mck")),
    (dict(allocation="random"), ("uniform", "erk")),
    (dict(regrow_sigma="zero"), ("mean", "mean_rho", "const")),
])
def test_unknown_names_list_the_allowed_ones(kw, names):
    with pytest.raises(ValueError) as err:
        SubspaceController(tiny_model(), 0.2, **kw)
    assert all(n in str(err.value) for n in names), str(err.value)


def test_model_without_ssvi_layers():
    with pytest.raises(ValueError, match="bayesianize"):
        SubspaceController(nn.Sequential(nn.Linear(2, 2)), 0.5)


# -- checkpointing ----------------------------------------------------------------------------------------------
def test_state_dict_round_trip():
    model = tiny_model()
    data = Data()
    ctrl = SubspaceController(model, 0.2, update_every=1, t_end=50, removal="snr", lam=2.0)
    for step in range(1, 4):
        ctrl.update(step, data.loss_fn(model))
    state = copy.deepcopy(ctrl.state_dict())
    other = SubspaceController(tiny_model(seed=1), 0.2)
    other.load_state_dict(state)
    assert other.state_dict() == ctrl.state_dict()
    assert other.n_updates == 3 and other.removal == "snr" and other.lam == 2.0
    with pytest.raises(ValueError, match="cannot resume"):
        SubspaceController(tiny_model(), 0.3).load_state_dict(state)
    with pytest.raises(ValueError, match="cannot resume"):
        SubspaceController(build_model("mlp", width=0.05), 0.2).load_state_dict(state)


@pytest.mark.parametrize("alpha", [5.0, -1.0, 1.0 + 1e-9, float("nan"), float("inf")])
def test_alpha_outside_the_unit_interval_is_refused(alpha):
    """alpha > 1 would replace more than every active weight (layers turn dense); < 0 or NaN
    is meaningless. The masks are left untouched."""
    model = tiny_model()
    before = [l.mask.clone() for _, l in bayes_layers(model)]
    with pytest.raises(ValueError, match=r"alpha=.* must be in \[0, 1\]"):
        SubspaceController(model, 0.2, alpha=alpha)
    assert all(torch.equal(b, l.mask) for b, (_, l) in zip(before, bayes_layers(model)))
    for ok in (0.0, 1.0):
        SubspaceController(tiny_model(), 0.2, alpha=ok)


def test_a_second_controller_on_the_same_model_is_refused():
    """A second controller would silently redraw the masks under the first one."""
    model = tiny_model()
    first = SubspaceController(model, 0.2, seed=0)
    masks = [l.mask.clone() for _, l in bayes_layers(model)]
    with pytest.raises(ValueError, match="already belongs to another SubspaceController"):
        SubspaceController(model, 0.2, seed=1)
    assert all(torch.equal(m, l.mask) for m, (_, l) in zip(masks, bayes_layers(model)))
    # a copy of the model has its own layers; a released model may get a new controller
    SubspaceController(copy.deepcopy(model), 0.2, seed=1)
    first.release()
    second = SubspaceController(model, 0.2, seed=1)
    assert any(not torch.equal(m, l.mask) for m, (_, l) in zip(masks, bayes_layers(model)))
    del first, second
    SubspaceController(model, 0.2)   # the old controllers are gone: nothing holds the layers


def test_non_finite_loss_error_is_a_divergence_error():
    from ssvi.errors import DivergenceError, SSVIError
    from ssvi.subspace import NonFiniteLossError
    assert issubclass(NonFiniteLossError, DivergenceError)
    assert issubclass(NonFiniteLossError, SSVIError)


@pytest.mark.parametrize("tau", [0.5, 1.0, 1.3])
def test_regrow_mean_rho_is_softplus_of_mean_rho_and_smaller_by_the_jensen_gap(tau):
    """Active sigma = s e^{+tau} and s e^{-tau} (half each), s small: the paper's mean sigma is
    s cosh(tau); the release's softplus(mean rho) is close to the geometric mean s, so their ratio
    is cosh(tau) (1.13, 1.54, 1.97 here) up to O(s)."""
    from ssvi.subspace import regrow_sigma_ratio
    s = 1e-4
    net = nn.Sequential(nn.Linear(8, 4, bias=False))
    bayesianize(net)
    net.double()
    ctrl = SubspaceController(net, 0.5, first_layer_dense=False, regrow_sigma="mean_rho")
    layer = net[0]
    active = layer.mask.flatten()
    n = int(active.sum())
    sig = torch.zeros(32, dtype=torch.float64)
    sig[active] = torch.tensor([s * math.exp(tau if i % 2 else -tau) for i in range(n)],
                               dtype=torch.float64)
    with torch.no_grad():
        layer.rho.copy_(torch.where(active, inverse_softplus(sig.clamp_min(1e-30)),
                                    torch.zeros_like(sig)).view(4, 8))
    kept = layer.mask.clone()
    rho = layer.rho.detach()[kept]
    got = {}
    for how in ("mean", "mean_rho"):
        ctrl.regrow_sigma = how
        got[how] = F.softplus(ctrl._regrow_rho(layer, kept)).item()
    assert got["mean_rho"] == pytest.approx(F.softplus(rho.mean()).item(), rel=1e-12)
    assert got["mean"] == pytest.approx(F.softplus(rho).mean().item(), rel=1e-12)
    assert got["mean_rho"] < got["mean"]
    assert got["mean"] / got["mean_rho"] == pytest.approx(math.cosh(tau), rel=10 * s)
    assert regrow_sigma_ratio(net)["0"] == pytest.approx(got["mean"] / got["mean_rho"], rel=1e-12)
