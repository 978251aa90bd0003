"""The experiment notebooks' plumbing: Table 1 through papermill, the paper's numbers, the tables.

The papermill test runs the README's example command on generated data in the official CIFAR-10
layout (hermetic and fast) and recomputes the expected number of active weights from the
network's layer sizes, the uniform rule with a dense first layer and per-tensor rounding.
"""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch.nn as nn

import ssvi.experiments as E
import ssvi.report as R
from ssvi.data import write_fake_cifar
from ssvi.models import ARCHS

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def table1_tiny(tmp_path_factory):
    """`papermill notebooks/table1.ipynb out.ipynb -p sparsity 0.95` at SSVI_PRESET=tiny."""
    tmp = tmp_path_factory.mktemp("table1")
    tiny = E.PRESETS["tiny"]
    write_fake_cifar(tmp / "data", "cifar10", n_train=tiny["train_subset"],
                     n_test=tiny["test_subset"])
    env = dict(os.environ, SSVI_PRESET="tiny", SSVI_DATA=str(tmp / "data"),
               SSVI_RESULTS=str(tmp / "results"))
    out = tmp / "out.ipynb"
    cmd = [sys.executable, "-m", "papermill", "notebooks/table1.ipynb", str(out),
           "-p", "sparsity", "0.95", "-k", "python3"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    return proc, out, tmp / "results"


def expected_active_weights(model: nn.Module, density: float) -> tuple[int, int]:
    """(active, total) weights: first conv/linear dense, every other tensor round(d * size)."""
    sizes = [m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    active = sizes[0]
    for n in sizes[1:]:
        x = density * n
        assert abs(x - math.floor(x) - 0.5) > 1e-9, "a tie: the rounding convention would matter"
        active += max(1, math.floor(x + 0.5))
    return active, sum(sizes)


def test_readme_command_runs_table1_and_stores_exact_sparsity(table1_tiny):
    proc, out, results = table1_tiny
    assert proc.returncode == 0, proc.stderr[-3000:]
    nb = json.loads(out.read_text())
    errors = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
    html = "".join("".join(o.get("data", {}).get("text/html", ""))
                   for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", []))
    assert "paper (Table 1)" in html and "CIFAR-10 (JPEG-75 copy)" in html and "ours" in html

    files = sorted((results / "table1").glob("*.json"))
    records = [json.loads(f.read_text()) for f in files]
    by_method = {r["config"]["method"]: r for r in records}
    assert len(files) == 2 and set(by_method) == {"dense_vi", "ssvi"}
    for f, r in zip(files, records):   # the file name is the run id of the stored config
        assert f.stem == E.run_id(type(E.preset_config("tiny")).from_dict(r["config"]))
        assert r["config"]["extra"]["preset"] == "tiny"

    ssvi_rec = by_method["ssvi"]
    assert ssvi_rec["config"]["density"] == pytest.approx(0.05, abs=1e-12)   # 1 - 0.95
    cfg = ssvi_rec["config"]
    plain = ARCHS[cfg["model"]](num_classes=10, width=cfg["width"])
    active, total = expected_active_weights(plain, cfg["density"])
    assert ssvi_rec["parameters"]["active_weights"] == active
    assert ssvi_rec["parameters"]["total_weights"] == total
    dense = by_method["dense_vi"]["parameters"]
    assert dense["active_weights"] == dense["total_weights"] == total


@pytest.mark.parametrize("kw, words", [
    (dict(sparsity=95), ["0.95", "[0, 1)"]),
    (dict(sparsity=1.0), ["[0, 1)"]),
    (dict(density=0.0), ["(0, 1]"]),
    (dict(sparsity=0.9, density=0.1), ["not both"]),
])
def test_bad_sparsity_names_the_allowed_range(kw, words):
    with pytest.raises(ValueError) as err:
        R.resolve_density(**kw)
    assert all(w in str(err.value) for w in words)


def test_sparsity_becomes_density():
    assert R.resolve_density(sparsity=0.95) == pytest.approx(0.05, abs=1e-15)
    assert R.resolve_density(sparsity=0.0) == 1.0
    assert R.resolve_density(density=0.1) == 0.1


@pytest.mark.parametrize("kw, words", [
    (dict(criterion="snr_abz"), ["snr_abs", "abs_mu"]),
    (dict(preset="huge"), ["tiny", "cpu", "paper"]),
    (dict(dataset="mnist"), ["cifar10", "cifar100"]),
    (dict(seeds=0), ["seeds"]),
])
def test_bad_notebook_parameters_name_allowed_values(kw, words):
    with pytest.raises(ValueError) as err:
        R.plan("table1", **{"preset": "tiny", **kw})
    assert all(w in str(err.value) for w in words)


def test_plans_share_runs_between_tables_and_figure1():
    t1 = {r.run_id for r in R.plan("table1", preset="paper", dataset="cifar10")}
    t2 = {r.run_id for r in R.plan("table2", preset="paper", dataset="cifar10")}
    f1 = {r.run_id for r in R.plan("figure1", preset="paper", dataset="cifar10")}
    assert len(t1) == 9 and len(t2) == 6 and t2 <= t1 and f1 == t1   # 3 methods x 3 seeds
    c100 = R.plan("table2", preset="paper", dataset="cifar100", seeds=1)
    assert sorted(r.cfg.density for r in c100) == [0.1, 1.0]          # SSVI at 90% on CIFAR-100


def test_paper_numbers_complete_and_consistent():
    p = E.paper_numbers()
    t1, t2 = p["table1"]["rows"], p["table2"]["rows"]
    for ds in ("cifar10", "cifar100"):
        assert [r["sparsity_pct"] for r in t1 if r["dataset"] == ds] == [0, 90, 95]
        assert [r["label"] for r in t2 if r["dataset"] == ds] == ["VD", "SBP", "AEB", "mBNN",
                                                                  "SSVI"]
    for table in (t1, t2):
        for r in table:
            cols = set(table[0]) - {"training_flops", "reference", "method"}
            assert all(r[c] is not None for c in cols), r
    # the paper's SSVI CIFAR-100 90% row appears in both tables with the same numbers
    a = next(r for r in t1 if r["dataset"] == "cifar100" and r["sparsity_pct"] == 90)
    b = next(r for r in t2 if r["dataset"] == "cifar100" and r["label"] == "SSVI")
    assert (a["accuracy_pct"], a["ece"]) == (b["accuracy_pct"], b["ece"])
    # complexity = (1 - sparsity) x 11.16M weights of ResNet-18 (recipe), to the printed digits
    for r in t2:
        if r["label"] == "SSVI":
            assert r["complexity_m"] == pytest.approx((1 - r["sparsity_pct"] / 100) * 11.16,
                                                      abs=0.006)
    assert p["figure1"]["points_from"] == "table2"


def _record(seed, acc, device="cpu", width=0.5):
    cfg = E.preset_config("cpu", seed=seed, width=width, epochs=8).to_dict()
    return {"config": cfg, "metrics": {"accuracy": acc, "nll": 1.0 + acc},
            "data": {"name": "cifar10", "n_train": 10000, "n_test": 2000},
            "parameters": {"active_weights": 10, "total_weights": 100, "density": 0.1},
            "flops": {"training_flops": 1e12, "relative": 0.2},
            "provenance": {"device": device, "wall_time_s": 1.0}}


def test_aggregate_seeds_mean_std_and_labels():
    accs = [0.61, 0.64, 0.70]
    recs = [_record(s, a) for s, a in enumerate(accs)] + [_record(0, 0.5, width=0.25)]
    agg = R.aggregate_seeds(R.results_table(recs))
    assert len(agg) == 2
    row = agg[agg.width == 0.5].iloc[0]
    assert row.n_seeds == 3 and row.seeds == "0,1,2"
    assert row.accuracy == pytest.approx(np.mean(accs))
    assert row.accuracy_std == pytest.approx(np.std(accs, ddof=1))
    assert row.setting.startswith("CIFAR-10 (JPEG-75 copy), small_cnn ×0.5, 8 epochs, 10k train")
    assert "3 seeds, CPU" in row.setting
    single = agg[agg.width == 0.25].iloc[0]
    assert single.n_seeds == 1 and np.isnan(single.accuracy_std) and "1 seed, CPU" in single.setting
    table = R.paper_vs_ours("table1", agg, columns=["accuracy_pct"])
    ours = table[table.Source == "ours"]
    assert len(ours) == 2 and (table.Source == "paper (Table 1)").sum() == 6
    assert f"{100 * np.mean(accs):.2f} ± {100 * np.std(accs, ddof=1):.2f}" in set(
        ours["Accuracy (%)"])


def test_grid_enumerates_table_runs_from_the_notebooks():
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import run_grid
    finally:
        sys.path.pop(0)
    experiment, cfgs = run_grid.extract_plan(REPO / "notebooks" / "table1.ipynb",
                                             {"preset": "tiny", "seeds": [0, 1],
                                              "dataset": "synthetic"})
    want = R.plan("table1", preset="tiny", seeds=[0, 1], dataset="synthetic", log=None)
    assert experiment == "table1"
    assert [E.run_id(c) for c in cfgs] == [r.run_id for r in want]
