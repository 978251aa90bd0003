"""VD: sparse variational dropout (Molchanov, Ashukha and Vetrov, ICML 2017).

Which "VD". The SSVI paper's Table 2 cites Louizos et al. (2017) for its "VD" row; the method
implemented here is Molchanov et al. (2017), "Variational Dropout Sparsifies Deep Neural
Networks", the sparse variational dropout the issue asks for. The book states this choice.

The method (equation numbers of Molchanov et al. 2017):

* Posterior, per weight: w = theta * (1 + sqrt(alpha) eps), i.e. q(w) = N(theta, alpha theta^2)
  (eq. 6), trained with the *additive reparameterisation* (Section 4.2, eq. 15): parameters
  ``theta`` (our ``mu``) and ``log_sigma2``, w = theta + sigma eps, and
  log alpha = log sigma^2 - log(theta^2 + 1e-8), clipped to [-8, 8] (the authors' release).
* Prior: the improper log-uniform p(|w|) proportional to 1/|w| (eq. 7). Its KL is approximated
  by the sigmoid fit of eq. 14,
      -KL(q(w) || p(w)) ~ k1 sigmoid(k2 + k3 log alpha) - 0.5 log(1 + 1/alpha) - k1,
  k1 = 0.63576, k2 = 1.87320, k3 = 1.48695 (C = -k1 so -KL -> 0 as alpha -> inf).
* Training: the local reparameterisation trick (eq. 17): pre-activation mean x.theta and
  variance x^2.(alpha theta^2), with alpha from the clipped log alpha.
* Sparsity: a weight with log alpha > 3 (``threshold``) is removed at evaluation (Section 4.3).

Our choices where the paper is silent or differs from this project:

* Training is dense throughout (every weight has its theta and sigma until the end); pruning
  is applied whenever the model is in eval mode (``model.eval()``), so the masks of
  :meth:`VD.masks` are exactly the weights :meth:`VD.predict` uses. BatchNorm, biases and the
  stem stay deterministic point estimates (as in the authors' VGG-like experiments).
* theta starts at Kaiming-normal, log sigma^2 at -10 (the authors' release).
* Objective: mean CE + beta(epoch) * kl_weight * KL_sum / N_train, beta the recipe's warm-up
  min(2 epoch / epochs, 1) when ``cfg.kl_warmup``; kl_weight = 1 is the ELBO.
* Optimiser: Adam, as the paper (Section 5) and its release use; plain SGD hardly moves
  log sigma^2 (its gradient is the KL's, O(1 / N_train) per weight). ``optimizer="sgd"`` uses
  cfg.lr / cfg.momentum instead. Every param group carries ``base_lr`` for the LR schedule.
* Prediction averages ``samples`` softmax outputs, each from one weight draw of the pruned
  posterior shared by the batch ("sample" mode); ``samples=0`` uses theta (the paper's
  deterministic evaluation).

Sparsity and FLOPs. Sparsity = 1 - (weights with log alpha <= threshold) / (all weights of
the converted Conv2d/Linear layers). Training FLOPs: dense every step (Table 2 gives VD the dense
67.1e15), with the LRT's two products per layer (see :meth:`VD.training_flops`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..flops import forward_flops_per_layer
from ..layers import LRT_EPS, BayesConv2d, BayesLayer, BayesLinear
from ..models import ARCHS
from .base import Method, average_draws, flops_dict

K1, K2, K3 = 0.63576, 1.87320, 1.48695


def neg_kl_approx(log_alpha: torch.Tensor) -> torch.Tensor:
    """-KL(N(theta, alpha theta^2) || log-uniform) ~ k1 s(k2 + k3 log a) - 0.5 log(1 + 1/a) - k1
    (Molchanov et al. 2017, eq. 14), elementwise."""
    return K1 * torch.sigmoid(K2 + K3 * log_alpha) - 0.5 * F.softplus(-log_alpha) - K1


class VDLayer(BayesLayer):
    """Mixin over :class:`BayesLayer`: theta = ``mu``, ``log_sigma2``, per-weight log alpha.

    Built deterministic (``rho`` is None); in eval mode (``self.training`` False) every weight
    with log alpha > ``threshold`` is masked out, in every forward mode.
    """

    def _init_vd(self, log_sigma2_init: float, threshold: float, clip: float) -> None:
        self.threshold, self.clip, self.log_sigma2_init = float(threshold), float(clip), \
            float(log_sigma2_init)
        self.log_sigma2 = nn.Parameter(torch.full_like(self.mu, self.log_sigma2_init))

    @property
    def log_alpha(self) -> torch.Tensor:
        """log alpha = log sigma^2 - log(theta^2 + 1e-8), clipped to [-clip, clip]."""
        la = self.log_sigma2 - torch.log(self.mu.square() + 1e-8)
        return la.clamp(-self.clip, self.clip)

    @property
    def sigma(self) -> torch.Tensor:
        """Standard deviation of q(w): sqrt(alpha) |theta| (clipped alpha, as in the LRT)."""
        return torch.exp(0.5 * self.log_alpha) * self.mu.abs()

    def effective_mask(self) -> torch.Tensor:
        """``mask``, and in eval mode also log alpha <= threshold (the pruning of Section 4.3)."""
        if self.training:
            return self.mask
        return self.mask & (self.log_alpha <= self.threshold)

    def kl(self) -> torch.Tensor:
        """Sum over unmasked weights of the approximate KL, -(eq. 14)."""
        kl = -neg_kl_approx(self.log_alpha.float())
        return torch.where(self.mask, kl, torch.zeros_like(kl)).sum()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """mean: x.(theta m); sample: x.((theta + sqrt(alpha)|theta| eps) m); lrt: eq. 17."""
        self._check_input(x)
        m = self.effective_mask().to(self.mu.dtype)
        w_mu = self.mu * m
        if self.mode == "mean":
            return self._op(x, w_mu, self.bias)
        if self.mode == "sample":
            return self._op(x, w_mu + self.sigma * m * torch.randn_like(w_mu), self.bias)
        var_w = torch.exp(self.log_alpha) * self.mu.square() * m
        mean = self._op(x, w_mu, self.bias)
        var = self._op(x * x, var_w, None)
        return mean + torch.sqrt(var + LRT_EPS) * torch.randn_like(mean)

    def extra_repr(self) -> str:
        return f"{tuple(self.mu.shape)}, VD threshold={self.threshold}"


class VDLinear(VDLayer, BayesLinear):
    """Sparse-VD ``nn.Linear``: q(w) = N(theta, alpha theta^2) per weight."""

    def __init__(self, in_features, out_features, bias=True, *, log_sigma2_init=-10.0,
                 threshold=3.0, clip=8.0):
        BayesLinear.__init__(self, in_features, out_features, bias, deterministic=True)
        self._init_vd(log_sigma2_init, threshold, clip)


class VDConv2d(VDLayer, BayesConv2d):
    """Sparse-VD ``nn.Conv2d`` (zero padding): q(w) = N(theta, alpha theta^2) per weight."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, *, log_sigma2_init=-10.0, threshold=3.0, clip=8.0):
        BayesConv2d.__init__(self, in_channels, out_channels, kernel_size, stride, padding,
                             dilation, groups, bias, deterministic=True)
        self._init_vd(log_sigma2_init, threshold, clip)


