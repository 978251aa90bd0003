"""Labels and tables of stored results: what every table row and figure says about its run.

1. **Labels.** Every row and series names its data (from the record's data fingerprint), scale,
   seeds and device (:func:`dataset_label`, :func:`device_label`, :func:`scale_label`,
   :func:`method_label`); :func:`caption` states the setting a table's rows share, once.
2. **Tables.** :func:`flatten` turns a stored record (:mod:`ssvi.results`) into one flat row
   (every column is read from the record field named in :data:`SOURCES`), :func:`results_table`
   makes a DataFrame of them, :func:`aggregate_seeds` gives mean and standard deviation over
   seeds, :func:`paper_rows` the paper's own numbers (``ssvi/paper_numbers.json``) and
   :func:`paper_vs_ours` both side by side, the paper's rows marked as quoted and never mixed
   with our measurements. Numbers lead; data, commit and staleness follow in each row;
   :func:`styled` displays a table with its caption. :func:`ablation_arm` and
   :func:`shift_table` label Figure 3's arms and tabulate the shift appendix's evaluation.

Which runs exist and how they are made is :mod:`ssvi.registry` and :mod:`ssvi.runner`.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterable, Sequence

from . import experiments as E
from .config import METHODS, TrainConfig

# ---------------------------------------------------------------------------------------------
# 1. labels: data, method, scale, seeds, device
# ---------------------------------------------------------------------------------------------

PAPER_DATASET_LABELS = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}
DATASET_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100",
                 "synthetic": "synthetic 10-class data"}
#: how the data fingerprint's variant reads in a label (ssvi.cifar.identify_variant)
VARIANT_LABELS = {"jpeg75": "JPEG-75 copy", "generated": None}
METHOD_LABELS = {"ssvi": "SSVI", "dense_vi": "dense VI (BNN)", "rigl": "RigL (deterministic)",
                 "dense": "dense deterministic", "vd": "VD (sparse variational dropout)",
                 "sbp": "SBP (structured Bayesian pruning)",
                 "aeb": "AEB (adaptive empirical Bayes)", "mbnn": "mBNN (masked BNN)"}
#: the paper's Table 2 labels of the baselines -> our method names (ssvi.baselines)
PAPER_METHODS = {"VD": "vd", "SBP": "sbp", "AEB": "aeb", "mBNN": "mbnn"}


def method_label(config: dict) -> str:
    """'SSVI', 'dense VI (BNN)', ... plus every Bayesian/subspace setting that is not the
    recipe's default, e.g. 'SSVI (removal snr, no KL warm-up)'."""
    name = METHOD_LABELS.get(config["method"], config["method"])
    default = TrainConfig()
    notes = []
    if config["method"] == "ssvi":
        for field, text in (("removal", "removal"), ("addition", "addition"),
                            ("allocation", "allocation")):
            if config[field] != getattr(default, field):
                notes.append(f"{text} {config[field]}"
                             + (f" K={config['addition_k']}" if config[field] == "mck" else ""))
        if config["regrow_sigma"] != default.regrow_sigma:
            notes.append(f"regrown sigma {config['regrow_sigma']}"
                         + (f" {config['regrow_sigma_const']:g}"
                            if config["regrow_sigma"] == "const" else ""))
    if config["method"] in ("ssvi", "dense_vi"):
        if config["sigma_init_mean"] != default.sigma_init_mean:
            notes.append(f"sigma0 mean {config['sigma_init_mean']:g}")
        if not config["kl_warmup"]:
            notes.append("no KL warm-up")
    return name + (f" ({', '.join(notes)})" if notes else "")


def dataset_label(record_or_name) -> str:
    """'CIFAR-10 (JPEG-75 copy)', 'CIFAR-10 (unrecognised copy, sha256 1a2b3c4d)', 'CIFAR-100
    (...)' or 'synthetic 10-class data', from a record's data fingerprint (the arrays the run
    really used); a bare dataset name gives just the dataset."""
    if isinstance(record_or_name, str):
        return DATASET_NAMES.get(record_or_name, record_or_name)
    fp = record_or_name.get("data_fingerprint") or {}
    name = fp.get("dataset") or record_or_name["config"]["dataset"]
    base = DATASET_NAMES.get(name, name)
    variant = fp.get("variant")
    if variant is None:
        return f"{base} (copy not recorded)"
    text = VARIANT_LABELS.get(variant, f"{variant} copy")
    if text is None:
        return base
    if variant not in VARIANT_LABELS and fp.get("sha256"):
        text += f", sha256 {fp['sha256'][:8]}"
    return f"{base} ({text})"


