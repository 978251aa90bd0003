"""The Table-2 baselines (VD, SBP, AEB, mBNN) train end to end through the SSVI trainer: the same
loop, data, seeded evaluation, schema-2 record, checkpoint/resume and one-line errors; sparsity
is measured from the final masks and the FLOP count carries its formula."""
import math
import os
import warnings

import pytest
import torch

from fakes import poison_cross_entropy
from ssvi import results, trainer
from ssvi.__main__ import main, parse_hp
from ssvi.config import ConfigError, IgnoredSettingWarning, TrainConfig
from ssvi.errors import DivergenceError

BASE = dict(dataset="synthetic", model="mlp", width=0.05, epochs=2, batch_size=64,
            train_subset=256, test_subset=128, eval_samples=2, device="cpu", progress=False)
# per method: what makes its tiny run exercise its machinery (AEB: a target; mBNN: moves)
METHOD_KW = {"vd": {}, "sbp": {}, "aeb": dict(density=0.2),
             "mbnn": dict(extra={"mbnn_update_period": 2})}


def cfg(method, **kw):
    return TrainConfig(**{**BASE, "method": method, **METHOD_KW[method], **kw})


def checkpoint(run_dir):
    return torch.load(os.path.join(run_dir, trainer.CHECKPOINT_NAME), weights_only=True)


@pytest.mark.parametrize("method", ["vd", "sbp", "aeb", "mbnn"])
def test_each_baseline_trains_to_a_valid_record_with_measured_sparsity_and_flops(method, tmp_path):
    c = cfg(method, results_path=str(tmp_path / "r.json"), run_dir=str(tmp_path / "run"))
    res = trainer.train(c, log=None)
    stored = results.read_record(c.results_path)
    assert stored["schema_version"] == 2 and not results.is_stale(stored)
    assert stored["run_id"] == res["run_id"] and stored["run_id"].startswith(method + "-")
    assert stored["metrics"] == res["metrics"] == stored["history"][-1]["test"]
    for key in ("accuracy", "nll", "brier", "ece", "ece_release"):
        assert math.isfinite(stored["metrics"][key]), key
    assert stored["method"]["name"] == method and stored["provenance"]["fast"] is False

    p, f = stored["parameters"], stored["flops"]
    assert p["sparsity"] == pytest.approx(1.0 - p["density"])
    assert p["density"] == pytest.approx(p["active_weights"] / p["total_weights"])
    assert f["relative"] == pytest.approx(f["training_flops"] / f["dense_training_flops"])
    assert isinstance(f["formula"], str) and f["convention"] == f["formula"]

    model = checkpoint(c.run_dir)["model"]      # the final weights, read independently
    total = sum(v.numel() for k, v in model.items() if k.endswith(".mask"))
    assert p["total_weights"] == total
    if method == "vd":   # measured: weights with log alpha = log sigma^2 - log theta^2 <= 3
        active = 0
        for k in (k for k in model if k.endswith(".log_sigma2")):
            mu = model[k[:-len("log_sigma2")] + "mu"]
            la = (model[k] - torch.log(mu.square() + 1e-8)).clamp(-8, 8)
            active += int((la <= 3.0).sum())
        assert p["active_weights"] == active
        assert f["relative"] == 1.0           # dense throughout
    if method == "sbp":
        assert f["relative"] == 1.0
    if method == "aeb":   # pruned to density 0.2 per layer, stem dense: measured from the masks
        assert p["active_weights"] == sum(int(v.sum()) for k, v in model.items()
                                          if k.endswith(".mask"))
        assert p["density"] < 1.0 and f["relative"] < 1.0
    if method == "mbnn":  # 1/5 of the nodes start dead: the posterior sets the sparsity
        assert p["active_weights"] <= sum(int(v.sum()) for k, v in model.items()
                                           if k.endswith(".mask"))
        assert 0.0 < p["density"] < 1.0
        assert f["moves"] > 0 and 0 < f["move_flops"] < f["training_flops"]  # moves counted
        assert stored["history"][-1]["method_log"]["n"] > 0


