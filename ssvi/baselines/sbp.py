"""SBP: structured Bayesian pruning (Neklyudov, Molchanov, Ashukha, Vetrov, NeurIPS 2017).

The method (equation numbers of "Structured Bayesian Pruning via Log-Normal Multiplicative
Noise"):

* Every output channel of a convolution and every output neuron of a linear layer is
  multiplied by a noise variable theta > 0 (one per channel, drawn per example, like dropout).
* Prior: the truncated log-uniform, log theta ~ Uniform[a, b] (Section 4.1), a = -20, b = 0.
* Posterior: the truncated log-normal, log theta ~ N(mu, sigma^2) truncated to [a, b] (eq. 11),
  sampled by the inverse-CDF reparameterisation log theta = mu + sigma Phi^-1(Phi(alpha) +
  u (Phi(beta) - Phi(alpha))), u ~ U(0, 1), alpha = (a - mu) / sigma, beta = (b - mu) / sigma.
* KL in closed form (eq. 12; KL is invariant under theta -> log theta, so it is the KL of a
  truncated normal to a uniform):
      KL = log(b - a) - log(sqrt(2 pi e) sigma) - log Z
           - (alpha phi(alpha) - beta phi(beta)) / (2Z),
  Z = Phi(beta) - Phi(alpha).
* Pruning: a channel whose SNR(theta) = E theta / sqrt(Var theta) is below 1 is removed
  (Section 4.3), with E theta^k = exp(k mu + k^2 sigma^2 / 2) (Phi(beta - k sigma) -
  Phi(alpha - k sigma)) / Z.

Our choices:

* Weights underneath are deterministic point estimates (masked deterministic layers of
  :mod:`ssvi.layers`, Kaiming init), trained jointly with the noise from scratch with ordinary
  weight decay (the paper applies SBP on top of a pretrained or Sparse-VD network; we train
  everything at once, as the other rows of Table 2 do). mu starts at 0, log sigma at -5,
  mu and log sigma are clipped to [-20, 5] (the authors' release).
* Placement: the noise multiplies the output of the BatchNorm that directly follows a layer
  (or the layer's own output when no BatchNorm follows), so a removed channel is exactly zero
  downstream of its multiplication. (The authors' VGG script puts it right after the conv, but
  in front of a BatchNorm frozen at pretrained statistics; in front of a BatchNorm in training
  mode, as here, the noise's scale would be normalised away.) Every Conv2d/Linear gets one,
  except the classifier whose output is the network's output. Noise is drawn per example (an
  unbiased estimate of the same ELBO as the authors' per-minibatch draw, with lower variance).
* Objective: mean CE + beta(epoch) * kl_weight * KL_sum / N_train (beta: the recipe's warm-up
  when ``cfg.kl_warmup``). Optimiser: Adam (lr 1e-3) by default, as the KL's gradient on the
  noise parameters is O(1 / N_train) and plain SGD hardly moves them; ``optimizer="sgd"`` uses
  cfg.lr / cfg.momentum.
* Prediction: in eval mode removed channels are multiplied by 0; ``samples >= 1`` averages
  softmax outputs over per-example draws of theta, ``samples = 0`` uses E theta (the paper's
  test-time rule).

Sparsity is counted in WEIGHTS, from :meth:`SBP.masks`: a removed channel c of layer l removes
(i) row c of l's weight (its output is multiplied by 0), and (ii) input column c of every layer
whose input is channel c reached through zero-preserving operations only (ReLU, max/avg
pooling, flatten after global pooling, dropout), found by tracing the network with torch.fx.
Input columns reached through a residual addition are NOT counted as removed (the sum still
carries the shortcut). Both kinds are exactly irrelevant to the prediction. Training FLOPs:
dense every step (Table 2 gives SBP the dense 67.1e15; the elementwise noise is not counted,
like BatchNorm).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from ..flops import forward_flops_per_layer
from ..layers import bayes_layers, bayesianize
from ..models import ARCHS
from .base import Method, average_draws, flops_dict
from .vd import kl_beta

LOG_2PI_E = math.log(2.0 * math.pi * math.e)


def _log_phi_diff(upper: torch.Tensor, lower: torch.Tensor) -> torch.Tensor:
    """log(Phi(upper) - Phi(lower)) for upper > lower, stable in both tails."""
    flip = lower > 0          # right tail: Phi(u) - Phi(l) = Phi(-l) - Phi(-u)
    hi = torch.where(flip, -lower, upper)
    lo = torch.where(flip, -upper, lower)
    log_hi, log_lo = torch.special.log_ndtr(hi), torch.special.log_ndtr(lo)
    return log_hi + torch.log((-torch.expm1(log_lo - log_hi)).clamp_min(1e-300))


def _std_normal_pdf(x: torch.Tensor) -> torch.Tensor:
    return torch.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


def truncated_lognormal_kl(mu, sigma, a: float, b: float) -> torch.Tensor:
    """KL(LogN(mu, sigma^2) truncated to log theta in [a, b] || log-uniform on [a, b]) (eq. 12):
    log(b - a) - log(sqrt(2 pi e) sigma) - log Z - (alpha phi(alpha) - beta phi(beta)) / (2 Z)."""
    alpha, beta = (a - mu) / sigma, (b - mu) / sigma
    log_z = _log_phi_diff(beta, alpha)
    ratio = (alpha * _std_normal_pdf(alpha) - beta * _std_normal_pdf(beta)) * torch.exp(-log_z)
    return math.log(b - a) - torch.log(sigma) - 0.5 * LOG_2PI_E - log_z - 0.5 * ratio


def truncated_lognormal_log_moment(k: int, mu, sigma, a: float, b: float) -> torch.Tensor:
    """log E theta^k = k mu + k^2 sigma^2 / 2 + log(Phi(beta - k sigma) - Phi(alpha - k sigma))
    - log Z, for log theta ~ N(mu, sigma^2) truncated to [a, b]."""
    alpha, beta = (a - mu) / sigma, (b - mu) / sigma
    return (k * mu + 0.5 * k * k * sigma * sigma
            + _log_phi_diff(beta - k * sigma, alpha - k * sigma) - _log_phi_diff(beta, alpha))


def truncated_lognormal_snr(mu, sigma, a: float, b: float) -> torch.Tensor:
    """SNR = E theta / sqrt(Var theta) = 1 / sqrt(E theta^2 / (E theta)^2 - 1) (Section 4.3)."""
    gap = (truncated_lognormal_log_moment(2, mu, sigma, a, b)
           - 2.0 * truncated_lognormal_log_moment(1, mu, sigma, a, b))
    return torch.rsqrt(torch.expm1(gap).clamp_min(1e-300))


def sample_truncated_normal(mu, sigma, a: float, b: float, u: torch.Tensor) -> torch.Tensor:
    """mu + sigma Phi^-1(Phi(alpha) + u (Phi(beta) - Phi(alpha))), clamped to [a, b]."""
    alpha, beta = (a - mu) / sigma, (b - mu) / sigma
    pa, pb = torch.special.ndtr(alpha), torch.special.ndtr(beta)
    gamma = (pa + u * (pb - pa)).clamp(1e-12, 1.0 - 1e-12)
    return (mu + sigma * torch.special.ndtri(gamma)).clamp(a, b)


class SBPNoise(nn.Module):
    """Multiplicative truncated log-normal noise on dim 1 (channels / neurons) of its input.

    Training mode: x * theta, theta drawn per (example, channel). Eval mode: channels with
    SNR < threshold are multiplied by 0, the others by a draw (``mode="sample"``) or by
    E theta (``mode="mean"``). Parameters ``mu`` and ``log_sigma`` (one per channel).
    """

    def __init__(self, channels: int, a: float = -20.0, b: float = 0.0, threshold: float = 1.0,
                 mu_init: float = 0.0, log_sigma_init: float = -5.0):
        super().__init__()
        if not a < b:
            raise ValueError(f"SBP truncation needs a < b, got a={a}, b={b}")
        self.a, self.b, self.threshold = float(a), float(b), float(threshold)
        self.mu = nn.Parameter(torch.full((channels,), float(mu_init)))
        self.log_sigma = nn.Parameter(torch.full((channels,), float(log_sigma_init)))
        self.mode = "sample"

    def params64(self):
        """(mu, sigma) clipped to [-20, 5] (authors' release), in float64."""
        mu = self.mu.double().clamp(-20.0, 5.0)
        sigma = torch.exp(self.log_sigma.double().clamp(-20.0, 5.0))
        return mu, sigma

    def kl(self) -> torch.Tensor:
        mu, sigma = self.params64()
        return truncated_lognormal_kl(mu, sigma, self.a, self.b).sum().float()

    def snr(self) -> torch.Tensor:
        mu, sigma = self.params64()
        return truncated_lognormal_snr(mu, sigma, self.a, self.b)

    def keep(self) -> torch.Tensor:
        """Boolean (channels,): SNR >= threshold (kept at evaluation)."""
        return self.snr() >= self.threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "meta":       # shape-only passes (FLOP counting)
            return x
        if x.dim() < 2 or x.shape[1] != self.mu.numel():
            raise ValueError(f"SBPNoise expects (N, {self.mu.numel()}, ...), got {tuple(x.shape)}")
        mu, sigma = self.params64()
        if self.training or self.mode == "sample":
            u = torch.rand(x.shape[0], mu.numel(), dtype=torch.float64, device=x.device)
            theta = torch.exp(sample_truncated_normal(mu, sigma, self.a, self.b, u))
        else:
            theta = torch.exp(truncated_lognormal_log_moment(1, mu, sigma, self.a, self.b))
            theta = theta.expand(x.shape[0], -1)
        if not self.training:
            theta = theta * self.keep().to(theta.dtype)
        return x * theta.to(x.dtype).reshape(*theta.shape, *([1] * (x.dim() - 2)))

    def extra_repr(self) -> str:
        return f"{self.mu.numel()}, a={self.a}, b={self.b}, threshold={self.threshold}"


def _apply_sbp(module, args, output):
    """Forward hook: the module's output times its ``sbp`` noise."""
    return module.sbp(output)


_ZERO_PRESERVING_FUNCS = {"relu", "relu_", "max_pool2d", "_max_pool2d", "avg_pool2d",
                          "adaptive_avg_pool2d", "adaptive_max_pool2d", "_adaptive_max_pool2d",
                          "flatten", "dropout"}
_ZERO_PRESERVING_MODULES = (nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
                            nn.AdaptiveMaxPool2d, nn.Flatten, nn.Dropout, nn.Identity)


def plan_sbp(model: nn.Module) -> tuple[dict, dict]:
    """Trace a plain network (nn.Conv2d / nn.Linear) and decide where SBP noise goes.

    Returns ``sites`` {layer name: module name whose output gets the noise (the BatchNorm right
    after the layer, else the layer)} and ``consumers`` {layer name: producing layer name} for
    layers whose whole input is a noisy channel map reached through zero-preserving ops only.
    """
    gm = fx.symbolic_trace(model)
    mods = dict(gm.named_modules())
    is_layer = lambda n: n.op == "call_module" and type(mods[n.target]) in (nn.Conv2d, nn.Linear)
    sites, site_of_node, width = {}, {}, {}
    for n in gm.graph.nodes:
        if not is_layer(n):
            continue
        users = list(n.users)
        site = n
        if (len(users) == 1 and users[0].op == "call_module"
                and isinstance(mods[users[0].target], (nn.BatchNorm1d, nn.BatchNorm2d))):
            site = users[0]
        if any(u.op == "output" for u in site.users):
            continue                      # the classifier: its outputs are the network's outputs
        layer = mods[n.target]
        sites[n.target] = site.target
        site_of_node[site] = n.target
        width[n.target] = layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features

    def zero_preserving(n) -> bool:
        if n.op == "call_module":
            return isinstance(mods[n.target], _ZERO_PRESERVING_MODULES)
        if n.op in ("call_function", "call_method"):
            name = n.target if n.op == "call_method" else getattr(n.target, "__name__", "")
            return name in _ZERO_PRESERVING_FUNCS
        return False

    consumers = {}
    for n in gm.graph.nodes:
        if not is_layer(n) or not n.args or not isinstance(n.args[0], fx.Node):
            continue
        layer = mods[n.target]
        cur = n.args[0]
        while cur not in site_of_node and zero_preserving(cur) and cur.args \
                and isinstance(cur.args[0], fx.Node):
            cur = cur.args[0]
        if cur not in site_of_node:
            continue
        producer = site_of_node[cur]
        fan_in = layer.in_channels if isinstance(layer, nn.Conv2d) else layer.in_features
        if fan_in == width[producer] and getattr(layer, "groups", 1) == 1:
            consumers[n.target] = producer
    return sites, consumers


@dataclass(frozen=True)
class SBPHparams:
    a: float = -20.0                # log theta truncation (Section 4.1)
    b: float = 0.0
    threshold: float = 1.0          # remove channels with SNR < threshold (Section 4.3)
    mu_init: float = 0.0            # authors' release
    log_sigma_init: float = -5.0    # authors' release
    kl_weight: float = 1.0          # 1 = the ELBO / N_train
    optimizer: str = "adam"         # "adam" or "sgd" (cfg.lr, cfg.momentum)
    lr: float = 1e-3                # Adam learning rate

    def __post_init__(self):
        if not self.a < self.b:
            raise ValueError(f"sbp_a={self.a} must be < sbp_b={self.b}")
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"sbp_optimizer={self.optimizer!r}; choose 'adam' or 'sgd'")
        if not (self.lr > 0 and self.kl_weight >= 0 and self.threshold >= 0):
            raise ValueError("sbp_lr must be > 0, sbp_kl_weight and sbp_threshold >= 0; got "
                             f"{self.lr}, {self.kl_weight}, {self.threshold}")