def device_label(record) -> str:
    """'CPU' or the GPU's name (e.g. 'NVIDIA H100 80GB HBM3') of a stored result."""
    prov = record.get("provenance") or {}
    dev = str(prov.get("device", "?"))
    if dev.startswith("cuda"):
        return prov.get("device_name") or "GPU"
    return "CPU" if dev == "cpu" else dev


def commit_label(record) -> str:
    """The short commit a result was computed at, '+dirty' when the tree had changes, 'stale'
    when today's code would compute it differently (:func:`ssvi.results.is_stale`)."""
    prov = record.get("provenance") or {}
    sha = prov.get("commit") or "unknown"
    text = sha[:8] + ("+dirty" if prov.get("dirty") else "")
    return text + (", stale" if _stale(record) else "")


def _stale(record) -> bool:
    if "_stale" in record:
        return bool(record["_stale"])
    from .results import is_stale
    return is_stale(record)


def _count(n: int) -> str:
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else f"{n:,}"


def scale_label(record, n_seeds: int | None = None, devices: Iterable[str] | None = None) -> str:
    """One line naming data, scale, seeds and device of a result (or of a group of seeds), e.g.
    'CIFAR-10 (JPEG-75 copy), small_cnn ×0.5, 8 epochs, 10k train / 2k test images, 1 seed,
    CPU, preset cpu'. ``devices`` defaults to the record's own device.
    """
    cfg = record["config"]
    data = record.get("data") or {}
    return _setting(dataset_label(record), cfg["model"], cfg["width"], cfg["epochs"],
                    data.get("n_train"), data.get("n_test"), 1 if n_seeds is None else n_seeds,
                    [device_label(record)] if devices is None else devices,
                    (cfg.get("extra") or {}).get("preset"))


def _setting(data, model, width, epochs, n_train, n_test, n_seeds, devices, preset) -> str:
    images = (f"{_count(n_train)} train / {_count(n_test)} test images"
              if n_train is not None and n_test is not None else "")
    parts = [data, model + (f" ×{width:g}" if width != 1 else ""),
             f"{epochs} epoch{'s' if epochs != 1 else ''}", images,
             f"{n_seeds} seed{'s' if n_seeds != 1 else ''}", " + ".join(sorted(set(devices))),
             f"preset {preset}" if isinstance(preset, str) else ""]
    return ", ".join(p for p in parts if p)


def caption(records: Sequence[dict], prefix: str = "") -> str:
    """The setting shared by ``records`` in one line (data, scale, seeds, devices), to state
    once under a table or figure; several settings are joined with '; '."""
    groups: dict[str, list] = {}
    for r in records:
        key = scale_label(r, n_seeds=0, devices=())
        groups.setdefault(key, []).append(r)
    parts = []
    for rs in groups.values():
        ok = [r for r in rs if not r.get("failed")] or rs
        parts.append(scale_label(ok[0], n_seeds=len({r["config"]["seed"] for r in rs}),
                                 devices={device_label(r) for r in rs}))
    return prefix + "; ".join(parts)


# ---------------------------------------------------------------------------------------------
# 2. tables
# ---------------------------------------------------------------------------------------------

#: (section, key) of a results record -> the flat column :func:`flatten` puts it in
SOURCES = {
    ("metrics", "accuracy"): "accuracy",
    ("metrics", "nll"): "nll",
    ("metrics", "brier"): "brier",
    ("metrics", "ece"): "ece",
    ("metrics", "ece_release"): "ece_release",
    ("metrics", "n"): "n_eval",
    ("metrics", "samples"): "eval_draws",
    ("parameters", "active_weights"): "active_weights",
    ("parameters", "total_weights"): "total_weights",
    ("parameters", "density"): "measured_density",
    ("flops", "training_flops"): "training_flops",
    ("flops", "dense_training_flops"): "dense_training_flops",
    ("flops", "relative"): "flops_relative",
    ("data", "n_train"): "n_train",
    ("data", "n_test"): "n_test",
    ("data_fingerprint", "dataset"): "dataset",
    ("data_fingerprint", "variant"): "data_variant",
    ("data_fingerprint", "sha256"): "data_sha256",
    ("provenance", "commit"): "commit",
    ("provenance", "dirty"): "dirty",
    ("provenance", "device"): "device_type",
    ("provenance", "device_name"): "device_name",
    ("provenance", "torch"): "torch",
    ("provenance", "wall_time_s"): "wall_time_s",
    ("provenance", "cpu_time_s"): "cpu_time_s",
    ("provenance", "seed"): "provenance_seed",
}
#: record fields a table does not show, and why (every other leaf of these sections is a column)
NOT_SHOWN = {
    ("parameters", "variational_params"): "counts behind active_weights",
    ("parameters", "deterministic_weights"): "counts behind active_weights",
    ("parameters", "other_params"): "BatchNorm and biases, not sparsified",
    ("flops", "*"): "the terms of the FLOPs count (ssvi.flops); the totals are columns",
    ("data", "name"): "the data fingerprint's dataset is the column",
    ("data", "n_val"): "no validation split in the presets",
    ("provenance", "torch_threads"): "machine detail",
    ("provenance", "cpu_count"): "machine detail",
    ("provenance", "cpu"): "machine detail (device_name on a CPU)",
    ("provenance", "cuda_version"): "machine detail",
    ("provenance", "python_version"): "machine detail",
    ("provenance", "platform"): "machine detail",
    ("provenance", "timestamp_utc"): "when, not what",
    ("provenance", "*"): "further machine details",
}

