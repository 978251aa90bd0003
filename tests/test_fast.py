"""The fast path trains the same model as the reference path: same losses, updates and masks."""
from __future__ import annotations

import copy

import pytest
import torch
import torch._dynamo.testing
import torch._inductor.config as inductor_config

from ssvi import fast
from ssvi.config import TrainConfig
from ssvi.layers import bayes_layers, set_mode
from ssvi.loop import train_epoch
from ssvi.metrics import predict_probs
from ssvi.models import build_model
from ssvi.subspace import SubspaceController
from ssvi.trainer import make_optimizer, make_step_fn


def _setup(model_name, width, *, seed=0, method="ssvi", update_every=3):
    cfg = TrainConfig(dataset="synthetic", model=model_name, width=width, method=method,
                      density=0.3, update_every=update_every, fast=False, device="cpu",
                      progress=False, weight_decay=5e-4, lr=0.05, lr_rho=0.05)
    torch.manual_seed(seed)
    model = build_model(model_name, 10, width, bayesian=cfg.bayesian,
                        masked=cfg.method == "rigl")
    return cfg, model


def _controller(model, cfg, optimizer, addition="mc1"):
    return SubspaceController(model, cfg.density, update_every=cfg.update_every, t_end=1000,
                              alpha=0.3, seed=cfg.seed, optimizer=optimizer,
                              removal="snr_abs" if cfg.bayesian else "abs_mu",
                              addition=addition if cfg.bayesian else "mean")


def _run(model, cfg, step_fn, optimizer, controller, batches, kl_coefs):
    """The trainer's epoch function (ssvi.loop.train_epoch): a subspace update on update steps,
    an SGD step otherwise, one call per run of equal kl_coef. The RNG is reseeded before every
    step so both paths see the same LRT noise."""
    from ssvi.layers import kl
    losses, masks_after_update = [], []

    def update_loss(x, y, step, kl_coef):
        def loss_fn(k):
            return torch.nn.functional.cross_entropy(model(x), y) + kl_coef * kl(model)
        return loss_fn

    def step_and_keep(x, y, kl_coef):
        loss = step_fn(x, y, kl_coef)
        losses.append(loss)
        return loss

    start = 0
    while start < len(batches):
        end = start
        while end < len(batches) and kl_coefs[end] == kl_coefs[start]:
            end += 1
        k = kl_coefs[start]
        train_epoch(batches[start:end], step_and_keep, k, step=start, controller=controller,
                    update_loss=lambda x, y, t, k=k: update_loss(x, y, t, k),
                    before_step=lambda t: torch.manual_seed(1000 + t),
                    after_update=lambda c, t, stats: masks_after_update.append(
                        [l.mask.clone() for _, l in bayes_layers(model)]))
        start = end
    return torch.stack(losses), masks_after_update


def _reference_and_compiled(model: str, width: float):
    """Two copies of one model with their optimizers and controllers: the reference step and the
    compiled fp32 fast step (inductor, counted so recompilations show)."""
    cfg, ref = _setup(model, width)
    fst = copy.deepcopy(ref)
    opt_ref, opt_fst = make_optimizer(ref, cfg), make_optimizer(fst, cfg)
    ctl_ref, ctl_fst = _controller(ref, cfg, opt_ref), _controller(fst, cfg, opt_fst)
    step_ref = make_step_fn(ref, opt_ref, cfg, torch.device("cpu"))
    counter = torch._dynamo.testing.CompileCounterWithBackend("inductor")
    step_fst = fast.make_fast_step(fst, opt_fst, cfg, compile=True, amp_dtype=torch.float32,
                                   channels_last=False, fused=False, backend=counter)
    return cfg, ref, fst, opt_ref, opt_fst, ctl_ref, ctl_fst, step_ref, step_fst, counter


def _batches(n_steps, batch, shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, *shape, generator=g), torch.randint(0, 10, (batch,), generator=g))
            for _ in range(n_steps)]


def _close(a, b, what, rtol):
    """Norm-wise relative error: kernels that sum in another order (compiled, channels_last)
    differ by float rounding relative to the tensor's scale, not to each (maybe tiny) entry."""
    err = ((a.double() - b.double()).norm() / a.double().norm().clamp_min(1e-30)).item()
    assert err <= rtol, f"{what}: relative L2 difference {err:.2e} > {rtol:.0e}"


