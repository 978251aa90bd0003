"""SGHMC: stochastic-gradient Hamiltonian Monte Carlo (Chen, Fox and Guestrin, ICML 2014, eq. 15),
in the momentum/friction form used by the AEB and mBNN releases, for masked networks.

With U(theta) = -log p(D | theta) - log p(theta) the potential, ``loss`` = U / N (the mean
per-datum negative log posterior the trainer back-propagates, N = ``num_data``), learning rate
eta (so the step on U is eps = eta / N), friction alpha = 1 - momentum and temperature T:

    v     <- (1 - alpha) v - eta * grad(loss) + N(0, 2 alpha eta T / N)
    theta <- theta + v

which samples p(theta | D)^(1/T) as eta -> 0 (T = 1: the posterior; the gradient-noise
correction beta-hat of Chen et al. is taken as 0, as both releases do in effect). alpha = 1 is
SGLD (Welling and Teh 2011): theta <- theta - eta grad + N(0, 2 eta T / N).

Masks. :meth:`SGHMC.set_mask` ties a parameter to a boolean tensor (held by reference, so a
layer's live ``mask`` buffer is followed): masked entries get no gradient step, no noise, a
zero momentum and stay exactly zero. :meth:`SGHMC.clear_momentum` zeroes the momentum where a
mask turns off (or on), so a reborn weight starts at rest.
"""
from __future__ import annotations

import math

import torch


class SGHMC(torch.optim.Optimizer):
    """SGHMC / SGLD optimiser (eq. above). Param-group keys: ``lr`` (eta), ``alpha`` (friction in
    (0, 1]; 1 = SGLD), ``temperature`` (T >= 0; 0 = SGD with momentum), ``num_data`` (N)."""

    def __init__(self, params, lr: float, alpha: float = 0.1, temperature: float = 1.0,
                 num_data: int = 1):
        if not lr > 0:
            raise ValueError(f"SGHMC: lr={lr!r} must be > 0")
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"SGHMC: alpha={alpha!r} (friction = 1 - momentum) must be in (0, 1]")
        if not temperature >= 0:
            raise ValueError(f"SGHMC: temperature={temperature!r} must be >= 0")
        if int(num_data) < 1:
            raise ValueError(f"SGHMC: num_data={num_data!r} must be a positive integer")
        super().__init__(params, dict(lr=lr, alpha=alpha, temperature=temperature,
                                      num_data=int(num_data)))
        self._masks: dict[int, torch.Tensor] = {}

    # -- masks ----------------------------------------------------------------------------------
    def set_mask(self, param: torch.Tensor, mask: torch.Tensor | None) -> None:
        """Tie ``param`` to the boolean ``mask`` (same shape; None unties it)."""
        if mask is None:
            self._masks.pop(id(param), None)
            return
        if mask.dtype != torch.bool or mask.shape != param.shape:
            raise ValueError(f"SGHMC.set_mask: need a bool mask of shape {tuple(param.shape)}, "
                             f"got {mask.dtype} {tuple(mask.shape)}")
        self._masks[id(param)] = mask

    def clear_momentum(self, param: torch.Tensor, where: torch.Tensor) -> None:
        """Zero the momentum of ``param`` at the entries where ``where`` is True."""
        buf = self.state.get(param, {}).get("momentum")
        if buf is not None:
            buf.masked_fill_(where, 0.0)

    @torch.no_grad()
    def refresh_momentum(self, param: torch.Tensor, where: torch.Tensor) -> None:
        """Draw the momentum of ``param`` at ``where`` from its stationary law N(0, eta T / N)
        (the law of v for a weight that had been sampling all along; exact as eta -> 0), e.g.
        for a weight just born in a reversible-jump move. Zero where ``where`` is False stays."""
        group = next(g for g in self.param_groups if any(p is param for p in g["params"]))
        state = self.state[param]
        if "momentum" not in state:
            state["momentum"] = torch.zeros_like(param)
        std = math.sqrt(group["lr"] * group["temperature"] / group["num_data"])
        v = state["momentum"]
        v.copy_(torch.where(where, torch.randn_like(v) * std, v))

    # -- step -----------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            eta, alpha = group["lr"], group["alpha"]
            temp, n = group["temperature"], group["num_data"]
            noise_std = math.sqrt(2.0 * alpha * eta * temp / n)
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum" not in state:
                    state["momentum"] = torch.zeros_like(p)
                v = state["momentum"]
                v.mul_(1.0 - alpha).add_(p.grad, alpha=-eta)
                if noise_std > 0:
                    v.add_(torch.randn_like(p), alpha=noise_std)
                mask = self._masks.get(id(p))
                if mask is not None:
                    v.masked_fill_(~mask, 0.0)
                p.add_(v)
                if mask is not None:
                    p.masked_fill_(~mask, 0.0)
        return loss
