"""Milliseconds per CPU training step: SSVI 90% and deterministic, reference path vs fast-path variants.

    python benchmarks/bench_cpu.py                       # the full table (about 15-30 min, 2 threads)
    python benchmarks/bench_cpu.py --nets small_cnn:1.0 --variants reference bf16+cl
    python benchmarks/bench_cpu.py --quick               # smoke test (< 1 min; numbers meaningless)

One training step at batch 128 (zero_grad, forward, loss, backward, SGD) on fixed random
CIFAR-shaped batches, for every network x method x variant. A variant is the reference step
(:func:`ssvi.trainer.make_step_fn` with ``fast=False``: eager fp32, contiguous, for-each SGD) or
:func:`ssvi.fast.make_fast_step` with a ``+``-joined subset of ``compile`` (inductor, default
mode), ``bf16`` (autocast for convolutions and matmuls), ``cl`` (channels_last) and ``fused``
(fused SGD); ``fp32`` alone is the fast step with everything off.

The machine may be shared, so the variants are INTERLEAVED: after every configuration of a
network is built and warmed up (compilation excluded, its time recorded), ``--rounds`` rounds
each time ``--steps`` consecutive steps of every configuration, in a shuffled order per round.
Reported: the median step time over all rounds, images/s = batch / median, the ratio SSVI /
deterministic of the same variant, and the speed-up against the reference path of the same
network and method -- all from the same run. The 1-minute load average is recorded per round.
On a busy machine the median wall time mostly measures waiting, so each row also has the
MINIMUM wall time (the step that was least disturbed, closest to an idle machine) and the
median process CPU time (all threads; it includes OpenMP spin-waiting when the threads are
descheduled, so it too grows with the load, but far less).
SSVI steps are plain SGD steps between subspace updates (the masks hold 10% of the weights);
the update itself (every 100 steps) is not timed here (see bench_train.py).
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a script from a checkout

from ssvi import fast  # noqa: E402
from ssvi.checkpoint import atomic_write_json  # noqa: E402
from ssvi.config import TrainConfig  # noqa: E402
from ssvi.layers import bayes_layers  # noqa: E402
from ssvi.provenance import provenance  # noqa: E402
from ssvi.subspace import SubspaceController  # noqa: E402
from ssvi.trainer import build_model_for, make_optimizer, make_step_fn  # noqa: E402

METHODS = {"ssvi": "SSVI 90%", "dense": "deterministic"}
TECHNIQUES = ("compile", "bf16", "cl", "fused")
DEFAULT_NETS = ["small_cnn:1.0", "small_cnn:1.25", "resnet18:0.125", "resnet18:0.25"]
DEFAULT_VARIANTS = ["reference", "fp32", "bf16", "cl", "bf16+cl", "bf16+cl+fused", "compile",
                    "compile+bf16", "compile+cl", "compile+bf16+cl"]


def parse_variant(name: str) -> dict | None:
    """"reference" -> None; "compile+bf16" -> make_fast_step keyword arguments."""
    if name == "reference":
        return None
    parts = set(name.split("+")) - {"fp32"}
    unknown = parts - set(TECHNIQUES)
    if unknown:
        raise ValueError(f"variant {name!r}: unknown technique(s) {', '.join(sorted(unknown))}; "
                         f"join any of {', '.join(TECHNIQUES)} with '+', or use 'reference'/'fp32'")
    return dict(compile="compile" in parts,
                amp_dtype=torch.bfloat16 if "bf16" in parts else torch.float32,
                channels_last="cl" in parts, fused="fused" in parts)


def parse_net(spec: str) -> tuple[str, float]:
    name, _, width = spec.partition(":")
    try:
        return name, float(width or 1.0)
    except ValueError:
        raise ValueError(f"--nets {spec!r}: write MODEL:WIDTH, e.g. resnet18:0.125") from None


def n_weights(model) -> int:
    return sum(l.mu.numel() for _, l in bayes_layers(model))


def build(net, width, method, variant, batch, n_train=50_000):
    cfg = TrainConfig(dataset="synthetic", model=net, width=width, method=method,
                      density=0.1 if method == "ssvi" else 1.0, batch_size=batch, device="cpu",
                      fast=variant != "reference", progress=False, lr=0.05, lr_rho=0.05)
    torch.manual_seed(0)
    model = build_model_for(cfg, 10)
    optimizer = make_optimizer(model, cfg)
    if cfg.sparse:   # the initial random subspace (10% of the weights)
        SubspaceController(model, cfg.density, update_every=cfg.update_every, t_end=10**9,
                           seed=0, optimizer=optimizer)
    kw = parse_variant(variant)
    if kw is None:
        step = make_step_fn(model, optimizer, cfg, torch.device("cpu"))
    else:
        step = fast.make_fast_step(model, optimizer, cfg, **kw)
    return {"net": net, "width": width, "method": method, "variant": variant, "step": step,
            "model": model, "kl_coef": cfg.kl_scale / n_train, "weights": n_weights(model),
            "times": [], "cpu_times": [], "losses": []}


def batches(n, batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, 3, 32, 32, generator=g), torch.randint(0, 10, (batch,), generator=g))
            for _ in range(n)]


def run_steps(c, data, n, record=True):
    for i in range(n):
        x, y = data[i % len(data)]
        t0, c0 = time.perf_counter(), time.process_time()
        loss = c["step"](x, y, c["kl_coef"])
        loss = float(loss)           # CPU: synchronous anyway; one scalar read per step
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        if record:
            c["times"].append(dt)
            c["cpu_times"].append(dc)
            c["losses"].append(loss)


def measure_net(args, spec, log):
    net, width = parse_net(spec)
    data = batches(4, args.batch, seed=1)
    configs = []
    for method in args.methods:
        for variant in args.variants:
            c = build(net, width, method, variant, args.batch)
            t0 = time.perf_counter()
            run_steps(c, data, args.warmup, record=False)
            c["warmup_s"] = time.perf_counter() - t0
            log(f"  built {net} x{width} {method:<6} {variant:<18} warm-up {c['warmup_s']:.1f} s")
            configs.append(c)
    rng = random.Random(0)
    loads = []
    for r in range(args.rounds):
        order = list(configs)
        rng.shuffle(order)
        for c in order:
            run_steps(c, data, args.steps)
        loads.append(os.getloadavg()[0])
        log(f"  round {r + 1}/{args.rounds} done (load {loads[-1]:.2f})")
    rows = []
    ref = {m: statistics.median(c["times"]) for c in configs for m in [c["method"]]
           if c["variant"] == "reference"}
    det = {c["variant"]: statistics.median(c["times"]) for c in configs if c["method"] == "dense"}
    ref_min = {c["method"]: min(c["times"]) for c in configs if c["variant"] == "reference"}
    ref_cpu = {c["method"]: statistics.median(c["cpu_times"]) for c in configs
               if c["variant"] == "reference"}
    det_min = {c["variant"]: min(c["times"]) for c in configs if c["method"] == "dense"}
    det_cpu = {c["variant"]: statistics.median(c["cpu_times"]) for c in configs
               if c["method"] == "dense"}
    for c in configs:
        med = statistics.median(c["times"])
        row = {"net": net, "width": width, "weights": c["weights"], "method": c["method"],
               "label": METHODS[c["method"]], "variant": c["variant"],
               "options": (c["step"].options.to_dict() if hasattr(c["step"], "options")
                           else "reference: eager fp32, contiguous, for-each SGD"),
               "batch": args.batch, "ms_per_step": 1e3 * med,
               "ms_per_step_iqr": [1e3 * q for q in _quartiles(c["times"])],
               "images_per_s": args.batch / med, "n_timed_steps": len(c["times"]),
               "ms_per_step_min": 1e3 * min(c["times"]),
               "cpu_ms_per_step": 1e3 * statistics.median(c["cpu_times"]),
               "cpu_ms_per_step_min": 1e3 * min(c["cpu_times"]),
               "warmup_s": c["warmup_s"],
               "loss_finite": all(map(lambda v: v == v and abs(v) != float("inf"), c["losses"]))}
        if c["method"] in ref:
            row["speedup_vs_reference"] = ref[c["method"]] / med
            row["speedup_vs_reference_min"] = ref_min[c["method"]] / min(c["times"])
            row["speedup_vs_reference_cpu"] = (ref_cpu[c["method"]]
                                               / statistics.median(c["cpu_times"]))
        if c["method"] == "ssvi" and c["variant"] in det:
            row["ratio_ssvi_over_deterministic"] = med / det[c["variant"]]
            if "reference" in det:
                row["ratio_ssvi_over_reference_deterministic"] = med / det["reference"]
            row["ratio_ssvi_over_fastest_deterministic"] = med / min(det.values())
            row["ratio_ssvi_over_deterministic_min"] = min(c["times"]) / det_min[c["variant"]]
            row["ratio_ssvi_over_deterministic_cpu"] = (statistics.median(c["cpu_times"])
                                                        / det_cpu[c["variant"]])
        rows.append(row)
    return rows, loads


def _quartiles(v):
    q = statistics.quantiles(v, n=4) if len(v) > 1 else [v[0]] * 3
    return [q[0], q[2]]


def print_table(rows):
    """Wall ms: median (min) over the interleaved steps; CPU ms: median process CPU time."""
    head = (f"{'network':<18}{'variant':<18}{'SSVI ms':>9}{'det ms':>9}{'SSVI/det':>10}"
            f"{'SSVI img/s':>12}{'det img/s':>11}{'SSVI x ref':>12}{'det x ref':>11}"
            f"{'SSVI min':>10}{'det min':>9}{'x ref min':>11}{'SSVI cpu':>10}{'det cpu':>9}"
            f"{'x ref cpu':>11}")
    print(head)
    print("-" * len(head))
    by = {}
    for r in rows:
        by.setdefault((r["net"], r["width"], r["variant"]), {})[r["method"]] = r
    for (net, width, variant), d in by.items():
        s, t = d.get("ssvi"), d.get("dense")
        f = lambda r, k, fmt: format(r[k], fmt) if r and k in r else "-"  # noqa: E731
        print(f"{f'{net} x{width:g}':<18}{variant:<18}{f(s, 'ms_per_step', '9.0f'):>9}"
              f"{f(t, 'ms_per_step', '9.0f'):>9}{f(s, 'ratio_ssvi_over_deterministic', '10.2f'):>10}"
              f"{f(s, 'images_per_s', '12.0f'):>12}{f(t, 'images_per_s', '11.0f'):>11}"
              f"{f(s, 'speedup_vs_reference', '12.2f'):>12}{f(t, 'speedup_vs_reference', '11.2f'):>11}"
              f"{f(s, 'ms_per_step_min', '10.0f'):>10}{f(t, 'ms_per_step_min', '9.0f'):>9}"
              f"{f(s, 'speedup_vs_reference_min', '11.2f'):>11}"
              f"{f(s, 'cpu_ms_per_step', '10.0f'):>10}{f(t, 'cpu_ms_per_step', '9.0f'):>9}"
              f"{f(s, 'speedup_vs_reference_cpu', '11.2f'):>11}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nets", nargs="+", default=None, help="MODEL:WIDTH ... (default: the 4 "
                   "laptop candidates)")
    p.add_argument("--methods", nargs="+", default=["ssvi", "dense"], choices=sorted(METHODS))
    p.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--steps", type=int, default=None, help="timed steps per config per round")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation)")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: small_cnn x0.25, batch 16, eager variants, 2 rounds")
    p.add_argument("--out", default=None, help="results JSON (default results/bench/cpu_paths.json)")
    args = p.parse_args(argv)
    q = args.quick
    for k, v in dict(nets=["small_cnn:0.25"] if q else DEFAULT_NETS, batch=16 if q else 128,
                     rounds=2 if q else 5, steps=1 if q else 3).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if q and args.variants == DEFAULT_VARIANTS:
        args.variants = ["reference", "bf16", "bf16+cl"]
    if q:
        args.warmup = min(args.warmup, 1)
    for v in args.variants:
        try:
            parse_variant(v)
        except ValueError as e:
            p.error(str(e))
    for n in args.nets:
        try:
            parse_net(n)
        except ValueError as e:
            p.error(str(e))
    if args.out is None:
        args.out = str(REPO / "results" / "bench" / ("cpu_paths_quick.json" if q
                                                     else "cpu_paths.json"))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    log = lambda s: print(s, flush=True)  # noqa: E731
    log(f"bench_cpu: {torch.get_num_threads()} threads, batch {args.batch}, {args.rounds} rounds x "
        f"{args.steps} steps" + (" (QUICK smoke test, numbers meaningless)" if args.quick else ""))
    t0 = time.perf_counter()
    result = {"kind": "bench_cpu", "quick": args.quick, "args": vars(args),
              "data": f"fixed random N(0,1) batches of {args.batch} CIFAR-shaped images "
                      "(no loader cost)",
              "timing": "time.perf_counter around each step; median over interleaved rounds",
              "threads": args.threads, "load_avg_start": list(os.getloadavg()),
              "provenance": provenance(device="cpu", seed=0, repo_dir=REPO), "rows": [],
              "load_avg_per_round": {}}
    for spec in args.nets:
        rows, loads = measure_net(args, spec, log)
        result["rows"] += rows
        result["load_avg_per_round"][spec] = loads
        atomic_write_json(args.out, result)
    result["load_avg_end"] = list(os.getloadavg())
    result["wall_time_s"] = time.perf_counter() - t0
    result["provenance"]["wall_time_s"] = result["wall_time_s"]
    atomic_write_json(args.out, result)
    print()
    print_table(result["rows"])
    print(f"load average (1 min) start {result['load_avg_start'][0]:.2f}, end "
          f"{result['load_avg_end'][0]:.2f}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