def _assert_same_model(ref, other, rtol=1e-4):
    for (name, a), (_, b) in zip(bayes_layers(ref), bayes_layers(other)):
        assert torch.equal(a.mask, b.mask), f"masks differ in {name}"
        _close(a.mu, b.mu, f"mu of {name}", rtol)
        if a.rho is not None:
            _close(a.rho, b.rho, f"rho of {name}", rtol)
    for (name, a), (_, b) in zip(ref.named_buffers(), other.named_buffers()):
        if a.is_floating_point():
            _close(a, b, f"buffer {name}", rtol)


def test_compiled_step_equals_reference_and_never_recompiles():
    """Compiled (inductor, fp32, eager-RNG semantics) vs reference: 8 steps including two subspace
    updates and a kl_coef change; losses, mu, rho and masks agree, and neither the mask updates
    nor the new kl_coef trigger a recompilation."""
    torch._dynamo.reset()
    (cfg, ref, fst, opt_ref, opt_fst, ctl_ref, ctl_fst, step_ref, step_fst,
     counter) = _reference_and_compiled("mlp", 1 / 32)
    assert step_fst.options.compile and step_fst.options.amp_dtype is None
    batches = _batches(8, 16, (3, 32, 32))
    kl_coefs = [1e-4] * 4 + [2e-4] * 4

    loss_ref, masks_ref = _run(ref, cfg, step_ref, opt_ref, ctl_ref, batches, kl_coefs)
    with inductor_config.patch(fallback_random=True):  # compiled randn == eager randn
        loss_fst, masks_fst = _run(fst, cfg, step_fst, opt_fst, ctl_fst, batches, kl_coefs)

    assert ctl_ref.n_updates == ctl_fst.n_updates == 2
    assert counter.frame_count == 1, "the compiled step recompiled after a mask or kl_coef change"
    torch.testing.assert_close(loss_fst, loss_ref, rtol=1e-5, atol=1e-6)
    for a, b in zip(masks_ref, masks_fst):
        assert all(torch.equal(m1, m2) for m1, m2 in zip(a, b))
    # the updates really changed the masks (else the mask comparison proves little)
    assert any(not torch.equal(m1, m2) for m1, m2 in zip(masks_ref[0], masks_ref[1]))
    _assert_same_model(ref, fst)


def test_compiled_step_tracks_in_place_mask_edits():
    """A mask switched off in place after compilation is honoured by the next compiled step
    (the mask is read as a graph input, not baked in as a constant). Dynamo + AOTAutograd decide
    that; the aot_eager backend skips inductor's C++ code generation to keep the test fast."""
    torch._dynamo.reset()
    cfg, model = _setup("mlp", 1 / 32)
    opt = make_optimizer(model, cfg)
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    step = fast.make_fast_step(model, opt, cfg, compile=True, amp_dtype=torch.float32,
                               channels_last=False, fused=False, backend=counter)
    (x, y), = _batches(1, 8, (3, 32, 32))
    step(x, y, 1e-4)
    layer = bayes_layers(model)[-1][1]
    with torch.no_grad():
        layer.mask.fill_(False)
        layer.mu.zero_()
        layer.rho.zero_()
    for _, l in bayes_layers(model):
        opt.state.pop(l.mu, None)
        opt.state.pop(l.rho, None)
    step(x, y, 1e-4)
    assert counter.frame_count == 1
    assert layer.mu.grad is not None and torch.count_nonzero(layer.mu.grad) == 0
    assert torch.count_nonzero(layer.mu) == 0   # weight decay of zero weights, no gradient


@pytest.mark.parametrize("method", ["ssvi", "rigl"])
def test_channels_last_fused_step_equals_reference(method):
    """Eager fast path with channels_last parameters and fused SGD on a conv net with BatchNorm:
    same losses, parameters, BN statistics and masks as the reference, across two mask updates.

    The layers run in "mean" mode here: randn_like of a channels_last tensor fills memory order,
    so LRT noise lands on other logical positions (same distribution, other numbers). The LRT
    path itself is compared in the compiled test above."""
    cfg, ref = _setup("small_cnn", 0.25, method=method)
    set_mode(ref, "mean")
    fst = copy.deepcopy(ref)
    opt_ref, opt_fst = make_optimizer(ref, cfg), make_optimizer(fst, cfg)
    ctl_ref = _controller(ref, cfg, opt_ref, addition="mean")
    ctl_fst = _controller(fst, cfg, opt_fst, addition="mean")
    step_ref = make_step_fn(ref, opt_ref, cfg, torch.device("cpu"))
    step_fst = fast.make_fast_step(fst, opt_fst, cfg, compile=False, amp_dtype=torch.float32,
                                   channels_last=True, fused=True)
    assert step_fst.options.fused_optimizer and step_fst.options.channels_last
    conv = bayes_layers(fst)[1][1]
    assert conv.mu.is_contiguous(memory_format=torch.channels_last)
    batches = _batches(7, 8, (3, 32, 32), seed=1)
    loss_ref, _ = _run(ref, cfg, step_ref, opt_ref, ctl_ref, batches, [1e-4] * 7)
    loss_fst, _ = _run(fst, cfg, step_fst, opt_fst, ctl_fst, batches, [1e-4] * 7)
    assert ctl_fst.n_updates == 2
    torch.testing.assert_close(loss_fst, loss_ref, rtol=1e-5, atol=1e-6)
    _assert_same_model(ref, fst)
    assert opt_fst.param_groups[0]["fused"] is True


