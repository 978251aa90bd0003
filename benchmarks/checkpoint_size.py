"""Checkpoint size: dense BNN state_dict vs sparse SSVI checkpoints (ResNet-18, width 1, CPU).

The dense file is ``atomic_save(model.state_dict())`` of the full Bayesian ResNet-18 (mu and rho
for all 11.16M weights, the bool mask, BN). The sparse files are :func:`ssvi.checkpoint.save_sparse`
at density 0.1 and 0.05 (random masks of exact density per layer; inactive mu = rho = 0). Each
sparse file is loaded into an uninitialised model and checked to restore the state_dict bitwise.
Sizes in MB = 10^6 bytes. Writes results/bench/checkpoint_size.json with provenance.

    python benchmarks/checkpoint_size.py [--out results/bench/checkpoint_size.json]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from ssvi.checkpoint import atomic_save, atomic_write_json, load_sparse, save_sparse
from ssvi.layers import bayes_layers
from ssvi.models import build_model
from ssvi.provenance import provenance

SEED = 0
DENSITIES = (0.1, 0.05)


def set_nested_masks(model, density: float, perms: dict) -> None:
    """Keep the first round(density * n) entries of a fixed permutation per layer (nested masks)."""
    with torch.no_grad():
        for name, m in bayes_layers(model):
            n = m.mask.numel()
            mask = torch.zeros(n, dtype=torch.bool)
            mask[perms[name][: round(density * n)]] = True
            m.mask.copy_(mask.view_as(m.mask))
            m.mu.masked_fill_(~m.mask, 0.0)
            m.rho.masked_fill_(~m.mask, 0.0)


def bitwise_equal(a: dict, b: dict) -> bool:
    if list(a) != list(b):
        return False
    for k in a:
        x, y = a[k], b[k]
        if x.dtype != y.dtype or x.shape != y.shape:
            return False
        if x.is_floating_point():
            x, y = x.reshape(-1).view(torch.uint8), y.reshape(-1).view(torch.uint8)
        if not torch.equal(x, y):
            return False
    return True


def main(out: Path) -> dict:
    t_start = time.perf_counter()
    torch.manual_seed(SEED)
    model = build_model("resnet18", width=1.0)
    g = torch.Generator().manual_seed(SEED)
    perms = {name: torch.randperm(m.mask.numel(), generator=g) for name, m in bayes_layers(model)}
    with torch.device("meta"):
        target = build_model("resnet18", width=1.0)
    target = target.to_empty(device="cpu")        # uninitialised memory: load must fill it all
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        dense_path = Path(tmp) / "dense.pt"
        t = time.perf_counter()
        atomic_save(model.state_dict(), dense_path)   # same fsync + rename as save_sparse
        save_s = time.perf_counter() - t
        t = time.perf_counter()
        back = torch.load(dense_path, weights_only=True)
        load_s = time.perf_counter() - t
        dense_bytes = os.path.getsize(dense_path)
        rows.append({"checkpoint": "dense BNN state_dict", "density": 1.0,
                     "active_weights": sum(m.n_active() for _, m in bayes_layers(model)),
                     "bytes": dense_bytes, "save_s": save_s, "load_s": load_s,
                     "round_trip_exact": bitwise_equal(model.state_dict(), back)})
        for d in DENSITIES:
            set_nested_masks(model, d, perms)
            path = Path(tmp) / f"sparse_{d}.pt"
            t = time.perf_counter()
            save_sparse(model, path, metadata={"model": "resnet18", "width": 1.0,
                                               "num_classes": 10})
            save_s = time.perf_counter() - t
            t = time.perf_counter()
            load_sparse(path, target)
            load_s = time.perf_counter() - t
            rows.append({"checkpoint": f"sparse SSVI (save_sparse), density {d}", "density": d,
                         "active_weights": sum(m.n_active() for _, m in bayes_layers(model)),
                         "bytes": os.path.getsize(path), "save_s": save_s, "load_s": load_s,
                         "round_trip_exact": bitwise_equal(model.state_dict(),
                                                           target.state_dict())})
    for r in rows:
        r["MB"] = r["bytes"] / 1e6
        r["ratio_to_dense"] = r["bytes"] / dense_bytes
    header = f"{'checkpoint':44s} {'active':>10s} {'MB':>8s} {'ratio':>6s} {'save s':>7s} " \
             f"{'load s':>7s} exact"
    print(header)
    for r in rows:
        print(f"{r['checkpoint']:44s} {r['active_weights']:10d} {r['MB']:8.2f} "
              f"{r['ratio_to_dense']:6.3f} {r['save_s']:7.2f} {r['load_s']:7.2f} "
              f"{r['round_trip_exact']}")
    result = {"benchmark": "checkpoint_size", "model": "resnet18", "width": 1.0,
              "mb_definition": "1e6 bytes", "rows": rows,
              "provenance": provenance(device="cpu", seed=SEED,
                                       wall_time_s=time.perf_counter() - t_start)}
    atomic_write_json(out, result)
    print(f"wrote {out}")
    if not all(r["round_trip_exact"] for r in rows):
        raise SystemExit("round trip was not bitwise exact")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/bench/checkpoint_size.json"))
    main(parser.parse_args().out)
