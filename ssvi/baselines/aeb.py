"""AEB: adaptive empirical Bayes for sparse deep learning (Deng, Zhang, Liang, Lin, NeurIPS 2019).

The model (paper Section 2; defaults from the authors' release ``bayes_cnn.py`` /
``posterior_cnn.py``, CIFAR-10 ResNet-20 pruning run):

* Prior of a prunable weight theta_j, given its latent gamma_j in {0, 1} and a scale sigma:
      gamma_j = 1: slab  N(0, sigma^2 v1)          (v1 = 1e-5)
      gamma_j = 0: spike Laplace(0, sigma v0)      (v0 = 0.005, density exp(-|t|/(sigma v0)) /
                                                    (2 sigma v0))
  with P(gamma_j = 1) = delta (per layer, Beta(a, b) prior, a = b = 2.7e5, start 0.5).
  With the release's defaults the Laplace component is the wider one; the method only needs
  the two to differ. Every other parameter (stem, BatchNorm, biases) has the Gaussian prior
  exp(-wd N ||p||^2 / 2), wd = 5e-4.
* E-step, closed form: rho_j = P(gamma_j = 1 | theta_j) = delta N_1 / (delta N_1 + (1-delta) L_0),
  and the expectations kappa1_j = E[gamma_j] / v1 = rho_j / v1, kappa0_j = (1 - rho_j) / v0.
* The weights are sampled by SGHMC (:mod:`.sghmc`) from the "adaptive" posterior
      U(theta) = N * CE(theta)
                 + sum_j [kappa1_j theta_j^2 / (2 sigma^2) + kappa0_j |theta_j| / sigma]
                 + wd N ||rest||^2 / 2,
  at temperature T (the release's inverse temperature 1000, annealed by x1.005 per epoch).
* Stochastic approximation (paper Algorithm 1; as in the release): after every SGHMC step, with
  omega_t = c / (A + t)^alpha (c = 0.02, A = 1000, alpha = 0.75),
      rho   <- (1 - omega) rho   + omega rho(theta)
      kappa <- (1 - omega) kappa + omega kappa(rho)
      delta <- (1 - omega) delta + omega (sum_j rho_j + a - 1) / (a + b + p - 2)
  and, if ``update_sigma`` (off by default: the release's README advises fixing sigma for DNNs),
  sigma^2 <- (1 - omega) sigma^2 + omega sigma*^2, sigma* the closed-form M-step with the
  inverse-Gamma(nu/2, nu lambda/2) prior (nu = lambda = 1000).
* Pruning (the release): each prunable layer is cut by |theta| to the scheduled sparsity
      s(t) = s_target (1 - cut^(t / gap))     (cut = 0.99, gap = 50 steps),
  which approaches the target geometrically. Our run lengths differ from the release's
  (1000 epochs x 50 steps), so we keep the shape and rescale time to the sparse phase:
      s(t) = s_target (1 - exp(-k t / T_ramp)) / (1 - exp(-k)),   t <= T_ramp,
  k = 10 (the release's k = 1000 epochs * 50 steps / gap * ln(1/cut) = 10.05), T_ramp =
  ``ramp_frac`` of the sparse phase; s = s_target afterwards. Layer density target = cfg.density
  (per prunable tensor, as SSVI's "uniform" allocation); the stem stays dense when
  cfg.first_layer_dense (the release prunes every conv but the first).

The two phases (the release trains a dense model first, ``-prune 0``, 1000 epochs, lr 2e-6 on U,
inverse temperature 2e4; then ``-prune 1`` 1000 epochs, lr 2e-9 on U, decays x0.1 at epochs 700
and 900): the first ``dense_frac`` of the epochs are the dense phase (SGHMC, Gaussian prior on
everything), the rest the sparse phase (spike-and-slab prior, SA, pruning). Learning rates here
are on the mean loss U / N (the trainer's scale): 2e-6 * 50000 = 0.1 and 2e-9 * 50000 = 1e-4.

Our choices where the paper is silent or the release differs from this protocol:

* Pruning is hard: a weight cut by the schedule is masked (exactly 0, momentum cleared, no
  noise) and never regrows; the release zeroes sub-threshold weights every step but keeps their
  momentum, so a few may come back. Masks are therefore nested and the final one is reached at
  T_ramp.
* The E-step uses sigma in both densities (the paper's eq.); the release uses sigma = 1 there.
* Prediction averages K = ``num_samples`` (5, the SSVI paper's evaluation protocol) stored
  states, evenly spaced over the last ``sample_frac`` of training (after the ramp).

Sparsity: measured from the final masks (:meth:`AEB.masks`). Training FLOPs: every step at the
density of the masks it ran with (:mod:`.mcmc_common`): the dense phase at dense cost, the sparse
phase at the scheduled density. See :meth:`AEB.training_flops` for the reconstruction of the
release's 2000-epoch schedule, which is what makes Table 2's AEB cost exceed dense training.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers import bayes_layers
from ..models import build_model
from .base import Method, flops_dict
from .mcmc_common import (DensityMeter, PosteriorSamples, forward_costs, mcmc_training_flops)
from .sghmc import SGHMC

LOG_2PI = math.log(2.0 * math.pi)


# -- the spike-and-slab mathematics ----------------------------------------------------------------
def inclusion_prob(theta: torch.Tensor, delta, v0: float, v1: float, sigma: float = 1.0):
    """E-step: rho = P(gamma = 1 | theta) = delta N(theta; 0, sigma^2 v1) /
    (delta N(theta; 0, sigma^2 v1) + (1 - delta) Laplace(theta; 0, sigma v0)), in log space."""
    theta = theta.double() if theta.dtype != torch.float64 else theta
    delta = torch.as_tensor(delta, dtype=theta.dtype, device=theta.device)
    log_slab = torch.log(delta) - 0.5 * (LOG_2PI + math.log(sigma ** 2 * v1)) \
        - theta.square() / (2.0 * sigma ** 2 * v1)
    log_spike = torch.log1p(-delta) - math.log(2.0 * sigma * v0) - theta.abs() / (sigma * v0)
    return torch.sigmoid(log_slab - log_spike)


def sa_step_size(t: int, c: float, big_a: float, alpha: float) -> float:
    """omega_t = c / (A + t)^alpha, the SA step size of the release (t counted from 1)."""
    return c / (big_a + t) ** alpha


def spike_slab_penalty(theta: torch.Tensor, kappa0: torch.Tensor, kappa1: torch.Tensor,
                       sigma: float) -> torch.Tensor:
    """sum_j kappa1_j theta_j^2 / (2 sigma^2) + kappa0_j |theta_j| / sigma: the adaptive
    negative log prior of the prunable weights (E_gamma[-log pi(theta | gamma)] up to constants,
    with the E-step's kappas)."""
    return (kappa1 * theta.square()).sum() / (2.0 * sigma ** 2) \
        + (kappa0 * theta.abs()).sum() / sigma


class SpikeSlabSA:
    """The SA state (rho, kappa0, kappa1, delta) of one weight tensor, updated by :meth:`update`.

    ``delta`` is per tensor (per layer, as the release). All state is float64.
    """

    def __init__(self, shape, device, v0: float, v1: float, delta0: float = 0.5,
                 beta_a: float = 2.7e5, beta_b: float = 2.7e5, kappa_init: float = 5e-4,
                 update_delta: bool = True):
        self.v0, self.v1 = float(v0), float(v1)
        self.beta_a, self.beta_b, self.update_delta = float(beta_a), float(beta_b), update_delta
        self.rho = torch.full(shape, 0.5, dtype=torch.float64, device=device)
        self.kappa0 = torch.full(shape, kappa_init, dtype=torch.float64, device=device)
        self.kappa1 = torch.full(shape, kappa_init, dtype=torch.float64, device=device)
        self.delta = float(delta0)

    @torch.no_grad()
    def update(self, theta: torch.Tensor, omega: float, sigma: float = 1.0) -> None:
        """One SA step (module docstring) at step size ``omega`` from the current ``theta``."""
        rho_new = inclusion_prob(theta.detach(), self.delta, self.v0, self.v1, sigma)
        self.rho.mul_(1.0 - omega).add_(rho_new, alpha=omega)
        self.kappa0.mul_(1.0 - omega).add_((1.0 - self.rho) / self.v0, alpha=omega)
        self.kappa1.mul_(1.0 - omega).add_(self.rho / self.v1, alpha=omega)
        if self.update_delta:
            p = self.rho.numel()
            target = (float(self.rho.sum()) + self.beta_a - 1.0) / (self.beta_a + self.beta_b
                                                                   + p - 2.0)
            self.delta = (1.0 - omega) * self.delta + omega * target

    def penalty(self, theta: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
        """:func:`spike_slab_penalty` at the current kappas, in theta's dtype."""
        return spike_slab_penalty(theta, self.kappa0.to(theta.dtype), self.kappa1.to(theta.dtype),
                                  sigma)

    def state_dict(self) -> dict:
        return {"rho": self.rho, "kappa0": self.kappa0, "kappa1": self.kappa1,
                "delta": self.delta}

    def load_state_dict(self, s: dict) -> None:
        self.rho, self.kappa0, self.kappa1 = s["rho"], s["kappa0"], s["kappa1"]
        self.delta = float(s["delta"])


def sigma_m_step(wlasso: float, wridge: float, p: int, nu: float, lam: float) -> float:
    """Closed-form sigma maximising the Q function with an inverse-Gamma(nu/2, nu lam/2) prior
    on sigma^2: the positive root of (p + nu + 2) s^2 - wlasso s - (wridge + nu lam) = 0, with
    wlasso = sum kappa0 |theta| and wridge = sum kappa1 theta^2 (as the release computes it)."""
    m = p + nu + 2.0
    return (wlasso + math.sqrt(wlasso ** 2 + 4.0 * m * (wridge + nu * lam))) / (2.0 * m)


def ramp_sparsity(t: float, t_ramp: float, target: float, k: float) -> float:
    """s(t) = target (1 - exp(-k t / T)) / (1 - exp(-k)) for t < T, target afterwards."""
    if t_ramp <= 0 or t >= t_ramp:
        return target
    return target * (-math.expm1(-k * t / t_ramp)) / (-math.expm1(-k))


# -- the Method ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AEBHparams:
    v0: float = 0.005            # Laplace spike scale (release -v0)
    v1: float = 1e-5             # Gaussian slab variance (release -v1)
    delta0: float = 0.5          # initial P(gamma = 1) (release -theta)
    beta_a: float = 2.7e5        # Beta(a, b) prior on delta (release -a, -b)
    beta_b: float = 2.7e5
    sigma: float = 1.0           # prior scale sigma (release -sd)
    update_sigma: bool = False   # release README: fix sigma for DNNs
    nu: float = 1000.0           # inverse-Gamma prior of sigma^2 (release -nu, -lamda)
    lam: float = 1000.0
    weight_decay: float = 5e-4   # Gaussian prior on the non-prunable parameters (release -wdecay)
    sa_c: float = 0.02           # omega_t = c / (A + t)^alpha (release -dc, -da, -dalpha)
    sa_a: float = 1000.0
    sa_alpha: float = 0.75
    momentum: float = 0.9        # SGHMC friction alpha = 1 - momentum (release -momentum)
    lr_dense: float = 0.1        # on U / N: release 2e-6 on U x N = 50000
    lr_sparse: float = 1e-4      # release 2e-9 on U x 50000
    lr_decay_at: tuple = (0.7, 0.9)   # x0.1 at these fractions of the sparse phase (700, 900/1000)
    temperature_dense: float = 5e-5   # release inverse temperature 2e4
    temperature: float = 1e-3         # release inverse temperature 1e3
    anneal: float = 1.005        # inverse temperature x anneal per epoch (release -anneal)
    dense_frac: float = 0.5      # release: 1000 dense + 1000 sparse epochs
    ramp_frac: float = 0.5       # sparsity ramp over this fraction of the sparse phase
    ramp_k: float = 10.0         # shape of the ramp (release cut = 0.99, gap = 50)
    num_samples: int = 5         # K stored posterior samples
    sample_frac: float = 0.25    # ... evenly spaced over the last fraction of training

    def __post_init__(self):
        if not (self.v0 > 0 and self.v1 > 0 and 0 < self.delta0 < 1 and self.sigma > 0):
            raise ValueError("aeb: need v0 > 0, v1 > 0, 0 < delta0 < 1, sigma > 0; got "
                             f"{self.v0}, {self.v1}, {self.delta0}, {self.sigma}")
        if not (0.0 <= self.dense_frac < 1.0 and 0.0 < self.ramp_frac <= 1.0):
            raise ValueError(f"aeb: dense_frac={self.dense_frac} must be in [0, 1) and "
                             f"ramp_frac={self.ramp_frac} in (0, 1]")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"aeb: momentum={self.momentum} must be in [0, 1)")


class AEB(Method):
    """Adaptive empirical Bayes (module docstring) as a :class:`Method`."""

    name = "aeb"
    bayesian_eval = True
    Hparams = AEBHparams

    def __init__(self, cfg=None):
        super().__init__(cfg)
        density = float(getattr(cfg, "density", 0.1)) if cfg is not None else 0.1
        if not 0.0 < density <= 1.0:
            raise ValueError(f"aeb: density={density!r} must be in (0, 1] (1 - target sparsity)")
        self.density = density
        self.first_dense = bool(getattr(cfg, "first_layer_dense", True)) if cfg else True
        self.epochs = int(getattr(cfg, "epochs", 1)) if cfg else 1
        self.batch_size = int(getattr(cfg, "batch_size", 128)) if cfg else 128
        self.sa: dict[str, SpikeSlabSA] = {}
        self.sigma = self.hp.sigma
        self.t_sa = 0               # SA iterations done
        self.n_train = None
        self.samples = PosteriorSamples(self.hp.num_samples, self.hp.sample_frac)
        self.meter = DensityMeter()

    # -- schedule -------------------------------------------------------------------------------
    def _steps_per_epoch(self) -> int:
        return math.ceil(self.n_train / self.batch_size)

    def total_steps(self) -> int:
        return self.epochs * self._steps_per_epoch()

    def dense_epochs(self) -> int:
        return int(math.floor(self.hp.dense_frac * self.epochs))

    def in_sparse_phase(self, epoch: int) -> bool:
        return epoch > self.dense_epochs()

    def scheduled_sparsity(self, step: int) -> float:
        """Target sparsity of every prunable layer after ``step`` (0 in the dense phase)."""
        spe = self._steps_per_epoch()
        start = self.dense_epochs() * spe
        if step < start:
            return 0.0
        t_ramp = self.hp.ramp_frac * (self.total_steps() - start)
        return ramp_sparsity(step - start + 1, t_ramp, 1.0 - self.density, self.hp.ramp_k)

    def _lr_temperature(self, step: int, epoch: int) -> tuple[float, float]:
        hp = self.hp
        temp0 = hp.temperature if self.in_sparse_phase(epoch) else hp.temperature_dense
        temp = temp0 / hp.anneal ** (epoch - 1)
        if not self.in_sparse_phase(epoch):
            return hp.lr_dense, temp
        spe = self._steps_per_epoch()
        start = self.dense_epochs() * spe
        frac = (step - start) / max(1, self.total_steps() - start)
        lr = hp.lr_sparse * 0.1 ** sum(frac >= f for f in hp.lr_decay_at)
        return lr, temp

    # -- layers ---------------------------------------------------------------------------------
    def prunable(self, model) -> list[tuple[str, nn.Module]]:
        layers = bayes_layers(model)
        return layers[1:] if self.first_dense else layers

    # -- protocol -------------------------------------------------------------------------------
    def build_model(self, model_name, num_classes, width, cfg=None):
        """The plain network with deterministic masked layers (weights ``mu``, full masks)."""
        model = build_model(model_name, num_classes, width, bayesian=False, masked=True)
        for name, layer in self.prunable(model):
            keep = max(1, round(layer.mask.numel() * self.density))
            if self.density < 1.0 and keep == layer.mask.numel():
                raise ValueError(f"aeb: density={self.density} keeps every weight of layer "
                                 f"{name} ({layer.mask.numel()} weights); raise the sparsity "
                                 "or use density=1")
        return model

    def make_optimizer(self, model, cfg=None):
        opt = SGHMC(model.parameters(), lr=self.hp.lr_dense, alpha=1.0 - self.hp.momentum,
                    temperature=self.hp.temperature_dense, num_data=1)
        for _, layer in bayes_layers(model):
            opt.set_mask(layer.mu, layer.mask)
        self.opt = opt
        return opt

    def _ensure_sa(self, model) -> None:
        hp = self.hp
        for name, layer in self.prunable(model):
            if name not in self.sa:
                self.sa[name] = SpikeSlabSA(layer.mu.shape, layer.mu.device, hp.v0, hp.v1,
                                            hp.delta0, hp.beta_a, hp.beta_b)

    def loss(self, model, logits, y, n_train, step, epoch):
        """-log posterior / N: mean CE + [spike-slab penalty of prunable weights (sparse phase)
        + wd N ||other||^2 / 2] / N; also sets the SGHMC lr, temperature and N of this step."""
        self.n_train = int(n_train)
        lr, temp = self._lr_temperature(step, epoch)
        opt = getattr(self, "opt", None)
        if opt is not None:
            for g in opt.param_groups:
                g["lr"], g["temperature"], g["num_data"] = lr, temp, self.n_train
        ce = F.cross_entropy(logits, y)
        sparse = self.in_sparse_phase(epoch)
        if sparse:
            self._ensure_sa(model)
        pruned_ids = {id(l.mu) for n, l in self.prunable(model)} if sparse else set()
        prior = logits.new_zeros(())
        for name, layer in (self.prunable(model) if sparse else []):
            prior = prior + self.sa[name].penalty(layer.mu * layer.mask, self.sigma)
        wd = sum(p.square().sum() for p in model.parameters() if id(p) not in pruned_ids)
        prior = prior + 0.5 * self.hp.weight_decay * self.n_train * wd
        return ce + prior / self.n_train

    @torch.no_grad()
    def after_step(self, model, step, epoch, batch):
        """Sparse phase: one SA step of every prunable layer, then pruning to the schedule.
        Both phases: record the densities this step ran with; store a posterior sample at the
        sample steps."""
        self.meter.record(model)
        log = None
        if self.in_sparse_phase(epoch):
            self._ensure_sa(model)
            self.t_sa += 1
            hp = self.hp
            omega = sa_step_size(self.t_sa, hp.sa_c, hp.sa_a, hp.sa_alpha)
            s = self.scheduled_sparsity(step)
            wlasso = wridge = 0.0
            p = 0
            for name, layer in self.prunable(model):
                w = layer.mu * layer.mask
                sa = self.sa[name]
                sa.update(w, omega, self.sigma)
                keep = max(1, round(layer.mask.numel() * (1.0 - s)))
                if keep < layer.n_active():
                    score = torch.where(layer.mask, w.abs(), torch.full_like(w, -1.0))
                    idx = torch.topk(score.flatten(), keep).indices
                    new = torch.zeros_like(layer.mask).flatten()
                    new[idx] = True
                    new = new.view_as(layer.mask) & layer.mask
                    died = layer.mask & ~new
                    layer.mask.copy_(new)
                    layer.mu.masked_fill_(~new, 0.0)
                    if getattr(self, "opt", None) is not None:
                        self.opt.clear_momentum(layer.mu, died)
                if hp.update_sigma:
                    wlasso += float((sa.kappa0 * w.abs()).sum())
                    wridge += float((sa.kappa1 * w.square()).sum())
                    p += w.numel()
            if hp.update_sigma and p:
                new_sd = sigma_m_step(wlasso, wridge, p, hp.nu, hp.lam)
                self.sigma = math.sqrt((1 - omega) * self.sigma ** 2 + omega * new_sd ** 2)
            log = {"sparsity_target": s, "omega": omega, "sigma": self.sigma}
        if self.n_train is not None:
            self.samples.maybe_store(model, step, self.total_steps())
        return log

    def predict(self, model, x, samples):
        """Mean softmax over the stored posterior samples (the last ``samples`` of K)."""
        return self.samples.predict(model, x, samples)

    @torch.no_grad()
    def masks(self, model):
        """The masks of every masked layer (the stored samples share them: masks are nested and
        fixed after the ramp, which ends before the first sample step with the defaults)."""
        return {n: l.mask.clone() for n, l in bayes_layers(model)}

    def training_flops(self, model, n_train, epochs, batch_size, history=None,
                       input_shape=(1, 3, 32, 32)):
        """Every step at the cost of its masks (:mod:`.mcmc_common`); also the release's schedule.

        ``paper_schedule_flops``: the same formula for the authors' released CIFAR schedule, a
        1000-epoch dense pretraining plus a 1000-epoch sparse phase whose sparsity follows
        s_target (1 - 0.99^(t/50)) with t the step (batch 1000 -> 50 steps per epoch). That is
        ~1189 dense-epoch equivalents against 200 for a dense run, hence AEB's Table 2 cost
        (383.4e15 in the SSVI paper, which does not state its count) far above dense training.
        """
        dens = self.meter.mean_densities() or self._schedule_mean_densities(model, n_train, epochs,
                                                                            batch_size)
        total = mcmc_training_flops(model, n_train, epochs, dens, input_shape)
        dense = mcmc_training_flops(model, n_train, epochs, {}, input_shape)
        paper = self.release_schedule_flops(model, n_train, input_shape)
        return flops_dict(total, dense, (
            "n_train * epochs * 3 * (sum_l F_l * dbar_l + F_other); F_l dense forward FLOPs per "
            "image of masked layer l, dbar_l its mask density averaged over all steps (dense "
            "phase = 1, sparse phase = the pruning schedule), 3 = forward + backward"),
            mean_densities=dens, release_schedule_flops=paper)

    def _schedule_mean_densities(self, model, n_train, epochs, batch_size) -> dict[str, float]:
        spe = math.ceil(n_train / batch_size)
        total = epochs * spe
        start = int(math.floor(self.hp.dense_frac * epochs)) * spe
        t_ramp = self.hp.ramp_frac * (total - start)
        s_mean = sum(ramp_sparsity(t + 1, t_ramp, 1.0 - self.density, self.hp.ramp_k)
                     for t in range(total - start)) / total
        names = {n for n, _ in self.prunable(model)}
        return {n: (1.0 - s_mean if n in names else 1.0) for n, _ in bayes_layers(model)}

    def release_schedule_flops(self, model, n_train=50000, input_shape=(1, 3, 32, 32),
                               dense_epochs=1000, sparse_epochs=1000, steps_per_epoch=50,
                               cut=0.99, gap=50.0) -> float:
        """The formula above for the authors' released schedule (see :meth:`training_flops`)."""
        per, other = forward_costs(model, input_shape)
        names = {n for n, _ in self.prunable(model)}
        s_target = 1.0 - self.density
        steps = sparse_epochs * steps_per_epoch
        mean_sparse_density = 1.0 - s_target * (1.0 - sum(cut ** (t / gap) for t in
                                                          range(1, steps + 1)) / steps)
        fwd_dense = sum(per.values()) + other
        fwd_sparse = sum(f * (mean_sparse_density if n in names else 1.0)
                         for n, f in per.items()) + other
        return 3.0 * n_train * (dense_epochs * fwd_dense + sparse_epochs * fwd_sparse)

    # -- checkpoint -----------------------------------------------------------------------------
    def state_dict(self):
        return {"sa": {n: s.state_dict() for n, s in self.sa.items()}, "sigma": self.sigma,
                "t_sa": self.t_sa, "n_train": self.n_train,
                "samples": self.samples.state_dict(), "meter": self.meter.state_dict()}

    def load_state_dict(self, state):
        hp = self.hp
        self.sa = {}
        for n, s in state["sa"].items():
            sa = SpikeSlabSA(s["rho"].shape, s["rho"].device, hp.v0, hp.v1, hp.delta0,
                             hp.beta_a, hp.beta_b)
            sa.load_state_dict(s)
            self.sa[n] = sa
        self.sigma, self.t_sa, self.n_train = state["sigma"], state["t_sa"], state["n_train"]
        self.samples.load_state_dict(state["samples"])
        self.meter.load_state_dict(state["meter"])