METRICS = ("accuracy", "nll", "brier", "ece", "ece_release")
NUMERIC = METRICS + ("accuracy_pct", "active_weights", "measured_sparsity_pct",
                     "training_flops", "dense_training_flops", "flops_relative", "wall_time_s",
                     "cpu_minutes")
#: config fields that do not change what a run computes (left out of the seed-group key)
_NOT_IN_KEY = ("seed", "progress", "run_dir", "results_path", "data_dir", "device", "fast",
               "download")


def config_key(config: dict) -> str:
    """A hash of a run's configuration without its seed: runs that differ only by seed share it."""
    d = {k: v for k, v in config.items() if k not in _NOT_IN_KEY}
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:10]


def flatten(record: dict) -> dict:
    """One flat row of a stored result: configuration, every field of :data:`SOURCES`, labels."""
    cfg = record["config"]
    path = record.get("_path")
    row = {
        "experiment": os.path.basename(os.path.dirname(path)) if path else None,
        "run_id": record.get("run_id") or (os.path.splitext(os.path.basename(path))[0]
                                           if path else None),
        "preset": (cfg.get("extra") or {}).get("preset"),
        "dataset": cfg["dataset"],
    }
    for (section, key), column in SOURCES.items():
        row[column] = (record.get(section) or {}).get(key, row.get(column))
    row.update({
        "data": dataset_label(record),
        "model": cfg["model"], "width": cfg["width"],
        "method": cfg["method"], "method_label": method_label(cfg),
        "density": cfg["density"],
        # the target sparsity; a baseline without a target (VD, SBP, mBNN) has its measured one
        "sparsity_pct": (round(100.0 * (1.0 - row["measured_density"]), 6)
                         if _reached(cfg) and row.get("measured_density") is not None
                         else round(100.0 * (1.0 - cfg["density"]), 6)),
        **{k: cfg[k] for k in ("removal", "addition", "addition_k", "regrow_sigma",
                               "regrow_sigma_const", "sigma_init_mean", "kl_warmup", "seed",
                               "epochs", "batch_size")},
        "accuracy_pct": None if row.get("accuracy") is None else 100.0 * row["accuracy"],
        # process CPU time of the run, all threads (records made before it was stored: None)
        "cpu_minutes": None if row.get("cpu_time_s") is None else row["cpu_time_s"] / 60.0,
        "measured_sparsity_pct": (None if row.get("measured_density") is None
                                  else 100.0 * (1.0 - row["measured_density"])),
        "selection": record.get("selection"),
        "failed": bool(record.get("failed")),
        "stale": _stale(record),
        "device": device_label(record),
        "commit_label": commit_label(record),
        "config_key": config_key(cfg),
        "setting": scale_label(record),
    })
    return row


def _reached(cfg: dict) -> bool:
    """True for a Table 2 baseline whose sparsity is what its posterior reached (no target)."""
    from .config import BASELINES
    from .registry import TARGET_DENSITY_BASELINES
    return cfg["method"] in BASELINES and cfg["method"] not in TARGET_DENSITY_BASELINES


def results_table(records: Iterable[dict], columns: Sequence[str] | None = None):
    """A pandas DataFrame with one :func:`flatten` row per result (``columns``: keep these)."""
    import pandas as pd
    df = pd.DataFrame([flatten(r) for r in records])
    if columns is not None:
        missing = [c for c in columns if c not in df.columns]
        if missing and not df.empty:
            raise ValueError(f"unknown column(s) {missing}; available: {list(df.columns)}")
        df = df.reindex(columns=list(columns))
    return df


