"""ssvi.stats: intervals checked by simulation and against scipy; verdict rules; honest sentences."""
import math

import numpy as np
import pytest

from ssvi import stats as S

scipy_stats = pytest.importorskip("scipy.stats")


@pytest.mark.parametrize("df", [1, 2, 2.5, 4, 7.3, 30, 200])
@pytest.mark.parametrize("p", [0.6, 0.9, 0.975, 0.995, 0.025])
def test_exact_t_quantile_matches_scipy(p, df):
    assert S._t_quantile_exact(p, df) == pytest.approx(scipy_stats.t.ppf(p, df), rel=1e-10, abs=1e-12)
    assert S.t_cdf(scipy_stats.t.ppf(p, df), df) == pytest.approx(p, abs=1e-12)


def test_t_quantile_without_scipy(monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_scipy(name, *args, **kwargs):
        if name.startswith("scipy"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_scipy)
    assert S.t_quantile(0.975, 2) == pytest.approx(4.302652729911275, rel=1e-10)
    assert S.t_quantile(0.975, math.inf) == pytest.approx(1.959963984540054, rel=1e-8)


def test_summary_matches_numpy_and_scipy():
    x = [0.61, 0.64, 0.66, 0.63]
    s = S.summarize(x)
    assert s.mean == pytest.approx(np.mean(x)) and s.sd == pytest.approx(np.std(x, ddof=1))
    lo, hi = scipy_stats.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=scipy_stats.sem(x))
    assert (s.low, s.high) == (pytest.approx(lo), pytest.approx(hi))
    assert s.text(100, 1, "%") == f"{np.mean(x) * 100:.1f} ± {np.std(x, ddof=1) * 100:.1f}% (4 seeds)"
    one = S.summarize([0.5])
    assert one.n == 1 and math.isnan(one.low) and one.text(100, 1, "%") == "50.0% (1 seed)"


def _binomial_ok(hits, trials, p=0.95):
    """hits within 4 binomial standard errors of p * trials."""
    return abs(hits - p * trials) <= 4 * math.sqrt(trials * p * (1 - p))


@pytest.mark.parametrize("n", [3, 5])
def test_t_interval_covers_95_percent(n):
    rng = np.random.default_rng(0)
    trials, true_mean = 4000, 0.7
    hits = 0
    for _ in range(trials):
        lo, hi = S.t_interval(rng.normal(true_mean, 0.02, n))
        hits += lo < true_mean < hi
    assert _binomial_ok(hits, trials), hits / trials


def test_welch_interval_covers_95_percent_with_unequal_variances():
    rng = np.random.default_rng(1)
    trials, hits = 3000, 0
    for _ in range(trials):
        d = S.welch(rng.normal(1.0, 0.1, 3), rng.normal(0.5, 0.6, 5))
        hits += d.low < 0.5 < d.high
    assert _binomial_ok(hits, trials), hits / trials


def test_welch_matches_scipy_ttest_ind():
    rng = np.random.default_rng(2)
    a, b = rng.normal(0.65, 0.01, 3), rng.normal(0.63, 0.03, 4)
    d = S.welch(a, b)
    ref = scipy_stats.ttest_ind(a, b, equal_var=False)
    assert d.estimate / d.se == pytest.approx(ref.statistic, rel=1e-10)
    assert d.df == pytest.approx(ref.df, rel=1e-10)
    lo, hi = ref.confidence_interval(0.95)
    assert (d.low, d.high) == (pytest.approx(lo, rel=1e-9), pytest.approx(hi, rel=1e-9))


def test_contrast_is_welch_for_two_groups_and_scales():
    a, b, c, e = [1.0, 1.2, 1.1], [0.5, 0.7, 0.4], [2.0, 2.1, 2.3], [0.1, 0.0, 0.2]
    w = S.welch(a, b)
    k = S.contrast([a, b], [1, -1])
    assert (k.estimate, k.low, k.high) == (w.estimate, w.low, w.high)
    dd = S.contrast([a, b, c, e], [1, -1, -1, 1])   # (a - b) - (c - e)
    assert dd.estimate == pytest.approx((np.mean(a) - np.mean(b)) - (np.mean(c) - np.mean(e)))
    assert dd.se == pytest.approx(math.sqrt(sum(np.var(g, ddof=1) / 3 for g in (a, b, c, e))))
    flat = S.contrast([[1.0, 1.0, 1.0], [0.5, 0.5, 0.5]], [1, -1])
    assert flat.low == flat.high == 0.5
    single = S.welch([1.0], [0.5, 0.6, 0.7])
    assert single.n_min == 1 and not single.testable


