"""TrainConfig: every field has a role and a rule, complete validation, canonical densities, and
settings a method ignores are normalised (with a warning) so the stored config is true."""
import dataclasses
import math
import warnings

import numpy as np
import pytest

from ssvi import config as C
from ssvi import trainer
from ssvi.config import ConfigError, IgnoredSettingWarning, TrainConfig
from ssvi.experiments import preset_config

FIELDS = [f.name for f in dataclasses.fields(TrainConfig)]


def test_every_field_has_exactly_one_role_and_a_rule():
    for f in dataclasses.fields(TrainConfig):
        assert f.metadata.get("role") in C.ROLES, f.name
        assert isinstance(f.metadata.get("rule"), C.Rule), f.name
    by_role = C.result_fields() + C.resume_free_fields() + C.path_fields()
    assert sorted(by_role) == sorted(FIELDS) and len(set(by_role)) == len(FIELDS)
    for name in C.CHOICES:
        assert C.rule(name).kind == "choice", name


def test_choice_fields_accept_exactly_their_choices():
    for name, allowed in C.CHOICES.items():
        for value in allowed:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", IgnoredSettingWarning)
                assert getattr(TrainConfig(**{name: value}), name) == value
        with pytest.raises(ConfigError, match=f"^{name}='nope' is not allowed; choose one of"):
            TrainConfig(**{name: "nope"})


BAD = [  # (field, value, words the one-line message must contain)
    ("lr", math.inf, "> 0"), ("lr_rho", math.inf, "> 0"), ("lr", 0.0, "> 0"),
    ("weight_decay", math.nan, ">= 0"), ("weight_decay", -1e-4, ">= 0"),
    ("kl_scale", math.nan, ">= 0"), ("kl_scale", -0.01, ">= 0"),
    ("momentum", -0.1, "[0, 1)"), ("momentum", 1.0, "[0, 1)"), ("momentum", math.nan, "[0, 1)"),
    ("train_subset", 0, "positive integer"), ("test_subset", -5, "positive integer"),
    ("train_subset", 2.5, "positive integer"), ("val_size", -1, ">= 0"),
    ("epochs", 0, "positive integer"), ("batch_size", True, "positive integer"),
    ("width", math.inf, "> 0"), ("alpha", math.nan, "[0, 1]"), ("alpha", 5.0, "[0, 1]"),
    ("t_end_frac", 1.5, "[0, 1]"), ("seed", -1, ">= 0"), ("prior_sigma", 0.0, "> 0"),
    ("sigma_init_mean", math.inf, "> 0"), ("regrow_sigma_const", math.inf, "> 0"),
    ("lam", math.nan, "lambda"), ("density", math.nan, "(0, 1]"), ("density", 0.0, "(0, 1]"),
    ("eval_samples", 0, "positive integer"), ("device", "gpu", "'auto'"),
    ("fast", "yes", "True or False"), ("augment", "false", "True or False"),
    ("extra", {"hook": print}, "JSON"), ("extra", {"x": math.nan}, "JSON"),
    ("run_dir", 3, "path"),
]


@pytest.mark.parametrize("name, value, words", BAD)
def test_bad_value_is_refused_in_one_line_naming_field_value_and_range(name, value, words):
    with pytest.raises(ConfigError) as err:
        TrainConfig(**{name: value})
    msg = str(err.value)
    assert msg.startswith(f"{name}={value!r} is not allowed"), msg
    assert words in msg and "\n" not in msg
    assert isinstance(err.value, ValueError)


def test_numbers_are_stored_in_canonical_types():
    c = TrainConfig(lr=1, epochs=np.int64(3), batch_size=64.0, seed=np.int32(2))
    assert type(c.lr) is float and type(c.epochs) is int and type(c.batch_size) is int
    assert type(c.seed) is int and c.seed == 2


@pytest.mark.parametrize("sparsity", [0.9, 0.95, 0.8, 0.99, 0.7])
def test_density_from_sparsity_is_canonical(sparsity):
    from_sparsity = TrainConfig(density=1.0 - sparsity)
    given = TrainConfig(density=round(1.0 - sparsity, 6))
    assert from_sparsity.density == given.density
    assert str(from_sparsity.density) == f"{round(1.0 - sparsity, 6):g}"


def _warned(fn):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fn()
    return out, [w for w in caught if issubclass(w.category, IgnoredSettingWarning)]