def filter_records(records: Iterable[dict], **where) -> list[dict]:
    """Results whose config matches every ``field=value`` (a tuple/list/set value: any of them)."""
    out = []
    for r in records:
        cfg = r["config"]
        ok = True
        for k, v in where.items():
            if k not in cfg:
                raise ValueError(f"unknown config field {k!r}")
            if isinstance(v, (tuple, list, set, frozenset)):
                ok &= cfg[k] in v
            else:
                ok &= cfg[k] == v
        if ok:
            out.append(r)
    return out


def aggregate_seeds(df, by: Sequence[str] = ("config_key",), metrics: Sequence[str] = NUMERIC):
    """Mean and standard deviation (ddof 1; NaN for one seed) over the seeds of each group.

    Groups by ``by`` (default: the whole configuration except the seed). Columns constant
    within a group are kept; each metric m becomes ``m`` (mean) and ``m_std``; ``n_seeds``,
    ``seeds``, ``devices`` and ``commit_label`` (the distinct commits) are added, ``stale`` is
    True when any seed is stale, and ``setting`` is relabelled with the seed count.
    """
    import pandas as pd
    if df.empty:
        return df.assign(n_seeds=pd.Series(dtype=int))
    rows = []
    for _, g in df.groupby(list(by), sort=False, dropna=False):
        first = g.iloc[0]
        row = {c: first[c] for c in g.columns
               if c not in metrics and g[c].astype(str).nunique() == 1}
        for m in metrics:
            if m in g.columns:
                vals = pd.to_numeric(g[m], errors="coerce")
                row[m] = vals.mean()
                row[m + "_std"] = vals.std(ddof=1) if len(vals) > 1 else float("nan")
        row["n_seeds"] = len(g)
        row["seeds"] = ",".join(str(s) for s in sorted(g["seed"]))
        devices = sorted(set(g["device"]))
        row["devices"] = " + ".join(devices)
        row["commit_label"] = " / ".join(dict.fromkeys(g["commit_label"]))
        row["stale"] = bool(g["stale"].any())
        row["failed"] = int(g["failed"].sum())
        row["setting"] = _setting(first["data"], first["model"], first["width"],
                                  first["epochs"], _int(first["n_train"]), _int(first["n_test"]),
                                  len(g), devices, first["preset"])
        rows.append(row)
    return pd.DataFrame(rows)


def _int(x):
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else int(x)


def fmt_mean_std(mean, std=None, digits: int = 3, sci: bool = False) -> str:
    """'93.74 ± 0.12', or the mean alone when there is no spread (one seed)."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    f = (lambda x: f"{x:.{digits}e}") if sci else (lambda x: f"{x:.{digits}f}")
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return f(mean)
    return f"{f(mean)} ± {f(std)}"


# display columns: (our column, heading, digits, scientific)
TABLE_COLUMNS = {
    "accuracy_pct": ("Accuracy (%)", 2, False),
    "nll": ("NLL", 3, False),
    "ece": ("ECE, top-label L1 (%)", 2, False),
    "ece_release": ("ECE, release: marginal L2 (%)", 2, False),
    "sparsity_pct": ("Sparsity (%)", 1, False),
    "measured_sparsity_pct": ("Sparsity, all weights (%)", 1, False),
    "active_weights": ("Active weights", 0, False),
    "training_flops": ("Training FLOPs", 2, True),
    "flops_relative": ("FLOPs rel. dense", 3, False),
}

#: columns stored as fractions that tables show in percent (mean and standard deviation x 100)
PERCENT_COLUMNS = ("ece", "ece_release")

# where each paper column goes in our table (paper ECE is the release's definition)
_PAPER_TO_OURS = {
    "accuracy_pct": ("accuracy_pct", 1.0),
    "loss": ("nll", 1.0),
    "ece": ("ece_release", 1.0),
    "sparsity_pct": ("sparsity_pct", 1.0),
    "complexity_m": ("active_weights", 1e6),
    "training_flops_1e15": ("training_flops", 1e15),
    "training_flops": ("training_flops", 1.0),
    "training_flops_relative": ("flops_relative", 1.0),
}

PAPER_SETTING = ("{data}, ResNet-18, 200 epochs, full data, 3 seeds, GPU "
                 "(quoted from the paper, {origin})")


def paper_table(table: str, dataset: str | None = None):
    """The paper's ``table`` ('table1' or 'table2') as printed, one row per printed row."""
    import pandas as pd
    numbers = E.paper_numbers()
    if table not in ("table1", "table2"):
        raise ValueError(f"table={table!r}: the paper's numbers exist for 'table1' and 'table2' "
                         "(Figure 1 plots Table 2)")
    rows = [r for r in numbers[table]["rows"] if dataset is None or r["dataset"] == dataset]
    return pd.DataFrame(rows)