def test_binomial_se():
    assert S.binomial_se(0.5, 10_000) == pytest.approx(0.005)
    rng = np.random.default_rng(3)
    acc = rng.binomial(1000, 0.3, 20_000) / 1000
    assert np.std(acc) == pytest.approx(S.binomial_se(0.3, 1000), rel=0.03)
    with pytest.raises(ValueError, match="fraction"):
        S.binomial_se(65.0, 100)


@pytest.mark.parametrize("low, high, direction, thr, expected", [
    (0.5, 2.0, "above", 0.0, S.SUPPORTED),
    (-2.0, -0.5, "above", 0.0, S.CONTRADICTED),
    (-0.5, 2.0, "above", 0.0, S.NOT_SUPPORTED),
    (0.5, 2.5, "below", 3.0, S.SUPPORTED),
    (3.2, 4.0, "below", 3.0, S.CONTRADICTED),
    (2.0, 4.0, "below", 3.0, S.NOT_SUPPORTED),
    (-0.4, 0.8, "within", 1.0, S.SUPPORTED),
    (1.2, 2.0, "within", 1.0, S.CONTRADICTED),
    (-3.0, -1.5, "within", 1.0, S.CONTRADICTED),
    (-0.4, 1.5, "within", 1.0, S.NOT_SUPPORTED),
    (math.nan, math.nan, "above", 0.0, S.NOT_TESTABLE),
])
def test_verdict_rules(low, high, direction, thr, expected):
    assert S.verdict(low, high, direction, thr, n=3) == expected


def test_verdict_needs_three_seeds_and_valid_input():
    assert S.verdict(0.5, 2.0, "above", n=2) == S.NOT_TESTABLE
    assert S.verdict(0.5, 2.0, "above", n=2, min_n=2) == S.SUPPORTED
    assert S.verdict(0.08, 0.08, "below", 0.105) == S.SUPPORTED        # deterministic, n None
    with pytest.raises(ValueError, match="direction"):
        S.verdict(0, 1, "bigger")
    with pytest.raises(ValueError, match="margin"):
        S.verdict(0, 1, "within", 0.0)


def test_combine_precedence():
    assert S.combine([S.SUPPORTED, S.SUPPORTED]) == S.SUPPORTED
    assert S.combine([S.SUPPORTED, S.NOT_TESTABLE]) == S.NOT_TESTABLE
    assert S.combine([S.NOT_TESTABLE, S.NOT_SUPPORTED]) == S.NOT_SUPPORTED
    assert S.combine([S.NOT_SUPPORTED, S.CONTRADICTED, S.SUPPORTED]) == S.CONTRADICTED
    assert S.combine([]) == S.NOT_TESTABLE


def test_say_asserts_its_condition():
    assert S.say("A beats B", 0.7 > 0.6) == "A beats B"
    assert str(S.Sentence("A beats B", np.bool_(True))) == "A beats B"
    with pytest.raises(S.FalseSentenceError, match="A beats B"):
        S.say("A beats B", 0.5 > 0.6)


def test_compare_sentence_is_computed_from_the_numbers():
    ssvi90, dense = [0.62, 0.63, 0.61], [0.645, 0.64, 0.65]
    c = S.compare("SSVI 90%", ssvi90, "dense VI", dense)
    d = S.welch(ssvi90, dense)
    assert c.sentence.startswith(f"SSVI 90% is {abs(d.estimate) * 100:.1f} pp (95% CI "
                                 f"{-d.high * 100:.1f} to {-d.low * 100:.1f}) below dense VI")
    assert "excludes 0" in c.sentence and c.verdict == S.SUPPORTED   # the direction it states
    flipped = S.compare("dense VI", dense, "SSVI 90%", ssvi90)
    assert " above " in flipped.sentence
    noisy = S.compare("A", [0.5, 0.7, 0.6], "B", [0.6, 0.55, 0.62])
    assert "includes 0" in noisy.sentence and noisy.verdict == S.NOT_SUPPORTED
    one = S.compare("A", [0.5], "B", [0.6, 0.55, 0.62])
    assert one.verdict == S.NOT_TESTABLE and "no interval" in one.sentence


