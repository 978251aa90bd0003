"""mBNN: masked Bayesian neural network (Kong, Yang, Lee, Ohn, Baek and Kim, ICML 2023).

The model (paper Section 3; defaults from the authors' release ``MBNN/image.py``,
``MBNN/Mask_Update.py``, ``MBNN/MCMC.py``, CIFAR ResNet-18):

* Node masks. Every hidden node (output channel of a conv, output unit of a hidden linear layer)
  l, i has a mask m_li in {0, 1}; a dead node outputs exactly 0. The classifier's outputs are
  never masked.
* Hierarchical sparse prior on the masks: with s_l = |m_l| the active nodes of layer l out of M_l,
      pi(m_l) proportional to exp(-(lam log n)^5 s_l^2) / binom(M_l, s_l),   s_l >= 1,
  i.e. a prior on the count and a uniform choice of which nodes (lam = 0.05, n = N_train).
  Weights of active nodes: Cauchy(0, 0.1) (release ``--prior Cauchy --prior_scale 0.1``), also
  on biases; BatchNorm parameters: flat.
* Weights: SGLD (:class:`.sghmc.SGHMC` with friction 1) on U = -log p(D | theta, m) - log
  pi(theta), step 1e-3 / batch 100 = 1e-5 on U (= 1e-5 N on the mean loss: 0.5 at N = 50000),
  cosine-annealed to 1/100 over the burn-in (the first half of training), then constant;
  temperature 1 / N (release ``--temperature (1/50000)**.5`` on the noise std).
* Masks: every 10 steps one Metropolis-Hastings birth-and-death move: death or birth with
  probability 1/2, k ~ Uniform{1, ..., N_max = 3} nodes drawn without replacement from the alive
  (death) or dead (birth) nodes; births uniformly, deaths with probability proportional to
  exp(-|d log p / d m_i| / 2) (the release's "proposed" death, gradient of the minibatch log
  likelihood, scaled to N, with respect to a relaxed mask at its current value). Acceptance:
      min(1, pi(m') p(D | theta', m') pi_w(new) q_rev / (pi(m) p(D | theta, m) pi_w(old) q_fwd)),
  q the probability of drawing that set of nodes (summed over draw orders) times, for a birth,
  the density of the new weights (below). Likelihoods on the current minibatch scaled to N
  (release), at temperature ``mh_temperature`` = 1 (release).
* Prediction: the mean softmax of K = 5 samples, one every 20 epochs after a 100-epoch burn-in
  of a 200-epoch run (release), i.e. evenly spaced over the second half of training.

Our choices where the release differs from this protocol or the paper is silent:

* Dead weights are exactly zero and carry no state. The release keeps the weights of dead nodes
  and lets them drift under the prior; a birth then revives them. We treat them as auxiliary
  variables and draw them afresh at birth from q = N(0, 2 / fan_in) (the layer's initial
  distribution), which puts pi_w(new) / q(new) into the birth acceptance and its inverse into
  the death acceptance (reversible jump, Green 1995): the move satisfies detailed balance for
  the joint (m, active weights) target exactly (tests/test_baselines_mcmc.py checks it).
* The same network as SSVI, not the release's 5/4-wide one; 4/5 of each layer's nodes start
  alive (the release's ratio), the last 1/5 dead.
* A dead node's gate sits on its BatchNorm's output when a BatchNorm reads the layer's output,
  else on the layer's output (so the BN shift cannot revive it); extra forward passes for the
  move run with BatchNorm running statistics frozen.
* mBNN has no target sparsity: the posterior sets it. ``cfg.density`` is ignored; the achieved
  sparsity is measured.

Sparsity: from the final masks (:meth:`MBNN.masks`, the last stored sample's): a weight is
active iff its output node is alive and its input channel is structurally reachable (a probe
pass, :meth:`MBNN.effective_masks`), as Kong et al. count a dead node's outgoing weights as
removed too; zeroing the other weights changes no output (tested). Training FLOPs: every
step at the density of its effective masks (:mod:`.mcmc_common`), plus each birth-death
move's two extra forward passes and one backward pass (4 x forward of one batch at the row-mask
density, an upper bound).
"""
from __future__ import annotations

import contextlib
import itertools
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers import bayes_layers
from ..models import build_model
from .base import Method, flops_dict
from .mcmc_common import DensityMeter, PosteriorSamples, forward_costs, mcmc_training_flops
from .sghmc import SGHMC


