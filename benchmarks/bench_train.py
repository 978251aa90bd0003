"""Seconds per training epoch: SSVI 90%, dense VI and deterministic ResNet-18, reference vs fast path.

    python benchmarks/bench_train.py                  # the full table on the GPU (about 5-8 min)
    python benchmarks/bench_train.py --steps 200      # time more steps per row
    python benchmarks/bench_train.py --epochs-equivalent 1   # time whole epochs, no extrapolation
    python benchmarks/bench_train.py --parallel 3     # 3 processes at once: aggregate epochs/s
    python benchmarks/bench_train.py --quick          # CPU smoke test (< 1 min; numbers meaningless)
    python benchmarks/bench_train.py --full-run --data-dir data   # one 200-epoch SSVI 90% run

Data: SYNTHETIC CIFAR-shaped uint8 images (50,000 train / 10,000 test, random pixels and labels)
kept on the device and served by :class:`ssvi.loader.Loader` with its on-device crop + flip, so
the loader's cost is included and no disk or CPU decoding is. Timing: CUDA events around the
timed steps (``time.perf_counter`` on CPU); warm-up steps (compilation, CUDA-graph recording,
cuDNN autotuning) are excluded. By default ``--steps N`` steps are timed and the epoch is
EXTRAPOLATED: ``ceil(50000 / batch) * s_per_step + (steps / update_every) * s_per_update``
(subspace updates happen during the first 75% of training; the number reported is the cost while
they happen). Evaluation (``eval_samples`` posterior draws over the 10,000 test images, the
paper's protocol) is timed separately and also added (``incl. eval``). Peak memory is
``torch.cuda.max_memory_allocated``. Each row is written to the JSON as soon as it is measured.
"""
from __future__ import annotations

import argparse
import datetime
import itertools
import json
import math
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script from a checkout

from ssvi import fast  # noqa: E402
from ssvi.checkpoint import atomic_write_json  # noqa: E402
from ssvi.cifar import CIFAR10_MEAN, CIFAR10_STD  # noqa: E402
from ssvi.config import TrainConfig  # noqa: E402
from ssvi.layers import kl  # noqa: E402
from ssvi.loader import Loader  # noqa: E402
from ssvi.loop import train_epoch  # noqa: E402
from ssvi.metrics import predict_probs  # noqa: E402
from ssvi.provenance import provenance  # noqa: E402
from ssvi.subspace import SubspaceController  # noqa: E402
from ssvi.trainer import build_model_for, make_optimizer, make_step_fn, resolve_device  # noqa: E402

METHODS = {"ssvi": "SSVI 90%", "dense_vi": "dense VI", "dense": "deterministic"}
RELEASE_H200 = {  # shared/reference/recipe.md, measured by the authors' release, H200, torch 2.11
    "release SSVI 90%, b128, its DataLoader": 15.5,
    "release SSVI 90%, b128, data on GPU": 11.5,
    "release dense VI, b128, data on GPU": 10.4,
    "release deterministic, fp32, b128": 3.0,
    "deterministic ResNet-18, bf16, channels_last, b512": 0.84,
}


