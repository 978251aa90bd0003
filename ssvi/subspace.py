"""The sparse subspace controller: Algorithm 1's gamma-update (paper Section 3.3).

One :class:`SubspaceController` owns the masks of a model's sparse layers. It

* allocates a per-tensor density (:func:`allocate_densities`: uniform with a dense first layer,
  as the recipe does, or ERK) and keeps the active count of every sparse tensor EXACTLY at its
  target at all times;
* every ``update_every`` optimisation steps while ``step < t_end`` runs :meth:`update`: remove the
  ``floor(n_active * r_t)`` active weights with the lowest removal score (eq. 6-8,
  :meth:`prune`), then add as many inactive positions with the largest addition score (eq. 9,
  :meth:`grow`);
* initialises re-grown weights (mu = 0; sigma = mean active sigma of the tensor, the release's
  softplus(mean active rho), or a constant, Section 3.2) and clears their optimizer momentum.

Invariant kept for every sparse layer: inactive entries have ``mu == 0`` and ``rho == 0`` and zero
optimizer state. The same controller runs deterministic RigL (removal ``abs_mu``, addition |grad|)
on layers built with ``deterministic=True``.
"""
from __future__ import annotations

import math
import weakref
from collections.abc import Callable

import torch

from . import criteria
from .errors import ConfigError, DivergenceError
from .layers import BayesLayer, bayes_layers, inverse_softplus, mode

ALLOCATIONS = ("uniform", "erk")


class NonFiniteLossError(DivergenceError):
    """The training loss became NaN or infinite (a :class:`ssvi.errors.DivergenceError`)."""


# layer -> weak reference to the controller that owns its mask (one controller per layer)
_OWNERS: "weakref.WeakKeyDictionary[BayesLayer, weakref.ref]" = weakref.WeakKeyDictionary()


def _owner(layer: BayesLayer):
    ref = _OWNERS.get(layer)
    return None if ref is None else ref()


def _check_density(density: float) -> float:
    density = float(density)
    if not (0.0 < density <= 1.0) or math.isnan(density):
        raise ValueError(f"density must be in (0, 1] (density = 1 - sparsity), got {density!r}")
    return density


def allocate_densities(layers: list[tuple[str, BayesLayer]], density: float,
                       method: str = "uniform", first_layer_dense: bool = True) -> dict[str, float]:
    """Per-tensor densities for a global target ``density``.

    uniform: every tensor gets ``density`` (the first one 1.0 if ``first_layer_dense``), the
    recipe's choice. erk: Erdos-Renyi-Kernel (Evci et al. 2020): density_l proportional to
    (sum of the tensor's dims) / (product of its dims), scaled so the active total is
    ``density * total`` and capped at 1 (capped tensors are made dense and the rest rescaled).
    """
    density = _check_density(density)
    if method not in ALLOCATIONS:
        raise ValueError(f"unknown allocation {method!r}; choose one of {', '.join(ALLOCATIONS)}")
    if not layers:
        raise ValueError("allocate_densities: no sparse layers given")
    names = [n for n, _ in layers]
    sizes = {n: l.mu.numel() for n, l in layers}
    dense = {names[0]} if first_layer_dense else set()
    if method == "uniform" or density == 1.0:
        return {n: (1.0 if n in dense else density) for n in names}
    raw = {n: sum(l.mu.shape) / l.mu.numel() for n, l in layers}
    budget = density * sum(sizes.values())
    if sum(sizes[n] for n in dense) >= budget:
        raise ValueError(f"ERK: the dense first layer alone exceeds the budget of density "
                         f"{density}; use first_layer_dense=False or a higher density")
    while True:
        free = [n for n in names if n not in dense]
        if not free:
            break
        remaining = budget - sum(sizes[n] for n in dense)
        eps = remaining / sum(raw[n] * sizes[n] for n in free)
        over = [n for n in free if eps * raw[n] > 1.0]
        if not over:
            break
        dense.update(over)
    out = {}
    for n in names:
        out[n] = 1.0 if n in dense else max(eps * raw[n], 0.0)
    return out


def replacement_fraction(step: int, t_end: int, alpha: float = 0.3) -> float:
    """Cosine replacement fraction r_t = alpha/2 * (1 + cos(pi * t / T_end)) (recipe, RigL)."""
    if t_end <= 0 or step >= t_end:
        return 0.0
    return 0.5 * alpha * (1.0 + math.cos(math.pi * step / t_end))