# -- the mask prior and the birth-death kernel (pure functions, tested exactly) --------------------
def log_count_prior(s: int, m: int, lam: float, n: int) -> float:
    """log pi(m_l) up to a constant: -(lam log n)^5 s^2 - log binom(M, s) (-inf for s < 1)."""
    if s < 1 or s > m:
        return -math.inf
    return -(lam * math.log(n)) ** 5 * s * s - (math.lgamma(m + 1) - math.lgamma(s + 1)
                                                - math.lgamma(m - s + 1))


def selection_log_prob(probs: torch.Tensor, picks) -> float:
    """log P(the unordered set ``picks`` is drawn without replacement with weights ``probs``):
    log sum over the orders of prod_j p_(j) / (sum of the weights not yet drawn)."""
    probs = probs.double()
    picks = [int(i) for i in picks]
    total = float(probs.sum())
    out = []
    for order in itertools.permutations(picks):
        left, logp = total, 0.0
        for i in order:
            pi = float(probs[i])
            if pi <= 0 or left <= 0:
                logp = -math.inf
                break
            logp += math.log(pi) - math.log(left)
            left -= pi
        out.append(logp)
    return float(torch.logsumexp(torch.tensor(out, dtype=torch.float64), 0))


class BirthDeath:
    """The birth-and-death proposal over nodes grouped in layers of ``sizes`` (flat indexing),
    with the mBNN mask prior (or ``log_mask_prior(alive) -> float`` given instead)."""

    def __init__(self, sizes, n_data: int, lam: float = 0.05, n_max: int = 3,
                 death: str = "grad", log_mask_prior=None):
        if death not in ("grad", "uniform"):
            raise ValueError(f"mbnn: death proposal {death!r}; choose 'grad' or 'uniform'")
        if int(n_max) < 1:
            raise ValueError(f"mbnn: n_max={n_max!r} must be >= 1")
        self.sizes = [int(s) for s in sizes]
        self.bounds = [0, *itertools.accumulate(self.sizes)]
        self.n_data, self.lam, self.n_max, self.death = int(n_data), float(lam), int(n_max), death
        self._custom_prior = log_mask_prior

    def counts(self, alive: torch.Tensor) -> list[int]:
        return [int(alive[a:b].sum()) for a, b in zip(self.bounds[:-1], self.bounds[1:])]

    def log_prior(self, alive: torch.Tensor) -> float:
        """log pi(m): the sum over layers of :func:`log_count_prior` (or the custom prior)."""
        if self._custom_prior is not None:
            return float(self._custom_prior(alive))
        return sum(log_count_prior(s, m, self.lam, self.n_data)
                   for s, m in zip(self.counts(alive), self.sizes))

    def proposal_probs(self, kind: str, alive: torch.Tensor, grads=None) -> torch.Tensor:
        """Selection weights (normalised) of the candidates: dead nodes uniformly (birth);
        alive nodes uniformly or proportional to exp(-|grad| / 2) (death)."""
        cand = alive if kind == "death" else ~alive
        if kind == "death" and self.death == "grad":
            if grads is None:
                raise ValueError("mbnn: a gradient-informed death needs the mask gradients")
            logits = torch.where(cand, -grads.double().abs() / 2.0,
                                 torch.full_like(grads, -math.inf, dtype=torch.float64))
            return torch.softmax(logits, 0)
        w = cand.double()
        return w / w.sum()

    def log_acceptance(self, kind: str, alive: torch.Tensor, new: torch.Tensor, picks,
                       delta_log_target: float, grads_old=None, grads_new=None) -> float:
        """log of the MH ratio: [log pi(m') - log pi(m)] + delta_log_target + log q(m' -> m)
        - log q(m -> m'); the move-type and k probabilities (1/2, 1/N_max) cancel."""
        if any(s < 1 for s in self.counts(new)):
            return -math.inf
        rev = "birth" if kind == "death" else "death"
        log_q_fwd = selection_log_prob(self.proposal_probs(kind, alive, grads_old), picks)
        log_q_rev = selection_log_prob(self.proposal_probs(rev, new, grads_new), picks)
        return (self.log_prior(new) - self.log_prior(alive) + delta_log_target
                + log_q_rev - log_q_fwd)

    def move(self, alive: torch.Tensor, apply, revert, delta_log_target, mask_grads=None,
             generator=None) -> dict:
        """One MH birth-or-death move on the flat bool ``alive`` (changed in place if accepted).

        ``mask_grads(alive) -> Tensor`` gives d log p / d m at a state (for "grad" deaths);
        ``apply(kind, picks)`` changes the model to the proposed state, ``delta_log_target(kind,
        picks)`` returns log target(new) - log target(old) of everything but the mask prior
        (for a birth including log pi_w(new weights) - log q(new weights), for a death their
        inverse), ``revert(kind, picks)`` undoes ``apply``.
        """
        u = torch.rand((), generator=generator).item()
        kind = "death" if u < 0.5 else "birth"
        k = int(torch.randint(1, self.n_max + 1, (), generator=generator))
        cand = alive if kind == "death" else ~alive
        if int(cand.sum()) < k:
            return {"kind": kind, "k": k, "accepted": False, "log_accept": -math.inf}
        need_grad = self.death == "grad"
        g_old = mask_grads(alive) if (need_grad and kind == "death") else None
        probs = self.proposal_probs(kind, alive, g_old)
        picks = torch.multinomial(probs, k, replacement=False, generator=generator).tolist()
        new = alive.clone()
        new[picks] = kind == "birth"
        if any(s < 1 for s in self.counts(new)):
            return {"kind": kind, "k": k, "accepted": False, "log_accept": -math.inf}
        apply(kind, picks)
        g_new = mask_grads(new) if (need_grad and kind == "birth") else None
        dlt = float(delta_log_target(kind, picks))
        log_a = self.log_acceptance(kind, alive, new, picks, dlt, g_old, g_new)
        accepted = math.log(max(torch.rand((), generator=generator).item(), 1e-300)) < log_a
        if accepted:
            alive.copy_(new)
        else:
            revert(kind, picks)
        return {"kind": kind, "k": k, "accepted": bool(accepted), "log_accept": log_a,
                "picks": picks}


