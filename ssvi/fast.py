"""The fast training path: the reference step (eq. 3 loss, one SGD step), with fewer, cheaper kernels.

:func:`make_fast_step` returns a ``step(x, y, kl_coef)`` that trains the SAME model as the
reference step of :func:`ssvi.trainer.make_step_fn` (same loss, same update, same masks; checked
step by step in ``tests/test_fast.py``). What it changes is how the work reaches the device:

* **torch.compile** of forward + loss. AOTAutograd also compiles the backward, so the ~10 small
  elementwise kernels of every Bayesian layer (mask, softplus, square, x*x, sqrt, noise, KL) fuse
  into a few. ``dynamic=False``: the full and the last, shorter batch of an epoch get one graph each.
* **CUDA graphs** (compile mode ``"reduce-overhead"``): at batch 128 a ResNet-18 LRT step is
  launch-bound, not arithmetic-bound (book/speed.md), so one graph replay replaces
  hundreds of launches. Masks, mu and rho are updated IN PLACE (``copy_`` / ``masked_fill_`` in
  :class:`ssvi.subspace.SubspaceController`, in-place SGD), so their storage never moves and a
  recorded graph stays valid after every subspace update; the masks are buffers read inside the
  graph, so a mask update does not recompile either.
* **bf16 autocast** for the convolutions and matmuls only. mu, rho, the optimizer state, sigma =
  softplus(rho) (autocast runs softplus in fp32), the KL (computed in fp32 by
  :meth:`ssvi.layers.BayesLayer.kl`), the cross-entropy and the removal / addition criteria stay
  fp32 (criteria even fp64). The variance convolution conv(x^2, sigma^2) runs in bf16: sigma^2 of
  the recipe (sigma ~ 1e-4..1e-3, sigma^2 ~ 1e-8..1e-6) is far inside bf16's range (8 exponent
  bits, smallest normal 1.2e-38); what bf16 loses is precision, a relative error of 2^-9 = 0.2%
  per product, i.e. 0.2% on the *standard deviation of the injected noise*, negligible next to
  the Monte Carlo noise itself. The bf16 rounding of the mean path (relative 2^-9 of |mu.x|) is
  about 1-5% of the LRT noise scale at the recipe's signal-to-noise ratios (sigma/|mu| ~ 0.05);
  pass ``amp_dtype=torch.float32`` to train entirely in fp32 when that matters.
* **channels_last** memory format for the convolutions (NHWC tensor-core kernels).
* **fused SGD** (``fused=True``: one multi-tensor kernel for all parameters) on CUDA.
* **No host synchronisation per step**: ``kl_coef`` lives in a device tensor written only when its
  value changes (once per epoch), and the loss is returned as a device tensor.

**fp16 is refused** (``amp_dtype=torch.float16`` raises): its smallest normal is 6.1e-5, so the
recipe's sigma^2 (1e-12..1e-6) underflows in the variance path, and this step has no gradient
scaler.

**On CPU** (``benchmarks/bench_cpu.py``, ``results/bench/cpu_paths.json``: 1 thread, median
process CPU time per step, ResNet-18 x0.125 at batch 128, busy 2-core Xeon) the fastest SSVI step
is EAGER bf16 autocast, contiguous: 506 ms against 729 ms for the reference step (1.44x); the
deterministic step gains more (2.7x with compile + bf16 + channels_last). torch.compile makes the
LRT step SLOWER on CPU (1133 ms fp32, 0.64x), and channels_last does not help it either, so the
CPU default is bf16 autocast alone (``CPU_DEFAULT_AMP``); compile, channels_last and fused SGD
stay off and can be forced. The trainer uses this path on CPU only with ``TrainConfig.fast=True``.
bf16 on CPU (oneDNN kernels; AVX-512-BF16/AMX where present) affects the variance path exactly
as on the GPU: conv(x^2, sigma^2) takes bf16 inputs and accumulates in fp32; sigma^2 of the recipe
stays far inside bf16's range (no underflow); each output's relative error is at most
(1 + 2^-8)^3 - 1 = 1.2% of the variance (0.6% of the noise's standard deviation), which
``test_bf16_variance_path_error_is_bounded_by_unit_roundoff`` checks on the CPU kernel; sqrt(var),
the noise, softplus, the KL and the loss stay fp32. Pass ``amp_dtype=torch.float32`` to train
entirely in fp32 (then the fast step is the reference step).
"""
from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from .layers import bayes_layers, kl

COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
DEFAULT_CUDA_COMPILE_MODE = "reduce-overhead"      # CUDA graphs; see the module docstring
DEFAULT_DISTRIBUTED_COMPILE_MODE = "default"       # no CUDA graphs around DDP's collectives
CPU_DEFAULT_AMP = torch.bfloat16   # CPU default: eager bf16 autocast, contiguous (bench_cpu.py)


