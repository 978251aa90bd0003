"""What the two MCMC baselines (AEB, mBNN) share: the store of posterior samples used for
prediction, and the per-step density meter behind their training-FLOPs count.

Prediction (both methods): p(y | x, D) ~ (1/K) sum_k softmax(f(x; theta_k)), theta_k the K stored
states (weights and BatchNorm buffers) of the chain, taken at evenly spaced steps in the last
``sample_frac`` of training (the last step always included). Each sample is evaluated with
``torch.func.functional_call``, so the live model is never overwritten.

Training FLOPs (both methods, Table 2 style: every step at the cost of the masks it ran with):

    FLOPs = n_train * epochs * (1 + bf) * ( sum_l F_l * dbar_l + F_other )

F_l: dense forward FLOPs per image of masked layer l (:func:`ssvi.flops.forward_flops_per_layer`,
a multiply-add = 2 FLOPs); dbar_l: the density of layer l averaged over all training steps,
measured from its mask after every step; F_other: FLOPs outside masked layers; bf = 2 (backward =
2 x forward). No LRT factor: an MCMC step is one ordinary forward/backward. Extra forward
passes a method makes (mBNN's birth-death acceptance) are added by that method.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..flops import forward_flops_per_layer
from ..layers import bayes_layers


def sample_steps(total_steps: int, k: int, sample_frac: float) -> list[int]:
    """K step indices (0-based), evenly spaced over the last ``sample_frac`` of ``total_steps``,
    the last one being ``total_steps - 1``."""
    if total_steps < 1 or k < 1:
        raise ValueError(f"sample_steps: total_steps={total_steps} and k={k} must be >= 1")
    span = max(1, int(math.floor(sample_frac * total_steps)))
    gap = max(1, span // k)
    steps = sorted({max(0, total_steps - 1 - i * gap) for i in range(k)})
    return steps


class PosteriorSamples:
    """K stored chain states and the Bayesian model average over them."""

    def __init__(self, k: int, sample_frac: float):
        if int(k) < 1 or not 0.0 < sample_frac <= 1.0:
            raise ValueError(f"need num_samples >= 1 and sample_frac in (0, 1]; got {k}, "
                             f"{sample_frac}")
        self.k, self.sample_frac = int(k), float(sample_frac)
        self.samples: list[dict[str, torch.Tensor]] = []
        self.steps: list[int] = []

    def maybe_store(self, model: nn.Module, step: int, total_steps: int) -> bool:
        """Store the model's state if ``step`` is one of the sample steps; True if stored."""
        if step not in sample_steps(total_steps, self.k, self.sample_frac):
            return False
        state = {k: v.detach().clone() for k, v in [*model.named_parameters(),
                                                     *model.named_buffers()]}
        self.samples.append(state)
        self.steps.append(int(step))
        if len(self.samples) > self.k:
            self.samples.pop(0)
            self.steps.pop(0)
        return True

    @torch.no_grad()
    def predict(self, model: nn.Module, x: torch.Tensor, samples: int) -> torch.Tensor:
        """Mean softmax over the last min(samples, K) stored states (the live weights if none)."""
        was = model.training
        model.eval()
        try:
            if not self.samples:
                return torch.softmax(model(x).float(), -1)
            use = self.samples[-max(1, int(samples)):]
            return sum(torch.softmax(torch.func.functional_call(model, s, (x,)).float(), -1)
                       for s in use) / len(use)
        finally:
            model.train(was)

    def state_dict(self) -> dict:
        return {"samples": self.samples, "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.samples, self.steps = list(state["samples"]), list(state["steps"])


class DensityMeter:
    """Per-layer mask density summed over training steps (the dbar_l of the FLOPs formula)."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.steps = 0

    @torch.no_grad()
    def record(self, model: nn.Module) -> None:
        for name, layer in bayes_layers(model):
            self.sums[name] = self.sums.get(name, 0.0) + layer.n_active() / layer.mask.numel()
        self.steps += 1

    def record_densities(self, densities: dict[str, float]) -> None:
        """Record one step with the given per-layer densities."""
        for name, d in densities.items():
            self.sums[name] = self.sums.get(name, 0.0) + float(d)
        self.steps += 1

    def mean_densities(self) -> dict[str, float]:
        return {n: s / self.steps for n, s in self.sums.items()} if self.steps else {}

    def state_dict(self) -> dict:
        return {"sums": dict(self.sums), "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.sums, self.steps = dict(state["sums"]), int(state["steps"])


def forward_costs(model: nn.Module, input_shape=(1, 3, 32, 32)) -> tuple[dict[str, float], float]:
    """({layer: dense forward FLOPs per image}, FLOPs per image outside the masked layers)."""
    per = forward_flops_per_layer(model, input_shape)
    b = input_shape[0]
    other = per.pop("other") / b
    return {n: f / b for n, f in per.items()}, other


def mcmc_training_flops(model: nn.Module, n_train: int, epochs: int, densities: dict[str, float],
                        input_shape=(1, 3, 32, 32), backward_factor: float = 2.0) -> float:
    """n_train * epochs * (1 + bf) * (sum_l F_l * densities[l] + F_other) (module docstring)."""
    per, other = forward_costs(model, input_shape)
    fwd = sum(f * densities.get(n, 1.0) for n, f in per.items()) + other
    return float(n_train) * epochs * (1.0 + backward_factor) * fwd