def cauchy_log_prob(w: torch.Tensor, scale: float) -> torch.Tensor:
    """Elementwise log Cauchy(w; 0, scale) = -log(pi scale (1 + (w / scale)^2))."""
    return -math.log(math.pi * scale) - torch.log1p((w / scale).square())


def gaussian_log_prob(w: torch.Tensor, std: float) -> torch.Tensor:
    """Elementwise log N(w; 0, std^2)."""
    return -0.5 * math.log(2.0 * math.pi * std * std) - w.square() / (2.0 * std * std)


# -- node gates on a network -----------------------------------------------------------------------
class NodeGates:
    """Per-node 0/1 gates of the hidden masked layers of ``model`` (module docstring).

    ``names``: the gated layers in module order; ``alive[name]``: bool (out,), the node masks;
    ``gate[name]``: the float gate used in the forward pass (= alive, or a relaxed copy that
    requires grad while :meth:`mask_gradients` runs). Rows of a dead node's weights are masked.
    """

    def __init__(self, model: nn.Module, input_shape=(2, 3, 32, 32)):
        layers = bayes_layers(model)
        self.layers = dict(layers[:-1])              # the classifier is never gated
        self.names = list(self.layers)
        consumer = self._find_batchnorms(model, input_shape)
        self.alive, self.gate, self.handles = {}, {}, []
        for name, layer in self.layers.items():
            out = layer.mu.shape[0]
            self.alive[name] = torch.ones(out, dtype=torch.bool, device=layer.mu.device)
            self.gate[name] = torch.ones(out, dtype=layer.mu.dtype, device=layer.mu.device)
            target = consumer.get(name, layer)
            self.handles.append(target.register_forward_hook(self._hook(name)))

    @staticmethod
    def _find_batchnorms(model, input_shape) -> dict[str, nn.Module]:
        """{layer name: the BatchNorm whose input is that layer's output}, by a probe pass."""
        outs, ins, handles = {}, {}, []     # outs keeps the tensors alive: ids stay unique
        for name, layer in bayes_layers(model):
            handles.append(layer.register_forward_hook(
                lambda m, a, o, name=name: outs.__setitem__(id(o), (name, o))))
        for mod in model.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                handles.append(mod.register_forward_pre_hook(
                    lambda m, a: ins.__setitem__(m, id(a[0]))))
        p = next(model.parameters())
        was = model.training
        model.eval()
        try:
            with torch.no_grad():
                model(torch.zeros(input_shape, dtype=p.dtype, device=p.device))
        finally:
            for h in handles:
                h.remove()
            model.train(was)
        return {outs[i][0]: bn for bn, i in ins.items() if i in outs}

    def _hook(self, name):
        def hook(_module, _inp, out):
            g = self.gate[name]
            if g.device != out.device or g.dtype != out.dtype:   # e.g. the FLOP counter's meta
                g = g.to(device=out.device, dtype=out.dtype)
            return out * (g.view(1, -1, 1, 1) if out.dim() == 4 else g.view(1, -1))
        return hook

    def flat_alive(self) -> torch.Tensor:
        return torch.cat([self.alive[n].cpu() for n in self.names])

    def sizes(self) -> list[int]:
        return [self.alive[n].numel() for n in self.names]

    def locate(self, flat_index: int) -> tuple[str, int]:
        for n in self.names:
            size = self.alive[n].numel()
            if flat_index < size:
                return n, flat_index
            flat_index -= size
        raise IndexError(flat_index)

    def set_node(self, name: str, i: int, on: bool) -> None:
        self.alive[name][i] = on
        self.gate[name][i] = 1.0 if on else 0.0
        layer = self.layers[name]
        layer.mask[i] = on
        if not on:
            layer.mu.data[i] = 0.0

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


