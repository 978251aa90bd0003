"""The training loop: VI steps (eq. 1/3) alternating with subspace updates (Algorithm 1).

Loss, stated once (the most common confusion in BNN libraries):

    loss = mean cross-entropy over the minibatch + beta(epoch) * kl_scale / N_train * KL_sum

with KL_sum the closed-form KL summed over ACTIVE weights of every Bayesian layer, N_train the
number of training images, kl_scale = 0.01 (recipe) and the warm-up beta = min(2 epoch / epochs, 1)
with epochs counted from 1 (beta = 1 throughout without warm-up). For kl_scale = 1 this is the
negative ELBO divided by N_train.

Checkpoints are written atomically after every epoch; a run started again with the same config
and ``run_dir`` resumes where it stopped and ends bitwise where an uninterrupted run ends (CPU).
"""
from __future__ import annotations

import dataclasses
import math
import os
import time

import torch
import torch.nn.functional as F

from . import checkpoint as ckpt
from . import flops as flops_mod
from .config import TrainConfig
from .data import make_loaders, resolve_device
from .distributed import init_distributed
from .layers import bayes_layers, kl
from .metrics import evaluate
from .models import build_model
from .provenance import provenance
from .subspace import NonFiniteLossError, SubspaceController

CHECKPOINT_NAME = "checkpoint.pt"
# fields that may differ between an interrupted run and its resumption
_RESUME_FREE = ("progress", "run_dir", "results_path", "device", "fast", "extra")


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


def cosine_lrs(cfg: TrainConfig, epoch0: int) -> tuple[float, float]:
    """CosineAnnealingLR(T_max=epochs) stepped per epoch; epoch0 counted from 0."""
    f = 0.5 * (1.0 + math.cos(math.pi * epoch0 / cfg.epochs))
    return cfg.lr * f, cfg.lr_rho * f


def _config_key(cfg: TrainConfig) -> dict:
    d = cfg.to_dict()
    for k in _RESUME_FREE:
        d.pop(k, None)
    return d


def _rng_state(device: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


class _Progress:
    def __init__(self, enabled: bool, total: int, desc: str):
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total, desc=desc, leave=False, mininterval=1.0)

    def update(self, n=1, **postfix):
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def train(cfg: TrainConfig, *, resume: bool = True, on_update=None) -> dict:
    """Train ``cfg`` end to end and return the results dict (also written to cfg.results_path).

    ``on_update(controller, step)`` is called before every subspace update; whatever dicts it
    returns are stored, in order, under ``results["update_log"]`` (and in the checkpoint).
    Raises NonFiniteLossError (keeping the last good checkpoint) if the loss becomes non-finite.
    """
    cfg.validate()
    dctx = init_distributed(resolve_device(cfg.device))  # one process unless under torchrun
    device = dctx.device
    if not dctx.is_main:  # only rank 0 logs and writes results (checkpoints: see save())
        cfg = dataclasses.replace(cfg, progress=False, results_path=None)
    torch.manual_seed(cfg.seed)
    data = dctx.shard_data(make_loaders(cfg, device=device))
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
    step_fn = make_step_fn(model, optimizer, cfg, device, wrap=dctx.wrap if dctx.active else None)

    state = {"epoch": 0, "step": 0, "history": [], "wall_time": 0.0, "update_log": []}
    path = os.path.join(cfg.run_dir, CHECKPOINT_NAME) if cfg.run_dir else None
    if path and resume and os.path.exists(path):
        payload = ckpt.load_checkpoint(path, map_location=device)
        if payload.get("config_key") != _config_key(cfg):
            raise ValueError(f"the checkpoint in {cfg.run_dir} was written by a different "
                             "configuration; use another run_dir or delete the checkpoint")
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        if controller is not None:
            controller.load_state_dict(payload["controller"])
        state = payload["state"]
        _set_rng_state(payload["rng"], device)
        _log(cfg, f"resumed from {path} at epoch {state['epoch']}/{cfg.epochs}")

    def save():
        if path and dctx.is_main:
            os.makedirs(cfg.run_dir, exist_ok=True)
            ckpt.save_checkpoint(path, {
                "config": cfg.to_dict(), "config_key": _config_key(cfg),
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "controller": controller.state_dict() if controller else None,
                "state": state, "rng": _rng_state(device)})

    last_test = None  # the full evaluation of the last epoch, reused for the results
    try:
        while state["epoch"] < cfg.epochs:
            t0 = time.perf_counter()
            epoch = state["epoch"]  # 0-based; the recipe's warm-up counts from 1
            lr, lr_rho = cosine_lrs(cfg, epoch)
            optimizer.param_groups[0]["lr"] = lr
            if len(optimizer.param_groups) > 1:
                optimizer.param_groups[1]["lr"] = lr_rho
            kl_coef = kl_coefficient(cfg, epoch + 1, data.n_train)
            dctx.seed_epoch(cfg.seed, epoch)
            model.train()
            loss_sum = torch.zeros((), device=device, dtype=torch.float64)
            n_steps = n_updates = 0
            bar = _Progress(cfg.progress, steps_per_epoch, f"epoch {epoch + 1}/{cfg.epochs}")
            for x, y in data.train.epoch_batches(epoch):
                step = state["step"]
                if controller is not None and controller.is_update_step(step):
                    if on_update is not None:
                        note = on_update(controller, step)
                        if note is not None:
                            state["update_log"].append(note)
                    try:
                        controller.update(step, _mc_loss_fn(model, cfg, data, x, y, kl_coef, step))
                    except NonFiniteLossError as e:
                        raise _non_finite(cfg, epoch, path, str(e)) from None
                    n_updates += 1
                else:
                    loss_sum += step_fn(x, y, kl_coef)
                    n_steps += 1
                state["step"] = step + 1
                bar.update(1)
            bar.close()
            train_loss = float(dctx.all_reduce_mean(loss_sum)) / max(n_steps, 1)
            if not math.isfinite(train_loss):
                raise _non_finite(cfg, epoch, path, f"mean loss {train_loss}")
            state["epoch"] = epoch + 1
            entry = {"epoch": epoch + 1, "train_loss": train_loss, "lr": lr,
                     "kl_coef": kl_coef, "mask_updates": n_updates,
                     "kl": float(kl(model).detach()) if cfg.bayesian else 0.0,
                     "epoch_time_s": time.perf_counter() - t0}
            if state["epoch"] % cfg.eval_every == 0 or state["epoch"] == cfg.epochs:
                last_test = _evaluate(model, data.test, cfg)
                entry["test"] = _scalar_metrics(last_test)
                if data.val is not None:
                    entry["val"] = _scalar_metrics(_evaluate(model, data.val, cfg))
            state["history"].append(entry)
            state["wall_time"] += time.perf_counter() - t0
            _log(cfg, _format_entry(entry, cfg.epochs))
            save()
    except KeyboardInterrupt:
        _log(cfg, "interrupted" + (f"; run the same command again to resume from "
                                   f"{path} (epoch {state['epoch']})" if path else ""))
        raise

    if last_test is None:  # resumed after the last epoch: nothing was evaluated here
        last_test = _evaluate(model, data.test, cfg)
    return _finish(cfg, model, controller, data, state, device, last_test)