def test_compare_with_a_stated_direction_raises_when_the_numbers_disagree():
    ssvi90, dense = [0.62, 0.63, 0.61], [0.645, 0.64, 0.65]
    assert S.compare("SSVI", ssvi90, "dense VI", dense, expect="below").verdict == S.SUPPORTED
    with pytest.raises(S.FalseSentenceError, match="above"):
        S.compare("SSVI", ssvi90, "dense VI", dense, expect="above")
    # "less than 5 pp below": SSVI - dense > -5 pp
    ok = S.compare("SSVI", ssvi90, "dense VI", dense, expect="above", threshold=-5.0)
    assert ok.verdict == S.SUPPORTED
    with pytest.raises(S.FalseSentenceError):
        S.compare("SSVI", ssvi90, "dense VI", dense, expect="within", threshold=1.0)


def test_fmt_never_prints_small_numbers_as_zero():
    assert S.fmt(1e-6) == "1e-06" and S.fmt(0.000123) == "0.000123" and S.fmt(12.345) == "12.3"
    assert S.fmt_interval(math.nan, 1.0).startswith("no interval")


def test_paired_contrast_matches_scipy_ttest_rel_and_follows_seeds():
    rng = np.random.default_rng(3)
    seed_effect = rng.normal(0, 0.05, 4)          # shared by both groups, as a common seed is
    a = 0.60 + seed_effect + rng.normal(0, 0.005, 4)
    b = 0.58 + seed_effect + rng.normal(0, 0.005, 4)
    p = S.paired_contrast([S.PerSeed(a, [0, 1, 2, 3]), S.PerSeed(b, [0, 1, 2, 3])], [1, -1])
    ref = scipy_stats.ttest_rel(a, b)
    lo, hi = ref.confidence_interval(0.95)
    assert (p.low, p.high) == (pytest.approx(lo, rel=1e-9), pytest.approx(hi, rel=1e-9))
    assert p.df == 3 and p.n_min == 4
    # pairing removes the shared seed effect: far narrower than Welch's interval, which ignores it
    w = S.welch(a, b)
    assert p.high - p.low < (w.high - w.low) / 3
    # the seeds, not the order, decide the pairs
    shuffled = S.paired_contrast([S.PerSeed(a, [0, 1, 2, 3]), S.PerSeed(b[::-1], [3, 2, 1, 0])], [1, -1])
    assert (shuffled.low, shuffled.high) == (pytest.approx(p.low), pytest.approx(p.high))
    # a difference of differences, seed by seed
    c, e = S.PerSeed([1.0, 2.0, 4.0], "xyz"), S.PerSeed([0.5, 1.0, 3.0], "xyz")
    f, g = S.PerSeed([1.0, 1.0, 1.0], "xyz"), S.PerSeed([0.0, 0.2, 0.1], "xyz")
    dd = S.paired_contrast([c, e, f, g], [1, -1, -1, 1])
    ys = [(1.0 - 0.5) - (1.0 - 0.0), (2.0 - 1.0) - (1.0 - 0.2), (4.0 - 3.0) - (1.0 - 0.1)]
    assert dd.estimate == pytest.approx(np.mean(ys))
    assert (dd.low, dd.high) == tuple(pytest.approx(v) for v in S.t_interval(ys))


def test_paired_contrast_only_for_the_same_seeds():
    a = S.PerSeed([0.1, 0.2, 0.3], [0, 1, 2])
    assert S.paired_contrast([a, S.PerSeed([0.1, 0.2, 0.3], [0, 1, 5])], [1, -1]) is None
    assert S.paired_contrast([a, [0.1, 0.2, 0.3]], [1, -1]) is None        # seeds unknown
    assert S.paired_contrast([S.PerSeed([0.1], [0]), S.PerSeed([0.2], [0])], [1, -1]) is None
    with pytest.raises(ValueError, match="one distinct seed per value"):
        S.PerSeed([0.1, 0.2], [0, 0])
    # a plain list still compares (Welch only), a PerSeed pair adds the paired interval
    plain = S.compare("A", [0.5, 0.7, 0.6], "B", [0.45, 0.66, 0.57])
    assert "paired" not in plain.sentence and plain.paired is None
    paired = S.compare("A", S.PerSeed([0.5, 0.7, 0.6], [0, 1, 2]), "B",
                       S.PerSeed([0.45, 0.66, 0.57], [0, 1, 2]))
    assert "cannot tell them apart unpaired" in paired.sentence
    assert "paired by seed (the same 3 seeds)" in paired.sentence and "excludes 0" in paired.sentence
    assert paired.verdict == plain.verdict == S.NOT_SUPPORTED          # the verdict stays Welch's
