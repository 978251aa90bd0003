"""The experiment layer: the registry (ssvi.registry), the runner (ssvi.runner), the grid script
and the tables (ssvi.report).

The registry tests train a few tiny runs on generated data in the official CIFAR-10 layout
(hermetic and fast) and recompute the expected number of active weights from the network's
layer sizes, the uniform rule with a dense first layer and per-tensor rounding.
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
from fakes import write_fake_cifar
from ssvi import registry, runner
from ssvi.errors import ConfigError
from ssvi.models import ARCHS

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_env(tmp_path_factory):
    """A fake CIFAR-10 of the tiny preset's size, and empty results/runs folders (env vars)."""
    tmp = tmp_path_factory.mktemp("registry")
    tiny = E.PRESETS["tiny"]
    write_fake_cifar(tmp / "data", "cifar10", n_train=tiny["train_subset"],
                     n_test=tiny["test_subset"])
    env = {"SSVI_PRESET": "tiny", "SSVI_DATA": str(tmp / "data"),
           "SSVI_RESULTS": str(tmp / "results"), "SSVI_RUNS": str(tmp / "runs")}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield tmp
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def table1_records(tiny_env):
    """``registry.records("table1", sparsity=0.95, epochs=1)`` at the tiny preset."""
    return registry.records("table1", sparsity=0.95, epochs=1, log=None)


