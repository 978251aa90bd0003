"""The training loop: VI steps (eq. 1/3) alternating with subspace updates (Algorithm 1).

Loss, stated once (the most common confusion in BNN libraries):

    loss = mean cross-entropy over the minibatch + beta(epoch) * kl_scale / N_train * KL_sum

with KL_sum the closed-form KL summed over ACTIVE weights of every Bayesian layer, N_train the
number of training images, kl_scale = 0.01 (recipe) and the warm-up beta = min(2 epoch / epochs, 1)
with epochs counted from 1 (beta = 1 throughout without warm-up). For kl_scale = 1 this is the
negative ELBO divided by N_train.

The epoch itself is :func:`ssvi.loop.train_epoch`. Checkpoints are written atomically after every
epoch whose loss, weights and evaluation are finite; a run started again with the same config and
``run_dir`` resumes where it stopped and ends bitwise where an uninterrupted run ends (CPU).
Evaluation runs on its own seeded RNG (:func:`evaluate_at`), so it neither depends on nor changes
what ran before.

The Table-2 baselines (``cfg.method`` vd, sbp, aeb, mbnn; :mod:`ssvi.baselines`) run through the
same function: their own model, optimiser and per-step objective (``method.loss``, which replaces
the loss above), ``method.after_step`` after every step, prediction by ``method.predict`` under
the same seeded evaluation, sparsity from ``method.masks`` and FLOPs from
``method.training_flops``, with ``method.state_dict()`` in the checkpoint
(:mod:`ssvi.baselines.training` holds the glue).
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from . import checkpoint as ckpt
from . import flops as flops_mod
from . import results
from .baselines import training as baseline_run
from .config import TrainConfig, path_fields, resume_free_fields
from .distributed import init_distributed
from .errors import (ConfigError, DataError, DivergenceError, SlowRunWarning, SSVIError,
                     one_line)
from .layers import bayes_layers, kl
from .loader import data_fingerprint, make_loaders, resolve_device
from .loop import Progress, train_epoch
from .metrics import evaluate
from .models import build_model
from .provenance import provenance
from .subspace import NonFiniteLossError, SubspaceController

CHECKPOINT_NAME = "checkpoint.pt"
# fields that may differ between an interrupted run and its resumption (ssvi.config roles)
_RESUME_FREE = resume_free_fields() + path_fields()


def kl_coefficient(cfg: TrainConfig, epoch: int, n_train: int) -> float:
    """beta(epoch) * kl_scale / N_train, epoch counted from 1 (recipe KL warm-up)."""
    beta = min(2.0 * epoch / cfg.epochs, 1.0) if cfg.kl_warmup else 1.0
    return beta * cfg.kl_scale / n_train


def build_model_for(cfg: TrainConfig, num_classes: int) -> torch.nn.Module:
    """The network of ``cfg``: Bayesian layers (ssvi, dense_vi) or deterministic masked layers
    (rigl; dense, whose masks stay full), so every method is counted the same way."""
    return build_model(cfg.model, num_classes, cfg.width, bayesian=cfg.bayesian,
                       masked=True, prior_sigma=cfg.prior_sigma,
                       mu_init_std=cfg.mu_init_std,
                       sigma_init=(cfg.sigma_init_mean, cfg.sigma_init_std))


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.SGD:
    """SGD with two groups: mu, BatchNorm and biases (lr, weight decay); rho (lr_rho, no decay)."""
    rho = [l.rho for _, l in bayes_layers(model) if l.rho is not None]
    rho_ids = {id(p) for p in rho}
    rest = [p for p in model.parameters() if id(p) not in rho_ids]
    groups = [{"params": rest, "lr": cfg.lr, "weight_decay": cfg.weight_decay}]
    if rho:
        groups.append({"params": rho, "lr": cfg.lr_rho, "weight_decay": 0.0})
    return torch.optim.SGD(groups, momentum=cfg.momentum)


def cosine_factor(cfg: TrainConfig, epoch0: int) -> float:
    """(1 + cos(pi epoch0 / epochs)) / 2: CosineAnnealingLR(T_max=epochs) stepped per epoch,
    epoch0 counted from 0."""
    return 0.5 * (1.0 + math.cos(math.pi * epoch0 / cfg.epochs))


def cosine_lrs(cfg: TrainConfig, epoch0: int) -> tuple[float, float]:
    """CosineAnnealingLR(T_max=epochs) stepped per epoch; epoch0 counted from 0."""
    f = cosine_factor(cfg, epoch0)
    return cfg.lr * f, cfg.lr_rho * f


def _config_key(cfg: TrainConfig, fingerprint: dict | None = None) -> dict:
    """What a checkpoint must match to be resumed: the result fields (ssvi.config), and the
    data fingerprint (ssvi.loader.data_fingerprint) when given."""
    key = cfg.result_dict()
    if fingerprint is not None:
        key["data_fingerprint"] = dict(fingerprint)
    return key


def _rng_state(device: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def train(cfg: TrainConfig, *, resume: bool = True, on_update=None, log=print) -> dict:
    """Train ``cfg`` end to end and return the results dict (also written to cfg.results_path).

    ``on_update(controller, step)`` is called before every subspace update; whatever dicts it
    returns are stored, in order, under ``results["update_log"]`` (and in the checkpoint).
    ``log(line)`` receives the per-epoch lines and the "resumed from" message (None: silence);
    ``cfg.progress`` switches only the progress bars.

    Every evaluation is a pure function of the model state and (cfg.seed, epoch)
    (:func:`evaluate_at`), so a finished run re-run from its last checkpoint writes the same
    metrics, and training draws the same random numbers whether or not an epoch was evaluated.

    Errors (all :class:`ssvi.errors.SSVIError`, one line each): ConfigError (bad device or run
    folder, a checkpoint of a different configuration), DataError, CheckpointError, and
    DivergenceError (NonFiniteLossError) when the loss, the evaluation metrics or the weights
    become non-finite; the checkpoint of that epoch is then not written, so the one kept is the
    last whose loss, weights and evaluation were finite.
    """
    cfg.validate()
    _check_paths(cfg)                                     # before anything slow
    dctx = init_distributed(_device(cfg))  # one process unless under torchrun
    device = dctx.device
    baseline = cfg.spec.baseline
    if baseline and dctx.active:
        raise ConfigError(f"method {cfg.method!r} runs in one process only; start it with "
                          "python -m ssvi train, not torchrun")
    if not dctx.is_main:  # only rank 0 logs and writes results (checkpoints: see save())
        cfg = dataclasses.replace(cfg, progress=False, results_path=None)
        log = None
    say = log or (lambda _msg: None)
    path = os.path.join(cfg.run_dir, CHECKPOINT_NAME) if cfg.run_dir else None
    if dctx.is_main:
        for p in (path, cfg.results_path):
            if p:
                ckpt.remove_stale_temp_files(p)           # left by a kill during a write
    torch.manual_seed(cfg.seed)
    data = dctx.shard_data(_load_data(cfg, device))
    method = stepper = None
    if baseline:
        method, model, optimizer = baseline_run.build(cfg, data.num_classes, device)
        stepper = baseline_run.MethodStep(method, model, optimizer, data.n_train)
    else:
        model = build_model_for(cfg, data.num_classes).to(device)
        optimizer = make_optimizer(model, cfg)
    steps_per_epoch = len(data.train)
    total_steps = cfg.epochs * steps_per_epoch
    controller = None
    if cfg.sparse:
        controller = SubspaceController(
            model, cfg.density, allocation=cfg.allocation, first_layer_dense=cfg.first_layer_dense,
            removal=cfg.removal if cfg.bayesian else "abs_mu", lam=cfg.lam,
            addition=cfg.addition if cfg.bayesian else "mean", addition_k=cfg.addition_k,
            regrow_sigma=cfg.regrow_sigma, regrow_sigma_const=cfg.regrow_sigma_const,
            update_every=cfg.update_every, t_end=int(cfg.t_end_frac * total_steps),
            alpha=cfg.alpha, seed=cfg.seed, optimizer=optimizer)
    dctx.attach_controller(controller)
    step_fn = stepper if baseline else make_step_fn(model, optimizer, cfg, device,
                                                    wrap=dctx.wrap if dctx.active else None)

    state = {"epoch": 0, "step": 0, "history": [], "wall_time": 0.0, "cpu_time": 0.0,
             "update_log": []}
    config_key = _config_key(cfg, getattr(data, "fingerprint", None))
    if path and resume and os.path.exists(path):
        payload = ckpt.load_checkpoint(path, map_location=device)
        _check_same_config(cfg, payload, config_key)
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        if controller is not None:
            controller.load_state_dict(payload["controller"])
        if method is not None:
            method.load_state_dict(payload["method"])
        state = payload["state"]
        _set_rng_state(payload["rng"], device)
        say(f"resumed from {path} at epoch {state['epoch']}/{cfg.epochs}")
    saved_epoch = state["epoch"] if path and os.path.exists(path) else None

    if dctx.is_main and device.type == "cpu" and state["epoch"] < cfg.epochs:
        slow = slow_cpu_warning(cfg, model, steps_per_epoch, cfg.epochs - state["epoch"])
        if slow:
            warnings.warn(slow, SlowRunWarning, stacklevel=2)

    def save():
        if path and dctx.is_main:
            os.makedirs(cfg.run_dir, exist_ok=True)
            ckpt.save_checkpoint(path, {
                "config": cfg.to_dict(), "config_key": config_key,
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "controller": controller.state_dict() if controller else None,
                "method": method.state_dict() if method else None,
                "state": state, "rng": _rng_state(device)})

    def diverged(epoch, what, cls=DivergenceError):
        knob = baseline_run.lr_knob(cfg, method, epoch + 1) if method else None
        return cls(_divergence_message(cfg, epoch, what, path, saved_epoch, knob))

    last_test = None  # the full evaluation of the last epoch, reused for the results
    try:
        while state["epoch"] < cfg.epochs:
            t0, c0 = time.perf_counter(), time.process_time()
            epoch = state["epoch"]  # 0-based; the recipe's warm-up counts from 1
            if baseline:   # groups with base_lr follow the cosine; MCMC sets its own in loss()
                stepper.epoch = epoch + 1
                lr = baseline_run.scheduled_lr(optimizer, cosine_factor(cfg, epoch))
                kl_coef = 0.0  # the method's loss holds its own regulariser
            else:
                lr, lr_rho = cosine_lrs(cfg, epoch)
                optimizer.param_groups[0]["lr"] = lr
                if len(optimizer.param_groups) > 1:
                    optimizer.param_groups[1]["lr"] = lr_rho
                kl_coef = kl_coefficient(cfg, epoch + 1, data.n_train)
            dctx.seed_epoch(cfg.seed, epoch)
            model.train()
            bar = Progress(cfg.progress, steps_per_epoch, f"epoch {epoch + 1}/{cfg.epochs}")
            try:
                done = train_epoch(
                    data.train.epoch_batches(epoch), step_fn, kl_coef, step=state["step"],
                    controller=controller, on_update=on_update, progress=bar,
                    update_loss=lambda x, y, t: _mc_loss_fn(model, cfg, data, x, y, kl_coef, t),
                    before_step=stepper.begin if stepper else None,
                    after_step=stepper.after if stepper else None)
            except NonFiniteLossError as e:
                raise diverged(epoch, str(e), NonFiniteLossError) from None
            finally:
                bar.close()
            state["step"] = done.step
            state["update_log"].extend(done.notes)
            train_loss = float(dctx.all_reduce_mean(done.loss_sum.to(device))) / max(done.n_steps, 1)
            if not math.isfinite(train_loss):
                raise diverged(epoch, f"mean training loss {train_loss}", NonFiniteLossError)
            bad = _non_finite_tensors(model)
            if bad:
                raise diverged(epoch, f"non-finite weights in {', '.join(bad[:3])}")
            entry = {"epoch": epoch + 1, "train_loss": train_loss, "lr": lr,
                     "kl_coef": kl_coef, "mask_updates": done.n_updates,
                     "kl": float(kl(model).detach()) if cfg.bayesian else 0.0,
                     "epoch_time_s": time.perf_counter() - t0}
            if method is not None:
                entry["lr"] = float(optimizer.param_groups[0]["lr"])  # MCMC: the last step's
                entry["kl_coef"], entry["kl"] = baseline_run.kl_term(method, model, cfg,
                                                                     epoch + 1, data.n_train)
                entry["density"] = baseline_run.parameters(method, model)["density"]
                entry["method_log"] = baseline_run.summarise_logs(done.step_notes)
            if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
                test = evaluate_at(model, data.test, cfg, epoch + 1, "test", method=method)
                bad = _non_finite_metrics(test)
                if data.val is not None:
                    entry["val"] = _scalar_metrics(evaluate_at(model, data.val, cfg, epoch + 1,
                                                               "val", method=method))
                    bad += [f"val {k}={v}" for k, v in entry["val"].items()
                            if not math.isfinite(v)]
                if bad:
                    raise diverged(epoch, f"the evaluation is not finite ({', '.join(bad[:4])})")
                last_test = test
                entry["test"] = _scalar_metrics(test)
            state["epoch"] = epoch + 1
            state["history"].append(entry)
            entry["cpu_time_s"] = time.process_time() - c0   # this process, all threads
            state["wall_time"] += time.perf_counter() - t0
            state["cpu_time"] = state.get("cpu_time", 0.0) + entry["cpu_time_s"]
            say(_format_entry(entry, cfg.epochs))
            save()
            if path and dctx.is_main:
                saved_epoch = state["epoch"]

        if last_test is None:  # resumed after the last epoch: evaluate exactly as that epoch did
            last_test = evaluate_at(model, data.test, cfg, state["epoch"], "test",
                                    method=method)
            bad = _non_finite_metrics(last_test)
            if bad:
                raise diverged(state["epoch"] - 1,
                               f"the evaluation is not finite ({', '.join(bad)})")
        return _finish(cfg, model, controller, data, state, device, last_test, method)
    except KeyboardInterrupt as e:
        e.args = (_resume_hint(cfg, path, saved_epoch),)
        raise


def _use_fast(cfg: TrainConfig, device: torch.device) -> bool:
    if cfg.spec.baseline:   # the baselines have no fast path (no compile, no bf16)
        return False
    return cfg.fast if cfg.fast is not None else device.type == "cuda"


# -- start-up checks --------------------------------------------------------------------------
def _device(cfg: TrainConfig) -> torch.device:
    """cfg.device resolved and checked: ConfigError for a device this machine does not have."""
    try:
        dev = resolve_device(cfg.device)
    except SSVIError:
        raise
    except (ValueError, RuntimeError) as e:
        raise ConfigError(one_line(e)) from e
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"device={cfg.device!r}: ssvi runs on 'cpu' or 'cuda[:N]'; "
                          "use --device cpu, cuda or auto")
    if dev.type == "cuda" and dev.index is not None:
        n = torch.cuda.device_count()
        if dev.index >= n:
            raise ConfigError(f"device={cfg.device!r} does not exist: this machine has {n} CUDA "
                              f"device(s) (cuda:0 to cuda:{n - 1}); use one of them or 'cuda'")
    return dev


def _first_existing(p: str) -> str:
    p = os.path.abspath(p)
    while not os.path.exists(p):
        parent = os.path.dirname(p)
        if parent == p:
            break
        p = parent
    return p


def _check_paths(cfg: TrainConfig) -> None:
    """ConfigError unless run_dir can be a folder and results_path a file (nothing is created)."""
    for name, p, want_dir in (("run_dir", cfg.run_dir, True),
                              ("results_path", cfg.results_path, False)):
        if not p:
            continue
        flag = "--" + name.replace("_", "-")
        if want_dir and os.path.exists(p) and not os.path.isdir(p):
            raise ConfigError(f"{name}={p!r} is a file, not a folder; give {flag} a folder for "
                              "the checkpoints (e.g. runs/NAME)")
        if not want_dir and os.path.isdir(p):
            raise ConfigError(f"{name}={p!r} is a folder; give {flag} a file name "
                              "(e.g. results/NAME.json)")
        base = _first_existing(p if want_dir else os.path.dirname(os.path.abspath(p)))
        if not os.path.isdir(base):
            raise ConfigError(f"{name}={p!r} cannot be created: {base} is a file; "
                              f"choose another {flag}")
        if not os.access(base, os.W_OK | os.X_OK):
            raise ConfigError(f"{name}={p!r} cannot be written: no write permission in {base}; "
                              f"choose another {flag}")


def _load_data(cfg: TrainConfig, device):
    try:
        return make_loaders(cfg, device=device)
    except SSVIError:
        raise
    except (FileNotFoundError, ValueError) as e:  # data modules that predate ssvi.errors
        raise DataError(one_line(e)) from e


def _short(value, width: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= width else text[:width - 3] + "..."


def _check_same_config(cfg: TrainConfig, payload: dict, given: dict) -> None:
    """ConfigError naming every field whose stored value differs from the given one."""
    stored = payload.get("config_key") or {}
    if stored == given:
        return
    absent = "(absent)"
    diffs = [f"{k}: stored {_short(stored.get(k, absent))}, given {_short(given.get(k, absent))}"
             for k in sorted(set(stored) | set(given)) if stored.get(k) != given.get(k)]
    shown = "; ".join(diffs[:6]) + (f"; and {len(diffs) - 6} more" if len(diffs) > 6 else "")
    raise ConfigError(f"the checkpoint in {cfg.run_dir} was written by a different configuration "
                      f"({shown}); to resume it use the stored values, to start a new run use "
                      f"another --run-dir (or delete {cfg.run_dir})")


# -- CPU time estimate ----------------------------------------------------------------------------
SLOW_EPOCH_S = 300.0   # warn when even the fast end of the estimate exceeds 5 minutes an epoch
#: effective training speed of the reference path on 2 CPU cores, in FLOP/s counted as
#: (6 if Bayesian else 3) x dense forward FLOPs per image: the range measured for this code
#: (measured before this release: small CNN x1.0 and ResNet-18 x0.125 at batch 128, full
#: ResNet-18 at batch 64, SSVI and deterministic, idle 2-core AMD EPYC)
CPU_FLOPS_2_CORES = (4e10, 1.6e11)


def _duration(s: float) -> str:
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    if s < 2 * 86400:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} days"


def cpu_epoch_seconds(cfg: TrainConfig, model, steps_per_epoch: int,
                      input_shape=(3, 32, 32)) -> tuple[float, float]:
    """(fast, slow) estimate of the seconds per training epoch on this CPU: the model's dense
    forward FLOPs per image (counted on the meta device; the model is untouched) times
    6 (forward + backward, LRT mean and variance) or 3 (deterministic), over
    :data:`CPU_FLOPS_2_CORES` scaled to the number of torch threads. Subspace updates and
    evaluation are not counted."""
    per_image = sum(flops_mod.forward_flops_per_layer(model, (1, *input_shape)).values())
    lrt = cfg.bayesian or cfg.method == "vd"   # VD trains with the LRT as well
    work = (6.0 if lrt else 3.0) * per_image * steps_per_epoch * cfg.batch_size
    scale = max(1.0, torch.get_num_threads() / 2.0)
    slow, fast = (work / (rate * scale) for rate in CPU_FLOPS_2_CORES)
    return fast, slow


def slow_cpu_warning(cfg: TrainConfig, model, steps_per_epoch: int, epochs_left: int) -> str | None:
    """The warning shown before a CPU run whose epochs take more than SLOW_EPOCH_S even at the
    fast end of :func:`cpu_epoch_seconds`; None otherwise."""
    fast, slow = cpu_epoch_seconds(cfg, model, steps_per_epoch)
    if fast < SLOW_EPOCH_S:
        return None
    threads = torch.get_num_threads()
    scaled = f", scaled to {threads} threads" if threads > 2 else ""
    return (f"training on the CPU: about {_duration(fast)} to {_duration(slow)} per epoch, "
            f"{_duration(fast * epochs_left)} to {_duration(slow * epochs_left)} for the "
            f"{epochs_left} epoch(s) left (from the model's FLOPs and this code's speed on an "
            f"idle 2-core CPU{scaled}; evaluation extra); use a GPU (--device cuda) or a "
            "smaller preset (--preset cpu or tiny)")


# -- divergence and interruption messages -----------------------------------------------------
def _divergence_message(cfg: TrainConfig, epoch: int, what: str, path, saved_epoch,
                        knob=None) -> str:
    """``knob``: (name, value, is_hyper_parameter) of the learning rate to lower (a baseline's,
    :func:`ssvi.baselines.training.lr_knob`); None: --lr or --lr-rho."""
    if knob is not None and knob[2]:
        name, lr = knob[0], knob[1]
        lower = f"{lr / 10:g}"
        flag, example = f"--hp {name}", f"--hp {name}={lower}"
    else:
        name, lr = ("lr-rho", cfg.lr_rho) if cfg.bayesian and cfg.lr_rho > cfg.lr else \
            ("lr", cfg.lr)
        lower = f"{lr / 10:g}"
        flag, example = f"--{name}", f"--{name} {lower}"
    new_dir = (f"{cfg.run_dir.rstrip('/' + os.sep)}-{name.replace('-', '').replace('_', '')}"
               f"{lower}" if cfg.run_dir else None)
    advice = f"lower {flag} ({lr:g} now, e.g. {example})"
    if path and saved_epoch:
        advice = (f"the checkpoint of epoch {saved_epoch}, the last finite one, is kept in "
                  f"{cfg.run_dir} but would diverge again with the same settings: {advice} "
                  f"and use a new --run-dir (e.g. --run-dir {new_dir})")
    else:
        advice = f"nothing was saved: {advice} and run again"
    return f"training diverged in epoch {epoch + 1}/{cfg.epochs} ({what}); {advice}"


def _resume_hint(cfg: TrainConfig, path, saved_epoch) -> str:
    if path and saved_epoch:
        return (f"run the same command again to resume from {path} "
                f"(epoch {saved_epoch}/{cfg.epochs} done)")
    if path:
        return "no epoch had finished, nothing was saved; run the same command again to start over"
    return "nothing was saved (no run_dir); give --run-dir DIR to make a run resumable"


def _non_finite_tensors(model) -> list[str]:
    """Names of the model's floating-point parameters and buffers holding NaN or inf (one sync)."""
    items = [(k, v) for k, v in model.state_dict().items() if v.is_floating_point()]
    if not items:
        return []
    ok = torch.stack([torch.isfinite(v).all() for _, v in items]).cpu()
    return [k for (k, _), good in zip(items, ok.tolist()) if not good]


