"""The "What we see" sentences (ssvi.findings), the plots' averaging (ssvi.plots), and the
registry's Table 2 baselines and Figure 3 release-sigma arm."""
import math

import pytest

from ssvi import findings as F
from ssvi import plots, registry, stats


def _rec(method, seed, acc, flops=None, **cfg):
    return {"config": {"method": method, "seed": seed, "dataset": "cifar10", **cfg},
            "metrics": {"accuracy": acc}, "flops": {"training_flops": flops}}


def test_values_one_per_seed_and_from_flops():
    recs = [_rec("ssvi", 0, 0.5, 10.0), _rec("ssvi", 0, 0.9, 10.0), _rec("ssvi", 1, 0.7, 12.0),
            _rec("dense_vi", 0, 0.6, 40.0)]
    assert F.values(recs, method="ssvi") == [0.5, 0.7]          # the first record of a seed
    assert F.values(recs, "training_flops", method="ssvi") == [10.0, 12.0]
    failed = dict(_rec("ssvi", 2, None), failed="diverged")
    assert F.values([failed]) == [0.1]                           # chance for 10 classes


def test_versus_states_the_sign_and_the_interval():
    a, b = [0.50, 0.52, 0.51], [0.40, 0.41, 0.42]
    s = F.versus("A", a, "B", b)
    d = stats.welch(a, b)
    assert s.startswith(f"A is {100 * d.estimate:.1f} pp") and "above B" in s
    assert f"{100 * d.low:.1f} to {100 * d.high:.1f}" in s and "excludes 0" in s
    assert "below A" in F.versus("B", b, "A", a)
    assert "no stored runs of B" in F.versus("A", a, "B", [])


@pytest.mark.parametrize("a,b,word", [(1.0, 4.0, "4.0× fewer"), (6.0, 2.0, "3.0× more"),
                                      (2.0, 2.0, "as many")])
def test_ratio_direction(a, b, word):
    s = F.ratio("A", a, "B", b)
    assert word in s and f"{a / b:.2f}×" in s


def test_claim_sentence_carries_the_verdict():
    s = F.claim("compression", {})
    assert "**Verdict: not testable here.**" in s and "Table 1" in s


def test_mean_sd_matches_statistics():
    import pandas as pd
    df = pd.DataFrame({"m": ["x", "x", "x", "y"], "v": [1.0, 2.0, 4.0, 3.0]})
    out = plots.mean_sd(df, ["m"], ["v"]).set_index("m")
    s = stats.summarize([1.0, 2.0, 4.0])
    assert out.loc["x", "v"] == pytest.approx(s.mean)
    assert out.loc["x", "v_sd"] == pytest.approx(s.sd)
    assert out.loc["y", "v_sd"] == 0.0 and out.loc["y", "n"] == 1


def test_table2_and_figure1_plan_every_baseline_in_the_same_setting():
    runs = registry.plan("table2", preset="tiny")
    methods = [r.cfg.method for r in runs]
    assert set(registry.TABLE2_BASELINES) <= set(methods)
    for r in runs:
        if r.cfg.method == "aeb":   # pruned to Table 2's sparsity
            assert math.isclose(r.cfg.density, 1 - registry.TABLE2_SPARSITY["cifar10"])
    fig1 = {r.run_id for r in registry.plan("figure1", preset="tiny")}
    assert {r.run_id for r in runs} <= fig1                    # stored once, shared
    assert [r.cfg.method for r in registry.plan("table2", preset="tiny", baselines=[])] == \
        ["dense_vi", "ssvi"]


def test_figure3_has_the_release_sigma_arm_with_the_ratio_evaluation():
    runs = registry.plan("figure3_ablations", preset="tiny")
    rho = [r for r in runs if r.cfg.regrow_sigma == "mean_rho"]
    assert len(rho) == 1 and rho[0].evaluation["name"] == "regrow_sigma_ratio"
    base = [r for r in runs if r.cfg.regrow_sigma == "mean" and r.cfg.addition == "mc1"]
    assert len(base) == 1 and base[0].evaluation["name"] == "regrow_sigma_ratio"
    others = [r for r in runs if r not in rho + base]
    assert others and all(r.evaluation is None for r in others)


def test_sigma_ratio_evaluation_is_jensen_bounded():
    import torch
    from ssvi import evaluations as EV
    from ssvi.config import TrainConfig
    from ssvi.subspace import SubspaceController
    from ssvi.trainer import build_model_for
    torch.manual_seed(0)
    model = build_model_for(TrainConfig(model="small_cnn", width=0.25, method="ssvi"), 10)
    SubspaceController(model, 0.1)
    for _, p in model.named_parameters():
        p.data.add_(0.5 * torch.randn_like(p))   # spread rho so the ratio is above 1
    out = EV.sigma_ratio(model)
    assert out["layers"] and all(v >= 1.0 for v in out["layers"].values())
    assert out["min"] <= out["mean"] <= out["max"]