def test_bf16_variance_path_error_is_bounded_by_unit_roundoff():
    """The LRT variance conv(x^2, sigma^2) under bf16 autocast, for the recipe's sigmas
    (|N(6e-4, 5e-4^2)|, down to ~1e-6, sigma^2 ~ 1e-12..1e-6): every term is positive, so its
    relative error is at most that of one product of two rounded inputs plus the rounded output,
    (1 + u)^3 - 1 with u = 2^-8 (bf16 unit roundoff), against a float64 reference. No underflow."""
    from ssvi.layers import BayesConv2d
    torch.manual_seed(0)
    layer = BayesConv2d(16, 8, 3, padding=1, bias=False)
    sigma = layer.sigma.detach()
    assert sigma.min() < 1e-5 and sigma.max() > 1e-3      # the recipe's spread of sigmas
    x = torch.randn(4, 16, 8, 8)
    var_w = torch.nn.functional.softplus(layer.rho.detach()).square()
    exact = torch.nn.functional.conv2d(x.double() ** 2, var_w.double(), padding=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        var = layer._op(x * x, var_w, None)                  # what the forward does under autocast
    assert var.dtype == torch.bfloat16
    u = 2.0 ** -8
    rel = ((var.double() - exact).abs() / exact).max().item()
    assert rel <= (1 + u) ** 3 - 1, f"bf16 variance off by {rel:.4f}"
    assert bool((var > 0).all())


def test_bf16_autocast_keeps_fp32_state_and_close_loss():
    """bf16 autocast (conv/matmul only): parameters, optimizer state and the loss stay fp32; the
    loss matches fp32 to 1% and the gradients point the same way (cosine > 0.99; bf16 backprop
    through the convolutions costs a few percent of relative error in the first layers)."""
    cfg, ref = _setup("small_cnn", 0.25)
    fst = copy.deepcopy(ref)
    opt_ref, opt_fst = make_optimizer(ref, cfg), make_optimizer(fst, cfg)
    (x, y), = _batches(1, 16, (3, 32, 32), seed=2)
    grads = {}
    for name, model, opt, amp in (("ref", ref, opt_ref, torch.float32),
                                  ("bf16", fst, opt_fst, torch.bfloat16)):
        step = fast.make_fast_step(model, opt, cfg, compile=False, amp_dtype=amp,
                                   channels_last=False, fused=False)
        torch.manual_seed(5)
        loss = step(x, y, 1e-4)
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
        grads[name] = (loss, [g.grad.flatten().clone() for _, l in bayes_layers(model)
                              for g in (l.mu, l.rho)])
    assert all(p.dtype == torch.float32 for p in fst.parameters())
    assert all(v.dtype == torch.float32 for s in opt_fst.state.values() for v in s.values())
    torch.testing.assert_close(grads["bf16"][0], grads["ref"][0], rtol=1e-2, atol=0)
    for g, r in zip(grads["bf16"][1], grads["ref"][1]):
        assert torch.isfinite(g).all()
        assert torch.nn.functional.cosine_similarity(g, r, dim=0) > 0.99


def test_fast_predict_probs_is_predict_probs_in_fp32():
    """With fp32 and channels_last the fast evaluation is the metrics module's protocol exactly
    (same draws for the same seed); under bf16 it stays close."""
    cfg, model = _setup("small_cnn", 0.25)
    with torch.no_grad():   # a posterior wide enough that draws change the predictions
        for _, layer in bayes_layers(model):
            layer.mu.normal_(0.0, 0.3)
            layer.rho.fill_(-2.0)   # sigma = softplus(-2) = 0.13
    x = torch.randn(12, 3, 32, 32)
    y = torch.randint(0, 10, (12,))
    loader = [(x[:5], y[:5]), (x[5:], y[5:])]
    ref, labels = predict_probs(model, loader, samples=3, seed=7)
    got, labels2 = fast.fast_predict_probs(model, loader, 3, seed=7, amp_dtype=torch.float32,
                                           channels_last=True)
    assert torch.equal(labels, labels2)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-7)
    bf, _ = fast.fast_predict_probs(model, loader, 3, seed=7, amp_dtype=torch.bfloat16)
    assert (bf - ref).abs().max() < 2e-2
    # a different seed gives different draws (the comparison above is not vacuous)
    other, _ = fast.fast_predict_probs(model, loader, 3, seed=8, amp_dtype=torch.float32)
    assert (other - ref).abs().max() > 1e-3
    metrics = fast.fast_evaluate(model, loader, 3, seed=7, amp_dtype=torch.float32)
    assert metrics["n"] == 12 and 0.0 <= metrics["accuracy"] <= 1.0