def vd_layers(model: nn.Module) -> list[tuple[str, VDLayer]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, VDLayer)]


def convert_to_vd(model: nn.Module, **kw) -> nn.Module:
    """Replace every ``nn.Linear`` / ``nn.Conv2d`` of ``model`` in place by its VD twin."""
    for name, child in list(model.named_children()):
        if type(child) is nn.Linear:
            new = VDLinear(child.in_features, child.out_features, child.bias is not None, **kw)
        elif type(child) is nn.Conv2d:
            if child.padding_mode != "zeros" or isinstance(child.padding, str):
                raise ValueError(f"convert_to_vd: {name} needs zero padding given as integers")
            new = VDConv2d(child.in_channels, child.out_channels, child.kernel_size, child.stride,
                           child.padding, child.dilation, child.groups, child.bias is not None,
                           **kw)
        else:
            convert_to_vd(child, **kw)
            continue
        setattr(model, name, new.to(device=child.weight.device, dtype=child.weight.dtype))
    return model


@dataclass(frozen=True)
class VDHparams:
    threshold: float = 3.0          # prune log alpha > threshold (Section 4.3)
    log_sigma2_init: float = -10.0  # authors' release
    clip: float = 8.0               # log alpha clipped to [-clip, clip] (authors' release)
    kl_weight: float = 1.0          # 1 = the ELBO / N_train
    optimizer: str = "adam"         # "adam" (the paper) or "sgd" (cfg.lr, cfg.momentum)
    lr: float = 1e-3                # Adam learning rate (the paper's)

    def __post_init__(self):
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"vd_optimizer={self.optimizer!r}; choose 'adam' or 'sgd'")
        if not (self.clip > 0 and self.lr > 0 and self.kl_weight >= 0):
            raise ValueError("vd_clip and vd_lr must be > 0 and vd_kl_weight >= 0; got "
                             f"{self.clip}, {self.lr}, {self.kl_weight}")