def paper_rows(table: str, dataset: str | None = None):
    """The paper's rows in our column names and units (absolute counts and FLOPs), each with
    ``source`` = 'paper (Table N)' and a ``setting`` that says it is quoted."""
    import pandas as pd
    origin = E.paper_numbers()[table]["origin"]
    out = []
    for r in paper_table(table, dataset).to_dict("records"):
        ref = r.get("reference")
        ref = ref if isinstance(ref, str) else None
        method = r["method"] if isinstance(r["method"], str) else None
        method = method or PAPER_METHODS.get(r["label"])
        implemented = method is not None and method in METHODS
        row = {"source": f"paper ({origin})", "dataset": r["dataset"], "method": method,
               "method_label": (r["label"] + (f" ({ref})" if ref else "")
                                + ("" if implemented else ", not implemented in ssvi")),
               "setting": PAPER_SETTING.format(data=PAPER_DATASET_LABELS[r["dataset"]],
                                               origin=origin)}
        for src, (dst, scale) in _PAPER_TO_OURS.items():
            if src in r and r[src] is not None and not (isinstance(r[src], float)
                                                         and math.isnan(r[src])):
                row[dst] = r[src] * scale
        out.append(row)
    return pd.DataFrame(out)


def paper_vs_ours(table: str, ours, columns: Sequence[str] | None = None,
                  datasets: Sequence[str] | None = None):
    """The paper's ``table`` next to our aggregated rows (:func:`aggregate_seeds`), formatted.

    Rows are ordered by dataset, then method/sparsity, the paper's row first; each says its
    ``Source`` ('paper (Table N)', quoted, or 'ours'). Numbers are never combined across
    sources. The setting of our rows goes in a caption (:func:`caption`), the paper's is stated
    by :data:`PAPER_SETTING`.
    """
    import pandas as pd
    cols = list(columns or TABLE_COLUMNS)
    paper = paper_rows(table)
    ours = ours.copy()
    ours["source"] = "ours"
    if datasets is None:
        datasets = list(dict.fromkeys([*ours.get("dataset", pd.Series(dtype=str)),
                                       *paper["dataset"]]))
    rows = []
    for ds in datasets:
        p = paper[paper["dataset"] == ds]
        o = ours[ours["dataset"] == ds] if "dataset" in ours else ours.iloc[0:0]
        if "sparsity_pct" in o:
            o = o.sort_values(["sparsity_pct"], kind="stable")
        placed = [False] * len(o)
        for _, prow in p.iterrows():
            rows.append(prow.to_dict())
            # ours right after the paper's row of the same method and sparsity
            for i, (_, orow) in enumerate(o.iterrows()):
                # a baseline's row sits under the paper's row of the same method, SSVI's and
                # dense VI's under the row of the same method and sparsity
                same = orow.get("method") == prow.get("method") and (
                    orow.get("method") in PAPER_METHODS.values() or abs(
                        orow.get("sparsity_pct", -1) - prow.get("sparsity_pct", -2)) < 1e-6)
                if not placed[i] and same:
                    rows.append(orow.to_dict())
                    placed[i] = True
        rows += [orow.to_dict() for i, (_, orow) in enumerate(o.iterrows()) if not placed[i]]
    df = pd.DataFrame(rows) if rows else paper.iloc[0:0]
    return format_table(df, cols)


def _method_cells(df) -> list[str]:
    """The Method column, readable without scrolling: the method label, marked "(paper)" on a
    quoted row when the table mixes sources, and led by the dataset when it mixes datasets."""
    labels = [str(v) for v in df["method_label"].values]
    if "sparsity_pct" in df and df["method"].isin(["ssvi", "rigl"]).any():
        # rows of sparse methods at several sparsities: say which, next to the name
        labels = [f"{lab} {sp:g}%" if m in ("ssvi", "rigl") and isinstance(sp, (int, float))
                  and sp == sp and sp > 0 and "%" not in lab else lab
                  for lab, m, sp in zip(labels, df["method"], df["sparsity_pct"])]
    if "source" in df and df["source"].nunique(dropna=False) > 1:
        labels = [f"{lab} (paper)" if str(src).startswith("paper") else lab
                  for lab, src in zip(labels, df["source"].fillna("ours"))]
    if "dataset" in df and df["dataset"].nunique() > 1:
        names = [PAPER_DATASET_LABELS.get(d, d) for d in df["dataset"].fillna("")]
        labels = [f"{n}: {lab}" if n else lab for n, lab in zip(names, labels)]
    return labels


