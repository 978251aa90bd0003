"""The training loop: exact resume, deterministic evaluation, divergence, results JSON, every
method, bad input."""
import dataclasses
import json
import math
import os
import re

import pytest
import torch

import ssvi
from fakes import poison_cross_entropy
from ssvi import trainer
from ssvi.checkpoint import CheckpointError
from ssvi.config import TrainConfig
from ssvi.errors import ConfigError, DataError, DivergenceError

BASE = dict(dataset="synthetic", model="mlp", width=0.05, epochs=3, batch_size=64,
            train_subset=512, test_subset=256, update_every=3, eval_samples=2, device="cpu",
            progress=False, density=0.2)


def cfg(**kw):
    return TrainConfig(**{**BASE, **kw})


def final_state(run_dir):
    return torch.load(os.path.join(run_dir, trainer.CHECKPOINT_NAME), weights_only=True)


def test_interrupted_and_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path):
    a = cfg(run_dir=str(tmp_path / "a"))
    res_a = trainer.train(a)

    b = cfg(run_dir=str(tmp_path / "b"))
    interrupt_at = 13  # an update step in epoch 2 (8 steps per epoch, updates every 3 steps)

    def interrupt(controller, step):
        if step >= interrupt_at:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt) as info:
        trainer.train(b, on_update=interrupt)
    assert final_state(b.run_dir)["state"]["epoch"] == 1  # the last complete epoch was saved
    assert str(info.value) == (f"run the same command again to resume from "
                               f"{os.path.join(b.run_dir, trainer.CHECKPOINT_NAME)} "
                               "(epoch 1/3 done)")
    res_b = trainer.train(b)  # the same command again resumes

    sa, sb = final_state(a.run_dir), final_state(b.run_dir)
    for k, v in sa["model"].items():
        assert torch.equal(v, sb["model"][k]), k
    assert sa["controller"]["n_updates"] == sb["controller"]["n_updates"] > 0
    assert res_a["metrics"] == res_b["metrics"]
    assert [h["train_loss"] for h in res_a["history"]] == [h["train_loss"] for h in res_b["history"]]


def test_resume_refuses_a_different_config_and_names_the_fields(tmp_path):
    trainer.train(cfg(epochs=1, run_dir=str(tmp_path)))
    with pytest.raises(ConfigError, match="different configuration") as info:
        trainer.train(cfg(epochs=1, density=0.3, lr=0.02, run_dir=str(tmp_path)))
    msg = str(info.value)
    assert "density: stored 0.2, given 0.3" in msg and "lr: stored 0.01, given 0.02" in msg
    assert "another --run-dir" in msg and "\n" not in msg


def test_corrupt_checkpoint_gives_a_clear_error(tmp_path):
    trainer.train(cfg(epochs=1, run_dir=str(tmp_path)))
    path = tmp_path / trainer.CHECKPOINT_NAME
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupt"):
        trainer.train(cfg(epochs=2, run_dir=str(tmp_path)))