def kl_beta(cfg, epoch: int) -> float:
    """The recipe's warm-up beta = min(2 epoch / epochs, 1) (epoch from 1), 1 without warm-up."""
    if cfg is None or not getattr(cfg, "kl_warmup", False):
        return 1.0
    return min(2.0 * epoch / cfg.epochs, 1.0)


def make_adam_or_sgd(model: nn.Module, cfg, optimizer: str, lr: float) -> torch.optim.Optimizer:
    """Adam at ``lr`` (no weight decay), or SGD at cfg.lr / cfg.momentum with cfg.weight_decay on
    BatchNorm and biases only (the prior regularises theta and sigma). Groups carry ``base_lr``."""
    var = [p for _, m in vd_layers(model) for p in (m.mu, m.log_sigma2)]
    ids = {id(p) for p in var}
    rest = [p for p in model.parameters() if id(p) not in ids]
    if optimizer == "adam":
        opt = torch.optim.Adam([{"params": var}, {"params": rest}], lr=lr)
    else:
        wd = float(getattr(cfg, "weight_decay", 0.0)) if cfg is not None else 0.0
        opt = torch.optim.SGD([{"params": var, "weight_decay": 0.0},
                               {"params": rest, "weight_decay": wd}],
                              lr=getattr(cfg, "lr", 0.01), momentum=getattr(cfg, "momentum", 0.9))
    for g in opt.param_groups:
        g["base_lr"] = g["lr"]
    return opt


class VD(Method):
    """Sparse variational dropout as a :class:`Method` (module docstring)."""

    name = "vd"
    bayesian_eval = True
    Hparams = VDHparams

    def build_model(self, model_name, num_classes, width, cfg=None):
        if model_name not in ARCHS:
            raise ValueError(f"unknown model {model_name!r}; choose one of {', '.join(ARCHS)}")
        hp = self.hp
        model = ARCHS[model_name](num_classes=num_classes, width=width)
        return convert_to_vd(model, log_sigma2_init=hp.log_sigma2_init,
                             threshold=hp.threshold, clip=hp.clip)

    def make_optimizer(self, model, cfg=None):
        return make_adam_or_sgd(model, cfg if cfg is not None else self.cfg, self.hp.optimizer,
                                self.hp.lr)

    def kl(self, model) -> torch.Tensor:
        return torch.stack([m.kl() for _, m in vd_layers(model)]).sum()

    def loss(self, model, logits, y, n_train, step, epoch):
        """mean CE + beta(epoch) * kl_weight * KL_sum / N_train."""
        coef = kl_beta(self.cfg, epoch) * self.hp.kl_weight / n_train
        return F.cross_entropy(logits, y) + coef * self.kl(model)

    def after_step(self, model, step, epoch, batch):
        return None

    @torch.no_grad()
    def predict(self, model, x, samples):
        """Average of ``samples`` softmax outputs of the pruned posterior (0: theta only)."""
        return average_draws(model, x, [m for _, m in vd_layers(model)], samples)

    @torch.no_grad()
    def masks(self, model):
        """{layer name: mask & (log alpha <= threshold)}: the weights predict uses."""
        return {n: m.mask & (m.log_alpha <= m.threshold) for n, m in vd_layers(model)}

    def training_flops(self, model, n_train, epochs, batch_size, history=None,
                       input_shape=(1, 3, 32, 32)):
        per_layer = forward_flops_per_layer(model, input_shape)
        names = [n for n, _ in vd_layers(model)]
        fwd = (2 * sum(per_layer[n] for n in names) + per_layer["other"]) / input_shape[0]
        total = 3.0 * epochs * n_train * fwd
        return flops_dict(total, total, (
            "dense throughout: epochs * n_train * 3 * (2 * sum_l F_l + F_other); F_l the dense "
            "forward FLOPs per image of layer l, 2 for the LRT's mean and variance products, "
            "3 = forward + backward (2x forward)"),
            forward_flops_per_image=fwd)