def format_table(df, columns: Sequence[str] | None = None):
    """Strings for display, numbers first: Method, then 'mean ± std' per metric of ``columns``,
    then Source (when the rows have one), Data, Commit (with 'stale' when today's code would
    compute the result differently) and Seeds."""
    import pandas as pd
    cols = list(columns or TABLE_COLUMNS)
    out = pd.DataFrame()
    out["Method"] = _method_cells(df)
    for c in cols:
        heading, digits, sci = TABLE_COLUMNS[c]
        vals = []
        factor = 100.0 if c in PERCENT_COLUMNS else 1.0
        for _, r in df.iterrows():
            mean, std = r.get(c), r.get(c + "_std")
            mean = mean * factor if isinstance(mean, (int, float)) else mean
            std = std * factor if isinstance(std, (int, float)) else std
            if mean is None or (isinstance(mean, float) and math.isnan(mean)):
                vals.append("–")
            elif c == "active_weights":
                vals.append(f"{mean:,.0f}" + ("" if std is None or std != std or std == 0
                                              else f" ± {std:,.0f}"))
            else:
                vals.append(fmt_mean_std(mean, std, digits, sci))
        out[heading] = vals

    def cell(name, default="–"):
        if name not in df:
            return [default] * len(df)
        return [default if v is None or (isinstance(v, float) and math.isnan(v)) else v
                for v in df[name].values]

    if "source" in df:
        out["Source"] = cell("source", "ours")
    out["Data"] = [d if isinstance(d, str) else PAPER_DATASET_LABELS.get(ds, ds)
                   for d, ds in zip(cell("data", None), cell("dataset", ""))]
    out["Commit"] = cell("commit_label")
    if "n_seeds" in df:
        out["Seeds"] = [str(int(n)) if isinstance(n, (int, float)) and n == n else "–"
                        for n in cell("n_seeds")]
    return out


# ---------------------------------------------------------------------------------------------
# 3. tables of the appendices and ablations
# ---------------------------------------------------------------------------------------------

def ablation_arm(config: dict) -> tuple[str, str]:
    """(addition label, re-grown sigma label) of a Figure 3 run, e.g. ('2-step MC (mck)',
    'mean of active σ')."""
    add = {"mc1": "1-step MC (mc1)", "mean": "θ = μ (mean)"}.get(
        config["addition"], f"{config['addition_k']}-step MC (mck)")
    sig = ("mean of active σ" if config["regrow_sigma"] == "mean"
           else f"const {config['regrow_sigma_const']:g}" if config["regrow_sigma"] == "const"
           else "release: softplus(mean ρ)" if config["regrow_sigma"] == "mean_rho"
           else config["regrow_sigma"])
    return add, sig


def shift_table(records: Iterable[dict]):
    """One row per (run, corruption, severity) of the ``shift`` evaluation stored in each record
    (``record["evaluations"]["shift"]``): method label, seed, and the metrics, accuracy in %."""
    import pandas as pd
    rows = []
    for r in records:
        ev = (r.get("evaluations") or {}).get("shift")
        if ev is None:
            raise ValueError(f"{r.get('_path', 'a record')} holds no shift evaluation; its run "
                             "was not made by the appendix_shift artefact")
        for row in ev["rows"]:
            rows.append(dict(row, accuracy_pct=100.0 * row["accuracy"],
                             method=method_label(r["config"]), seed=r["config"]["seed"]))
    return pd.DataFrame(rows)


def styled(df, caption: str | None = None, precision: int | None = None, index: bool = False):
    """``df`` for display: no index column (unless ``index``), numbers at ``precision`` digits,
    and ``caption`` (e.g. :func:`caption`'s shared setting) left-aligned under the table."""
    style = df.style
    if precision is not None:
        style = style.format(precision=precision)
    if not index:
        style = style.hide(axis="index")
    if caption:
        style = style.set_caption(caption).set_table_styles(
            [{"selector": "caption",
              "props": "caption-side: bottom; text-align: left; font-size: 0.9em;"}])
    return style
