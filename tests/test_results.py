"""Results schema 2: run ids from result fields + data fingerprint, strict JSON with non-finite
flags, validated loading (truncated files named, stray files skipped), stale detection."""
import dataclasses
import json
import math
import shutil
import warnings
from pathlib import Path

import pytest

import ssvi
from ssvi import config as C
from ssvi import experiments as E
from ssvi import loader, results, trainer
from ssvi.config import IgnoredSettingWarning, TrainConfig
from ssvi.errors import ResultsFileError
from ssvi.provenance import provenance

FP = {"dataset": "cifar10", "variant": "jpeg75", "sha256": "ab" * 32}
# a configuration in which every field is read by the method (so no change is normalised away)
ALL_USED = dict(method="ssvi", removal="e_exp_abs", addition="mck", regrow_sigma="const",
                train_subset=100, test_subset=50)


def other_value(name, value):
    """A valid value of field ``name`` different from ``value``."""
    rule = C.rule(name)
    if rule.kind == "choice":
        return next(v for v in C.CHOICES[name] if v != value)
    if rule.kind == "bool":
        return True if value is None else not value
    if rule.kind == "int":
        return 7 if value is None else value + 1
    if rule.kind == "float":
        return value / 2
    if rule.kind == "path":
        return "/tmp/elsewhere"
    if rule.kind == "device":
        return "cpu"
    if rule.kind == "dict":
        return {"tag": 1}
    raise AssertionError(rule.kind)


def changed(cfg, name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IgnoredSettingWarning)
        new = dataclasses.replace(cfg, **{name: other_value(name, getattr(cfg, name))})
    assert getattr(new, name) != getattr(cfg, name), name   # the change was not normalised away
    return new


@pytest.mark.parametrize("name", C.result_fields())
def test_run_id_changes_with_every_result_field(name):
    base = TrainConfig(**ALL_USED)
    assert E.run_id(changed(base, name), FP) != E.run_id(base, FP)


@pytest.mark.parametrize("name", C.resume_free_fields() + C.path_fields())
def test_run_id_ignores_paths_and_resume_free_fields(name):
    base = TrainConfig(**ALL_USED)
    assert E.run_id(changed(base, name), FP) == E.run_id(base, FP)


@pytest.mark.parametrize("key", ["sha256", "variant", "dataset"])
def test_run_id_changes_with_the_data_fingerprint(key):
    base = TrainConfig(**ALL_USED)
    assert E.run_id(base, {**FP, key: "other"}) != E.run_id(base, FP)


def test_sparsity_point_nine_gets_the_run_id_of_density_point_one():
    a = E.preset_config("tiny", density=1.0 - 0.9)
    b = E.preset_config("tiny", density=0.1)
    assert a.density == 0.1 and E.run_id(a, FP) == E.run_id(b, FP)


def test_run_id_uses_the_loaders_data_fingerprint_by_default(monkeypatch):
    cfg = TrainConfig(dataset="synthetic", model="mlp", train_subset=64, test_subset=32)
    assert E.run_id(cfg) == E.run_id(cfg, loader.data_fingerprint(cfg))
    monkeypatch.setattr(loader, "data_fingerprint", lambda c: {**FP, "sha256": "cd" * 32})
    assert E.run_id(cfg) == E.run_id(cfg, {**FP, "sha256": "cd" * 32})


def make(cfg=None, **metrics):
    cfg = cfg or TrainConfig(**ALL_USED)
    return results.make_record(
        cfg, metrics={"accuracy": 0.5, "nll": 1.25, **metrics},
        history=[{"epoch": 1, "train_loss": 2.0, "test": {"accuracy": 0.5}}],
        data_fingerprint=FP, provenance=provenance(device="cpu", seed=cfg.seed, wall_time_s=1.0),
        update_log=[{"regrown_sigma": {"features.0/a~b": 0.1}}])


def test_record_holds_schema_run_id_fingerprints_and_provenance():
    rec = make()
    assert rec["schema_version"] == results.SCHEMA_VERSION == 2
    assert rec["run_id"] == E.run_id(TrainConfig(**ALL_USED), FP)
    assert rec["data_fingerprint"] == FP and rec["code_fingerprint"] == results.code_fingerprint()
    for key in ("commit", "dirty", "device", "device_name", "torch", "wall_time_s", "seed"):
        assert key in rec["provenance"], key
    assert set(results.REQUIRED) <= set(rec) and rec["nonfinite"] == {}


def test_non_finite_values_are_written_as_null_with_a_flag_and_read_back(tmp_path):
    rec = make(nll=math.nan, ece=-math.inf)
    rec["history"][0]["train_loss"] = math.inf
    rec["update_log"][0]["regrown_sigma"]["features.0/a~b"] = math.nan
    path = tmp_path / "r.json"
    results.write_record(path, rec)

    def refuse(token):
        raise AssertionError(f"bare {token} in the file")
    stored = json.loads(path.read_text(), parse_constant=refuse)   # strict JSON
    assert stored["metrics"]["nll"] is None and stored["metrics"]["ece"] is None
    assert stored["history"][0]["train_loss"] is None
    assert stored["nonfinite"] == {"/metrics/nll": "nan", "/metrics/ece": "-inf",
                                   "/history/0/train_loss": "inf",
                                   "/update_log/0/regrown_sigma/features.0~1a~0b": "nan"}
    back = results.read_record(path)
    assert math.isnan(back["metrics"]["nll"]) and back["metrics"]["ece"] == -math.inf
    assert back["history"][0]["train_loss"] == math.inf
    assert math.isnan(back["update_log"][0]["regrown_sigma"]["features.0/a~b"])
    assert back["metrics"]["accuracy"] == 0.5 and back["config"] == rec["config"]


