"""Statistics for the experiment pages: means over seeds, 95% intervals, differences, verdicts.

Every number an experiment page states about a comparison comes from here:

* :func:`summarize`: mean, standard deviation and Student-t interval of a mean over seeds;
* :func:`welch`: the difference of two means with Welch's interval (unequal variances);
  :func:`contrast` generalises it to any linear combination of group means (Satterthwaite df);
* :func:`paired_contrast`: the same combination computed seed by seed, when every group holds
  the same seeds (:class:`PerSeed`): the runs of one seed share their initialisation and batch
  order, so seed effects cancel in the per-seed differences. The pages show it next to Welch's
  interval; the verdicts use Welch's, the rule fixed before the laptop-scale runs were made;
* :func:`binomial_se`: the standard error of one accuracy measured on n test images;
* :func:`verdict`: evidence -> "supported" / "not supported" / "contradicted" /
  "not testable here", by the rules written in its docstring;
* :func:`say` / :class:`Sentence` / :func:`compare`: the sentences of a "What we see" paragraph.
  A sentence is built together with the condition it states, and building it asserts that
  condition, so a rerun with different numbers raises :class:`FalseSentenceError` instead of
  printing a false sentence.

Student-t quantiles come from ``scipy.stats`` when it is installed, else from the exact
regularized incomplete beta function below (:func:`t_cdf`, :func:`t_quantile`); both agree to
1e-10 (tests/test_stats.py).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

SUPPORTED = "supported"
NOT_SUPPORTED = "not supported"
CONTRADICTED = "contradicted"
NOT_TESTABLE = "not testable here"
VERDICTS = (SUPPORTED, NOT_SUPPORTED, CONTRADICTED, NOT_TESTABLE)
DIRECTIONS = ("above", "below", "within")
MIN_SEEDS = 3   # fewer runs per group than this and a verdict is "not testable here"
LEVEL = 0.95


class FalseSentenceError(AssertionError):
    """A "What we see" sentence states something the numbers do not show."""


# -- Student t distribution ----------------------------------------------------------------------
def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz), x < (a+1)/(a+b+2)."""
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        for num in (m * (b - m) * x / ((a + m2 - 1.0) * (a + m2)),
                    -(a + m) * (a + b + m) * x / ((a + m2) * (a + m2 + 1.0))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            return h
    raise ArithmeticError(f"incomplete beta continued fraction did not converge (a={a}, b={b}, x={x})")


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta function I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if not (a > 0 and b > 0 and 0.0 <= x <= 1.0):
        raise ValueError(f"betainc needs a, b > 0 and 0 <= x <= 1, got a={a}, b={b}, x={x}")
    if x in (0.0, 1.0):
        return x
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` > 0 degrees of freedom:
    1 - I_{df/(df+t^2)}(df/2, 1/2) / 2 for t >= 0, by symmetry for t < 0."""
    if not df > 0:
        raise ValueError(f"degrees of freedom must be positive, got {df}")
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def _bisect(cdf, p: float) -> float:
    """x with cdf(x) = p for a cdf symmetric about 0, by bisection to double precision."""
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -_bisect(cdf, 1.0 - p)
    lo, hi = 0.0, 1.0
    while cdf(hi) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if cdf(mid) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-14 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def _t_quantile_exact(p: float, df: float) -> float:
    return _bisect(lambda t: t_cdf(t, df), p)


def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t with ``df`` degrees of freedom (df may be fractional, as
    Welch's is); ``math.inf`` df gives the normal quantile. scipy.stats if installed, else exact."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"t_quantile needs 0 < p < 1, got {p}")
    if not df > 0:
        raise ValueError(f"degrees of freedom must be positive, got {df}")
    try:
        from scipy import stats as _st
    except ImportError:
        _st = None
    if _st is not None:
        return float(_st.norm.ppf(p) if math.isinf(df) else _st.t.ppf(p, df))
    if math.isinf(df):
        return _bisect(lambda x: 0.5 * math.erfc(-x / math.sqrt(2.0)), p)
    return _t_quantile_exact(p, df)


# -- one group ------------------------------------------------------------------------------------
def _values(values, what: str = "values") -> list[float]:
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a list of numbers, got {values!r}") from None
    bad = [v for v in out if not math.isfinite(v)]
    if bad:
        raise ValueError(f"{what} contain non-finite numbers {bad}; drop failed runs first "
                         "(or count them explicitly, e.g. at chance accuracy)")
    return out


@dataclass(frozen=True)
class Summary:
    """Mean of n values with sample standard deviation (ddof 1), standard error of the mean and
    the two-sided ``level`` Student-t interval mean +- t_{(1+level)/2, n-1} * sd / sqrt(n).
    With n = 1, sd, se and the interval are NaN (one run says nothing about spread)."""
    n: int
    mean: float
    sd: float
    se: float
    low: float
    high: float
    level: float = LEVEL

    def text(self, scale: float = 1.0, digits: int = 1, unit: str = "") -> str:
        """'64.8 ± 1.2% (3 seeds)', or '64.8% (1 seed)'."""
        runs = f"{self.n} seed{'s' if self.n != 1 else ''}"
        if self.n < 2:
            return f"{self.mean * scale:.{digits}f}{unit} ({runs})"
        return f"{self.mean * scale:.{digits}f} ± {self.sd * scale:.{digits}f}{unit} ({runs})"


def summarize(values: Sequence[float], level: float = LEVEL) -> Summary:
    """Mean ± sd over seeds and the Student-t interval of the mean (see :class:`Summary`)."""
    xs = _values(values)
    if not xs:
        raise ValueError("summarize needs at least one value, got none")
    n = len(xs)
    mean = math.fsum(xs) / n
    if n < 2:
        nan = math.nan
        return Summary(n, mean, nan, nan, nan, nan, level)
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    se = sd / math.sqrt(n)
    half = t_quantile(0.5 + level / 2.0, n - 1) * se
    return Summary(n, mean, sd, se, mean - half, mean + half, level)


def t_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float]:
    """Two-sided Student-t interval for the mean of ``values`` (n >= 2)."""
    s = summarize(values, level)
    if s.n < 2:
        raise ValueError("a t interval needs at least 2 values, got 1")
    return s.low, s.high


def binomial_se(accuracy: float, n: int) -> float:
    """Standard error sqrt(p (1 - p) / n) of an accuracy p measured on n test images
    (the test-set sampling error of one run; it does not include seed-to-seed variation)."""
    if not 0.0 <= accuracy <= 1.0:
        raise ValueError(f"accuracy must be a fraction in [0, 1], got {accuracy}")
    if n < 1:
        raise ValueError(f"n must be a positive number of test images, got {n}")
    return math.sqrt(accuracy * (1.0 - accuracy) / n)


# -- differences and contrasts --------------------------------------------------------------------
@dataclass(frozen=True)
class Estimate:
    """A linear combination of group means with its standard error, Satterthwaite degrees of
    freedom and two-sided ``level`` interval; ``n_min`` is the smallest group size."""
    estimate: float
    se: float
    df: float
    low: float
    high: float
    n_min: int
    level: float = LEVEL

    @property
    def testable(self) -> bool:
        return math.isfinite(self.low) and math.isfinite(self.high)


def contrast(groups: Sequence[Sequence[float]], weights: Sequence[float],
             level: float = LEVEL) -> Estimate:
    """sum_g w_g * mean_g with se^2 = sum_g w_g^2 s_g^2 / n_g and the Welch-Satterthwaite df
    (sum_g v_g)^2 / sum_g v_g^2 / (n_g - 1), v_g = w_g^2 s_g^2 / n_g; the interval is
    estimate +- t_{(1+level)/2, df} * se. A group with fewer than 2 values gives NaN se/interval.
    If every group has zero spread the interval collapses to the estimate (df = inf)."""
    groups = [_values(g, f"group {i}") for i, g in enumerate(groups)]
    weights = [float(w) for w in weights]
    if len(groups) != len(weights) or not groups:
        raise ValueError(f"contrast needs one weight per group, got {len(groups)} groups and "
                         f"{len(weights)} weights")
    if any(not g for g in groups):
        raise ValueError("contrast: every group needs at least one value")
    sums = [summarize(g, level) for g in groups]
    est = math.fsum(w * s.mean for w, s in zip(weights, sums))
    n_min = min(s.n for s in sums)
    if n_min < 2:
        return Estimate(est, math.nan, math.nan, math.nan, math.nan, n_min, level)
    v = [w * w * s.sd ** 2 / s.n for w, s in zip(weights, sums)]
    se = math.sqrt(math.fsum(v))
    if se == 0.0:
        return Estimate(est, 0.0, math.inf, est, est, n_min, level)
    denom = math.fsum(vi * vi / (s.n - 1) for vi, s in zip(v, sums))
    df = math.fsum(v) ** 2 / denom
    half = t_quantile(0.5 + level / 2.0, df) * se
    return Estimate(est, se, df, est - half, est + half, n_min, level)


class PerSeed(list):
    """Values, one per seed, that remember their seeds (``.seeds``, in the same order), so that
    a comparison of groups holding the same seeds can also be made seed by seed
    (:func:`paired_contrast`). It is a list of the values for everything else."""

    def __init__(self, values: Sequence[float] = (), seeds: Sequence = ()):
        super().__init__(values)
        self.seeds = tuple(seeds)
        if len(self.seeds) != len(self) or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"PerSeed needs one distinct seed per value, got {len(self)} "
                             f"values and seeds {self.seeds}")


def paired_contrast(groups: Sequence[Sequence[float]], weights: Sequence[float],
                    level: float = LEVEL) -> Estimate | None:
    """sum_g w_g * mean_g computed seed by seed: y_s = sum_g w_g x_{g,s}, then the Student-t
    interval of the mean of the y_s (df = n - 1; scipy.stats.ttest_rel for two groups). Only
    when every group is a :class:`PerSeed` holding the same set of seeds (at least two); None
    otherwise. Valid whatever the correlation between groups, since seeds are independent."""
    if not groups or not all(isinstance(g, PerSeed) for g in groups):
        return None
    seeds = set(groups[0].seeds)
    if len(seeds) < 2 or any(set(g.seeds) != seeds for g in groups):
        return None
    if len(groups) != len(weights):
        raise ValueError(f"paired_contrast needs one weight per group, got {len(groups)} groups "
                         f"and {len(weights)} weights")
    by_seed = [dict(zip(g.seeds, _values(g, f"group {i}"))) for i, g in enumerate(groups)]
    ys = [math.fsum(float(w) * g[s] for w, g in zip(weights, by_seed)) for s in sorted(seeds)]
    y = summarize(ys, level)
    if y.sd == 0.0:
        return Estimate(y.mean, 0.0, math.inf, y.mean, y.mean, y.n, level)
    return Estimate(y.mean, y.se, float(y.n - 1), y.low, y.high, y.n, level)


def welch(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> Estimate:
    """mean(a) - mean(b) with Welch's unequal-variance interval (the t test of
    scipy.stats.ttest_ind(a, b, equal_var=False))."""
    return contrast([a, b], [1.0, -1.0], level)


# -- verdicts -------------------------------------------------------------------------------------
def verdict(low: float, high: float, direction: str, threshold: float = 0.0, *,
            n: int | None = None, min_n: int = MIN_SEEDS) -> str:
    """The verdict on a claim about a quantity Q, given the ``[low, high]`` interval of Q.

    The claim is "Q > threshold" (``direction="above"``), "Q < threshold" (``"below"``) or
    "|Q| < threshold" (``"within"``, an equivalence claim with margin ``threshold`` > 0). Rules,
    applied in order:

    1. "not testable here" if ``n`` (the smallest number of runs behind any compared group) is
       below ``min_n`` (default 3 seeds), or the interval is not finite (e.g. one run);
    2. "supported" if the whole interval lies on the claimed side: low > threshold (above),
       high < threshold (below), -threshold < low and high < threshold (within);
    3. "contradicted" if the whole interval lies on the other side: high < threshold (above),
       low > threshold (below), low > threshold or high < -threshold (within: the difference is
       certainly larger than the margin);
    4. "not supported" otherwise: the interval contains the threshold, so the data cannot
       decide (inconclusive at this number of runs).

    A deterministic quantity (a FLOP count) is passed as low = high = its value with n = None.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}")
    if direction == "within" and not threshold > 0:
        raise ValueError(f"an equivalence margin must be positive, got {threshold}")
    if n is not None and n < min_n:
        return NOT_TESTABLE
    if not (math.isfinite(low) and math.isfinite(high)):
        return NOT_TESTABLE
    if low > high:
        raise ValueError(f"interval low {low} is above high {high}")
    if direction == "above":
        return SUPPORTED if low > threshold else CONTRADICTED if high < threshold else NOT_SUPPORTED
    if direction == "below":
        return SUPPORTED if high < threshold else CONTRADICTED if low > threshold else NOT_SUPPORTED
    if -threshold < low and high < threshold:
        return SUPPORTED
    if low > threshold or high < -threshold:
        return CONTRADICTED
    return NOT_SUPPORTED


def combine(verdicts: Sequence[str]) -> str:
    """One verdict for a claim made of several parts (e.g. two sparsity levels): contradicted if
    any part is; else not supported if any part is; else not testable here if any part is; else
    supported (every part supported). No parts: not testable here."""
    bad = [v for v in verdicts if v not in VERDICTS]
    if bad:
        raise ValueError(f"unknown verdict(s) {bad}; expected one of {VERDICTS}")
    for v in (CONTRADICTED, NOT_SUPPORTED, NOT_TESTABLE):
        if v in verdicts:
            return v
    return SUPPORTED if verdicts else NOT_TESTABLE


# -- sentences ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sentence:
    """A sentence of a "What we see" paragraph and the condition it states; constructing one
    with a false condition raises :class:`FalseSentenceError`."""
    text: str
    condition: bool

    def __post_init__(self):
        if not isinstance(self.condition, bool):
            # numpy bools and the like: accept truthiness of a real boolean only
            try:
                object.__setattr__(self, "condition", bool(self.condition))
            except (TypeError, ValueError):
                raise FalseSentenceError(f"the condition of {self.text!r} is not a boolean: "
                                         f"{self.condition!r}") from None
        if not self.condition:
            raise FalseSentenceError(f"the numbers do not show what this sentence says: "
                                     f"{self.text!r}; rewrite it from the current results")

    def __str__(self) -> str:
        return self.text


def say(text: str, condition) -> str:
    """``text`` if ``condition`` holds, else :class:`FalseSentenceError` (see :class:`Sentence`)."""
    return Sentence(text, condition).text


def fmt(x: float, digits: int = 3) -> str:
    """A number with ``digits`` significant digits that never prints a small value as 0
    (1e-06 -> '1e-06', 0.000123 -> '0.000123', 12.345 -> '12.3')."""
    x = float(x)
    if not math.isfinite(x):
        return str(x)
    return f"{x:.{digits}g}"


def fmt_interval(low: float, high: float, scale: float = 1.0, digits: int = 1,
                 level: float = LEVEL) -> str:
    """'95% CI 0.8 to 3.4' (or 'no interval: one run' when it is not finite)."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return "no interval: fewer than 2 runs in a group"
    return f"{level:.0%} CI {low * scale:.{digits}f} to {high * scale:.{digits}f}"


def paired_text(p: Estimate | None, scale: float = 100.0, digits: int = 1,
                level: float = LEVEL, flip: bool = False) -> str:
    """'; paired by seed (the same 3 seeds): 95% CI lo to hi, which excludes 0', or '' without
    a paired estimate; ``flip`` states the interval of -Q (for a sentence that says "below")."""
    if p is None:
        return ""
    lo, hi = (-p.high, -p.low) if flip else (p.low, p.high)
    where = "excludes" if (lo > 0 or hi < 0) else "includes"
    return (f"; paired by seed (the same {p.n_min} seeds): "
            f"{fmt_interval(lo, hi, scale, digits, level)}, which {where} 0")


@dataclass(frozen=True)
class Comparison:
    """Result of :func:`compare`: the sentence, the difference a - b and the verdict."""
    sentence: str
    difference: Estimate
    verdict: str
    a: Summary
    b: Summary
    paired: Estimate | None = None

    def __str__(self) -> str:
        return self.sentence


def compare(name_a: str, a_values: Sequence[float], name_b: str, b_values: Sequence[float],
            metric: str = "accuracy", *, units: str = "pp", scale: float = 100.0,
            digits: int = 1, expect: str | None = None, threshold: float = 0.0,
            min_n: int = MIN_SEEDS, level: float = LEVEL) -> Comparison:
    """Compare two groups of per-seed values of ``metric`` and say so in one computed sentence.

    The difference is a - b (Welch, :func:`welch`), shown times ``scale`` in ``units`` ("pp" for
    accuracies stored as fractions). When both groups are :class:`PerSeed` with the same seeds,
    the sentence adds the interval paired by seed (:func:`paired_contrast`); the verdict and the
    "cannot tell them apart" wording stay Welch's. The sentence's direction word
    ("above"/"below") is read from the sign of the difference, and it says whether the interval
    excludes 0. ``expect``
    ("above", "below" or "within", with ``threshold`` in the same display units) is the
    direction the page's prose claims: it sets the verdict (:func:`verdict`) and, when the
    estimate itself points the other way, raises :class:`FalseSentenceError`.
    """
    a, b = summarize(a_values, level), summarize(b_values, level)
    d = welch(a_values, b_values, level)
    est = d.estimate * scale
    word = "above" if est > 0 else "below" if est < 0 else "equal to"
    # the interval of the stated amount: of a - b when "above", of b - a when "below"
    lo, hi = (d.low, d.high) if est >= 0 else (-d.high, -d.low)
    paired = paired_contrast([a_values, b_values], [1.0, -1.0], level)
    unpaired = " unpaired" if paired is not None else ""
    if d.testable:
        ci = f" ({fmt_interval(lo, hi, scale, digits, level)})"
        if d.low > 0 or d.high < 0:
            tail = "; the interval excludes 0"
        else:
            tail = (f"; the interval includes 0, so {a.n} and {b.n} seeds cannot tell them "
                    f"apart{unpaired}")
    else:
        ci, tail = "", f" (no interval: {a.n} and {b.n} seeds)"
    tail += paired_text(paired, scale, digits, level, flip=est < 0)
    if est == 0:
        text = f"{name_a} is equal to {name_b} in {metric}{ci}{tail}."
    else:
        text = f"{name_a} is {abs(est):.{digits}f} {units}{ci} {word} {name_b} in {metric}{tail}."
    sentence = Sentence(text, (est > 0) == (word == "above") and (est < 0) == (word == "below"))
    if expect is None:
        v = verdict(d.low * scale, d.high * scale, "above" if est >= 0 else "below", 0.0,
                    n=d.n_min, min_n=min_n)
    else:
        v = verdict(d.low * scale, d.high * scale, expect, threshold, n=d.n_min, min_n=min_n)
        if expect == "above":
            say(f"{name_a} is above {name_b} by more than {threshold:g} {units} in {metric} "
                f"(estimate {est:.{digits}f} {units})", est > threshold)
        elif expect == "below":
            say(f"{name_a} is below {name_b} by more than {-threshold:g} {units} in {metric} "
                f"(estimate {est:.{digits}f} {units})", est < threshold)
        elif expect == "within":
            say(f"{name_a} is within {threshold:g} {units} of {name_b} in {metric} "
                f"(estimate {est:.{digits}f} {units})", abs(est) < threshold)
    return Comparison(sentence.text, d, v, a, b, paired)
