"""FLOP and parameter counting: the "Training FLOPs" and "Complexity" columns of Tables 1-2.

Convention. FLOPs are counted by :class:`torch.utils.flop_counter.FlopCounterMode`, which counts a
multiply-add as **2 FLOPs** and counts only matrix products and convolutions (BatchNorm, ReLU,
pooling and other elementwise work count 0; so do bias additions). "MACs" below are FLOPs / 2.

Training FLOPs of a run (see :func:`training_flops` for the exact formula) charge every masked
layer its dense forward FLOPs times its density, twice for a Bayesian layer trained with the
local reparameterisation trick (eq. 4: one convolution of x with mu, one of x^2 with sigma^2),
and a backward pass of ``backward_factor`` times the forward (2 by the usual rule: one product
for the input gradient, one for the weight gradient). With ``backward_factor=2`` this is the
familiar "6 x forward MACs x 2 (LRT) x images" count; the paper's dense CIFAR-10 figure,
1.1e17, is larger than that (about 6.7e16 for ResNet-18, 50k images, 200 epochs), and the
paper does not say how it counted. :func:`flops_report` returns both so the book can show both.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from .layers import BayesLayer, bayes_layers, mode

# Dense-BNN training FLOPs the paper reports (Table 1, ResNet-18, 200 epochs, 50k images).
PAPER_DENSE_TRAINING_FLOPS = {"cifar10": 1.1e17, "cifar100": 1.2e17}


def _layers_or_raise(model: nn.Module, caller: str) -> list[tuple[str, BayesLayer]]:
    layers = bayes_layers(model)
    if not layers:
        raise ValueError(f"{caller}: the model has no ssvi Bayesian/masked layers; build it with "
                         "ssvi.models.build_model or call ssvi.bayesianize first")
    return layers


def _on_meta(t: torch.Tensor) -> torch.Tensor:
    return torch.empty(t.shape, dtype=t.dtype, device="meta")


def forward_flops_per_layer(model: nn.Module, input_shape=(1, 3, 32, 32)) -> dict[str, int]:
    """Dense forward FLOPs (2 per multiply-add) of one forward pass on an input of ``input_shape``.

    Returns ``{layer_name: flops}`` for every ssvi Bayesian/masked layer (names as in
    ``model.named_modules()``), plus ``"other"``: what FlopCounterMode counts outside those layers
    (unconverted convolutions / matrix products; BN, pooling and activations count 0).
    Each layer is charged the FLOPs of its own dense convolution / linear map, as in "mean" mode:
    the mask is ignored (density is applied by :func:`training_flops`) and the LRT variance
    convolution is not counted here. The pass runs on the "meta" device (shapes only, no
    arithmetic) in eval mode; the model itself is left untouched.
    """
    layers = _layers_or_raise(model, "forward_flops_per_layer")
    input_shape = tuple(int(s) for s in input_shape)
    seen: dict[str, list[torch.Size]] = {name: [] for name, _ in layers}

    def recorder(name):
        def hook(_module, args):
            seen[name].append(args[0].shape)
        return hook

    first = next(iter(model.parameters()))
    state = {k: _on_meta(v) for k, v in [*model.named_parameters(), *model.named_buffers()]}
    handles = [m.register_forward_pre_hook(recorder(name)) for name, m in layers]
    was_training = model.training
    captures = [m.capture_grad for _, m in layers]
    for _, m in layers:
        m.capture_grad = False
    model.eval()
    try:
        with torch.no_grad(), mode(model, "mean"), FlopCounterMode(display=False) as whole:
            x = torch.empty(input_shape, dtype=first.dtype, device="meta")
            torch.func.functional_call(model, state, (x,))
    finally:
        for h in handles:
            h.remove()
        for (_, m), c in zip(layers, captures):
            m.capture_grad = c
        model.train(was_training)
    per_layer = {}
    with torch.no_grad():
        for name, m in layers:
            w = _on_meta(m.mu)
            b = None if m.bias is None else _on_meta(m.bias)
            flops = 0
            for shape in seen[name]:   # a module called twice is charged twice
                with FlopCounterMode(display=False) as one:
                    m._op(torch.empty(shape, dtype=w.dtype, device="meta"), w, b)
                flops += one.get_total_flops()
            per_layer[name] = int(flops)
    per_layer["other"] = int(whole.get_total_flops()) - sum(per_layer.values())
    return per_layer


def _densities(layers, densities) -> dict[str, float]:
    """Per-layer density: current mask density, overridden by a float or a {name: density} dict."""
    def current(m):
        return m.n_active() / m.mask.numel()

    if densities is None:
        return {name: current(m) for name, m in layers}
    if isinstance(densities, (int, float)):
        values = {name: float(densities) for name, _ in layers}
    else:
        names = [name for name, _ in layers]
        unknown = sorted(set(densities) - set(names))
        if unknown:
            raise ValueError(f"densities names unknown layers {unknown}; "
                             f"the masked layers are {names}")
        values = {name: float(densities[name]) if name in densities else current(m)
                  for name, m in layers}
    bad = {k: v for k, v in values.items() if not 0.0 <= v <= 1.0}
    if bad:
        raise ValueError(f"densities must lie in [0, 1], got {bad}")
    return values


def _training_flops(layers, per_layer, batch, n_train, epochs, densities, lrt, backward_factor,
                    update_every, batch_size, t_end_frac) -> float:
    if n_train <= 0 or epochs <= 0:
        raise ValueError(f"n_train and epochs must be positive, got {n_train} and {epochs}")
    if backward_factor < 0:
        raise ValueError(f"backward_factor must be >= 0, got {backward_factor}")
    dens = _densities(layers, densities)
    lrt_factor = {name: 2 if (lrt and m.rho is not None) else 1 for name, m in layers}
    fwd_sparse = sum(per_layer[n] * dens[n] * lrt_factor[n] for n, _ in layers) + per_layer["other"]
    total = epochs * n_train * fwd_sparse / batch * (1.0 + backward_factor)
    if update_every is not None:
        if update_every <= 0 or batch_size <= 0 or not 0.0 <= t_end_frac <= 1.0:
            raise ValueError("update_every and batch_size must be positive and t_end_frac in "
                             f"[0, 1]; got {update_every}, {batch_size}, {t_end_frac}")
        steps = epochs * math.ceil(n_train / batch_size)
        n_updates = math.floor(t_end_frac * steps / update_every)
        fwd_dense = sum(per_layer[n] * lrt_factor[n] for n, _ in layers) + per_layer["other"]
        total += n_updates * batch_size * fwd_dense / batch * (1.0 + backward_factor)
    return float(total)


def training_flops(model: nn.Module, n_train: int, epochs: int, input_shape=(1, 3, 32, 32),
                   densities=None, lrt: bool = True, backward_factor: float = 2.0,
                   update_every: int | None = None, batch_size: int = 128,
                   t_end_frac: float = 1.0) -> float:
    """Total training FLOPs (2 FLOPs per multiply-add), the "Training FLOPs" of Tables 1-2:

        epochs * n_train * ( sum_l F_l * d_l * c_l  +  F_other ) * (1 + backward_factor)

    F_l: dense forward FLOPs per image of masked layer l (:func:`forward_flops_per_layer` divided
    by ``input_shape[0]``); d_l: its density, by default the current ``mask`` density, or
    ``densities`` (one float for all layers, or a {name: density} dict, e.g. the time-averaged
    density; layers it leaves out keep their current density); c_l = 2 when ``lrt`` and the layer
    is Bayesian (mean and variance convolution of eq. 4), else 1 (deterministic layers, rho None);
    F_other: FLOPs counted outside the masked layers (dense, c = 1).

    Mask updates (Algorithm 1): with ``update_every`` = Delta T, add one dense (d_l = 1) forward
    and backward of one batch of ``batch_size`` images, with the same c_l, every Delta T steps up
    to ``t_end_frac`` of the ``epochs * ceil(n_train / batch_size)`` steps:
    floor(t_end_frac * steps / Delta T) * batch_size * (sum_l F_l c_l + F_other) * (1 + bf).
    """
    layers = _layers_or_raise(model, "training_flops")
    per_layer = forward_flops_per_layer(model, input_shape)
    return _training_flops(layers, per_layer, input_shape[0], n_train, epochs, densities, lrt,
                           backward_factor, update_every, batch_size, t_end_frac)


def flops_report(model: nn.Module, n_train: int, epochs: int, input_shape=(1, 3, 32, 32),
                 densities=None, lrt: bool = True, backward_factor: float = 2.0,
                 update_every: int | None = None, batch_size: int = 128,
                 t_end_frac: float = 1.0) -> dict:
    """Our training-FLOPs count next to its dense equivalent and the paper's reported figures.

    Keys: ``training_flops`` (:func:`training_flops` at the given/current densities),
    ``dense_training_flops`` (same formula, every d_l = 1, no mask-update overhead),
    ``relative`` (their ratio, the "0.10x" of Table 1), ``forward_flops_per_image`` and
    ``forward_macs_per_image`` (dense, mean mode, no LRT), ``paper_dense_training_flops``
    (Table 1's dense figures, for CIFAR-10/100 ResNet-18, 50k images, 200 epochs) and
    ``convention`` (a sentence saying how ours is counted).
    """
    layers = _layers_or_raise(model, "flops_report")
    per_layer = forward_flops_per_layer(model, input_shape)
    batch = input_shape[0]
    ours = _training_flops(layers, per_layer, batch, n_train, epochs, densities, lrt,
                           backward_factor, update_every, batch_size, t_end_frac)
    dense = _training_flops(layers, per_layer, batch, n_train, epochs, 1.0, lrt,
                            backward_factor, None, batch_size, t_end_frac)
    fwd = sum(per_layer.values()) / batch
    return {
        "training_flops": ours,
        "dense_training_flops": dense,
        "relative": ours / dense,
        "forward_flops_per_image": fwd,
        "forward_macs_per_image": fwd / 2.0,
        "n_train": int(n_train),
        "epochs": int(epochs),
        "lrt": bool(lrt),
        "backward_factor": float(backward_factor),
        "update_every": update_every,
        "paper_dense_training_flops": dict(PAPER_DENSE_TRAINING_FLOPS),
        "convention": ("FlopCounterMode FLOPs (multiply-add = 2); per image: sum over masked "
                       "layers of dense forward FLOPs x density x (2 for an LRT Bayesian layer, "
                       f"else 1), times (1 + {backward_factor:g}) for the backward pass; "
                       "BN, activations and pooling not counted"
                       + ("; plus one dense forward+backward batch every "
                          f"{update_every} steps for mask updates" if update_every else "")),
    }


def active_weights(model: nn.Module) -> int:
    """Number of active weights, sum of every masked layer's mask: the "Complexity" of Table 2."""
    return sum(m.n_active() for _, m in _layers_or_raise(model, "active_weights"))


def count_parameters(model: nn.Module) -> dict:
    """Weight and parameter counts of a model with ssvi masked layers.

    ``active_weights`` (sum of masks, Table 2's "Complexity"), ``total_weights`` (numel of the
    masked weight tensors), ``density`` (their ratio), ``variational_params`` (2 per active weight
    of a Bayesian layer: mu and rho), ``deterministic_weights`` (active weights of deterministic
    masked layers, e.g. RigL), ``other_params`` (every other parameter: BN affine, biases, layers
    left unconverted).
    """
    layers = _layers_or_raise(model, "count_parameters")
    active = sum(m.n_active() for _, m in layers)
    total = sum(m.mask.numel() for _, m in layers)
    weight_params = {id(m.mu) for _, m in layers} | {id(m.rho) for _, m in layers
                                                     if m.rho is not None}
    return {
        "active_weights": active,
        "total_weights": total,
        "density": active / total,
        "variational_params": 2 * sum(m.n_active() for _, m in layers if m.rho is not None),
        "deterministic_weights": sum(m.n_active() for _, m in layers if m.rho is None),
        "other_params": sum(p.numel() for p in model.parameters() if id(p) not in weight_params),
    }


# Table 1's relative training FLOPs of SSVI against the dense BNN, by density (1 - sparsity).
PAPER_RELATIVE_TRAINING_FLOPS = {1.0: 1.0, 0.1: 0.10, 0.05: 0.05}


def analytic_training_flops(model: str = "resnet18", densities=(1.0, 0.1, 0.05), *,
                            width: float = 1.0, num_classes: int = 10, n_train: int = 50_000,
                            epochs: int = 200, batch_size: int = 128, update_every: int = 100,
                            t_end_frac: float = 0.75, first_layer_dense: bool = True,
                            backward_factor: float = 2.0) -> list[dict]:
    """Training FLOPs of dense VI (density 1) and SSVI at each density, counted without training.

    The network is built on the "meta" device (shapes only) and counted by
    :func:`training_flops`'s formula: every Bayesian layer runs the two LRT convolutions (eq. 4),
    the backward pass costs ``backward_factor`` times the forward ("forward + backward = 3x
    forward"), the first layer stays dense when ``first_layer_dense`` (the recipe), every other
    layer has the given density (uniform allocation), and SSVI (density < 1) adds one dense
    forward + backward batch every ``update_every`` steps until ``t_end_frac`` of training for
    its mask updates. BatchNorm, activations and pooling count 0 (FlopCounterMode convention).
    Defaults: the paper's recipe (ResNet-18, CIFAR-10, 50k images, 200 epochs, batch 128,
    Delta T = 100).

    One dict per density: ``density``, ``training_flops``, ``relative`` (to density 1, the
    "0.10x" of Table 1), ``paper_relative`` (Table 1's ratio, or None), ``first_layer_share``
    (the dense first layer's share of the dense forward FLOPs), ``update_relative`` (the
    mask-update overhead relative to dense VI) and ``masked_relative`` (``relative`` without
    that overhead).
    """
    from .models import build_model
    from .subspace import allocate_densities

    with torch.device("meta"):
        net = build_model(model, num_classes, width)
    layers = _layers_or_raise(net, "analytic_training_flops")
    per_layer = forward_flops_per_layer(net)
    first = layers[0][0]
    dense_fwd = sum(per_layer.values())
    dense = _training_flops(layers, per_layer, 1, n_train, epochs, 1.0, True, backward_factor,
                            None, batch_size, t_end_frac)
    rows = []
    for d in densities:
        d = float(d)
        dens = allocate_densities(layers, d, "uniform", first_layer_dense)
        updates = None if d >= 1.0 else update_every
        total = _training_flops(layers, per_layer, 1, n_train, epochs, dens, True,
                                backward_factor, updates, batch_size, t_end_frac)
        masked = _training_flops(layers, per_layer, 1, n_train, epochs, dens, True,
                                 backward_factor, None, batch_size, t_end_frac)
        rows.append({"model": model, "width": float(width), "density": d,
                     "training_flops": total, "relative": total / dense,
                     "paper_relative": PAPER_RELATIVE_TRAINING_FLOPS.get(d),
                     "first_layer_share": per_layer[first] / dense_fwd,
                     "update_relative": (total - masked) / dense,
                     "masked_relative": masked / dense})
    return rows
