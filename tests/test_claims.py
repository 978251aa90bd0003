"""ssvi.claims: every verdict branch of every claim is reachable from synthetic result records."""

from ssvi import claims as C
from ssvi import stats as S

BASE = dict(dataset="cifar10", model="small_cnn", width=1.0, epochs=10, train_subset=None,
            test_subset=None, removal="snr_abs", addition="mc1", addition_k=3,
            regrow_sigma="mean", regrow_sigma_const=1e-6, sigma_init_mean=0.0006,
            kl_warmup=True)


def runs(method, accs, density=None, flops=None, **cfg):
    """One record per accuracy (seeds 0, 1, ...); accuracy None = a diverged run."""
    density = density if density is not None else (1.0 if method in ("dense_vi", "dense") else 0.1)
    out = []
    for seed, acc in enumerate(accs):
        c = dict(BASE, method=method, density=density, seed=seed, **cfg)
        rec = {"config": c, "metrics": None if acc is None else
               {"accuracy": acc, "nll": 2.0 - acc, "ece": 0.1 * (1 - acc)},
               "parameters": {"total_weights": 100_000, "active_weights": int(100_000 * density)},
               "data": {"n_train": 50_000, "n_test": 10_000}}
        if flops is not None:
            rec["flops"] = {"training_flops": flops}
        if acc is None:
            rec["failed"] = "the loss is nan"
        out.append(rec)
    return out


def card(by_exp):
    return {c.key: C.evaluate(c, by_exp) for c in C.CLAIMS}


DENSE = [0.700, 0.705, 0.695]


def test_empty_results_make_every_claim_not_testable():
    df = C.scorecard({})
    assert list(df["verdict"]) == [S.NOT_TESTABLE] * len(C.CLAIMS)
    assert list(df.columns) == ["verdict", "claim", "evidence here", "tested as", "paper"]
    assert set(C.experiments_needed()) >= {"table1", "table2", "figure2_sparsity",
                                            "figure2_robustness", "figure3_ablations",
                                            "appendix_shift"}


def test_claims_have_unique_keys_and_a_lookup():
    keys = [c.key for c in C.CLAIMS]
    assert len(set(keys)) == len(keys) and C.claim("compression").experiments == ("table1",)
    try:
        C.claim("compresion")
    except KeyError as err:
        assert "compression" in str(err)
    else:
        raise AssertionError("an unknown claim key must raise")


def test_compression_supported_contradicted_and_combined():
    small_drop = runs("ssvi", [0.690, 0.695, 0.685], density=0.1)
    big_drop = runs("ssvi", [0.600, 0.605, 0.595], density=0.05)
    ev = card({"table1": runs("dense_vi", DENSE) + small_drop})["compression"]
    assert ev.verdict == S.SUPPORTED and "90% sparse, 10.0× fewer weights" in ev.text
    assert "95% CI" in ev.text and "+1.0 pp" in ev.text
    ev = card({"table1": runs("dense_vi", DENSE) + small_drop + big_drop})["compression"]
    assert ev.verdict == S.CONTRADICTED and "95% sparse" in ev.text


def test_a_shared_seed_effect_shows_in_the_paired_interval_not_in_the_verdict():
    # seed 1 is good for both methods and seed 2 bad: Welch cannot decide the 1.5 pp drop, the
    # paired interval (same seeds) excludes 0; the verdict stays Welch's "not supported"
    dense = runs("dense_vi", [0.70, 0.76, 0.64])
    ssvi = runs("ssvi", [0.685, 0.744, 0.626], density=0.1)
    ev = card({"table1": dense + ssvi})["compression"]
    assert ev.verdict == S.NOT_SUPPORTED
    paired = S.paired_contrast([C.per_seed(dense, factor=100)[0], C.per_seed(ssvi, factor=100)[0]],
                               [1, -1])
    assert paired.low > 0 and f"paired by seed: {S.fmt_interval(paired.low, paired.high)}" in ev.text
    # seeds that differ between the groups: no paired interval
    other = [dict(r, config=dict(r["config"], seed=r["config"]["seed"] + 10)) for r in ssvi]
    assert "paired" not in card({"table1": dense + other})["compression"].text


def test_compression_inconclusive_and_too_few_seeds():
    noisy = runs("ssvi", [0.70, 0.62, 0.66], density=0.1)
    assert card({"table1": runs("dense_vi", DENSE) + noisy})["compression"].verdict == S.NOT_SUPPORTED
    one = runs("ssvi", [0.69], density=0.1)
    ev = card({"table1": runs("dense_vi", DENSE) + one})["compression"]
    assert ev.verdict == S.NOT_TESTABLE and "needs ≥ 3 seeds per group; 1 stored" in ev.text