def test_truncated_file_raises_an_error_that_names_it(tmp_path):
    path = tmp_path / "table1" / "run.json"
    results.write_record(path, make())
    path.write_text(path.read_text()[:200])
    with pytest.raises(ResultsFileError, match="not valid JSON") as err:
        results.read_record(path)
    assert str(path) in str(err.value) and "delete" in str(err.value)
    with pytest.raises(ResultsFileError, match=str(path)):
        results.load_results("table1", tmp_path)


@pytest.mark.parametrize("damage", [
    lambda r: r.pop("code_fingerprint"),
    lambda r: r.__setitem__("metrics", [1, 2]),
    lambda r: r["config"].__setitem__("lr", -1.0),
    lambda r: r["data_fingerprint"].pop("sha256"),
    lambda r: r["nonfinite"].__setitem__("/metrics/accuracy", "nan"),
])
def test_malformed_record_raises_an_error_that_names_it(tmp_path, damage):
    rec = json.loads(results.dumps(make()))
    damage(rec)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(rec))
    with pytest.raises(ResultsFileError, match="malformed") as err:
        results.read_record(path)
    assert str(path) in str(err.value)


def test_stray_and_old_json_files_are_skipped_with_a_warning_naming_them(tmp_path):
    folder = tmp_path / "table1"
    good = make()
    results.write_record(folder / f"{good['run_id']}.json", good)
    (folder / "notes.json").write_text('{"hello": 1}')
    (folder / "list.json").write_text("[1, 2]")
    old = {k: v for k, v in json.loads(results.dumps(good)).items() if k != "schema_version"}
    (folder / "old.json").write_text(json.dumps(old))
    with pytest.warns(results.StrayFileWarning) as caught:
        recs = results.load_results("table1", tmp_path)
    assert [r["run_id"] for r in recs] == [good["run_id"]]
    assert recs[0]["_path"] == str(folder / f"{good['run_id']}.json")
    named = " ".join(str(w.message) for w in caught)
    for name in ("notes.json", "list.json", "old.json"):
        assert name in named
    with pytest.warns(results.StrayFileWarning):
        assert E.load_results("table1", tmp_path)[0]["run_id"] == good["run_id"]


@pytest.fixture
def source_copy(tmp_path, monkeypatch):
    """A copy of the ssvi/ sources that results.code_fingerprint() reads instead."""
    pkg = Path(results.__file__).parent
    copy = tmp_path / "ssvi"
    copy.mkdir()
    for f in pkg.rglob("*.py"):
        dest = copy / f.relative_to(pkg)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, dest)
    monkeypatch.setattr(results, "_PACKAGE", copy)
    return copy


def test_a_record_is_stale_once_code_that_computes_results_changes(source_copy):
    rec = make()
    assert not results.is_stale(rec)
    (source_copy / "report.py").write_text("# a table helper changed\n")   # not result code
    assert not results.is_stale(rec)
    with open(source_copy / "criteria.py", "a") as f:
        f.write("\n# a change to the removal criteria\n")
    assert results.is_stale(rec)
    assert results.is_stale({k: v for k, v in rec.items() if k != "code_fingerprint"})


def test_load_results_marks_stale_records(tmp_path, source_copy):
    rec = make()
    results.write_record(tmp_path / "x" / f"{rec['run_id']}.json", rec)
    assert results.load_results("x", tmp_path)[0]["_stale"] is False
    with open(source_copy / "layers.py", "a") as f:
        f.write("\n# changed\n")
    assert results.load_results("x", tmp_path)[0]["_stale"] is True


def test_every_ssvi_module_is_classified_as_result_code_or_not():
    pkg = Path(ssvi.__file__).parent
    modules = {p.relative_to(pkg).as_posix() for p in pkg.rglob("*.py")}
    code, not_code = set(results.CODE_MODULES), set(results.NOT_CODE_MODULES)
    assert not code & not_code
    assert modules <= code | not_code, f"classify {sorted(modules - code - not_code)} in " \
                                       "ssvi/results.py (CODE_MODULES or NOT_CODE_MODULES)"


def test_trainer_writes_a_valid_record_with_the_data_fingerprint(tmp_path):
    cfg = TrainConfig(dataset="synthetic", model="mlp", width=0.05, epochs=1, batch_size=64,
                      train_subset=128, test_subset=64, device="cpu", progress=False,
                      density=0.2, update_every=3, eval_samples=2,
                      results_path=str(tmp_path / "r.json"))
    res = trainer.train(cfg)
    stored = results.read_record(cfg.results_path)
    assert stored["schema_version"] == 2 and not results.is_stale(stored)
    assert stored["data_fingerprint"] == loader.data_fingerprint(cfg)
    assert stored["run_id"] == res["run_id"] == E.run_id(cfg)
    assert stored["provenance"]["fast"] is False and stored["provenance"]["commit"]
    assert stored["metrics"] == res["metrics"]