def test_resolve_options_defaults_and_errors():
    cpu = fast.resolve_options(torch.device("cpu"))
    # the CPU default chosen by benchmarks/bench_cpu.py: eager bf16 autocast, contiguous, for-each SGD
    assert not cpu.compile and cpu.compile_mode is None
    assert cpu.amp_dtype == "bfloat16" and not cpu.channels_last and not cpu.fused_optimizer
    assert fast.resolve_options(torch.device("cpu"), amp_dtype=torch.float32).amp_dtype is None
    cuda = fast.resolve_options(torch.device("cuda"))
    assert cuda.compile and cuda.compile_mode == "reduce-overhead"
    assert cuda.amp_dtype == "bfloat16" and cuda.channels_last and cuda.fused_optimizer
    ddp = fast.resolve_options(torch.device("cuda"), distributed=True)
    assert ddp.compile_mode == "default"
    with pytest.raises(ValueError, match="compile mode"):
        fast.resolve_options(torch.device("cpu"), compile=True, compile_mode="turbo")
    with pytest.raises(ValueError, match="amp_dtype"):
        fast.resolve_options(torch.device("cpu"), amp_dtype=torch.int8)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_float16_autocast_is_rejected_with_the_reason(device):
    """fp16's smallest normal is 6.1e-5: the recipe's sigma^2 (1e-12..1e-6) would underflow in
    the variance path, and the step has no gradient scaler; bf16 and fp32 stay allowed."""
    with pytest.raises(ValueError, match=r"float16 is not supported: sigma\^2 below 6e-5"):
        fast.resolve_options(torch.device(device), amp_dtype=torch.float16)
    assert fast.resolve_options(torch.device(device), amp_dtype=torch.bfloat16).amp_dtype == \
        "bfloat16"
    # the stated threshold is fp16's smallest normal; a recipe-sized sigma^2 flushes to zero in
    # fp16 (smallest subnormal 6e-8) and survives in bf16
    assert 6e-5 < torch.finfo(torch.float16).tiny < 6.2e-5
    sigma2 = torch.tensor((6e-4 / 20) ** 2)           # sigma = 3e-5, inside the recipe's spread
    assert sigma2.half().item() == 0.0 and sigma2.bfloat16().item() > 0.0


def test_compiled_step_equals_reference_on_a_conv_net():
    """The compiled step (inductor, fp32: the GPU default's graph on CPU) against the reference
    step on a conv net with BatchNorm, in LRT mode: 6 steps with a subspace update and a kl_coef
    change; same losses, mu, rho, BN statistics and masks, one compilation.

    One update, not two: compiled kernels sum in another order (relative 1e-7), and after a
    few more steps that can swap two near-tied weights at the subspace boundary (seen: 2 of 691
    entries of one tensor at the second update); the MLP test above covers two updates.
    Losses agree to 1e-5 at every step; parameters to 1e-3 (see the BatchNorm note below)."""
    torch._dynamo.reset()
    (cfg, ref, fst, opt_ref, opt_fst, ctl_ref, ctl_fst, step_ref, step_fst,
     counter) = _reference_and_compiled("small_cnn", 0.25)
    masks_init = [l.mask.clone() for _, l in bayes_layers(ref)]
    batches = _batches(6, 16, (3, 32, 32), seed=3)
    kl_coefs = [1e-4] * 4 + [2e-4] * 2
    loss_ref, masks_ref = _run(ref, cfg, step_ref, opt_ref, ctl_ref, batches, kl_coefs)
    # compiled randn == eager randn; and conv outputs kept in the default (contiguous) layout, so
    # randn_like fills the same logical positions (inductor's layout optimisation may switch conv
    # outputs to channels_last: same distribution of noise, other numbers)
    with inductor_config.patch(fallback_random=True, layout_optimization=False):
        loss_fst, masks_fst = _run(fst, cfg, step_fst, opt_fst, ctl_fst, batches, kl_coefs)
    assert ctl_ref.n_updates == ctl_fst.n_updates == 1
    # the update really moved the subspace (else comparing masks proves little)
    assert any(not torch.equal(a, b) for a, b in zip(masks_ref[0], masks_init))
    assert counter.frame_count == 1, "recompiled after a mask or kl_coef change"
    torch.testing.assert_close(loss_fst, loss_ref, rtol=1e-5, atol=1e-6)
    for a, b in zip(masks_ref, masks_fst):
        assert all(torch.equal(m1, m2) for m1, m2 in zip(a, b))
    # BatchNorm's backward subtracts batch means (cancellation): a 1e-7 reordering of the
    # compiled sums becomes up to ~1e-3 of the first conv's gradient on some steps (measured
    # 5e-4 on mu of the first layer after step 5; the other layers agree to 1e-6)
    _assert_same_model(ref, fst, rtol=1e-3)