@dataclass(frozen=True)
class FastOptions:
    """The techniques a fast step uses (see the module docstring); stored with benchmark results."""
    compile: bool
    compile_mode: str | None
    amp_dtype: str | None          # "bfloat16" or None (fp32)
    channels_last: bool
    fused_optimizer: bool

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_options(device: torch.device, *, compile: bool | None = None,
                    amp_dtype: torch.dtype | None = None, channels_last: bool | None = None,
                    compile_mode: str | None = None, fused: bool | None = None,
                    distributed: bool = False) -> FastOptions:
    """Fill unset (None) options with the device defaults: everything on for CUDA; on CPU bf16
    autocast only (eager, contiguous, for-each SGD: the fastest SSVI step in bench_cpu.py).

    ``amp_dtype=None`` means the default (bf16 on CUDA and CPU); ``torch.float32`` means no
    autocast; ``torch.float16`` is refused (see the module docstring). ``compile_mode`` defaults to ``"reduce-overhead"`` (CUDA graphs) on one CUDA device
    and ``"default"`` under DistributedDataParallel or on CPU.
    """
    device = torch.device(device)
    cuda = device.type == "cuda"
    if compile_mode not in COMPILE_MODES:
        raise ValueError(f"compile_mode={compile_mode!r} is not a torch.compile mode; choose one "
                         f"of {', '.join(repr(m) for m in COMPILE_MODES)}")
    if amp_dtype is None:
        amp_dtype = torch.bfloat16 if cuda else CPU_DEFAULT_AMP
    if amp_dtype == torch.float16:
        raise ValueError("amp_dtype=torch.float16 is not supported: sigma^2 below 6e-5 (fp16's "
                         "smallest normal) underflows in the LRT variance path and there is no "
                         "gradient scaler; use torch.bfloat16 or torch.float32")
    if amp_dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"amp_dtype={amp_dtype!r}: use torch.bfloat16 or torch.float32 "
                         "(no autocast)")
    compile = cuda if compile is None else bool(compile)
    if compile and compile_mode is None:
        compile_mode = (DEFAULT_DISTRIBUTED_COMPILE_MODE if distributed or not cuda
                        else DEFAULT_CUDA_COMPILE_MODE)
    if not compile:
        compile_mode = None
    return FastOptions(
        compile=compile, compile_mode=compile_mode,
        amp_dtype=None if amp_dtype == torch.float32 else str(amp_dtype).replace("torch.", ""),
        channels_last=cuda if channels_last is None else bool(channels_last),
        fused_optimizer=cuda if fused is None else bool(fused))


def _amp_context(device: torch.device, amp_dtype: str | None):
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=getattr(torch, amp_dtype))