def _non_finite_metrics(m: dict) -> list[str]:
    return [f"{k}={v}" for k, v in _scalar_metrics(m).items() if not math.isfinite(v)]


def make_step_fn(model, optimizer, cfg: TrainConfig, device: torch.device, wrap=None):
    """The per-step update: the fast path (ssvi.fast) on CUDA by default, else the reference.

    ``wrap(model)`` gives the module that runs the forward (DistributedDataParallel under
    torchrun, see ssvi.distributed); the KL is read from ``model`` itself.
    """
    if _use_fast(cfg, device):
        from .fast import make_fast_step
        return make_fast_step(model, optimizer, cfg, wrap=wrap)
    bayesian = cfg.bayesian
    fwd = wrap(model) if wrap is not None else model

    def step(x, y, kl_coef):
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(fwd(x), y)
        if bayesian:
            loss = loss + kl_coef * kl(model)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


def _mc_loss_fn(model, cfg, data, x, y, kl_coef, step):
    """loss_fn(k) for the addition criteria: draw 0 is this minibatch, draw k > 0 a random one."""
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)

    def loss_fn(k):
        xb, yb = (x, y) if k == 0 else data.train.random_batch(gen)
        loss = F.cross_entropy(model(xb), yb)
        if cfg.bayesian:
            loss = loss + kl_coef * kl(model)
        return loss

    return loss_fn