def test_the_cli_trains_vd_at_the_tiny_preset(capsys):
    assert main(["train", "--preset", "tiny", "--dataset", "synthetic", "--method", "vd",
                 "--epochs", "1", "--train-subset", "256", "--test-subset", "128",
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    assert '"accuracy"' in out and '"sparsity"' in out


def _interrupt_at(monkeypatch, cls, at_step):
    real = cls.after_step

    def after_step(self, model, step, epoch, batch):
        if step >= at_step:
            raise KeyboardInterrupt
        return real(self, model, step, epoch, batch)

    monkeypatch.setattr(cls, "after_step", after_step)


@pytest.mark.parametrize("method", ["vd", "mbnn"])
def test_an_interrupted_and_resumed_run_ends_bitwise_where_an_uninterrupted_one_does(
        method, tmp_path, monkeypatch):
    from ssvi.baselines import method_class
    a = cfg(method, epochs=3, run_dir=str(tmp_path / "a"))
    res_a = trainer.train(a, log=None)

    b = cfg(method, epochs=3, run_dir=str(tmp_path / "b"))
    with monkeypatch.context() as m:
        _interrupt_at(m, method_class(method), 6)      # epoch 2 of 4-step epochs
        with pytest.raises(KeyboardInterrupt, match=r"resume from .*epoch 1/3 done"):
            trainer.train(b, log=None)
    assert checkpoint(b.run_dir)["state"]["epoch"] == 1
    res_b = trainer.train(b, log=None)

    sa, sb = checkpoint(a.run_dir), checkpoint(b.run_dir)
    for k, v in sa["model"].items():
        assert torch.equal(v, sb["model"][k]), k
    assert res_a["metrics"] == res_b["metrics"]
    assert [h["train_loss"] for h in res_a["history"]] == \
        [h["train_loss"] for h in res_b["history"]]
    assert res_a["parameters"] == res_b["parameters"] and res_a["flops"] == res_b["flops"]
    if method == "mbnn":
        assert sa["method"]["moves"] == sb["method"]["moves"] > 0
        assert sa["method"]["samples"]["steps"] == sb["method"]["samples"]["steps"]
    # a finished run started again evaluates its restored posterior exactly as before
    assert trainer.train(a, log=None)["metrics"] == res_a["metrics"]


def test_a_validation_split_selects_the_baseline_by_validation_accuracy():
    res = trainer.train(cfg("sbp", val_size=64), log=None)
    assert res["selection"].startswith("best validation accuracy")
    assert "val" in res["history"][-1] and res["data"]["n_val"] == 64


def test_bad_hyper_parameter_key_or_value_is_one_line_at_creation():
    with pytest.raises(ConfigError, match=r"unknown vd hyper-parameter 'vd_foo'; allowed: .*vd_lr"):
        TrainConfig(method="vd", extra={"vd_foo": 1})
    with pytest.raises(ConfigError, match=r"aeb_num_samples=2\.5 is not allowed.*integer"):
        TrainConfig(method="aeb", extra={"aeb_num_samples": 2.5})
    with pytest.raises(ConfigError, match="vd_lr"):
        TrainConfig(method="vd", extra={"vd_lr": -1.0})


def test_bad_hp_on_the_command_line_exits_2_with_one_line(capsys):
    rc = main(["train", "--preset", "tiny", "--dataset", "synthetic", "--method", "sbp",
               "--hp", "sbp_lrr=0.1"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "sbp_lrr" in err and "sbp_lr" in err
    rc = main(["train", "--method", "vd", "--hp", "vd_lr"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: --hp 'vd_lr' is not NAME=VALUE")


def test_unreachable_target_sparsity_is_one_line_before_training(tmp_path):
    # density 0.999 keeps every weight of the 13 x 13 hidden layer: AEB cannot prune it
    c = cfg("aeb", density=0.999, run_dir=str(tmp_path / "run"))
    with pytest.raises(ConfigError, match="aeb.*cannot run.*keeps every weight") as info:
        trainer.train(c, log=None)
    assert "\n" not in str(info.value)
    assert not os.path.exists(tmp_path / "run")


def test_hp_values_are_parsed_as_json_then_canonicalised():
    hp = parse_hp(["aeb_lr_sparse=1", "aeb_lr_decay_at=[0.5, 1]", "vd_optimizer=sgd"])
    assert hp == {"aeb_lr_sparse": 1, "aeb_lr_decay_at": [0.5, 1], "vd_optimizer": "sgd"}
    c = TrainConfig(method="aeb", extra={k: v for k, v in hp.items() if k.startswith("aeb")})
    assert c.extra == {"aeb_lr_sparse": 1.0, "aeb_lr_decay_at": [0.5, 1.0]}
    assert isinstance(c.extra["aeb_lr_sparse"], float)
    # the default given explicitly is the same run as not giving it
    assert TrainConfig(method="vd", extra={"vd_lr": 0.001}) == TrainConfig(method="vd")


@pytest.mark.parametrize("kw, field, stored", [
    (dict(method="mbnn", density=0.05), "density", 1.0),     # the posterior sets mBNN's sparsity
    (dict(method="vd", density=0.05), "density", 1.0),
    (dict(method="sbp", update_every=7), "update_every", 100),
    (dict(method="aeb", removal="snr"), "removal", "snr_abs"),
    (dict(method="vd", lr=0.1), "lr", 0.01),                  # VD trains with Adam at vd_lr
    (dict(method="aeb", weight_decay=0.1), "weight_decay", 5e-4),   # aeb_weight_decay instead
    (dict(method="mbnn", kl_warmup=False), "kl_warmup", True),
])
def test_settings_a_baseline_ignores_are_normalised_with_a_warning(kw, field, stored):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        c = TrainConfig(**kw)
    assert getattr(c, field) == stored
    assert any(issubclass(w.category, IgnoredSettingWarning) and field in str(w.message)
               for w in caught)


def test_settings_a_baseline_reads_are_kept_and_other_methods_hparams_dropped():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kept = [TrainConfig(method="aeb", density=0.05, first_layer_dense=False),
                TrainConfig(method="vd", lr=0.1, extra={"vd_optimizer": "sgd"}),
                TrainConfig(method="sbp", weight_decay=0.0, eval_samples=3)]
    assert not caught
    assert kept[0].density == 0.05 and kept[1].lr == 0.1 and kept[2].weight_decay == 0.0
    with pytest.warns(IgnoredSettingWarning, match="aeb_v0"):
        c = TrainConfig(method="vd", extra={"aeb_v0": 0.1, "preset": "tiny"})
    assert c.extra == {"preset": "tiny"}


def test_divergence_of_a_baseline_is_one_line_naming_its_own_learning_rate(tmp_path, monkeypatch):
    poison_cross_entropy(monkeypatch, after=5)   # epoch 2 of 4-step epochs
    c = cfg("vd", run_dir=str(tmp_path / "run"))
    with pytest.raises(DivergenceError, match="diverged in epoch 2/2") as info:
        trainer.train(c, log=None)
    msg = str(info.value)
    assert "\n" not in msg and "--hp vd_lr=0.0001" in msg and "epoch 1, the last finite" in msg
    assert checkpoint(c.run_dir)["state"]["epoch"] == 1