def expected_active_weights(model: nn.Module, density: float) -> tuple[int, int]:
    """(active, total) weights: first conv/linear dense, every other tensor round(d * size)."""
    sizes = [m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    active = sizes[0]
    for n in sizes[1:]:
        x = density * n
        assert abs(x - math.floor(x) - 0.5) > 1e-9, "a tie: the rounding convention would matter"
        active += max(1, math.floor(x + 0.5))
    return active, sum(sizes)


def test_records_trains_the_table1_runs_once_with_exact_sparsity(table1_records, tiny_env):
    recs = table1_records
    files = sorted((tiny_env / "results" / "table1").glob("*.json"))
    assert len(files) == len(recs) == len(recs.runs) == 2
    by_method = {r["config"]["method"]: r for r in recs}
    assert set(by_method) == {"dense_vi", "ssvi"}
    for f in files:   # the file name is the run id of the stored config and data
        rec = runner.read(f)
        assert f.stem == rec["run_id"] == E.run_id(E.TrainConfig.from_dict(rec["config"]),
                                                   rec["data_fingerprint"])
        assert rec["config"]["extra"]["preset"] == "tiny" and rec["config"]["epochs"] == 1
    cfg = by_method["ssvi"]["config"]
    assert cfg["density"] == pytest.approx(0.05, abs=1e-12)   # 1 - 0.95
    plain = ARCHS[cfg["model"]](num_classes=10, width=cfg["width"])
    active, total = expected_active_weights(plain, cfg["density"])
    assert by_method["ssvi"]["parameters"]["active_weights"] == active
    assert by_method["ssvi"]["parameters"]["total_weights"] == total
    dense = by_method["dense_vi"]["parameters"]
    assert dense["active_weights"] == dense["total_weights"] == total
    assert not list((tiny_env / "runs").rglob("checkpoint.pt"))   # final results: freed
    # asked again: loaded, not trained (the runner says so, and the files are untouched)
    mtimes = [f.stat().st_mtime_ns for f in files]
    lines = []
    again = registry.records("table1", sparsity=0.95, epochs=1, log=lines.append)
    assert [r["run_id"] for r in again] == [r["run_id"] for r in recs]
    assert lines == ["2 run(s): 2 stored, 0 to compute"]
    assert [f.stat().st_mtime_ns for f in files] == mtimes


def test_flatten_reads_every_field_the_trainer_writes(table1_records):
    """Every leaf of the record sections a table draws from is a column (with the stored value)
    or is listed in report.NOT_SHOWN; every source report.SOURCES names exists in a real record
    (a column read from a misspelt field, like 'git_commit', would fail here)."""
    for rec in table1_records:
        row = R.flatten(rec)
        sections = {s for s, _ in R.SOURCES}
        for section in sections:
            for key, value in rec[section].items():
                if (section, key) in R.SOURCES:
                    assert row[R.SOURCES[section, key]] == value, (section, key)
                else:
                    assert (section, key) in R.NOT_SHOWN or (section, "*") in R.NOT_SHOWN, \
                        f"record field {section}.{key} is neither a column nor in NOT_SHOWN"
        for section, key in R.SOURCES:
            assert key in rec[section], f"report reads {section}.{key}, which records lack"
        assert row["commit"] == rec["provenance"]["commit"] and len(row["commit"]) == 40
        assert row["commit_label"].startswith(row["commit"][:8])
        # the fake CIFAR-10 is not the JPEG-75 copy, and the label must not say it is
        assert rec["data_fingerprint"]["variant"] == "unrecognised"
        assert "JPEG-75" not in row["data"] and row["data"].startswith("CIFAR-10 (unrecognised")


def test_a_stale_record_is_marked_stale_in_the_table(table1_records, tmp_path):
    rec = {k: v for k, v in table1_records[0].items() if not k.startswith("_")}
    fresh = tmp_path / "fresh.json"
    old = tmp_path / "old.json"
    from ssvi import results
    results.write_record(fresh, dict(rec, code_fingerprint=results.code_fingerprint()))
    results.write_record(old, dict(rec, code_fingerprint="0" * 64))   # made by other code
    table = R.format_table(R.results_table([runner.read(fresh), runner.read(old)]),
                           ["accuracy_pct"])
    assert "stale" not in table.Commit[0] and table.Commit[1].endswith(", stale")
    agg = R.aggregate_seeds(R.results_table([runner.read(old)]))
    assert bool(agg.stale.iloc[0]) and "stale" in R.format_table(agg, ["nll"]).Commit[0]


def test_stale_results_are_loaded_and_marked_and_recomputed_with_stale(table1_records):
    """`make grid --stale`: a result computed by other code is recomputed; without --stale it is
    loaded (and shown as stale)."""
    from ssvi import results
    run = table1_records.runs[0]
    path = runner.result_path(run)
    rec = runner.read(path)
    results.write_record(path, dict(rec, code_fingerprint="0" * 64))
    assert runner.state(run) == "stale"
    assert [a for _, _, a in runner.todo([run])] == ["load"]
    assert runner.execute([run], log=None)[0]["_stale"]
    assert [a for _, _, a in runner.todo([run], stale=True)] == ["retrain"]
    again = runner.execute([run], stale=True, log=None)[0]
    assert not again["_stale"] and runner.state(run) == "stored"
    assert again["metrics"] == rec["metrics"]      # the same computation, made again


def test_rerun_recomputes_each_result_once(table1_records, monkeypatch):
    """SSVI_RERUN=1: results older than SSVI_RERUN_SINCE (the start of the book build) are
    recomputed; one written since (by an earlier notebook of the same build) is loaded."""
    import time
    monkeypatch.setenv("SSVI_RERUN", "1")
    monkeypatch.setenv("SSVI_RERUN_SINCE", str(time.time() + 60))
    assert {a for _, _, a in runner.todo(table1_records.runs)} == {"retrain"}
    monkeypatch.setenv("SSVI_RERUN_SINCE", "0")
    assert {a for _, _, a in runner.todo(table1_records.runs)} == {"load"}
    monkeypatch.delenv("SSVI_RERUN")
    monkeypatch.setenv("SSVI_RERUN_SINCE", str(time.time() + 60))
    assert {a for _, _, a in runner.todo(table1_records.runs)} == {"load"}


def test_a_truncated_results_file_is_an_error_that_names_it(table1_records, tmp_path,
                                                            monkeypatch):
    from ssvi.errors import ResultsFileError
    monkeypatch.setenv("SSVI_RESULTS", str(tmp_path))
    run = table1_records.runs[0]
    path = runner.result_path(run)
    path.parent.mkdir(parents=True)
    path.write_text('{"schema_version": 2, "config": {"lr')
    with pytest.raises(ResultsFileError, match=str(path)):
        registry.records("table1", sparsity=0.95, epochs=1, log=None)


def test_shift_evaluation_is_stored_in_the_record_and_completed_from_the_checkpoint(tiny_env):
    """appendix_shift's evaluation lands in the run's own record; a record stored without it is
    completed from the run's checkpoint, giving the same rows (a deterministic network)."""
    from ssvi import results
    kw = dict(methods=["dense"], corruptions=["contrast"], severities=[1], epochs=1, log=None)
    rec = registry.records("appendix_shift", **kw)[0]
    shift = rec["evaluations"]["shift"]
    assert [(r["corruption"], r["severity"]) for r in shift["rows"]] == [("clean", 0),
                                                                          ("contrast", 1)]
    assert shift["rows"][0]["accuracy"] == rec["metrics"]["accuracy"]   # same net, same images
    run = registry.plan("appendix_shift", **{k: v for k, v in kw.items() if k != "log"})[0]
    path = runner.result_path(run)
    results.write_record(path, {k: v for k, v in rec.items() if k != "evaluations"})
    assert runner.state(run) == "incomplete"
    lines = []
    again = registry.records("appendix_shift", **dict(kw, log=lines.append))[0]
    assert any("evaluated appendix_shift/" in line for line in lines)
    assert again["evaluations"]["shift"]["rows"] == shift["rows"]
    assert again["history"] == rec["history"]                            # not retrained


def test_misspelt_papermill_parameter_is_refused(tiny_env, tmp_path):
    """`papermill notebooks/table1.ipynb out.ipynb -p sparsityy 0.5` stops with one line naming
    the unknown parameter and the allowed ones, before any training."""
    out = tmp_path / "out.ipynb"
    cmd = [sys.executable, "-m", "papermill", "notebooks/table1.ipynb", str(out),
           "-p", "sparsityy", "0.5", "-k", "python3"]
    env = dict(os.environ, SSVI_RESULTS=str(tmp_path / "results"))
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    errors = [o for c in json.loads(out.read_text())["cells"] if c["cell_type"] == "code"
              for o in c.get("outputs", []) if o.get("output_type") == "error"]
    text = " ".join(" ".join(e.get("traceback", [])) + e.get("evalue", "") for e in errors)
    assert "sparsityy" in text and "allowed: preset" in text and "did you mean 'sparsity'" in text
    assert not (tmp_path / "results").exists()


def test_notebook_params_take_declared_names_and_refuse_injected_unknowns():
    before = {"registry", "R", "In", "Out"}
    ns = {"registry": registry, "R": R, "In": [], "Out": {}, "_i3": "", "preset": "tiny",
          "sparsity": 0.9, "criterion": "snr"}
    assert registry.notebook_params("table1", ns, before) == {
        "preset": "tiny", "sparsity": 0.9, "criterion": "snr"}
    with pytest.raises(ConfigError, match=r"unknown parameter\(s\) 'sparsityy'.*allowed: preset"):
        registry.notebook_params("table1", dict(ns, sparsityy=0.5), before)
    # a name the notebook defined before its parameters cell is not a parameter
    assert "R" not in registry.notebook_params("table1", ns, before)


@pytest.mark.parametrize("kw, words", [
    (dict(sparsity=95), ["95", "[0, 1)", "0.95, not 95"]),
    (dict(sparsity=1.0), ["[0, 1)"]),
    (dict(density=0.0), ["(0, 1]"]),
    (dict(criterion="snr_abz"), ["snr_abs", "abs_mu"]),
    (dict(preset="huge"), ["tiny", "cpu", "paper"]),
    (dict(dataset="mnist"), ["cifar10", "cifar100"]),
    (dict(seeds=0), ["seeds"]),
    (dict(sparsityy=0.5), ["sparsityy", "allowed", "sparsity"]),
])
def test_bad_parameters_name_the_allowed_values(kw, words):
    with pytest.raises(ValueError) as err:
        registry.plan("table1", **{"preset": "tiny", "dataset": "synthetic", **kw})
    assert all(w in str(err.value) for w in words), str(err.value)
    assert "\n" not in str(err.value)


def test_sparsity_and_density_give_the_same_runs():
    by_sparsity = registry.plan("table1", preset="tiny", dataset="synthetic", sparsity=0.95)
    by_density = registry.plan("table1", preset="tiny", dataset="synthetic", density=0.05)
    assert [r.run_id for r in by_sparsity] == [r.run_id for r in by_density]
    assert sorted(r.cfg.density for r in by_sparsity) == [0.05, 1.0]
    with pytest.raises(ConfigError, match="not both"):
        registry.plan("table1", preset="tiny", dataset="synthetic", sparsity=0.9, density=0.1)


def test_plans_share_runs_between_artefacts(fake_cifar100_root):
    kw = dict(preset="paper", dataset="synthetic")
    t1 = {r.run_id for r in registry.plan("table1", **kw)}
    t2 = {r.run_id for r in registry.plan("table2", **kw)}
    f1 = {r.run_id for r in registry.plan("figure1", **kw)}
    nb = len(registry.TABLE2_BASELINES)
    baselines = {r.run_id for r in registry.plan("table2", **kw)
                 if r.cfg.method in registry.TABLE2_BASELINES}
    assert len(t1) == 9 and len(t2) == 6 + 3 * nb and len(baselines) == 3 * nb
    assert t2 - baselines <= t1 and f1 == t1 | t2    # Figure 1: Table 1's runs + the baselines
    assert {r.folder for r in registry.plan("table2", **kw)} == {"table1"}
    c100 = registry.plan("table2", preset="paper", dataset="cifar100", seeds=1,
                         data_dir=str(fake_cifar100_root), baselines=[])
    assert sorted(r.cfg.density for r in c100) == [0.1, 1.0]          # SSVI at 90% on CIFAR-100
    # Figure 2's SSVI run at 90% with the default criterion is Table 1's: the grid makes it once
    f2 = {r.run_id for r in registry.plan("figure2_sparsity", **kw)}
    assert t1 & f2
    grid = registry.grid("paper", dataset="synthetic")
    ids = [r.run_id for r in grid]
    assert len(ids) == len(set(ids)) and t1 | f2 <= set(ids)


def test_every_artefact_plans_at_every_preset_from_declared_data():
    for preset in registry.PRESET_DEFAULTS:
        entry = registry.PRESET_DEFAULTS[preset]
        assert set(entry) <= {"base", "*"} | set(registry.ARTEFACTS), preset
        for name in registry.names():
            # the synthetic set has 5,000 training images: a larger declared subset is cut to it
            big = (registry.preset_defaults(preset, name).get("train_subset") or 0) > 5000
            runs = registry.plan(name, preset=preset, dataset="synthetic",
                                 **({"train_subset": 5000} if big else {}))
            assert runs and len({r.run_id for r in runs}) == len(runs)
            assert all(r.cfg.extra["preset"] == preset for r in runs)
            allowed = set(registry.ARTEFACTS[name].param_names) | {
                "sparsities", "threads", "optional_datasets", "seeds", "dataset", "baseline_hp"}
            assert set(registry.preset_defaults(preset, name)) <= allowed, (preset, name)
    shift = registry.plan("appendix_shift", preset="tiny", dataset="synthetic")
    assert all(r.evaluation["name"] == "shift" for r in shift)
    assert registry.plan("figure2_robustness", preset="tiny", dataset="synthetic")[0].allow_failure


def test_a_new_preset_is_a_data_change(monkeypatch):
    monkeypatch.setitem(E.PRESETS, "laptop", dict(E.PRESETS["cpu"], epochs=7))
    monkeypatch.setitem(registry.PRESET_DEFAULTS, "laptop",
                        {"base": "cpu", "*": {"seeds": (0, 1, 2)},
                         "figure2_sparsity": {"sparsities": (0.5, 0.95)}})
    runs = registry.plan("table1", preset="laptop", dataset="synthetic")
    assert len(runs) == 9 and {r.cfg.epochs for r in runs} == {7}
    assert {r.cfg.seed for r in runs} == {0, 1, 2}
    fig = registry.plan("figure2_sparsity", preset="laptop", dataset="synthetic")
    assert sorted({round(1 - r.cfg.density, 6) for r in fig}) == [0.5, 0.95]
    assert len(registry.grid("laptop", dataset="synthetic")) > len(runs)


def test_a_diverged_run_is_stored_as_failed_where_the_artefact_records_divergence(tmp_path,
                                                                                    monkeypatch):
    monkeypatch.setenv("SSVI_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("SSVI_RUNS", str(tmp_path / "runs"))
    cfg = E.preset_config("tiny", dataset="synthetic", model="mlp", width=0.05, epochs=1,
                          train_subset=128, test_subset=64, lr=1e12, progress=False)
    from ssvi.errors import DivergenceError
    with pytest.raises(DivergenceError):
        runner.execute([registry.Run("robust", cfg, allow_failure=False)], log=None)
    recs = runner.execute([registry.Run("robust", cfg, allow_failure=True)], log=None)
    assert len(recs) == 1 and recs[0]["failed"] and runner.state(
        registry.Run("robust", cfg, True)) == "failed"
    row = R.flatten(recs[0])
    assert row["failed"] and row["accuracy"] is None


def test_grid_dry_run_lists_each_run_and_its_state(tiny_env, table1_records, capsys):
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import run_grid
    finally:
        sys.path.pop(0)
    assert run_grid.main(["--preset", "tiny", "--only", "table1", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "preset tiny: 3 runs (3 missing)"   # epochs 2, not 1
    assert out.count("missing    train") == 3 and "table1/ssvi-d0.05" in out


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
            "data_fingerprint": {"dataset": "cifar10", "variant": "jpeg75", "sha256": "ab" * 32},
            "provenance": {"device": device, "wall_time_s": 1.0, "commit": "c0ffee" * 6 + "abcd",
                           "dirty": False}, "_stale": False}


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


# -- experiments.run: stored records are reused only when valid (H2) ------------------------------
def _tiny_synthetic(**kw):
    return E.preset_config("tiny", dataset="synthetic", model="mlp", width=0.05, epochs=1,
                           train_subset=128, test_subset=64, progress=False, **kw)


def test_run_trains_once_then_loads_the_stored_record(tmp_path, monkeypatch):
    from ssvi import trainer
    cfg = _tiny_synthetic()
    first = E.run("exp", cfg, results_dir=tmp_path)
    assert os.path.exists(E.result_path("exp", cfg, tmp_path))

    def no_training(*a, **k):
        raise AssertionError("a stored, valid, current record must not be trained again")
    monkeypatch.setattr(trainer, "train", no_training)
    again = E.run("exp", cfg, results_dir=tmp_path)
    assert again["run_id"] == first["run_id"] and again["metrics"] == first["metrics"]


def test_run_does_not_take_a_corrupt_results_file_as_done(tmp_path):
    from ssvi.errors import ResultsFileError
    cfg = _tiny_synthetic()
    path = E.result_path("exp", cfg, tmp_path)
    os.makedirs(os.path.dirname(path))
    with open(path, "w") as f:
        f.write('{"schema_version": 2, "config": {"lr": 0.')       # a truncated write
    with pytest.raises(ResultsFileError) as err:
        E.run("exp", cfg, results_dir=tmp_path)
    assert path in str(err.value)


def test_run_retrains_a_stale_record_only_when_asked(tmp_path, monkeypatch):
    from ssvi import results
    cfg = _tiny_synthetic()
    first = E.run("exp", cfg, results_dir=tmp_path)
    monkeypatch.setattr(results, "code_fingerprint", lambda modules=None: "changed code")
    kept = E.run("exp", cfg, results_dir=tmp_path)
    assert results.is_stale(kept) and kept["provenance"] == first["provenance"]
    redone = E.run("exp", cfg, results_dir=tmp_path, rerun_stale=True)
    assert redone["code_fingerprint"] == "changed code"
    assert results.read_record(E.result_path("exp", cfg, tmp_path))["code_fingerprint"] == \
        "changed code"


def test_commit_result_commits_only_that_file(tmp_path, monkeypatch):
    """`make grid --commit`: each finished results file becomes one commit of its own."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=tmp_path, capture_output=True, text=True,
                              check=True).stdout
    git("init", "-q")
    git("config", "user.email", "t@example.org")
    git("config", "user.name", "t")
    (tmp_path / "other.txt").write_text("not to be committed\n")
    git("add", "other.txt")
    result = tmp_path / "results" / "table1" / "r.json"
    result.parent.mkdir(parents=True)
    result.write_text("{}\n")
    monkeypatch.setattr(runner.paths, "repo_dir", lambda: tmp_path)
    assert runner.commit_result(result, "results: table1/r", log=lambda *_: None)
    assert git("log", "--format=%s").split("\n")[0] == "results: table1/r"
    assert git("show", "--name-only", "--format=").split() == ["results/table1/r.json"]
    assert git("status", "--porcelain").split() == ["A", "other.txt"]   # still only staged


def test_grid_configs_lists_every_planned_run_once_without_reading_data(monkeypatch):
    from ssvi import loader

    def no_data(*a, **k):
        raise AssertionError("grid_configs read the data")
    monkeypatch.setattr(loader, "data_fingerprint", no_data)
    fp = {"dataset": "cifar10", "variant": "test", "sha256": "0" * 64}
    for preset in ("tiny", "laptop"):
        cfgs = registry.grid_configs(preset)
        ids = [E.run_id(c, fp) for c in cfgs]
        assert len(set(ids)) == len(ids)
        for name in registry.names():
            planned = registry.ARTEFACTS[name].plan(registry.resolve(name, preset=preset))
            assert {E.run_id(c, fp) for c in planned} <= set(ids), (preset, name)
    laptop = registry.grid_configs("laptop")
    ablation = [c for c in laptop if c.train_subset is not None]
    assert ablation and {c.train_subset for c in ablation} == {10000}
    assert {c.epochs for c in laptop} == {E.PRESETS["laptop"]["epochs"]}


def test_the_laptop_preset_gives_its_baseline_hyper_parameters_to_that_baseline_only():
    hp = registry.preset_defaults("laptop", "table2")["baseline_hp"]
    runs = registry.ARTEFACTS["table2"].plan(registry.resolve("table2", preset="laptop"))
    for cfg in runs:
        own = {k: v for k, v in hp.items() if k.startswith(cfg.method + "_")}
        assert {k: v for k, v in cfg.extra.items() if k != "preset"} == own, cfg.method
    assert any(k.startswith("aeb_") for k in hp)
    assert "baseline_hp" not in registry.preset_defaults("paper", "table2")