class Timer:
    """CUDA events on CUDA, perf_counter elsewhere; ``stop()`` returns seconds."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"

    def start(self):
        if self.cuda:
            torch.cuda.synchronize()
            self.t0 = torch.cuda.Event(enable_timing=True)
            self.t1 = torch.cuda.Event(enable_timing=True)
            self.t0.record()
        else:
            self.p0 = time.perf_counter()

    def stop(self) -> float:
        if self.cuda:
            self.t1.record()
            self.t1.synchronize()
            return self.t0.elapsed_time(self.t1) / 1000.0
        return time.perf_counter() - self.p0


def synthetic_images(n, device, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return x.to(device), y.to(device)


def make_config(args, method, batch, path):
    return TrainConfig(dataset="synthetic", model="resnet18", width=args.width, method=method,
                       density=0.1 if method == "ssvi" else 1.0, batch_size=batch,
                       eval_samples=args.eval_samples, device=str(args.device),
                       fast=path == "fast", progress=False, update_every=args.update_every)


def build_row(args, method, batch, path, train_xy, test_xy):
    """Model, optimizer, controller, step function and loaders of one table row."""
    device = args.device
    cfg = make_config(args, method, batch, path)
    torch.manual_seed(0)
    model = build_model_for(cfg, 10).to(device)
    optimizer = make_optimizer(model, cfg)
    controller = None
    if cfg.sparse:
        controller = SubspaceController(model, cfg.density, update_every=cfg.update_every,
                                        t_end=10**9, seed=0, optimizer=optimizer)
    if path == "fast":
        step_fn = fast.make_fast_step(model, optimizer, cfg, compile=args.compile,
                                      compile_mode=args.compile_mode)
        options = step_fn.options.to_dict()
    else:
        step_fn = make_step_fn(model, optimizer, cfg, device)
        options = "reference: eager fp32, contiguous, for-loop/foreach SGD"
    cl = path == "fast" and step_fn.options.channels_last
    common = dict(device=device, mean=CIFAR10_MEAN, std=CIFAR10_STD, channels_last=cl)
    train = Loader(*train_xy, batch, shuffle=True, augment=True, seed=0, **common)
    test = Loader(*test_xy, args.eval_batch, **common)
    return cfg, model, controller, step_fn, train, test, options


def _batches(loader):
    epoch = 0
    while True:
        yield from loader.epoch_batches(epoch)
        epoch += 1


def measure_row(args, method, batch, path, train_xy, test_xy, barrier=None) -> dict:
    """Time one (method, batch, path) configuration; see the module docstring."""
    device = args.device
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    cfg, model, controller, step_fn, train, test, options = build_row(
        args, method, batch, path, train_xy, test_xy)
    kl_coef = cfg.kl_scale / args.n_train
    it = _batches(train)
    timer = Timer(device)
    row = {"method": method, "label": METHODS[method], "batch": batch, "path": path,
           "options": options, "warmup_steps": args.warmup}

    def update_loss(x, y):
        def loss_fn(k):
            loss = F.cross_entropy(model(x), y)
            return loss + kl_coef * kl(model) if cfg.bayesian else loss
        return loss_fn

    t0 = time.perf_counter()
    for _ in range(args.warmup):                        # compile, record graphs, autotune
        x, y = next(it)
        step_fn(x, y, kl_coef)
    if controller is not None:                          # one update, then steps again
        x, y = next(it)
        controller.update(args.update_every, update_loss(x, y))
        for _ in range(max(1, args.warmup // 2)):
            x, y = next(it)
            step_fn(x, y, kl_coef)
    if cuda:
        torch.cuda.synchronize()
    row["warmup_s"] = time.perf_counter() - t0
    if barrier is not None:
        barrier()

    steps_per_epoch = len(train)
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    if args.epochs_equivalent:   # whole epochs of the trainer's loop (ssvi.loop.train_epoch)
        n_epochs = args.epochs_equivalent
        budget = int(math.ceil(n_epochs * steps_per_epoch))   # steps + updates to time
        timer.start()
        n_steps = n_updates = 0
        for e in range(int(math.ceil(n_epochs))):
            done = train_epoch(itertools.islice(train.epoch_batches(100 + e),
                                                budget - n_steps - n_updates),
                               step_fn, kl_coef, step=e * steps_per_epoch, controller=controller,
                               update_loss=lambda x, y, t: update_loss(x, y))
            loss_sum += done.loss_sum.to(device)
            n_steps += done.n_steps
            n_updates += done.n_updates
        total = timer.stop()
        row.update(extrapolated=False, epochs_timed=n_epochs, steps_timed=n_steps,
                   updates_timed=n_updates, s_per_epoch_train=total / n_epochs)
    else:                        # optimisation steps only; updates are timed below
        timer.start()
        done = train_epoch(itertools.islice(it, args.steps), step_fn, kl_coef)
        s_step = timer.stop() / args.steps
        loss_sum += done.loss_sum.to(device)
        s_update = 0.0
        if controller is not None:
            batches = [next(it) for _ in range(args.update_reps)]
            timer.start()
            for i, (x, y) in enumerate(batches):
                controller.update(args.update_every * (i + 2), update_loss(x, y))
            s_update = timer.stop() / args.update_reps
        updates = steps_per_epoch / cfg.update_every if controller is not None else 0.0
        row.update(extrapolated=True, steps_timed=args.steps, s_per_step=s_step,
                   s_per_update=s_update, updates_per_epoch=updates,
                   s_per_epoch_train=steps_per_epoch * s_step + updates * s_update)
    row["loss_finite"] = bool(torch.isfinite(loss_sum))

    predict = fast.fast_predict_probs if path == "fast" else predict_probs
    samples = cfg.eval_samples if cfg.bayesian else 1
    predict(model, test, samples=samples)               # warm-up (cuDNN autotuning)
    timer.start()
    predict(model, test, samples=samples)
    row["s_eval"] = timer.stop()
    row["eval_samples"] = samples
    row["s_per_epoch_incl_eval"] = row["s_per_epoch_train"] + row["s_eval"]
    row["peak_mem_gib"] = (torch.cuda.max_memory_allocated(device) / 2**30) if cuda else None
    return row


def print_table(rows, note=""):
    head = (f"{'model':<14}{'path':<10}{'batch':>6}{'s/epoch train':>15}{'eval s':>9}"
            f"{'incl. eval':>12}{'peak GiB':>10}")
    print(head)
    print("-" * len(head))
    for r in rows:
        if "error" in r:
            print(f"{r['label']:<14}{r['path']:<10}{r['batch']:>6}  ERROR {r['error'][:60]}")
            continue
        mem = f"{r['peak_mem_gib']:.2f}" if r.get("peak_mem_gib") is not None else "-"
        print(f"{r['label']:<14}{r['path']:<10}{r['batch']:>6}{r['s_per_epoch_train']:>15.3f}"
              f"{r['s_eval']:>9.3f}{r['s_per_epoch_incl_eval']:>12.3f}{mem:>10}")
    if note:
        print(note)


def ratios(rows) -> dict:
    """SSVI epoch / deterministic epoch (incl. eval) for every (path, batch) with both."""
    ok = {(r["method"], r["path"], r["batch"]): r for r in rows if "error" not in r}
    out = {}
    for (m, p, b), r in ok.items():
        det = ok.get(("dense", p, b))
        if m == "ssvi" and det is not None:
            out[f"{p} b{b}"] = r["s_per_epoch_incl_eval"] / det["s_per_epoch_incl_eval"]
    best_det = min((r["s_per_epoch_incl_eval"] for (m, _, _), r in ok.items() if m == "dense"),
                   default=None)
    ssvi = ok.get(("ssvi", "fast", 128))
    if best_det and ssvi:
        out["fast ssvi b128 / fastest deterministic"] = ssvi["s_per_epoch_incl_eval"] / best_det
    return out


def run_table(args) -> dict:
    device = args.device
    train_xy = synthetic_images(args.n_train, device, 0)
    test_xy = synthetic_images(args.n_test, device, 1)
    result = {"kind": "bench_train", "quick": args.quick, "args": _jsonable(vars(args)),
              "data": f"synthetic CIFAR-shaped uint8 ({args.n_train} train / {args.n_test} test) "
                      "on the device, on-device crop+flip",
              "timing": "CUDA events" if device.type == "cuda" else "perf_counter",
              "extrapolated": not args.epochs_equivalent,
              "release_reference_s_per_epoch_h200": RELEASE_H200,
              "provenance": provenance(device=device, seed=0), "rows": []}
    order = [(m, b, p) for b in args.batch_sizes for m in args.methods for p in args.paths]
    for method, batch, path in order:
        try:
            row = measure_row(args, method, batch, path, train_xy, test_xy)
        except Exception as e:  # keep measuring the other rows
            row = {"method": method, "label": METHODS[method], "batch": batch, "path": path,
                   "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        result["rows"].append(row)
        result["ratios_ssvi_over_deterministic"] = ratios(result["rows"])
        atomic_write_json(args.out, result)
        print(f"  measured {METHODS[method]} {path} b{batch}", flush=True)
    note = ("epochs EXTRAPOLATED from %d timed steps (+ subspace updates)" % args.steps
            if not args.epochs_equivalent else f"{args.epochs_equivalent} epoch(s) timed")
    print()
    print_table(result["rows"], note + "; data synthetic, on the device")
    for k, v in result["ratios_ssvi_over_deterministic"].items():
        print(f"ratio SSVI / deterministic, {k} (incl. eval): {v:.2f}")
    print("release (authors' code, H200, torch 2.11, recipe.md): "
          + ", ".join(f"{k}: {v} s" for k, v in RELEASE_H200.items()))
    return result


# -- several processes at once ----------------------------------------------------------------------
def run_parallel(args) -> dict:
    """``--parallel N``: N processes time the same row at the same moment (a file barrier after
    warm-up); aggregate throughput = sum over processes of 1 / (s per epoch)."""
    work = Path(args.out).with_suffix("").as_posix() + "_parallel"
    os.makedirs(work, exist_ok=True)
    procs = []
    for i in range(args.parallel):
        cmd = [sys.executable, __file__, "--child", work, "--child-index", str(i),
               "--methods", args.methods[0], "--batch-sizes", str(args.batch_sizes[0]),
               "--paths", args.paths[0], "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--device", str(args.device), "--width", str(args.width),
               "--n-train", str(args.n_train), "--n-test", str(args.n_test),
               "--eval-samples", str(args.eval_samples)]
        if args.compile_mode:
            cmd += ["--compile-mode", args.compile_mode]
        procs.append(subprocess.Popen(cmd))
    while len(list(Path(work).glob("ready_*"))) < args.parallel:
        if any(p.poll() not in (None, 0) for p in procs):
            raise RuntimeError("a --parallel child process failed during warm-up")
        time.sleep(0.5)
    Path(work, "go").touch()
    for p in procs:
        p.wait()
    rows = [json.loads(Path(work, f"row_{i}.json").read_text()) for i in range(args.parallel)]
    agg = sum(1.0 / r["s_per_epoch_train"] for r in rows)
    result = {"kind": "bench_train_parallel", "processes": args.parallel, "rows": rows,
              "aggregate_epochs_per_s_train": agg,
              "aggregate_s_per_epoch_train": 1.0 / agg,
              "provenance": provenance(device=args.device, seed=0), "args": _jsonable(vars(args))}
    atomic_write_json(args.out, result)
    print_table(rows)
    print(f"{args.parallel} processes at once: aggregate {agg:.3f} epochs/s "
          f"= {1.0 / agg:.3f} s per epoch (training only)")
    return result


def run_child(args) -> None:
    train_xy = synthetic_images(args.n_train, args.device, 0)
    test_xy = synthetic_images(args.n_test, args.device, 1)

    def barrier():
        Path(args.child, f"ready_{args.child_index}").touch()
        while not Path(args.child, "go").exists():
            time.sleep(0.05)

    row = measure_row(args, args.methods[0], args.batch_sizes[0], args.paths[0], train_xy,
                      test_xy, barrier=barrier)
    atomic_write_json(Path(args.child, f"row_{args.child_index}.json"), row)


# -- one full run ------------------------------------------------------------------------------------
def full_run(args) -> dict:
    """One SSVI 90% ResNet-18 CIFAR-10 run with the recipe and the fast path, via ssvi.train."""
    from ssvi.trainer import train
    run_id = args.run_id
    cfg = TrainConfig(dataset="cifar10", data_dir=args.data_dir, method="ssvi", density=0.1,
                      epochs=args.epochs, seed=args.seed, fast=True, device=str(args.device),
                      eval_every=args.eval_every,
                      results_path=str(REPO / "results" / "paper" /
                                       f"ssvi90_fast_seed{args.seed}_{run_id}.json"),
                      run_dir=str(REPO / "results" / "paper" / "runs" / run_id),
                      extra={"launched_by": "benchmarks/bench_train.py --full-run"})
    t0 = time.perf_counter()
    res = train(cfg)
    wall = time.perf_counter() - t0
    m = res["metrics"]
    print(f"full run: {args.epochs} epochs in {wall:.1f} s ({wall / args.epochs:.2f} s/epoch incl. "
          f"eval every {args.eval_every}); test acc {m['accuracy']:.4f} nll {m['nll']:.4f}; "
          f"results: {cfg.results_path}")
    return res


# -- command line ------------------------------------------------------------------------------------
def _jsonable(d):
    return {k: (str(v) if isinstance(v, torch.device) else v) for k, v in d.items()}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--quick", action="store_true",
                   help="CPU smoke test: width 1/16, 64 images, batch 8, 2 timed steps")
    p.add_argument("--steps", type=int, default=None, help="timed steps per row (default 100)")
    p.add_argument("--epochs-equivalent", type=float, default=None,
                   help="time this many whole epochs (with updates) instead of extrapolating")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 15)")
    p.add_argument("--methods", nargs="+", default=["ssvi", "dense", "dense_vi"],
                   choices=sorted(METHODS))
    p.add_argument("--batch-sizes", nargs="+", type=int, default=None)
    p.add_argument("--paths", nargs="+", default=["fast", "reference"],
                   choices=["fast", "reference"])
    p.add_argument("--compile", type=lambda s: s.lower() in ("1", "true", "yes"), default=None,
                   help="fast path: torch.compile on/off (default: ssvi.fast.resolve_options: on, except --quick)")
    p.add_argument("--compile-mode", default=None,
                   help="fast path: torch.compile mode (default reduce-overhead on CUDA)")
    p.add_argument("--width", type=float, default=None)
    p.add_argument("--n-train", type=int, default=None)
    p.add_argument("--n-test", type=int, default=None)
    p.add_argument("--eval-samples", type=int, default=5)
    p.add_argument("--eval-batch", type=int, default=1000)
    p.add_argument("--update-every", type=int, default=100)
    p.add_argument("--update-reps", type=int, default=2)
    p.add_argument("--parallel", type=int, default=1,
                   help="run the first row in N processes at once and report aggregate epochs/s")
    p.add_argument("--out", default=None, help="results JSON (default results/bench/<id>.json)")
    p.add_argument("--full-run", action="store_true",
                   help="instead of the table: one full SSVI 90%% CIFAR-10 run (fast path)")
    p.add_argument("--epochs", type=int, default=200, help="--full-run epochs")
    p.add_argument("--eval-every", type=int, default=1, help="--full-run evaluation interval")
    p.add_argument("--seed", type=int, default=0, help="--full-run seed")
    p.add_argument("--data-dir", default=None, help="--full-run CIFAR-10 location")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-index", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    q = args.quick
    defaults = dict(steps=2 if q else 100, warmup=1 if q else 15, width=1 / 16 if q else 1.0,
                    n_train=64 if q else 50_000, n_test=32 if q else 10_000,
                    batch_sizes=[8] if q else [128, 512])
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if q:
        args.eval_samples = min(args.eval_samples, 2)
        args.eval_batch = min(args.eval_batch, 32)
        args.update_reps = 1
        if args.device == "auto":
            args.device = "cpu"
        if args.compile is None:
            args.compile = False   # inductor's C++ compile alone takes minutes on a small CPU
    args.device = resolve_device(args.device)
    args.run_id = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    if args.out is None:
        args.out = str(REPO / "results" / "bench" / f"{'quick-' if q else ''}{args.run_id}.json")
    for name in ("steps", "warmup", "parallel", "eval_samples", "update_reps"):
        if getattr(args, name) < (0 if name == "warmup" else 1):
            p.error(f"--{name.replace('_', '-')} must be positive")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        run_child(args)
    elif args.full_run:
        full_run(args)
    elif args.parallel > 1:
        run_parallel(args)
    else:
        print(f"bench_train on {args.device}"
              + (" (QUICK CPU smoke test: tiny model, numbers meaningless)" if args.quick else ""),
              flush=True)
        run_table(args)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