@contextlib.contextmanager
def frozen_batchnorm_stats(model: nn.Module):
    """BatchNorm layers keep their running statistics (momentum 0) inside the block."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    old = [m.momentum for m in bns]
    for m in bns:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, o in zip(bns, old):
            m.momentum = o


# -- the Method ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MBNNHparams:
    lam: float = 0.05            # mask prior exp(-(lam log n)^5 s^2) (release --lamb, images)
    n_max: int = 3               # nodes per move at most (release --N_max)
    update_period: int = 10      # steps between moves (release --update_period)
    num_update: int = 1          # moves each time (release --num_update)
    death: str = "grad"          # release --death_method proposed; births are uniform (random)
    prior_scale: float = 0.1     # Cauchy(0, 0.1) weight prior (release --prior_scale)
    lr: float = 0.5              # on U / N: release 1e-3 / batch 100 = 1e-5 on U, x N = 50000
    lr_final_frac: float = 0.01  # cosine to lr / 100 over the burn-in (release eta_min)
    burn_in_frac: float = 0.5    # release 5 x 20 burn-in epochs of 10 x 20
    temperature: float | None = None  # None: 1 / N_train (release)
    mh_temperature: float = 1.0  # birth-death acceptance at T = 1 (release)
    init_node_density: float = 0.8    # release: 4/5 of the nodes alive at the start
    num_samples: int = 5         # release --num_sample
    sample_frac: float = 0.5     # samples evenly spaced over the second half (release)

    def __post_init__(self):
        if self.death not in ("grad", "uniform"):
            raise ValueError(f"mbnn_death={self.death!r}; choose 'grad' or 'uniform'")
        if not (self.lam > 0 and self.prior_scale > 0 and self.lr > 0
                and 0 < self.init_node_density <= 1 and self.update_period >= 1):
            raise ValueError("mbnn: need lam, prior_scale, lr > 0, init_node_density in (0, 1] "
                             f"and update_period >= 1; got {self.lam}, {self.prior_scale}, "
                             f"{self.lr}, {self.init_node_density}, {self.update_period}")


class MBNN(Method):
    """Masked BNN (module docstring) as a :class:`Method`."""

    name = "mbnn"
    bayesian_eval = True
    Hparams = MBNNHparams

    def __init__(self, cfg=None):
        super().__init__(cfg)
        self.epochs = int(getattr(cfg, "epochs", 1)) if cfg is not None else 1
        self.batch_size = int(getattr(cfg, "batch_size", 128)) if cfg is not None else 128
        seed = int(getattr(cfg, "seed", 0)) if cfg is not None else 0
        self.gen = torch.Generator().manual_seed(seed + 7919)
        self.samples = PosteriorSamples(self.hp.num_samples, self.hp.sample_frac)
        self.meter = DensityMeter()
        self.n_train = None
        self.gates = None
        self.bd = None
        self.opt = None
        self.moves = 0
        self.accepted = 0
        self.move_density_sum: dict[str, float] = {}
        self._eff_density = None     # per-layer effective density, recomputed when masks change

    # -- building -------------------------------------------------------------------------------
    def build_model(self, model_name, num_classes, width, cfg=None):
        """The plain network with deterministic masked layers and node gates; the last 1/5 of
        each hidden layer's nodes start dead."""
        model = build_model(model_name, num_classes, width, bayesian=False, masked=True)
        self.attach(model)
        return model

    def attach(self, model: nn.Module) -> None:
        self.gates = NodeGates(model)
        for name in self.gates.names:
            size = self.gates.alive[name].numel()
            keep = max(1, int(size * self.hp.init_node_density))
            for i in range(keep, size):
                self.gates.set_node(name, i, False)
        model._mbnn_gates = self.gates

    def _birth_std(self, name: str) -> float:
        w = self.gates.layers[name].mu
        return math.sqrt(2.0 / (w[0].numel()))

    def make_optimizer(self, model, cfg=None):
        self.opt = SGHMC(model.parameters(), lr=self.hp.lr, alpha=1.0, temperature=1.0,
                         num_data=1)
        for _, layer in bayes_layers(model):
            self.opt.set_mask(layer.mu, layer.mask)
        return self.opt

    # -- objective ------------------------------------------------------------------------------
    def neg_log_prior(self, model) -> torch.Tensor:
        """-log pi(theta) up to its constant: sum log(1 + (w / s)^2) over active weights and
        biases (Cauchy(0, s), s = prior_scale). The constant log(pi s) per weight is left out
        of the loss (no gradient); the birth-death ratio uses the full density."""
        s = self.hp.prior_scale
        terms = [(torch.log1p((l.mu / s).square()) * l.mask).sum() for _, l in bayes_layers(model)]
        terms += [torch.log1p((l.bias / s).square()).sum() for _, l in bayes_layers(model)
                  if l.bias is not None]
        return torch.stack(terms).sum()

    def lr_at(self, epoch: int) -> float:
        """Cosine from lr to lr * lr_final_frac over the burn-in epochs (stepped per epoch)."""
        burn = max(1, int(round(self.hp.burn_in_frac * self.epochs)))
        e = min(epoch - 1, burn)
        lo = self.hp.lr * self.hp.lr_final_frac
        return lo + 0.5 * (self.hp.lr - lo) * (1.0 + math.cos(math.pi * e / burn))

    def loss(self, model, logits, y, n_train, step, epoch):
        """-log posterior / N = mean CE - log pi(theta) / N; sets the SGLD lr, T, N."""
        self.n_train = int(n_train)
        if self.opt is not None:
            temp = self.hp.temperature if self.hp.temperature is not None else 1.0 / n_train
            for g in self.opt.param_groups:
                g["lr"], g["temperature"], g["num_data"] = self.lr_at(epoch), temp, self.n_train
        return F.cross_entropy(logits, y) + self.neg_log_prior(model) / self.n_train

    # -- birth and death ------------------------------------------------------------------------
    def _log_lik(self, model, x, y) -> torch.Tensor:
        return -F.cross_entropy(model(x), y, reduction="sum") * (self.n_train / y.shape[0])

    def birth_death(self, model, x, y) -> dict:
        """One MH birth-or-death move of the node masks on the minibatch (x, y)."""
        gates, hp = self.gates, self.hp
        if self.bd is None:
            self.bd = BirthDeath(gates.sizes(), self.n_train, hp.lam, hp.n_max, hp.death)
        saved = {}
        t = hp.mh_temperature
        ll_old = {}
        cache = {}     # the log likelihood mask_grads computed, for the next log_lik() call

        def log_lik():
            if "ll" in cache:
                return cache.pop("ll")
            with torch.no_grad(), frozen_batchnorm_stats(model):
                return float(self._log_lik(model, x, y)) / t

        def mask_grads(alive):
            rel = {}
            for n in gates.names:
                rel[n] = gates.gate[n].clone().requires_grad_(True)
            old = dict(gates.gate)
            gates.gate.update(rel)
            try:
                with torch.enable_grad(), frozen_batchnorm_stats(model):
                    ll = self._log_lik(model, x, y) / t
                    g = torch.autograd.grad(ll, [rel[n] for n in gates.names])
                cache["ll"] = float(ll.detach())
            finally:
                gates.gate.update(old)
            return torch.cat([gi.detach().double().cpu() for gi in g])

        def weight_term(name, w):
            s = self._birth_std(name)
            return float((cauchy_log_prob(w.double(), hp.prior_scale)
                          - gaussian_log_prob(w.double(), s)).sum())

        def apply(kind, picks):
            ll_old["v"] = log_lik()
            saved.clear()
            extra = 0.0
            for f in picks:
                name, i = gates.locate(f)
                layer = gates.layers[name]
                saved[(name, i)] = layer.mu.data[i].clone()
                if kind == "birth":
                    w = torch.randn(layer.mu[i].shape, generator=self.gen) * self._birth_std(name)
                    layer.mu.data[i] = w.to(layer.mu)
                    gates.set_node(name, i, True)
                    extra += weight_term(name, layer.mu.data[i])
                else:
                    extra -= weight_term(name, saved[(name, i)])
                    gates.set_node(name, i, False)
            ll_old["extra"] = extra

        def revert(kind, picks):
            for f in picks:
                name, i = gates.locate(f)
                gates.set_node(name, i, kind == "death")
                gates.layers[name].mu.data[i] = saved[(name, i)]

        def delta(kind, picks):
            return log_lik() - ll_old["v"] + ll_old["extra"]

        alive = gates.flat_alive()
        info = self.bd.move(alive, apply, revert, delta, mask_grads, self.gen)
        if info["accepted"] and self.opt is not None:
            # a dead weight keeps no momentum; a newborn one gets a stationary draw (SGHMC)
            for f in info["picks"]:
                name, i = gates.locate(f)
                layer = gates.layers[name]
                row = torch.zeros_like(layer.mask)
                row[i] = True
                if info["kind"] == "birth":
                    self.opt.refresh_momentum(layer.mu, row)
                else:
                    self.opt.clear_momentum(layer.mu, row)
        for name, layer in gates.layers.items():
            d = layer.n_active() / layer.mask.numel()
            self.move_density_sum[name] = self.move_density_sum.get(name, 0.0) + d
        self.moves += 1
        self.accepted += int(info["accepted"])
        if info["accepted"]:
            self._eff_density = None
        return info

    @torch.no_grad()
    def after_step(self, model, step, epoch, batch):
        """Every ``update_period`` steps: ``num_update`` birth-death moves on the batch; then
        store a posterior sample at the sample steps."""
        if self._eff_density is None:  # the effective masks this step ran with
            self._eff_density = {n: float(m.double().mean())
                                 for n, m in self.effective_masks(model).items()}
        self.meter.record_densities(self._eff_density)
        log = None
        if self.n_train is not None and (step + 1) % self.hp.update_period == 0:
            x, y = batch[0], batch[1]
            infos = [self.birth_death(model, x, y) for _ in range(self.hp.num_update)]
            alive = self.gates.flat_alive()
            log = {"moves": len(infos), "accepted": sum(i["accepted"] for i in infos),
                   "node_density": float(alive.double().mean())}
        if self.n_train is not None:
            total = self.epochs * math.ceil(self.n_train / self.batch_size)
            self.samples.maybe_store(model, step, total)
        return log

    def predict(self, model, x, samples):
        """Mean softmax over the stored posterior samples (each with its own node masks: the
        gates are restored from each sample's layer masks)."""
        if not self.samples.samples:
            return self.samples.predict(model, x, samples)
        use = self.samples.samples[-max(1, int(samples)):]
        out = 0.0
        for s in use:
            with self._gates_from(s):
                single = PosteriorSamples(1, 1.0)
                single.samples = [s]
                out = out + single.predict(model, x, 1)
        return out / len(use)

    @contextlib.contextmanager
    def _gates_from(self, state: dict):
        """Gates set from the node rows of the masks in ``state`` (a stored sample)."""
        saved = {n: g.clone() for n, g in self.gates.gate.items()}
        try:
            for n in self.gates.names:
                rows = state[f"{n}.mask"].flatten(1).any(1)
                self.gates.gate[n] = rows.to(saved[n].dtype)
            yield
        finally:
            self.gates.gate.update(saved)

    @torch.no_grad()
    def effective_masks(self, model, state: dict | None = None) -> dict[str, torch.Tensor]:
        """Masks of the weights that can change an output: output node alive (its row mask)
        and input channel structurally reachable from the image.

        Reachability is exact, by one probe pass on a positive copy of the network: every
        active weight set to 1, every other weight, bias and BatchNorm shift 0, BatchNorm
        scale 1 with unit running variance, input all ones, eval mode, gates as in ``state``.
        All activations are then >= 0 and ReLU, pooling and residual sums cannot cancel, so
        an input channel of a layer is 0 exactly when every path to it crosses a dead node
        or a masked weight.
        """
        state = state if state is not None else {
            k: v for k, v in [*model.named_parameters(), *model.named_buffers()]}
        layers = bayes_layers(model)
        probe = {}
        for k, v in state.items():
            probe[k] = v
        for name, layer in layers:
            probe[f"{name}.mu"] = state[f"{name}.mask"].to(layer.mu.dtype)
            if layer.bias is not None:
                probe[f"{name}.bias"] = torch.zeros_like(layer.bias)
        for name, mod in model.named_modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                for k, fill in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0),
                                ("running_var", 1.0)):
                    key = f"{name}.{k}" if name else k
                    if key in probe:
                        probe[key] = torch.full_like(probe[key], fill)
        seen, handles = {}, []
        for name, layer in layers:
            handles.append(layer.register_forward_pre_hook(
                lambda m, a, name=name: seen.__setitem__(
                    name, a[0].flatten(2).sum(-1).sum(0) if a[0].dim() > 2 else a[0].sum(0))))
        p = next(model.parameters())
        was = model.training
        model.eval()
        try:
            with self._gates_from(state):
                torch.func.functional_call(model, probe, (torch.ones((1, 3, 32, 32),
                                                                     dtype=p.dtype,
                                                                     device=p.device),))
        finally:
            for h in handles:
                h.remove()
            model.train(was)
        out = {}
        for name, layer in layers:
            mask = state[f"{name}.mask"]
            reach = seen[name] > 0
            shape = (1, -1) + (1,) * (mask.dim() - 2)
            out[name] = mask & reach.view(shape)
        return out

    @torch.no_grad()
    def masks(self, model):
        """:meth:`effective_masks` of the last stored sample (of the live model if none).
        Stored samples may differ in their masks; ``sample_densities`` gives them all."""
        state = self.samples.samples[-1] if self.samples.samples else None
        return self.effective_masks(model, state)

    def sample_densities(self, model) -> list[float]:
        """Weight density (effective masks) of every stored sample."""
        out = []
        for s in self.samples.samples:
            ms = list(self.effective_masks(model, s).values())
            out.append(sum(int(m.sum()) for m in ms) / sum(m.numel() for m in ms))
        return out

    def training_flops(self, model, n_train, epochs, batch_size, history=None,
                       input_shape=(1, 3, 32, 32)):
        """Steps at their measured density plus 4 forward passes of one batch per move."""
        dens = self.meter.mean_densities()
        total = mcmc_training_flops(model, n_train, epochs, dens, input_shape)
        dense = mcmc_training_flops(model, n_train, epochs, {}, input_shape)
        per, other = forward_costs(model, input_shape)
        moves = 0.0
        if self.moves:
            md = {n: v / self.moves for n, v in self.move_density_sum.items()}
            fwd = sum(f * md.get(n, 1.0) for n, f in per.items()) + other
            moves = 4.0 * self.moves * batch_size * fwd
        return flops_dict(total + moves, dense, (
            "n_train * epochs * 3 * (sum_l F_l * dbar_l + F_other) + moves * batch_size * 4 * "
            "(sum_l F_l * d_l + F_other); F_l dense forward FLOPs per image of masked layer l, "
            "dbar_l its effective-mask density averaged over all steps, d_l its row-mask "
            "density averaged over the moves; "
            "3 = forward + backward, 4 = a move's two forwards and one backward (2x forward)"),
            mean_densities=dens, moves=self.moves, accepted=self.accepted,
            move_flops=moves)

    # -- checkpoint -----------------------------------------------------------------------------
    def state_dict(self):
        return {"samples": self.samples.state_dict(), "meter": self.meter.state_dict(),
                "n_train": self.n_train, "moves": self.moves, "accepted": self.accepted,
                "move_density_sum": dict(self.move_density_sum),
                "gen": self.gen.get_state(),
                "alive": {n: a.clone() for n, a in self.gates.alive.items()} if self.gates
                else {}}

    def load_state_dict(self, state):
        self.samples.load_state_dict(state["samples"])
        self.meter.load_state_dict(state["meter"])
        self.n_train, self.moves = state["n_train"], state["moves"]
        self.accepted = state["accepted"]
        self.move_density_sum = dict(state["move_density_sum"])
        self.gen.set_state(state["gen"])
        self._eff_density = None
        if self.gates is not None:
            for n, a in state["alive"].items():
                self.gates.alive[n].copy_(a)
                self.gates.gate[n].copy_(a.to(self.gates.gate[n].dtype))