def test_cpu_default_step_tracks_reference_on_a_conv_net():
    """The CPU default of the fast path (nothing forced: eager bf16 autocast) against the
    reference step on a conv net in LRT mode, same batches and noise seeds, 6 steps with a
    subspace update and a kl_coef change: every loss within 1% (bf16 rounding of the
    convolutions, as on the GPU), parameters and optimizer state fp32, all finite; forced to
    fp32 the same path IS the reference step (identical losses)."""
    cfg, ref = _setup("small_cnn", 0.25)
    results = {}
    for name, amp in (("default", None), ("fp32", torch.float32), ("ref", "ref")):
        model = copy.deepcopy(ref)
        opt = make_optimizer(model, cfg)
        ctl = _controller(model, cfg, opt)
        if amp == "ref":
            step = make_step_fn(model, opt, cfg, torch.device("cpu"))
        else:
            step = fast.make_fast_step(model, opt, cfg, amp_dtype=amp)
            assert step.options.compile is False and step.options.channels_last is False
        losses, _ = _run(model, cfg, step, opt, ctl, _batches(6, 16, (3, 32, 32), seed=5),
                         [1e-4] * 4 + [2e-4] * 2)
        assert ctl.n_updates == 1 and torch.isfinite(losses).all()
        assert all(p.dtype == torch.float32 for p in model.parameters())
        results[name] = losses
    assert fast.resolve_options(torch.device("cpu")).amp_dtype == "bfloat16"
    torch.testing.assert_close(results["fp32"], results["ref"], rtol=0, atol=0)
    torch.testing.assert_close(results["default"], results["ref"], rtol=1e-2, atol=0)
    assert not torch.equal(results["default"], results["ref"])   # bf16 really was used


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fast_step_tracks_reference():
    """On CUDA: the default fast step (compile with CUDA graphs, bf16, channels_last, fused SGD)
    and the reference step, from the same model and batches in "mean" mode (no LRT noise, whose
    draws differ between the layouts), give the same losses to bf16 precision over 7 steps with
    two subspace updates; forced to fp32, the compiled step matches to float rounding."""
    dev = torch.device("cuda")
    cfg, ref = _setup("small_cnn", 0.5)
    set_mode(ref, "mean")
    ref = ref.to(dev)
    for amp, rtol in ((None, 3e-2), (torch.float32, 1e-4)):
        torch._dynamo.reset()
        r, f = copy.deepcopy(ref), copy.deepcopy(ref)
        opt_r, opt_f = make_optimizer(r, cfg), make_optimizer(f, cfg)
        ctl_r = _controller(r, cfg, opt_r, addition="mean")
        ctl_f = _controller(f, cfg, opt_f, addition="mean")
        step_r = make_step_fn(r, opt_r, cfg, dev)
        step_f = fast.make_fast_step(f, opt_f, cfg, amp_dtype=amp)
        assert step_f.options.compile and step_f.options.channels_last
        batches = [(x.to(dev), y.to(dev)) for x, y in _batches(7, 32, (3, 32, 32), seed=4)]
        loss_r, _ = _run(r, cfg, step_r, opt_r, ctl_r, batches, [1e-4] * 7)
        loss_f, _ = _run(f, cfg, step_f, opt_f, ctl_f, batches, [1e-4] * 7)
        assert ctl_f.n_updates == 2
        torch.testing.assert_close(loss_f, loss_r, rtol=rtol, atol=1e-6)
        if amp == torch.float32:
            _assert_same_model(r, f, rtol=1e-3)