_SPLITS = {"test": 0, "val": 1}


def eval_seed(seed: int, epoch: int, split: str = "test") -> int:
    """The seed of the evaluation of ``split`` after ``epoch`` (counted from 1) of run ``seed``."""
    state = np.random.SeedSequence([int(seed), int(epoch), _SPLITS[split], 0xE7A1]).generate_state(2)
    return (int(state[0]) << 31) ^ int(state[1])


def evaluate_at(model, loader, cfg: TrainConfig, epoch: int, split: str = "test",
                method=None) -> dict:
    """The evaluation protocol of ``cfg`` (eval_samples posterior draws) as a pure function of
    the model state and (cfg.seed, epoch, split): it runs on a forked RNG seeded by
    :func:`eval_seed`, so whatever ran before gives the same metrics, and training's random
    numbers are the same whether or not it ran. ``method``: a baseline
    (:mod:`ssvi.baselines`), whose ``predict`` gives the probabilities (same metrics)."""
    device = next(model.parameters()).device
    seed = eval_seed(cfg.seed, epoch, split)
    if method is not None:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            return baseline_run.evaluate_method(method, model, loader, cfg.eval_samples)
    samples = cfg.eval_samples if cfg.bayesian else 1
    how = "sample" if cfg.bayesian else "mean"
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        if _use_fast(cfg, device):  # same protocol, bf16 + channels_last
            from .fast import fast_evaluate
            return fast_evaluate(model, loader, samples, how, seed=seed)
        return evaluate(model, loader, samples=samples, mode=how, seed=seed)