def _bottom_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Flat indices of the k lowest scores (stable, so ties resolve identically everywhere)."""
    return torch.sort(scores, stable=True).indices[:k]


def _top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    return torch.sort(scores, descending=True, stable=True).indices[:k]


@torch.no_grad()
def regrow_sigma_ratio(model: torch.nn.Module) -> dict[str, float]:
    """Per sparse Bayesian layer, mean(sigma) / softplus(mean(rho)) over its active weights: how
    much larger the paper's re-grown sigma (``regrow_sigma="mean"``) is than the release's
    (``"mean_rho"``) in the model's current state. >= 1 by Jensen (softplus is convex); for
    small sigma, softplus(mean rho) is close to the geometric mean of sigma."""
    out = {}
    for name, layer in bayes_layers(model):
        if layer.rho is None or bool(layer.mask.all()) or not bool(layer.mask.any()):
            continue
        rho = layer.rho.double()[layer.mask]
        out[name] = float(torch.nn.functional.softplus(rho).mean()
                          / torch.nn.functional.softplus(rho.mean()))
    return out


class SubspaceController:
    """Keeps exact per-tensor densities and runs removal-and-addition updates (Algorithm 1)."""

    def __init__(self, model: torch.nn.Module, density: float, *, allocation: str = "uniform",
                 first_layer_dense: bool = True, removal: str = "snr_abs", lam: float = 1.0,
                 addition: str = "mc1", addition_k: int = 3, regrow_sigma: str = "mean",
                 regrow_sigma_const: float = 1e-6, update_every: int = 100, t_end: int = 0,
                 alpha: float = 0.3, seed: int = 0, optimizer: torch.optim.Optimizer | None = None):
        if removal not in criteria.REMOVAL_CRITERIA:
            raise ValueError(f"unknown removal criterion {removal!r}; choose one of "
                             f"{', '.join(criteria.REMOVAL_CRITERIA)}")
        if addition not in ("mc1", "mean", "mck"):
            raise ValueError(f"unknown addition criterion {addition!r}; choose one of "
                             "'mc1', 'mean', 'mck'")
        if regrow_sigma not in ("mean", "mean_rho", "const"):
            raise ValueError(f"unknown regrow_sigma {regrow_sigma!r}; choose 'mean', 'mean_rho' "
                             "or 'const'")
        if update_every < 1:
            raise ValueError(f"update_every must be >= 1, got {update_every}")
        alpha = float(alpha)
        if not 0.0 <= alpha <= 1.0:  # also refuses NaN
            raise ConfigError(f"alpha={alpha!r} must be in [0, 1]: the fraction of active weights "
                             "replaced at the first update (alpha > 1 would make layers dense)")
        self.model = model
        self.layers = bayes_layers(model)
        if not self.layers:
            raise ValueError("SubspaceController: the model has no ssvi layers; "
                             "call ssvi.bayesianize(model) first")
        taken = [n for n, l in self.layers if _owner(l) is not None]
        if taken:
            raise ConfigError(f"SubspaceController: layer {taken[0]!r} already belongs to another "
                             "SubspaceController of this model; a second one would redraw the "
                             "masks under the first. Keep using the first controller, or call "
                             "its release() before creating a new one")
        deterministic = any(l.deterministic for _, l in self.layers)
        if deterministic and removal != "abs_mu":
            raise ValueError(f"removal criterion {removal!r} needs sigma; deterministic (RigL) "
                             "layers only support 'abs_mu'")
        self.density = _check_density(density)
        self.allocation = allocation
        self.densities = allocate_densities(self.layers, density, allocation, first_layer_dense)
        self.targets = {n: max(1, int(round(self.densities[n] * l.mu.numel())))
                        for n, l in self.layers}
        self.removal, self.lam = removal, float(lam)
        self.addition, self.addition_k = addition, int(addition_k)
        self.regrow_sigma, self.regrow_sigma_const = regrow_sigma, float(regrow_sigma_const)
        self.update_every, self.t_end, self.alpha = int(update_every), int(t_end), float(alpha)
        self.optimizer = optimizer
        # applied to every dL/dw before scoring additions; ssvi.distributed sets an all-reduce
        # mean so every rank scores the global-batch gradient (DDP does not reduce autograd.grad)
        self.grad_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None
        self.n_updates = 0
        self.history: list[dict] = []
        self.init_masks(seed)
        for _, layer in self.layers:
            _OWNERS[layer] = weakref.ref(self)

    def release(self) -> None:
        """Give up the model's layers so that another controller may own them (this one must
        not be used afterwards)."""
        for _, layer in self.layers:
            if _owner(layer) is self:
                del _OWNERS[layer]

    # -- masks ------------------------------------------------------------------------------------
    @property
    def sparse_layers(self):
        """(name, layer) pairs whose target is below their size."""
        return [(n, l) for n, l in self.layers if self.targets[n] < l.mu.numel()]

    def init_masks(self, seed: int) -> None:
        """Uniformly random initial masks with exactly ``targets[name]`` active entries."""
        gen = torch.Generator().manual_seed(int(seed))
        for name, layer in self.layers:
            n, k = layer.mu.numel(), self.targets[name]
            keep = torch.randperm(n, generator=gen)[:k].to(layer.mask.device)
            mask = torch.zeros(n, dtype=torch.bool, device=layer.mask.device)
            mask[keep] = True
            layer.mask.copy_(mask.view_as(layer.mask))
            self._zero_inactive(layer)

    @staticmethod
    @torch.no_grad()
    def _zero_inactive(layer: BayesLayer) -> None:
        layer.mu.masked_fill_(~layer.mask, 0.0)
        if layer.rho is not None:
            layer.rho.masked_fill_(~layer.mask, 0.0)

    def active_counts(self) -> dict[str, int]:
        return {n: int(l.mask.sum()) for n, l in self.layers}

    def is_update_step(self, step: int) -> bool:
        """True on the steps where Algorithm 1 updates gamma (every Delta T steps before T_end)."""
        return step > 0 and step % self.update_every == 0 and step < self.t_end

    # -- removal and addition -----------------------------------------------------------------------
    def removal_scores(self, layer: BayesLayer, name: str | None = None) -> torch.Tensor:
        """Removal score of every entry (eq. 6-8; higher = keep), float64."""
        name = name or self.removal
        sigma = None if layer.rho is None else layer.sigma.detach()
        return criteria.removal_score(name, layer.mu.detach(), sigma, lam=self.lam)

    def prune(self, layer: BayesLayer, n_prune: int, criterion: str | None = None) -> torch.Tensor:
        """Boolean mask of the ``n_prune`` active entries with the lowest removal score."""
        active = layer.mask.flatten().nonzero().squeeze(1)
        scores = self.removal_scores(layer, criterion).flatten()[active]
        drop = torch.zeros_like(layer.mask.flatten())
        drop[active[_bottom_k(scores, n_prune)]] = True
        return drop.view_as(layer.mask)

    def grow(self, candidates: torch.Tensor, grad_score: torch.Tensor, n_grow: int) -> torch.Tensor:
        """Boolean mask of the ``n_grow`` candidate entries with the largest addition score (eq. 9)."""
        scores = grad_score.flatten().double().masked_fill(~candidates.flatten(), -math.inf)
        grow = torch.zeros_like(candidates.flatten())
        grow[_top_k(scores, n_grow)] = True
        return grow.view_as(candidates)

    def addition_scores(self, loss_fn: Callable[[int], torch.Tensor],
                        step: int = -1) -> dict[str, torch.Tensor]:
        """|dL/dw| at every entry of every sparse tensor, w the masked mean weight (eq. 9).

        ``loss_fn(k)`` returns the training loss of Monte Carlo draw k (k = 0 is the current
        minibatch). The gradient is taken with respect to w = mu * mask as used in the forward
        pass, which the KL term (computed from mu and rho) does not involve: the score is the
        gradient of the data term only, eq. 9's f_{theta,gamma}. (The authors' release
        differentiates with respect to mu and so also adds the KL gradient through mu, which is
        zero wherever mu = 0.) mc1: one draw in LRT mode; mean: one draw with theta = mu; mck:
        the mean of |grad| over ``addition_k`` draws.
        """
        layers = self.sparse_layers
        draws = self.addition_k if self.addition == "mck" else 1
        fwd_mode = "mean" if self.addition == "mean" else "lrt"
        grads: dict[str, list[torch.Tensor]] = {n: [] for n, _ in layers}
        try:
            for _, layer in layers:
                layer.capture_grad = True
            for k in range(draws):
                with mode(self.model, fwd_mode):
                    loss = loss_fn(k)
                if not bool(torch.isfinite(loss)):  # one sync per update, not per step
                    raise NonFiniteLossError(f"the loss is {loss.item()} at the subspace update "
                                             f"of step {step}")
                weights = [l.weight_for_grad for _, l in layers]
                got = torch.autograd.grad(loss, weights, allow_unused=True)
                for (n, l), g in zip(layers, got):
                    g = torch.zeros_like(l.mu) if g is None else g.detach()
                    grads[n].append(g if self.grad_reduce is None else self.grad_reduce(g))
        finally:
            for _, layer in layers:
                layer.capture_grad = False
                layer.weight_for_grad = None
        return {n: criteria.addition_score(g) for n, g in grads.items()}

    @torch.no_grad()
    def _regrow_rho(self, layer: BayesLayer, kept: torch.Tensor) -> torch.Tensor:
        """rho of re-grown weights (Section 3.2): "mean": softplus^-1 of the mean sigma of the
        tensor's kept active weights (the paper's description); "mean_rho": the mean rho of those
        weights (the authors' release), i.e. sigma = softplus(mean rho) <= mean sigma (Jensen,
        softplus convex); "const": softplus^-1(regrow_sigma_const)."""
        if self.regrow_sigma == "const" or not kept.any():
            sigma = torch.tensor(self.regrow_sigma_const, dtype=torch.float64)
        elif self.regrow_sigma == "mean_rho":
            return layer.rho.double()[kept].mean().to(layer.rho.dtype)
        else:
            sigma = layer.sigma.double()[kept].mean()
        # a kept sigma that underflowed to 0 would give rho = -inf; 1e-30 keeps rho finite
        return inverse_softplus(sigma.clamp_min(1e-30)).to(layer.rho.dtype)

    @torch.no_grad()
    def _clear_state(self, layer: BayesLayer, where: torch.Tensor) -> None:
        if self.optimizer is None:
            return
        for p in (layer.mu, layer.rho):
            if p is None:
                continue
            for value in self.optimizer.state.get(p, {}).values():
                if torch.is_tensor(value) and value.shape == p.shape:
                    value.masked_fill_(where, 0.0)

    def update(self, step: int, loss_fn: Callable[[int], torch.Tensor]) -> dict:
        """One gamma-update (Algorithm 1 lines 10-11): prune by ``removal``, grow by ``addition``.

        Returns statistics of the update. Active counts are unchanged, exactly.
        """
        r = replacement_fraction(step, self.t_end, self.alpha)
        grad_scores = self.addition_scores(loss_fn, step)
        stats = {"step": int(step), "r": r, "replaced": 0, "regrown_sigma": {}}
        with torch.no_grad():
            for name, layer in self.sparse_layers:
                n_active = self.targets[name]
                n_prune = int(math.floor(n_active * r))
                if n_prune == 0:
                    continue
                old = layer.mask.clone()
                drop = self.prune(layer, n_prune)
                kept = old & ~drop
                new = kept | self.grow(~kept, grad_scores[name], n_prune)
                born, died = new & ~old, old & ~new
                layer.mask.copy_(new)
                layer.mu.masked_fill_(born | died, 0.0)
                if layer.rho is not None:
                    rho0 = self._regrow_rho(layer, kept)
                    layer.rho.masked_fill_(died, 0.0)
                    layer.rho.masked_fill_(born, rho0)
                    stats["regrown_sigma"][name] = float(torch.nn.functional.softplus(rho0))
                self._clear_state(layer, born | died)
                stats["replaced"] += int(born.sum())
        self.n_updates += 1
        self.history.append({"step": stats["step"], "r": r, "replaced": stats["replaced"]})
        return stats

    # -- checkpointing ------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Controller state for checkpoints (the masks themselves live in the model's buffers)."""
        return {"density": self.density, "allocation": self.allocation,
                "targets": dict(self.targets), "densities": dict(self.densities),
                "removal": self.removal, "lam": self.lam, "addition": self.addition,
                "addition_k": self.addition_k, "regrow_sigma": self.regrow_sigma,
                "regrow_sigma_const": self.regrow_sigma_const, "update_every": self.update_every,
                "t_end": self.t_end, "alpha": self.alpha, "n_updates": self.n_updates,
                "history": list(self.history)}

    def load_state_dict(self, state: dict) -> None:
        if state.get("targets") != self.targets:
            raise ValueError("controller state does not match this model's sparse layers "
                             "(different architecture or density); cannot resume")
        for key in ("removal", "lam", "addition", "addition_k", "regrow_sigma",
                    "regrow_sigma_const", "update_every", "t_end", "alpha", "n_updates"):
            setattr(self, key, state[key])
        self.history = list(state["history"])
