"""DistributedDataParallel (2 CPU processes, gloo, torchrun) trains the single-process model.

One ``torchrun --nproc_per_node 2`` run and one plain run of the same script, at the same global
batch, side by side:

* RigL (deterministic forward, BatchNorm over the global batch): the per-epoch losses, the final
  parameters and masks of every rank match the single-process run within float tolerance;
* SSVI (LRT noise, independent per rank): masks stay identical across ranks through every
  subspace update (the addition scores use the all-reduced gradient), and rank 0 alone writes.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from ssvi.distributed import AllReduceBatchNorm, convert_batchnorm, init_distributed

WORKER = textwrap.dedent('''
    import hashlib, json, os, sys
    import torch
    torch.set_num_threads(1)
    from ssvi.config import TrainConfig
    from ssvi.trainer import train

    out = sys.argv[1]
    rank = int(os.environ.get("RANK", "0"))
    for method in ("rigl", "ssvi"):
        seen = {}

        def on_update(ctl, step):
            seen["model"] = ctl.model
            masks = b"".join(l.mask.numpy().tobytes() for _, l in ctl.layers)
            return {"step": step, "masks": hashlib.sha1(masks).hexdigest()}

        cfg = TrainConfig(dataset="synthetic", model="small_cnn", width=0.25, method=method,
                          density=0.3, epochs=2, batch_size=32, train_subset=96, test_subset=32,
                          update_every=2, t_end_frac=1.0, eval_samples=2, device="cpu",
                          fast=False, progress=False, lr=0.05, seed=0,
                          results_path=os.path.join(out, f"results_{method}.json"))
        res = train(cfg, on_update=on_update)
        model = seen["model"]
        torch.save({"params": {k: v.detach().clone() for k, v in model.state_dict().items()},
                    "losses": [e["train_loss"] for e in res["history"]],
                    "update_log": res["update_log"]},
                   os.path.join(out, f"{method}_rank{rank}.pt"))
''')


def _env():
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(single-process dir, 2-process dir) after running the worker both ways concurrently."""
    tmp = tmp_path_factory.mktemp("ddp")
    script = tmp / "worker.py"
    script.write_text(WORKER)
    single, multi = tmp / "single", tmp / "multi"
    single.mkdir()
    multi.mkdir()
    procs = [
        subprocess.Popen([sys.executable, str(script), str(single)], env=_env(),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True),
        subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node", "2", str(script), str(multi)],
                         env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True),
    ]
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out[-4000:]
    return single, multi


def _load(d, method, rank):
    return torch.load(d / f"{method}_rank{rank}.pt", weights_only=False)


def test_ddp_rigl_matches_single_process(runs):
    single, multi = runs
    ref = _load(single, "rigl", 0)
    for rank in (0, 1):
        got = _load(multi, "rigl", rank)
        assert got["update_log"] == ref["update_log"], "masks differ from the single-process run"
        assert len(got["update_log"]) == 2   # steps 2 and 4 of 6
        torch.testing.assert_close(torch.tensor(got["losses"]), torch.tensor(ref["losses"]),
                                   rtol=1e-4, atol=1e-6)
        for k, v in ref["params"].items():
            if v.dtype == torch.bool or not v.is_floating_point():
                assert torch.equal(got["params"][k], v), f"{k} differs on rank {rank}"
            else:
                torch.testing.assert_close(got["params"][k], v, rtol=1e-3, atol=1e-5,
                                           msg=f"{k} differs on rank {rank}")


def test_ddp_ssvi_masks_agree_across_ranks_and_rank0_writes(runs):
    _, multi = runs
    r0, r1 = _load(multi, "ssvi", 0), _load(multi, "ssvi", 1)
    assert len(r0["update_log"]) == 2
    assert r0["update_log"] == r1["update_log"]
    for k, v in r0["params"].items():
        torch.testing.assert_close(r1["params"][k], v, rtol=0, atol=0, msg=f"{k} differs")
    assert len({e["masks"] for e in r0["update_log"]}) > 1   # the masks did change
    res = json.loads((multi / "results_ssvi.json").read_text())
    assert res["history"][-1]["train_loss"] == pytest.approx(r0["losses"][-1])
    assert sorted(p.name for p in multi.glob("results_*.json")) == ["results_rigl.json",
                                                                     "results_ssvi.json"]


# -- in-process unit tests ---------------------------------------------------------------------------
def test_single_process_context_is_a_no_op(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = init_distributed(torch.device("cpu"))
    assert not ctx.active and ctx.is_main
    model = torch.nn.Linear(2, 2)
    assert ctx.wrap(model) is model
    t = torch.tensor([1.0, 2.0])
    assert ctx.all_reduce_mean(t) is t


def test_sharded_loader_splits_each_global_batch(synthetic_small):
    from ssvi.loader import Loader
    ds = synthetic_small
    full = Loader(ds.x_train[:100], ds.y_train[:100], 20, shuffle=True, augment=True, seed=3)
    shards = [full.sharded(r, 2) for r in range(2)]
    for (x, y), (x0, y0), (x1, y1) in zip(full.epoch_batches(1), shards[0].epoch_batches(1),
                                          shards[1].epoch_batches(1)):
        assert torch.equal(torch.cat([x0, x1]), x) and torch.equal(torch.cat([y0, y1]), y)
    with pytest.raises(ValueError, match="divisible"):
        full.sharded(0, 3)


def test_shard_data_gives_each_rank_its_shard(synthetic_small):
    from ssvi.distributed import DistContext
    from ssvi.loader import Data, Loader
    ds = synthetic_small
    full = Loader(ds.x_train[:40], ds.y_train[:40], 8, shuffle=True, seed=1)
    data = Data(full, None, full, 10, 40, ds.class_names, "synthetic")
    part = DistContext(rank=1, world_size=2).shard_data(data)
    assert part.test is full and (part.train.rank, part.train.world_size) == (1, 2)
    assert torch.equal(torch.cat([y for _, y in part.train.epoch_batches(0)]),
                       torch.cat([y[4:] for _, y in full.epoch_batches(0)]))


def test_allreduce_batchnorm_is_batchnorm_in_one_process():
    bn = torch.nn.Sequential(torch.nn.BatchNorm2d(3))
    ref = torch.nn.BatchNorm2d(3)
    converted = convert_batchnorm(bn, "cpu")
    assert isinstance(converted[0], AllReduceBatchNorm)
    x = torch.randn(4, 3, 5, 5)
    torch.testing.assert_close(converted(x), ref(x))