def _scalar_metrics(m: dict) -> dict:
    return {k: float(v) for k, v in m.items() if isinstance(v, (int, float))}


def _format_entry(e: dict, epochs: int) -> str:
    s = f"epoch {e['epoch']:>3}/{epochs}  loss {e['train_loss']:.4f}  lr {e['lr']:.4g}"
    if "test" in e:
        t = e["test"]
        s += f"  test acc {t['accuracy']:.4f} nll {t['nll']:.4f} ece {t['ece']:.4f}"
    if "val" in e:
        s += f"  val acc {e['val']['accuracy']:.4f}"
    return s + f"  ({e['epoch_time_s']:.1f}s)"


def _finish(cfg, model, controller, data, state, device, final: dict, method=None) -> dict:
    """The results dict; ``final`` is the test evaluation after the last epoch. For a baseline
    ``method`` the counts come from its masks and its FLOP formula (ssvi.baselines.training)."""
    selection = "last epoch"
    selected = _scalar_metrics(final)
    scored = [e for e in state["history"] if "val" in e]
    if scored:
        best = max(scored, key=lambda e: e["val"]["accuracy"])
        selection = f"best validation accuracy (epoch {best['epoch']})"
        selected = best["test"]
    if method is not None:
        counts = baseline_run.parameters(method, model)
        flops = baseline_run.training_flops(method, model, data.n_train, cfg.epochs,
                                            cfg.batch_size)
        sections = {"method": baseline_run.method_section(method)}
    else:
        counts = flops_mod.count_parameters(model)
        flops = flops_mod.flops_report(model, data.n_train, cfg.epochs,
                                       update_every=cfg.update_every if controller else None,
                                       batch_size=cfg.batch_size, t_end_frac=cfg.t_end_frac)
        sections = {}
    fingerprint = getattr(data, "fingerprint", None) or data_fingerprint(cfg)
    record = results.make_record(
        cfg,
        metrics=_scalar_metrics(final),
        reliability=final.get("reliability"),
        selection=selection,
        selected_metrics=selected,
        history=state["history"],
        update_log=state["update_log"],
        parameters=counts,
        flops=flops,
        controller={"n_updates": controller.n_updates,
                    "targets": controller.targets} if controller else None,
        data={"name": data.name, "n_train": data.n_train, "n_test": data.test.num_samples,
              "n_val": data.val.num_samples if data.val is not None else 0},
        data_fingerprint=fingerprint,
        provenance=provenance(device=device, seed=cfg.seed, wall_time_s=state["wall_time"],
                              cpu_time_s=state.get("cpu_time"), fast=_use_fast(cfg, device)),
        **sections,
    )
    if cfg.results_path:
        results.write_record(cfg.results_path, record)
    return record