def test_non_finite_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    poison_cross_entropy(monkeypatch, after=12)   # epoch 2 of 8-step epochs
    c = cfg(run_dir=str(tmp_path))
    with pytest.raises(trainer.NonFiniteLossError, match="diverged in epoch 2/3.*loss is nan") as info:
        trainer.train(c)
    assert "checkpoint of epoch 1, the last finite one, is kept" in str(info.value)
    assert isinstance(info.value, DivergenceError)
    saved = final_state(c.run_dir)
    assert saved["state"]["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in saved["model"].values() if v.is_floating_point())


def test_results_json_holds_config_metrics_history_flops_and_provenance(tmp_path):
    path = tmp_path / "r" / "run.json"
    c = cfg(results_path=str(path), update_every=100)  # the recipe's Delta T: small overhead
    res = trainer.train(c)
    stored = json.loads(path.read_text())
    assert stored["config"] == res["config"] == dataclasses.asdict(c)
    for key in ("accuracy", "nll", "brier", "ece", "ece_release"):
        assert math.isfinite(stored["metrics"][key])
    assert len(stored["history"]) == 3 and "test" in stored["history"][-1]
    assert stored["metrics"] == stored["history"][-1]["test"]  # one final evaluation, not two
    assert len(stored["reliability"]["count"]) == 15  # the 15 reliability-diagram bins
    prov = stored["provenance"]
    for key in ("commit", "device", "torch", "wall_time_s", "seed"):
        assert key in prov, key
    assert prov["seed"] == 0
    assert stored["flops"]["training_flops"] < stored["flops"]["dense_training_flops"]
    assert stored["selection"] == "last epoch"


def test_active_weights_match_the_requested_density_exactly():
    c = cfg(epochs=1, density=0.1, first_layer_dense=False)
    res = trainer.train(c)
    model = ssvi.models.build_model("mlp", 10, c.width)
    sizes = [l.mu.numel() for _, l in ssvi.bayes_layers(model)]
    assert res["parameters"]["active_weights"] == sum(max(1, round(0.1 * n)) for n in sizes)


@pytest.mark.parametrize("method", ["dense_vi", "rigl", "dense"])
def test_every_method_trains(method):
    res = trainer.train(cfg(epochs=1, method=method))
    assert 0.0 <= res["metrics"]["accuracy"] <= 1.0
    if method == "dense_vi":
        assert res["parameters"]["density"] == 1.0
    if method == "rigl":
        assert res["controller"]["n_updates"] > 0


def test_validation_split_selects_by_validation_not_test():
    res = trainer.train(cfg(val_size=128))
    assert res["selection"].startswith("best validation accuracy")
    assert res["data"]["n_val"] == 128 and res["data"]["n_train"] == 512


def test_mck_addition_and_constant_sigma_rule_train():
    res = trainer.train(cfg(epochs=1, addition="mck", addition_k=2, regrow_sigma="const"))
    assert res["controller"]["n_updates"] > 0


@pytest.mark.parametrize("field,value,match", [
    ("density", 0.0, r"\(0, 1\]"), ("density", 1.5, r"\(0, 1\]"),
    ("removal", "magnitude", "snr_abs"), ("method", "vi", "dense_vi"),
    ("addition", "grad", "mc1"), ("epochs", 0, "positive"), ("lam", -1.0, "lambda"),
])
def test_bad_config_gets_a_clear_error(field, value, match):
    with pytest.raises(ValueError, match=match):
        cfg(**{field: value})


def test_missing_data_directory_says_how_to_provide_the_data(tmp_path):
    with pytest.raises(DataError, match="make_cifar10.py"):
        trainer.train(cfg(dataset="cifar10", data_dir=str(tmp_path / "nowhere")))


def test_bad_subset_size_is_a_data_error():
    with pytest.raises(DataError, match="train_subset=99999 must be in"):
        trainer.train(cfg(train_subset=99999))


@pytest.mark.parametrize("device", ["cuda", "cuda:7"])
def test_unavailable_device_is_a_clear_error(device):
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device == "cuda" and n:
        pytest.skip("CUDA is available here")
    with pytest.raises(ConfigError, match="CUDA is not available|does not exist"):
        trainer.train(cfg(device=device))


# -- deterministic evaluation ------------------------------------------------------------------
def test_a_finished_run_run_again_writes_the_same_metrics(tmp_path):
    """Kill after the last checkpoint, before the results JSON: the same command evaluates the
    restored model again and must write exactly what the uninterrupted run wrote."""
    c = cfg(run_dir=str(tmp_path / "run"), results_path=str(tmp_path / "r.json"))
    first = trainer.train(c)
    stored = json.loads((tmp_path / "r.json").read_text())
    os.remove(tmp_path / "r.json")                 # the kill came before this file was written
    again = trainer.train(c)
    assert again["metrics"] == first["metrics"] == again["history"][-1]["test"]
    assert json.dumps(again["reliability"]) == json.dumps(first["reliability"])  # NaN: empty bins
    assert json.loads((tmp_path / "r.json").read_text())["metrics"] == stored["metrics"]


def test_training_does_not_depend_on_whether_an_epoch_was_evaluated(tmp_path):
    """Evaluation runs on a forked RNG: evaluating every epoch or only the last leaves the same
    weights, and the shared last evaluation gives the same metrics."""
    every = trainer.train(cfg(eval_every=1, run_dir=str(tmp_path / "a")))
    last = trainer.train(cfg(eval_every=3, run_dir=str(tmp_path / "b")))
    sa, sb = final_state(tmp_path / "a"), final_state(tmp_path / "b")
    for k, v in sa["model"].items():
        assert torch.equal(v, sb["model"][k]), k
    assert every["metrics"] == last["metrics"]
    assert [h["train_loss"] for h in every["history"]] == [h["train_loss"] for h in last["history"]]


def test_evaluation_seed_depends_on_seed_epoch_and_split():
    seeds = {trainer.eval_seed(s, e, split) for s in (0, 1) for e in (1, 2)
             for split in ("test", "val")}
    assert len(seeds) == 8
    assert trainer.eval_seed(3, 5, "test") == trainer.eval_seed(3, 5, "test")


# -- divergence ----------------------------------------------------------------------------------
def _nan_after(monkeypatch, n_calls):
    """Make trainer.evaluate return a NaN nll from its (n_calls + 1)-th call on."""
    real = trainer.evaluate
    calls = {"n": 0}

    def evaluate(*a, **k):
        out = real(*a, **k)
        calls["n"] += 1
        if calls["n"] > n_calls:
            out = dict(out, nll=float("nan"))
        return out

    monkeypatch.setattr(trainer, "evaluate", evaluate)


def test_non_finite_evaluation_stops_and_keeps_the_last_finite_checkpoint(tmp_path, monkeypatch):
    _nan_after(monkeypatch, 1)                      # epoch 2's evaluation is NaN
    run_dir = str(tmp_path / "run")
    c = cfg(run_dir=run_dir, results_path=str(tmp_path / "r.json"))
    with pytest.raises(DivergenceError, match=r"diverged in epoch 2/3 \(the evaluation is not "
                                              r"finite \(nll=nan\)\)") as info:
        trainer.train(c)
    assert final_state(run_dir)["state"]["epoch"] == 1  # epoch 2's checkpoint was not written
    assert not (tmp_path / "r.json").exists()
    msg = str(info.value)
    assert f"kept in {run_dir}" in msg
    # the advice works as written: the suggested --lr and --run-dir are accepted and train
    lr = float(re.search(r"e\.g\. --lr (\S+)\)", msg).group(1))
    new_dir = re.search(r"--run-dir (\S+)\)", msg).group(1)
    assert lr == pytest.approx(c.lr / 10) and new_dir == run_dir + "-lr0.001"
    monkeypatch.undo()
    res = trainer.train(cfg(lr=lr, run_dir=new_dir))
    assert all(math.isfinite(v) for v in res["metrics"].values())


def test_huge_learning_rate_diverges_without_saving_anything(tmp_path):
    c = cfg(lr=1e6, run_dir=str(tmp_path / "run"), results_path=str(tmp_path / "r.json"))
    with pytest.raises(DivergenceError, match="diverged in epoch 1/3.*lower --lr"):
        trainer.train(c)
    assert not (tmp_path / "r.json").exists()
    assert not os.path.exists(os.path.join(c.run_dir, trainer.CHECKPOINT_NAME))


# -- start-up checks, files, messages -------------------------------------------------------------
def test_run_dir_that_is_a_file_is_refused_before_any_work(tmp_path, monkeypatch):
    (tmp_path / "f").write_text("not a folder")

    def no_data(*a, **k):
        raise AssertionError("data loaded before the run folder was checked")

    monkeypatch.setattr(trainer, "make_loaders", no_data)
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        trainer.train(cfg(run_dir=str(tmp_path / "f")))
    with pytest.raises(ConfigError, match="cannot be created"):
        trainer.train(cfg(run_dir=str(tmp_path / "f" / "sub")))
    with pytest.raises(ConfigError, match="is a folder"):
        trainer.train(cfg(results_path=str(tmp_path)))


def test_leftover_temp_files_are_removed_at_start_and_files_are_0644(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    stale = run_dir / ".checkpoint.pt.4242-dead.tmp"   # a kill during a checkpoint write
    stale.write_bytes(b"half")
    old = os.umask(0o022)
    try:
        trainer.train(cfg(epochs=1, run_dir=str(run_dir), results_path=str(tmp_path / "r.json")))
    finally:
        os.umask(old)
    assert not stale.exists()
    assert sorted(p.name for p in run_dir.iterdir()) == [trainer.CHECKPOINT_NAME]
    for p in (run_dir / trainer.CHECKPOINT_NAME, tmp_path / "r.json"):
        assert p.stat().st_mode & 0o777 == 0o644, p


def test_progress_false_keeps_the_epoch_lines_and_the_resume_message(tmp_path, capsys):
    c = cfg(epochs=2, progress=False, run_dir=str(tmp_path))
    trainer.train(c)
    out = capsys.readouterr().out
    assert "epoch   1/2  loss" in out and "epoch   2/2  loss" in out
    trainer.train(c)
    assert f"resumed from {tmp_path}" in capsys.readouterr().out
    trainer.train(c, log=None)
    assert capsys.readouterr().out == ""


def test_cpu_run_of_the_paper_preset_gets_a_time_warning():
    """The paper preset on a CPU is warned about, with an estimate per epoch that scales with
    the work (FLOPs per image x images); a tiny run is not. The model is untouched."""
    paper = TrainConfig(dataset="synthetic", device="cpu")   # the recipe: ResNet-18, batch 128
    model = trainer.build_model_for(paper, 10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    msg = trainer.slow_cpu_warning(paper, model, 391, 200)
    assert msg is not None and re.search(r"about [\d.]+ (min|h) to [\d.]+ (min|h) per epoch", msg)
    assert "200 epoch(s) left" in msg and "--device cuda" in msg
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    fast, slow = trainer.cpu_epoch_seconds(paper, model, 391)
    assert 0 < fast < slow
    half = trainer.cpu_epoch_seconds(dataclasses.replace(paper, batch_size=64), model, 391)
    assert half == pytest.approx((fast / 2, slow / 2))
    dense = dataclasses.replace(paper, method="dense")      # no LRT variance pass: half the work
    assert trainer.cpu_epoch_seconds(dense, model, 391) == pytest.approx((fast / 2, slow / 2))
    tiny = cfg()
    assert trainer.slow_cpu_warning(tiny, trainer.build_model_for(tiny, 10), 8, 3) is None