def _use_fast(cfg: TrainConfig, device: torch.device) -> bool:
    return cfg.fast if cfg.fast is not None else device.type == "cuda"


def _non_finite(cfg, epoch: int, path, detail: str) -> NonFiniteLossError:
    kept = (f"The last good checkpoint (end of epoch {epoch}) is kept in {cfg.run_dir}; "
            "running again resumes from it. " if path and os.path.exists(path) else "")
    return NonFiniteLossError(
        f"the training loss became non-finite in epoch {epoch + 1} ({detail}). {kept}"
        "Lower the learning rate or the sigma initialisation and run again.")


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


def _evaluate(model, loader, cfg):
    samples = cfg.eval_samples if cfg.bayesian else 1
    if _use_fast(cfg, next(model.parameters()).device):  # same protocol, bf16 + channels_last
        from .fast import fast_evaluate
        return fast_evaluate(model, loader, samples, "sample" if cfg.bayesian else "mean")
    return evaluate(model, loader, samples=samples, mode="sample" if cfg.bayesian else "mean")


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


def _log(cfg: TrainConfig, msg: str) -> None:
    if cfg.progress:
        print(msg, flush=True)


def _finish(cfg, model, controller, data, state, device, final: dict) -> dict:
    """The results dict; ``final`` is the test evaluation after the last epoch."""
    selection = "last epoch"
    selected = _scalar_metrics(final)
    scored = [e for e in state["history"] if "val" in e]
    if scored:
        best = max(scored, key=lambda e: e["val"]["accuracy"])
        selection = f"best validation accuracy (epoch {best['epoch']})"
        selected = best["test"]
    counts = flops_mod.count_parameters(model)
    results = {
        "config": cfg.to_dict(),
        "metrics": _scalar_metrics(final),
        "reliability": final.get("reliability"),
        "selection": selection,
        "selected_metrics": selected,
        "history": state["history"],
        "update_log": state["update_log"],
        "parameters": counts,
        "flops": flops_mod.flops_report(model, data.n_train, cfg.epochs,
                                        update_every=cfg.update_every if controller else None,
                                        batch_size=cfg.batch_size, t_end_frac=cfg.t_end_frac),
        "controller": {"n_updates": controller.n_updates,
                       "targets": controller.targets} if controller else None,
        "data": {"name": data.name, "n_train": data.n_train, "n_test": data.test.num_samples,
                 "n_val": data.val.num_samples if data.val is not None else 0},
        "provenance": provenance(device=device, seed=cfg.seed, wall_time_s=state["wall_time"]),
    }
    if cfg.results_path:
        os.makedirs(os.path.dirname(os.path.abspath(cfg.results_path)), exist_ok=True)
        ckpt.atomic_write_json(cfg.results_path, results)
    return results
