"""The "What we see" paragraph of an experiment page: computed sentences, never typed ones.

A page builds its paragraph from its records with three kinds of sentence, each computed from the
numbers it states, and each asserting its own condition (:func:`ssvi.stats.say`), so a rerun with
other numbers raises :class:`ssvi.stats.FalseSentenceError` instead of printing a false
sentence:

* :func:`versus`: "A is x pp (95% CI ...) above/below B in accuracy ..." from the per-seed values
  of two groups of runs (:func:`ssvi.stats.compare`, Welch's interval, and the interval paired
  by seed when both groups hold the same seeds);
* :func:`ratio`: "A uses r× fewer/more training FLOPs than B";
* :func:`claim`: one claim of the scorecard (:mod:`ssvi.claims`): what the paper says, how it is
  tested, the evidence here and the verdict.

:func:`show` renders the sentences as Markdown (``IPython.display.Markdown``).
"""
from __future__ import annotations

from collections.abc import Sequence

from . import claims as CL
from . import stats as S


def _value(rec: dict, name: str) -> float | None:
    value = CL.metric(rec, name)
    for section in ("flops", "parameters", "provenance"):
        if value is None and (rec.get(section) or {}).get(name) is not None:
            value = float(rec[section][name])
    return value


def values(records: Sequence[dict], metric: str = "accuracy", **want) -> list[float]:
    """One value per seed of the records whose config matches ``want``
    (:func:`ssvi.claims.select`): ``metrics[metric]``, else ``flops[metric]``,
    ``parameters[metric]`` or ``provenance[metric]`` (``wall_time_s``); a diverged run's accuracy
    counts at chance. The list remembers its seeds (:class:`ssvi.stats.PerSeed`), so that
    :func:`versus` can add the comparison paired by seed."""
    out, seeds = [], []
    for r in CL.select(records, **want):
        v, seed = _value(r, metric), CL.config(r).get("seed")
        if v is not None and seed not in seeds:
            seeds.append(seed)
            out.append(v)
    return S.PerSeed(out, seeds)


def mean(xs: Sequence[float]) -> float:
    """The mean of ``xs`` (NaN for none)."""
    return sum(xs) / len(xs) if xs else float("nan")


def versus(name_a: str, a: Sequence[float], name_b: str, b: Sequence[float],
           metric: str = "accuracy", **compare_kw) -> str:
    """The computed comparison sentence of ``a`` against ``b`` (fractions shown in pp; pass
    ``scale=1, units="nats"`` for an NLL), or a sentence saying which group has no runs."""
    if not a or not b:
        missing = [n for n, v in ((name_a, a), (name_b, b)) if not v]
        return S.say(f"No {metric} comparison of {name_a} and {name_b}: no stored runs of "
                     f"{' and '.join(missing)}.", bool(missing))
    return S.compare(name_a, a, name_b, b, metric, **compare_kw).sentence


def ratio(name_a: str, a: float, name_b: str, b: float, what: str = "training FLOPs") -> str:
    """'A uses 0.27× the training FLOPs of B (3.7× fewer).', its direction word asserted."""
    r = a / b
    word = "fewer" if r < 1 else "more" if r > 1 else "as many"
    factor = f"{1 / r:.1f}× {word}" if r < 1 else f"{r:.1f}× {word}" if r > 1 else word
    return S.say(f"{name_a} uses {r:.2f}× the {what} of {name_b} ({factor}).",
                 (word == "fewer") == (a < b) and (word == "more") == (a > b))


def claim(key: str, records_by_experiment: dict) -> str:
    """One scorecard claim as a sentence: the paper's claim, the test, the evidence, the verdict."""
    c = CL.claim(key)
    ev = CL.evaluate(c, records_by_experiment)
    return (f"**Paper ({c.where}): {c.statement}.** Tested as: {c.tested_as}. "
            f"Here: {ev.text}. **Verdict: {ev.verdict}.**")


def text(sentences: Sequence[str]) -> str:
    """The sentences as a Markdown bullet list."""
    return "\n".join(f"- {s}" for s in sentences)


def show(sentences: Sequence[str]):
    """The sentences as Markdown output of a notebook cell."""
    from IPython.display import Markdown
    return Markdown(text(sentences))