@pytest.mark.parametrize("kw, field, stored", [
    (dict(method="dense", density=0.05), "density", 1.0),
    (dict(method="dense_vi", density=0.05), "density", 1.0),
    (dict(method="dense", eval_samples=7), "eval_samples", 1),
    (dict(method="dense", kl_scale=0.5), "kl_scale", 0.01),
    (dict(method="dense_vi", update_every=7), "update_every", 100),
    (dict(method="dense_vi", removal="snr"), "removal", "snr_abs"),
    (dict(method="rigl", removal="snr"), "removal", "abs_mu"),
    (dict(method="rigl", addition="mck"), "addition", "mean"),
    (dict(method="rigl", prior_sigma=0.1), "prior_sigma", 0.005),
    (dict(method="rigl", regrow_sigma="const"), "regrow_sigma", "mean"),
    (dict(method="ssvi", lam=2.0), "lam", 1.0),                     # snr_abs reads no lambda
    (dict(method="ssvi", addition_k=5), "addition_k", 3),            # only mck reads K
    (dict(method="ssvi", regrow_sigma_const=1e-3), "regrow_sigma_const", 1e-6),
])
def test_a_setting_the_method_ignores_is_normalised_with_a_warning(kw, field, stored):
    cfg, caught = _warned(lambda: TrainConfig(**kw))
    assert getattr(cfg, field) == stored
    assert len(caught) == 1
    msg = str(caught[0].message)
    assert f"{field}={kw[field]!r}" in msg and f"{field}={stored!r}" in msg and kw["method"] in msg


@pytest.mark.parametrize("kw", [
    dict(method="ssvi", removal="e_exp_abs", lam=2.0),
    dict(method="ssvi", addition="mck", addition_k=5),
    dict(method="ssvi", regrow_sigma="const", regrow_sigma_const=1e-3),
    dict(method="rigl", density=0.05, update_every=7),
    dict(method="dense_vi", eval_samples=7, kl_scale=0.5),
])
def test_a_setting_the_method_uses_is_kept_silently(kw):
    cfg, caught = _warned(lambda: TrainConfig(**kw))
    assert {k: getattr(cfg, k) for k in kw} == kw and not caught


@pytest.mark.parametrize("method", C.METHODS)
def test_defaults_normalise_silently_and_the_stored_config_round_trips(method):
    cfg, caught = _warned(lambda: TrainConfig(method=method))
    assert not caught
    for name in cfg.ignored_fields():   # every ignored field holds the value the method uses
        meta = {f.name: f.metadata for f in dataclasses.fields(TrainConfig)}[name]
        assert getattr(cfg, name) == meta.get("unused", C.default_value(name)), name
    again, caught = _warned(lambda: TrainConfig.from_dict(cfg.to_dict()))
    assert again == cfg and not caught


def test_dense_methods_store_density_one_and_sparse_ones_keep_it():
    assert TrainConfig(method="dense").density == TrainConfig(method="dense_vi").density == 1.0
    assert TrainConfig(method="rigl", density=0.05).density == 0.05


def test_preset_values_a_method_ignores_are_dropped_silently_but_overrides_warn():
    cfg, caught = _warned(lambda: preset_config("tiny", method="dense"))
    assert not caught and cfg.update_every == 100 and cfg.eval_samples == 1
    assert cfg.model == "small_cnn" and cfg.extra["preset"] == "tiny"
    cfg, caught = _warned(lambda: preset_config("tiny", method="dense", eval_samples=4))
    assert cfg.eval_samples == 1 and len(caught) == 1 and "eval_samples=4" in str(caught[0].message)


def test_unknown_field_and_preset_are_config_errors():
    with pytest.raises(ConfigError, match="sparsityy"):
        preset_config("tiny", sparsityy=0.5)
    with pytest.raises(ConfigError, match="tiny, cpu, laptop, paper"):
        preset_config("huge")
    with pytest.raises(ConfigError, match="lrr"):
        TrainConfig.from_dict({**TrainConfig().to_dict(), "lrr": 1.0})


def test_resume_check_key_ignores_paths_and_resume_free_fields_only():
    base = TrainConfig(dataset="synthetic", model="mlp")
    free = dataclasses.replace(base, progress=False, device="cpu", fast=True, download=True,
                               run_dir="/tmp/a", results_path="/tmp/a.json", data_dir="/tmp/d")
    assert trainer._config_key(free) == trainer._config_key(base)
    for change in (dict(lr=0.02), dict(seed=1), dict(extra={"preset": "tiny"}),
                   dict(density=0.2)):
        assert trainer._config_key(dataclasses.replace(base, **change)) != trainer._config_key(base)
    # --sparsity 0.9 resumes a run made with --density 0.1 (and the reverse)
    assert trainer._config_key(dataclasses.replace(base, density=1 - 0.9)) == \
        trainer._config_key(dataclasses.replace(base, density=0.1))
    fp = {"dataset": "synthetic", "variant": "generated", "sha256": "0" * 64}
    assert trainer._config_key(base, fp) != trainer._config_key(base, {**fp, "sha256": "1" * 64})