def test_training_flops_rule():
    good = runs("dense_vi", DENSE, flops=1e15) + runs("ssvi", DENSE, density=0.1, flops=0.102e15)
    ev = card({"table1": good})["training_flops"]
    assert ev.verdict == S.SUPPORTED and "0.10× dense VI" in ev.text
    bad = runs("dense_vi", DENSE, flops=1e15) + runs("ssvi", DENSE, density=0.1, flops=0.27e15)
    ev = card({"table1": bad})["training_flops"]
    assert ev.verdict == S.CONTRADICTED and "3.7× fewer" in ev.text


def test_sparse_bnn_baselines():
    ssvi = runs("ssvi", [0.80, 0.805, 0.795], density=0.05)
    assert card({"table2": ssvi})["sparse_bnns"].verdict == S.NOT_TESTABLE
    worse = runs("vd", [0.70, 0.705, 0.695], density=0.2)
    assert card({"table2": ssvi + worse})["sparse_bnns"].verdict == S.SUPPORTED
    better = runs("mbnn", [0.85, 0.855, 0.845], density=0.05)
    ev = card({"table2": ssvi + worse + better})["sparse_bnns"]
    assert ev.verdict == S.CONTRADICTED and "SSVI − mBNN accuracy" in ev.text


def _sparsity_grid(ssvi_hi, rigl_hi):
    return (runs("ssvi", [0.70, 0.705, 0.695], density=0.5)
            + runs("ssvi", ssvi_hi, density=0.05)
            + runs("rigl", [0.72, 0.725, 0.715], density=0.5, removal="abs_mu")
            + runs("rigl", rigl_hi, density=0.05, removal="abs_mu"))


def test_sparsity_vs_rigl():
    ev = card({"figure2_sparsity": _sparsity_grid([0.68, 0.685, 0.675], [0.60, 0.605, 0.595])})
    assert ev["sparsity_vs_rigl"].verdict == S.SUPPORTED
    assert "SSVI − RigL at 50%" in ev["sparsity_vs_rigl"].text   # RigL ahead at 50% is shown
    ev = card({"figure2_sparsity": _sparsity_grid([0.58, 0.585, 0.575], [0.70, 0.705, 0.695])})
    assert ev["sparsity_vs_rigl"].verdict == S.CONTRADICTED
    only_one = runs("ssvi", DENSE, density=0.5) + runs("rigl", DENSE, density=0.5)
    assert card({"figure2_sparsity": only_one})["sparsity_vs_rigl"].verdict == S.NOT_TESTABLE


def test_snr_abs_best():
    best = runs("ssvi", [0.70, 0.705, 0.695])
    snr = runs("ssvi", [0.70, 0.705, 0.695], removal="snr")      # identical by construction
    worse = runs("ssvi", [0.65, 0.655, 0.645], removal="abs_mu")
    ev = card({"figure2_robustness": best + snr + worse})["snr_abs_best"]
    assert ev.verdict == S.SUPPORTED and "|μ|" in ev.text and "not compared" in ev.text
    better = runs("ssvi", [0.75, 0.755, 0.745], removal="e_abs")
    ev = card({"figure2_robustness": best + worse + better})["snr_abs_best"]
    assert ev.verdict == S.CONTRADICTED and "E|θ|" in ev.text


def _robustness(vi_big_sigma, vi_no_warm):
    g = []
    for sigma in (0.001, 0.01):
        g += runs("ssvi", [0.70, 0.705, 0.695], sigma_init_mean=sigma)
        g += runs("ssvi", [0.69, 0.695, 0.685], sigma_init_mean=sigma, kl_warmup=False)
    g += runs("dense_vi", [0.72, 0.725, 0.715], sigma_init_mean=0.001)
    g += runs("dense_vi", vi_big_sigma, sigma_init_mean=0.01)
    g += runs("dense_vi", vi_no_warm, sigma_init_mean=0.001, kl_warmup=False)
    g += runs("dense_vi", [None] * 3, sigma_init_mean=0.01, kl_warmup=False)
    return g


def test_robustness_to_sigma0_and_warmup_counts_diverged_runs_at_chance():
    ev = card({"figure2_robustness": _robustness([None, 0.11, 0.12], [0.50, 0.505, 0.495])})
    assert ev["robust_vs_vi"].verdict == S.SUPPORTED
    assert "diverged run(s) counted at chance" in ev["robust_vs_vi"].text
    assert ev["beats_vi_sigma"].verdict == S.SUPPORTED and "σ0 0.01" in ev["beats_vi_sigma"].text
    ev = card({"figure2_robustness": _robustness([0.80, 0.805, 0.795], [0.72, 0.725, 0.715])})
    assert ev["robust_vs_vi"].verdict == S.CONTRADICTED
    assert ev["beats_vi_sigma"].verdict == S.CONTRADICTED


