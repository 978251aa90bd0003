"""The experiment pages' plots: per-seed results drawn as means with error bars.

Every figure of the book draws points with error bars (± one standard deviation over seeds, none
for one seed), accuracies in percent, the accuracy axis from zero. The pages pass per-seed rows
(:func:`ssvi.report.results_table`, one row per run) and these functions average them:

* :func:`mean_sd`: mean and sample standard deviation of a column per group;
* :func:`curves`: one series per group of ``by``, ``y`` against ``x`` (e.g. accuracy against
  sparsity, one curve per method);
* :func:`points`: one point per group, both coordinates with error bars and a legend entry
  instead of text labels (labels of nearby points never overlap);
* :func:`categories`: one point per category on a categorical x axis (ablation arms);
* :func:`from_zero`: the y axis from zero (accuracies, ECE).
"""
from __future__ import annotations

from collections.abc import Sequence

MARKERS = ("o", "s", "D", "^", "v", "P", "X", "*", "<", ">")


def mean_sd(df, by: Sequence[str], cols: Sequence[str]):
    """One row per group of ``by``: ``<col>`` (mean), ``<col>_sd`` (ddof 1; 0 for one seed) and
    ``n`` (the number of rows averaged)."""
    import pandas as pd
    by = list(by)
    g = df.groupby(by, sort=True, dropna=False)
    out = g[list(cols)].mean()
    sd = g[list(cols)].std(ddof=1).fillna(0.0)
    sd.columns = [f"{c}_sd" for c in cols]
    return pd.concat([out, sd, g.size().rename("n")], axis=1).reset_index()


def curves(ax, df, x: str, y: str, by: str, *, dashed: Sequence[str] = (),
           colors: dict | None = None, label=str):
    """``y`` against ``x``, mean ± sd over the rows (seeds) of each ``x``, one line per value of
    ``by`` (dashed for the values in ``dashed``); returns the aggregated table."""
    agg = mean_sd(df, [by, x], [y])
    for i, (key, g) in enumerate(agg.groupby(by, sort=True)):
        g = g.sort_values(x)
        ax.errorbar(g[x], g[y], yerr=g[f"{y}_sd"], marker=MARKERS[i % len(MARKERS)], capsize=3,
                    ls="--" if key in dashed else "-", color=(colors or {}).get(key),
                    label=label(key))
    return agg


def points(ax, df, x: str, y: str, by: str, *, label=str, colors: dict | None = None,
           markers: dict | None = None, hollow: bool = False, size: float = 7):
    """One point per value of ``by`` at (mean ``x``, mean ``y``), with ± sd error bars on both,
    a distinct marker and a legend entry each (no text next to the points, so labels of nearby
    points cannot overlap; ``hollow`` markers keep coinciding points visible); ``colors`` and
    ``markers`` map values of ``by`` to fixed ones. Returns the aggregated table."""
    agg = mean_sd(df, [by], [x, y])
    for i, (_, r) in enumerate(agg.iterrows()):
        color = (colors or {}).get(r[by], f"C{i}")
        ax.errorbar(r[x], r[y], xerr=r[f"{x}_sd"] or None, yerr=r[f"{y}_sd"] or None,
                    marker=(markers or {}).get(r[by], MARKERS[i % len(MARKERS)]), ms=size,
                    mfc="none" if hollow else color, mew=1.5, capsize=3, ls="none",
                    color=color, label=label(r[by]))
    return agg


def categories(ax, df, y: str, by: str, order: Sequence | None = None, *, label=str,
               color=None):
    """Mean ± sd of ``y`` per value of ``by``, as points on a categorical x axis (in ``order``,
    default sorted); returns the aggregated table in that order."""
    agg = mean_sd(df, [by], [y]).set_index(by)
    agg = agg.loc[list(order) if order is not None else sorted(agg.index)].reset_index()
    ax.errorbar(range(len(agg)), agg[y], yerr=agg[f"{y}_sd"], marker="o", ms=7, capsize=4,
                ls="none", color=color)
    ax.set_xticks(range(len(agg)))
    ax.set_xticklabels([label(k) for k in agg[by]], rotation=15, ha="right")
    ax.set_xlim(-0.5, len(agg) - 0.5)
    return agg


def from_zero(ax, top: float | None = None):
    """Start the y axis at 0 (``top``: its upper end, e.g. 100 for percentages; default 8% above
    the largest value drawn)."""
    hi = ax.dataLim.y1
    ax.set_ylim(0, top if top is not None else (1.08 * hi if hi > 0 else 1.0))
    return ax