def sbp_modules(model: nn.Module) -> list[tuple[str, SBPNoise]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, SBPNoise)]


class SBP(Method):
    """Structured Bayesian pruning as a :class:`Method` (module docstring)."""

    name = "sbp"
    bayesian_eval = True
    Hparams = SBPHparams

    def __init__(self, cfg=None):
        super().__init__(cfg)
        self.sites: dict[str, str] = {}
        self.consumers: dict[str, str] = {}

    def build_model(self, model_name, num_classes, width, cfg=None):
        if model_name not in ARCHS:
            raise ValueError(f"unknown model {model_name!r}; choose one of {', '.join(ARCHS)}")
        model = ARCHS[model_name](num_classes=num_classes, width=width)
        return self.convert(model)

    def convert(self, model: nn.Module) -> nn.Module:
        """Plan on the plain network, make its layers masked-deterministic, attach the noise."""
        hp = self.hp
        self.sites, self.consumers = plan_sbp(model)
        bayesianize(model, deterministic=True)
        layers = dict(bayes_layers(model))
        for layer, site in self.sites.items():
            host = model.get_submodule(site)
            host.sbp = SBPNoise(layers[layer].mu.shape[0], hp.a, hp.b, hp.threshold,
                                hp.mu_init, hp.log_sigma_init).to(layers[layer].mu.device)
            host.register_forward_hook(_apply_sbp)
        return model

    def make_optimizer(self, model, cfg=None):
        cfg = cfg if cfg is not None else self.cfg
        noise = [p for _, m in sbp_modules(model) for p in m.parameters()]
        ids = {id(p) for p in noise}
        rest = [p for p in model.parameters() if id(p) not in ids]
        wd = float(getattr(cfg, "weight_decay", 0.0)) if cfg is not None else 0.0
        groups = [{"params": noise, "weight_decay": 0.0}, {"params": rest, "weight_decay": wd}]
        if self.hp.optimizer == "adam":
            opt = torch.optim.Adam(groups, lr=self.hp.lr)
        else:
            opt = torch.optim.SGD(groups, lr=getattr(cfg, "lr", 0.01),
                                  momentum=getattr(cfg, "momentum", 0.9))
        for g in opt.param_groups:
            g["base_lr"] = g["lr"]
        return opt

    def kl(self, model) -> torch.Tensor:
        return torch.stack([m.kl() for _, m in sbp_modules(model)]).sum()

    def loss(self, model, logits, y, n_train, step, epoch):
        """mean CE + beta(epoch) * kl_weight * KL_sum / N_train (KL of eq. 12 over channels)."""
        coef = kl_beta(self.cfg, epoch) * self.hp.kl_weight / n_train
        return F.cross_entropy(logits, y) + coef * self.kl(model)

    @torch.no_grad()
    def predict(self, model, x, samples):
        """Pruned network; average of ``samples`` softmax outputs over theta draws (0: E theta)."""
        return average_draws(model, x, [m for _, m in sbp_modules(model)], samples)

    @torch.no_grad()
    def channel_keep(self, model) -> dict[str, torch.Tensor]:
        """{layer name: boolean (out_channels,)}: SNR >= threshold, for layers with noise."""
        return {layer: model.get_submodule(site).sbp.keep() for layer, site in self.sites.items()}

    @torch.no_grad()
    def masks(self, model):
        """Per-layer weight masks: rows of removed channels and, where exact, their consumers'
        input columns (module docstring)."""
        keep = self.channel_keep(model)
        out = {}
        for name, layer in bayes_layers(model):
            m = layer.mask.clone()
            if name in keep:
                m &= keep[name].to(m.device).view(-1, *([1] * (m.dim() - 1)))
            if name in self.consumers:
                m &= keep[self.consumers[name]].to(m.device).view(1, -1, *([1] * (m.dim() - 2)))
            out[name] = m
        return out

    def training_flops(self, model, n_train, epochs, batch_size, history=None,
                       input_shape=(1, 3, 32, 32)):
        per_layer = forward_flops_per_layer(model, input_shape)
        fwd = sum(per_layer.values()) / input_shape[0]
        total = 3.0 * epochs * n_train * fwd
        return flops_dict(total, total, (
            "dense throughout: epochs * n_train * 3 * (sum_l F_l + F_other); F_l the dense "
            "forward FLOPs per image of layer l (deterministic weights, one product), "
            "3 = forward + backward (2x forward); the elementwise noise is not counted"),
            forward_flops_per_image=fwd)

    def state_dict(self) -> dict:
        return {"sites": dict(self.sites), "consumers": dict(self.consumers)}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.sites, self.consumers = dict(state["sites"]), dict(state["consumers"])
