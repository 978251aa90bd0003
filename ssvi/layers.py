"""Mean-field Gaussian layers with an explicit sparsity mask (paper Section 3.1-3.2).

Each weight i has a variational mean ``mu_i`` and ``sigma_i = softplus(rho_i)`` and a boolean
``mask_i`` (gamma_i in eq. 3). Inactive weights (mask False) are exactly zero in every forward
mode, so their mu and rho have no effect on any output, receive zero gradient, and add nothing
to the KL.

Forward modes (set with :func:`set_mode` or the :func:`mode` context manager):

* ``"lrt"``: local reparameterisation, eq. 4. One epsilon per output element; the training default.
* ``"mean"``: the mean weights ``mu``.
* ``"sample"``: one full weight draw shared by the whole batch (the paper's evaluation protocol).

A layer built with ``deterministic=True`` has no rho at all: it is a plain masked layer, used for
the deterministic RigL baseline through the same subspace controller.
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

MODES = ("lrt", "mean", "sample")
LRT_EPS = 1e-8  # added under the square root of eq. 4, as in the authors' release


def inverse_softplus(sigma: torch.Tensor) -> torch.Tensor:
    """rho such that softplus(rho) = sigma, stable for tiny and large sigma."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    return sigma + torch.log(-torch.expm1(-sigma))


def gaussian_kl(mu: torch.Tensor, sigma: torch.Tensor, prior_sigma: float) -> torch.Tensor:
    """Elementwise KL(N(mu, sigma^2) || N(0, prior_sigma^2)), the summand of eq. 1."""
    return (math.log(prior_sigma) - torch.log(sigma)
            + (sigma.square() + mu.square()) / (2.0 * prior_sigma ** 2) - 0.5)


class BayesLayer(nn.Module):
    """Base of :class:`BayesLinear` and :class:`BayesConv2d`; subclasses define ``_op``."""

    def __init__(self, weight_shape, bias: bool, *, prior_sigma: float = 0.005,
                 mu_init_std: float = 0.01, sigma_init: tuple[float, float] = (0.0006, 0.0005),
                 deterministic: bool = False):
        super().__init__()
        if prior_sigma <= 0:
            raise ValueError(f"prior_sigma must be > 0, got {prior_sigma}")
        self.prior_sigma = float(prior_sigma)
        self.mu_init_std = float(mu_init_std)
        self.sigma_init = tuple(float(s) for s in sigma_init)
        self.deterministic = bool(deterministic)
        self.mu = nn.Parameter(torch.empty(weight_shape))
        self.rho = None if deterministic else nn.Parameter(torch.empty(weight_shape))
        self.bias = nn.Parameter(torch.zeros(weight_shape[0])) if bias else None
        self.register_buffer("mask", torch.ones(weight_shape, dtype=torch.bool))
        self.mode = "lrt"
        self.capture_grad = False   # set by the subspace controller to read dL/dw (eq. 9)
        self.weight_for_grad = None  # the masked mean weight of the last forward when capturing
        self.reset_parameters()

    # -- parameters -----------------------------------------------------------------------------
    def reset_parameters(self) -> None:
        """Recipe init: mu ~ N(0, mu_init_std^2), sigma0 = |N(m, s^2)|, rho = softplus^-1(sigma0)."""
        with torch.no_grad():
            if self.deterministic:
                nn.init.kaiming_normal_(self.mu, nonlinearity="relu")
            else:
                self.mu.normal_(0.0, self.mu_init_std)
                m, s = self.sigma_init
                sigma0 = (torch.randn_like(self.mu) * s + m).abs().clamp_min(1e-12)
                self.rho.copy_(inverse_softplus(sigma0).to(self.rho.dtype))
            self.mu.masked_fill_(~self.mask, 0.0)
            if self.rho is not None:
                self.rho.masked_fill_(~self.mask, 0.0)
            if self.bias is not None:
                self.bias.zero_()

    @property
    def sigma(self) -> torch.Tensor:
        """sigma = softplus(rho) (zero everywhere for a deterministic layer)."""
        if self.rho is None:
            return torch.zeros_like(self.mu)
        return F.softplus(self.rho)

    def n_active(self) -> int:
        return int(self.mask.sum())

    def kl(self) -> torch.Tensor:
        """Closed-form KL to N(0, prior_sigma^2), summed over active weights (eq. 3), in fp32+."""
        if self.rho is None:
            return self.mu.new_zeros(())
        dtype = torch.promote_types(self.mu.dtype, torch.float32)
        mu, rho = self.mu.to(dtype), self.rho.to(dtype)
        sigma = F.softplus(rho)
        kl = gaussian_kl(mu, sigma, self.prior_sigma)
        return torch.where(self.mask, kl, torch.zeros_like(kl)).sum()

    # -- forward --------------------------------------------------------------------------------
    def _op(self, x: torch.Tensor, w: torch.Tensor, b) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def _check_input(self, x: torch.Tensor) -> None:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """y = mu.x (mean), eq. 4 (lrt) or theta.x with one shared theta ~ q (sample)."""
        self._check_input(x)
        mask = self.mask.to(self.mu.dtype)
        w_mu = self.mu * mask
        if self.capture_grad:
            w_mu.retain_grad()
            self.weight_for_grad = w_mu
        if self.rho is None or self.mode == "mean":
            return self._op(x, w_mu, self.bias)
        var_w = F.softplus(self.rho).square() * mask
        if self.mode == "sample":
            # softplus(rho) * mask, not sqrt(var_w): sqrt'(0) = inf would give NaN gradients
            w = w_mu + F.softplus(self.rho) * mask * torch.randn_like(w_mu)
            return self._op(x, w, self.bias)
        mean = self._op(x, w_mu, self.bias)
        var = self._op(x * x, var_w, None)
        # the square root and the noise in fp32 (at least) even under bf16 autocast
        dt = torch.promote_types(mean.dtype, torch.float32)
        return (mean.to(dt) + torch.sqrt(var.to(dt) + LRT_EPS)
                * torch.randn_like(mean, dtype=dt)).to(mean.dtype)

    def extra_repr(self) -> str:
        kind = "deterministic" if self.deterministic else f"prior_sigma={self.prior_sigma}"
        return f"{tuple(self.mu.shape)}, {kind}, density={self.mask.float().mean().item():.3f}"


