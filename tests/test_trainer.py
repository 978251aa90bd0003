"""The training loop: exact resume, non-finite loss, results JSON, every method, bad input."""
import dataclasses
import json
import math
import os
import subprocess
import sys

import pytest
import torch

import ssvi
from ssvi import trainer
from ssvi.checkpoint import CheckpointError
from ssvi.config import TrainConfig

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

    with pytest.raises(KeyboardInterrupt):
        trainer.train(b, on_update=interrupt)
    assert final_state(b.run_dir)["state"]["epoch"] == 1  # the last complete epoch was saved
    res_b = trainer.train(b)  # the same command again resumes

    sa, sb = final_state(a.run_dir), final_state(b.run_dir)
    for k, v in sa["model"].items():
        assert torch.equal(v, sb["model"][k]), k
    assert sa["controller"]["n_updates"] == sb["controller"]["n_updates"] > 0
    assert res_a["metrics"] == res_b["metrics"]
    assert [h["train_loss"] for h in res_a["history"]] == [h["train_loss"] for h in res_b["history"]]


def test_resume_refuses_a_different_config(tmp_path):
    trainer.train(cfg(epochs=1, run_dir=str(tmp_path)))
    with pytest.raises(ValueError, match="different configuration"):
        trainer.train(cfg(epochs=1, density=0.3, run_dir=str(tmp_path)))


def test_corrupt_checkpoint_gives_a_clear_error(tmp_path):
    trainer.train(cfg(epochs=1, run_dir=str(tmp_path)))
    path = tmp_path / trainer.CHECKPOINT_NAME
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupt"):
        trainer.train(cfg(epochs=2, run_dir=str(tmp_path)))


def test_non_finite_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    real_ce = torch.nn.functional.cross_entropy
    calls = {"n": 0}

    def poisoned(*a, **k):
        calls["n"] += 1
        out = real_ce(*a, **k)
        return out * float("nan") if calls["n"] > 12 else out  # epoch 2 of 8-step epochs

    monkeypatch.setattr(trainer.F, "cross_entropy", poisoned)
    c = cfg(run_dir=str(tmp_path))
    with pytest.raises(trainer.NonFiniteLossError, match="non-finite.*epoch 2") as info:
        trainer.train(c)
    assert "last good checkpoint" in str(info.value)
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
    with pytest.raises(FileNotFoundError, match="make_cifar10.py"):
        trainer.train(cfg(dataset="cifar10", data_dir=str(tmp_path / "nowhere")))


def test_unavailable_device_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(ValueError, match="CUDA is not available"):
        trainer.train(cfg(device="cuda"))


def test_cli_trains_and_rejects_bad_values(tmp_path):
    env = dict(os.environ, SSVI_PRESET="tiny")
    base = [sys.executable, "-m", "ssvi", "train", "--dataset", "synthetic", "--model", "mlp",
            "--epochs", "1", "--train-subset", "256", "--progress", "false"]
    ok = subprocess.run(base + ["--sparsity", "0.9"], capture_output=True, text=True, env=env,
                        timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout[ok.stdout.index("{"):])["metrics"]["accuracy"] >= 0
    bad = subprocess.run(base + ["--removal", "nope"], capture_output=True, text=True, env=env,
                         timeout=300)
    assert bad.returncode != 0 and "removal='nope' is not allowed" in bad.stderr