def _model_device(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        raise ValueError("make_fast_step: the model has no parameters") from None


def use_fused_optimizer(optimizer: torch.optim.Optimizer) -> bool:
    """Switch an SGD optimizer to its fused multi-tensor kernel in place; False if not possible.

    Same update rule as the for-loop SGD (d = g + wd*p; buf = m*buf + d; p -= lr*buf).
    A resumed optimizer's ``load_state_dict`` restores the checkpoint's setting.
    """
    if type(optimizer) is not torch.optim.SGD:
        return False
    params = [p for g in optimizer.param_groups for p in g["params"]]
    if not params or not all(p.is_floating_point() for p in params):
        return False
    for group in optimizer.param_groups:
        group["fused"], group["foreach"] = True, False
    return True


@torch.no_grad()
def _align_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Give every state tensor its parameter's memory format (after channels_last or a resume)."""
    for p, state in optimizer.state.items():
        for key, value in state.items():
            if torch.is_tensor(value) and value.shape == p.shape and value.stride() != p.stride():
                state[key] = torch.empty_like(p).copy_(value)


def make_fast_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, cfg, *,
                   compile: bool | None = None, amp_dtype: torch.dtype | None = None,
                   channels_last: bool | None = None, compile_mode: str | None = None,
                   fused: bool | None = None, backend="inductor", wrap=None):
    """The training step of eq. 3 with the fast-path techniques of this module.

    ``step(x, y, kl_coef)``: zero_grad; loss = CE(model(x), y) + kl_coef * KL (Bayesian models);
    backward; ``optimizer.step()``; returns the detached loss as a device tensor (no host sync).
    ``cfg`` is a :class:`ssvi.config.TrainConfig` (only ``cfg.bayesian`` is read).
    ``wrap(model)`` returns the module that runs the forward (e.g. DistributedDataParallel); the
    KL is always read from ``model`` itself. ``backend`` is passed to ``torch.compile`` (tests
    count compilations with a counting backend). ``step.options`` records what is used.
    """
    device = _model_device(model)
    opts = resolve_options(device, compile=compile, amp_dtype=amp_dtype,
                           channels_last=channels_last, compile_mode=compile_mode, fused=fused,
                           distributed=wrap is not None)
    if opts.channels_last:
        model.to(memory_format=torch.channels_last)   # in place: parameter objects are kept
    fused_ok = use_fused_optimizer(optimizer) if opts.fused_optimizer else False
    opts = FastOptions(opts.compile, opts.compile_mode, opts.amp_dtype, opts.channels_last,
                       fused_ok)
    fwd = wrap(model) if wrap is not None else model
    bayesian = bool(cfg.bayesian) and any(l.rho is not None for _, l in bayes_layers(model))

    def loss_fn(x, y, kl_coef):
        with _amp_context(device, opts.amp_dtype):
            logits = fwd(x)
        loss = F.cross_entropy(logits.float(), y)
        if bayesian:
            loss = loss + kl_coef * kl(model)
        return loss

    if opts.compile:
        kw = {} if opts.compile_mode in (None, "default") else {"mode": opts.compile_mode}
        loss_fn = torch.compile(loss_fn, backend=backend, dynamic=False, **kw)
    cudagraphs = opts.compile and device.type == "cuda" and opts.compile_mode in (
        "reduce-overhead", "max-autotune")
    kl_buf = torch.zeros((), device=device, dtype=torch.float32)
    last = {"kl_coef": None, "aligned": False}

    def step(x, y, kl_coef):
        if not last["aligned"]:
            _align_optimizer_state(optimizer)  # after a resume, before the first fused step
            last["aligned"] = True
        if opts.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if torch.is_tensor(kl_coef):
            coef = kl_coef.to(device=device, dtype=torch.float32)
        else:
            if kl_coef != last["kl_coef"]:
                kl_buf.fill_(float(kl_coef))
                last["kl_coef"] = kl_coef
            coef = kl_buf
        optimizer.zero_grad(set_to_none=True)
        if cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        loss = loss_fn(x, y, coef)
        loss.backward()
        optimizer.step()
        # a CUDA-graph output is overwritten by the next replay: hand back a copy
        return loss.detach().clone() if cudagraphs else loss.detach()

    step.options = opts
    step.model = fwd
    return step


class _ChannelsLastLoader:
    """Iterates ``loader`` and hands out 4-D batches in channels_last memory format."""

    def __init__(self, loader):
        self.loader = loader
        self.augment = getattr(loader, "augment", False)

    def __iter__(self):
        for x, y in self.loader:
            yield (x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x), y


def _eval_options(model, amp_dtype, channels_last):
    return resolve_options(_model_device(model), compile=False, amp_dtype=amp_dtype,
                           channels_last=channels_last)


def fast_predict_probs(model: torch.nn.Module, loader, samples: int = 5, mode: str = "sample",
                       seed: int | None = None, *, amp_dtype: torch.dtype | None = None,
                       channels_last: bool | None = None):
    """:func:`ssvi.metrics.predict_probs` (same protocol: each of ``samples`` posterior draws is
    ONE weight vector shared by the whole loader, run in "mean" mode, i.e. one convolution per
    layer) with bf16 autocast and channels_last inputs (defaults on CUDA, off on CPU).

    Returns ``(probs, labels)``: the averaged predictive probabilities (N, C) float64 and labels.
    With ``amp_dtype=torch.float32`` and ``channels_last=False`` it is predict_probs exactly.
    """
    from .metrics import predict_probs
    opts = _eval_options(model, amp_dtype, channels_last)
    if opts.channels_last:
        loader = _ChannelsLastLoader(loader)
    with _amp_context(_model_device(model), opts.amp_dtype):
        return predict_probs(model, loader, samples=samples, mode=mode, seed=seed)


def fast_evaluate(model: torch.nn.Module, loader, samples: int = 5, mode: str = "sample",
                  seed: int | None = None, *, amp_dtype: torch.dtype | None = None,
                  channels_last: bool | None = None) -> dict:
    """:func:`ssvi.metrics.evaluate` on top of :func:`fast_predict_probs` (metrics in float64)."""
    from .metrics import all_metrics
    probs, labels = fast_predict_probs(model, loader, samples, mode, seed, amp_dtype=amp_dtype,
                                       channels_last=channels_last)
    out = all_metrics(probs, labels)
    out.update(samples=int(samples) if mode == "sample" else 1, mode=mode, n=int(len(labels)))
    return out