class BayesLinear(BayesLayer):
    """Bayesian ``nn.Linear``: weight (out_features, in_features) ~ N(mu, sigma^2), masked."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, **kw):
        self.in_features, self.out_features = int(in_features), int(out_features)
        super().__init__((self.out_features, self.in_features), bias, **kw)

    def _op(self, x, w, b):
        return F.linear(x, w, b)

    def _check_input(self, x):
        if x.dim() < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"BayesLinear expects input (..., {self.in_features}), "
                             f"got shape {tuple(x.shape)}")


class BayesConv2d(BayesLayer):
    """Bayesian ``nn.Conv2d`` (zero padding): weight (out, in/groups, kh, kw), masked."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, **kw):
        kh, kw_ = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = (int(kh), int(kw_))
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        super().__init__((out_channels, in_channels // groups, kh, kw_), bias, **kw)

    def _op(self, x, w, b):
        return F.conv2d(x, w, b, self.stride, self.padding, self.dilation, self.groups)

    def _check_input(self, x):
        if x.dim() not in (3, 4) or x.shape[-3] != self.in_channels:
            raise ValueError(f"BayesConv2d expects input (N, {self.in_channels}, H, W), "
                             f"got shape {tuple(x.shape)}")


# -- whole-model helpers ----------------------------------------------------------------------------
def bayes_layers(model: nn.Module) -> list[tuple[str, BayesLayer]]:
    """The (name, layer) pairs of every BayesLayer in ``model``, in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, BayesLayer)]


def kl(model: nn.Module) -> torch.Tensor:
    """Sum of the closed-form KL over every Bayesian layer (the first term of eq. 1/3)."""
    terms = [m.kl() for _, m in bayes_layers(model)]
    if not terms:
        raise ValueError("kl(model): the model has no ssvi Bayesian layers; "
                         "call ssvi.bayesianize(model) first")
    return torch.stack(terms).sum()


def set_mode(model: nn.Module, mode_name: str) -> None:
    """Set the forward mode ("lrt", "mean" or "sample") of every Bayesian layer."""
    if mode_name not in MODES:
        raise ValueError(f"unknown forward mode {mode_name!r}; allowed: {', '.join(MODES)}")
    for _, m in bayes_layers(model):
        m.mode = mode_name


@contextlib.contextmanager
def mode(model: nn.Module, mode_name: str):
    """Context manager: run ``model`` in ``mode_name``, restoring each layer's mode afterwards."""
    layers = bayes_layers(model)
    old = [m.mode for _, m in layers]
    set_mode(model, mode_name)
    try:
        yield model
    finally:
        for (_, m), o in zip(layers, old):
            m.mode = o


def bayesianize(model: nn.Module, *, prior_sigma: float = 0.005, mu_init_std: float = 0.01,
                sigma_init: tuple[float, float] = (0.0006, 0.0005), deterministic: bool = False,
                keep_weights: bool = False, skip: tuple[str, ...] = ()) -> nn.Module:
    """Replace every ``nn.Linear`` / ``nn.Conv2d`` of ``model`` in place by its Bayesian twin.

    BatchNorm and every other module stay deterministic; a layer's bias stays deterministic.
    ``keep_weights=True`` starts mu at the existing weights (e.g. a pretrained model).
    ``skip`` lists module names (as in ``named_modules``) to leave untouched.
    Returns the same model object.
    """
    kw = dict(prior_sigma=prior_sigma, mu_init_std=mu_init_std, sigma_init=sigma_init,
              deterministic=deterministic)

    def convert(parent: nn.Module, prefix: str) -> None:
        for name, child in list(parent.named_children()):
            full = f"{prefix}.{name}" if prefix else name
            if full in skip or isinstance(child, BayesLayer):
                continue
            if type(child) is nn.Linear:
                new = BayesLinear(child.in_features, child.out_features,
                                  bias=child.bias is not None, **kw)
            elif type(child) is nn.Conv2d:
                if child.padding_mode != "zeros":
                    raise ValueError(f"bayesianize: {full} uses padding_mode="
                                     f"{child.padding_mode!r}; only 'zeros' is supported")
                padding = child.padding
                if isinstance(padding, str) and padding != "valid":
                    raise ValueError(f"bayesianize: {full} uses padding={padding!r}; "
                                     "give explicit integer padding")
                new = BayesConv2d(child.in_channels, child.out_channels, child.kernel_size,
                                  child.stride, 0 if padding == "valid" else padding,
                                  child.dilation, child.groups, bias=child.bias is not None, **kw)
            else:
                convert(child, full)
                continue
            new = new.to(device=child.weight.device, dtype=child.weight.dtype)
            if keep_weights:
                with torch.no_grad():
                    new.mu.copy_(child.weight)
                    if child.bias is not None:
                        new.bias.copy_(child.bias)
            setattr(parent, name, new)

    if type(model) in (nn.Linear, nn.Conv2d):
        raise ValueError("bayesianize converts layers inside a container in place; wrap a single "
                         "layer first, e.g. bayesianize(nn.Sequential(layer))")
    convert(model, "")
    if not bayes_layers(model):
        raise ValueError("bayesianize: the model has no nn.Linear or nn.Conv2d layer to convert")
    return model