def test_mc1_on_par_and_mean_sigma():
    base = runs("ssvi", [0.700, 0.702, 0.698])
    k3 = runs("ssvi", [0.701, 0.703, 0.699], addition="mck", addition_k=3)
    const = runs("ssvi", [0.699, 0.701, 0.697], regrow_sigma="const", regrow_sigma_const=1e-6)
    ev = card({"figure3_ablations": base + k3 + const})
    assert ev["mc1_on_par"].verdict == S.SUPPORTED and "3-step MC" in ev["mc1_on_par"].text
    assert ev["mean_sigma"].verdict == S.SUPPORTED and "constant 1e-06" in ev["mean_sigma"].text
    much_better = runs("ssvi", [0.75, 0.752, 0.748], addition="mck", addition_k=5)
    bad_const = runs("ssvi", [0.75, 0.752, 0.748], regrow_sigma="const", regrow_sigma_const=0.01)
    noisy = runs("ssvi", [0.72, 0.68, 0.70], addition="mean")
    ev = card({"figure3_ablations": base + k3 + much_better + const + bad_const})
    assert ev["mc1_on_par"].verdict == S.CONTRADICTED
    assert ev["mean_sigma"].verdict == S.CONTRADICTED
    assert card({"figure3_ablations": base + noisy})["mc1_on_par"].verdict == S.NOT_SUPPORTED
    rho = runs("ssvi", [0.69, 0.692, 0.688], regrow_sigma="mean_rho")
    ev = card({"figure3_ablations": base + const + rho})["mean_sigma"]
    assert ev.verdict == S.SUPPORTED and "the release's mean ρ" in ev.text


def _shift(method, clean, corrupted):
    out = []
    for seed, (c, k) in enumerate(zip(clean, corrupted)):
        rows = [{"corruption": "clean", "severity": 0, "accuracy": c, "ece": 0.02}]
        rows += [{"corruption": n, "severity": s, "accuracy": k if s == 5 else c, "ece": 0.1}
                 for n in ("gaussian_noise", "contrast") for s in (1, 5)]
        out.append({"config": dict(BASE, method=method, density=1.0 if method == "dense_vi" else 0.1,
                                   seed=seed), "evaluations": {"shift": {"spec": {}, "rows": rows}}})
    return out


def test_distribution_shift():
    vi = _shift("dense_vi", [0.70, 0.71, 0.69], [0.40, 0.41, 0.39])
    same = _shift("ssvi", [0.68, 0.69, 0.67], [0.38, 0.39, 0.37])
    assert card({"appendix_shift": vi + same})["distribution_shift"].verdict == S.SUPPORTED
    worse = _shift("ssvi", [0.68, 0.69, 0.67], [0.20, 0.21, 0.19])
    assert card({"appendix_shift": vi + worse})["distribution_shift"].verdict == S.CONTRADICTED
    assert card({"appendix_shift": vi})["distribution_shift"].verdict == S.NOT_TESTABLE
    old_files = [{"config": r["config"], "results": r["evaluations"]["shift"]["rows"]}
                 for r in vi + worse]   # shift results written before schema 2
    assert card({"appendix_shift": old_files})["distribution_shift"].verdict == S.CONTRADICTED


def test_mixed_settings_use_the_largest_and_say_so():
    recs = runs("dense_vi", DENSE) + runs("ssvi", [0.690, 0.695, 0.685])
    recs += runs("dense_vi", [0.3], epochs=2)
    ev = card({"table1": recs})["compression"]
    assert ev.verdict == S.SUPPORTED and "1 record(s) of other settings ignored" in ev.text


def test_unreadable_records_are_not_testable_not_a_crash():
    broken = [{"config": dict(BASE, method="dense_vi", density=1.0, seed=0), "metrics": {"accuracy": "x"}}]
    assert C.scorecard({"table1": broken})["verdict"].eq(S.NOT_TESTABLE).all()


def test_stored_records_reads_the_registry_plans(tmp_path, monkeypatch):
    """No stored run: every artefact maps to []; one trained run appears under its artefacts."""
    from fakes import write_fake_cifar
    from ssvi import registry, runner
    write_fake_cifar(tmp_path / "data", "cifar10", n_train=1024, n_test=512, seed=0)
    monkeypatch.setenv("SSVI_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("SSVI_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("SSVI_RUNS", str(tmp_path / "runs"))
    got = C.stored_records("tiny", seeds=[0])
    assert set(got) == set(C.experiments_needed()) and not any(got.values())
    run = registry.plan("table1", preset="tiny", seeds=[0])[0]
    runner.train_run(run, log=None)
    got = C.stored_records("tiny", seeds=[0])
    assert [r["run_id"] for r in got["table1"]] == [run.run_id]
    assert C.scorecard(got)["verdict"].isin(S.VERDICTS).all()
