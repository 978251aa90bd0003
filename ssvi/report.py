"""Shared helpers of the experiment notebooks: run plans, labels, tables and paper comparisons.

Three jobs, in this order in the file:

1. **Parameters and run plans.** :func:`resolve_density`, :func:`resolve_seeds`,
   :func:`resolve_datasets` turn a notebook's ``parameters`` cell into checked values;
   :func:`plan` lists the runs (``Run``: the storage experiment and a TrainConfig)
   of Tables 1-2 and Figure 1; :func:`execute` runs any list of runs through
   :func:`ssvi.experiments.run` (cached by run id, resumable checkpoints at the paper preset).
2. **Labels.** Every table row and figure series says which data, scale, seeds and device it
   comes from (:func:`dataset_label`, :func:`device_label`, :func:`scale_label`).
3. **Tables.** :func:`results_table` flattens stored results (``load_results``) into a
   DataFrame, :func:`aggregate_seeds` gives mean and std over seeds, :func:`paper_table` the
   paper's own numbers (``ssvi/paper_numbers.json``) and :func:`paper_vs_ours` both side by
   side, the paper's rows marked as quoted and never mixed with our measurements.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import experiments as E
from .config import DATASETS, REMOVALS, TrainConfig
from .experiments import load_results, repo_dir, results_root  # noqa: F401 (notebooks use R.*)

# ---------------------------------------------------------------------------------------------
# 1. parameters and run plans
# ---------------------------------------------------------------------------------------------

#: seeds a preset runs when a notebook's ``seeds`` is None (the paper averages seeds 0, 1, 2)
PRESET_SEEDS = {"tiny": (0,), "cpu": (0,), "paper": (0, 1, 2)}
#: datasets a preset runs when a notebook's ``dataset`` is None (CIFAR-100 only where present)
PRESET_DATASETS = {"tiny": ("cifar10",), "cpu": ("cifar10",), "paper": ("cifar10", "cifar100")}
#: Table 1: SSVI at these sparsities (next to dense VI)
TABLE1_SPARSITIES = (0.9, 0.95)
#: Table 2: the sparsity the paper reports SSVI at, per dataset
TABLE2_SPARSITY = {"cifar10": 0.95, "cifar100": 0.9, "synthetic": 0.95}
#: experiments planned here (= notebook name) -> folder their runs are stored in. Table 2's
#: SSVI / dense-VI runs and Figure 1's points are Table 1's configurations, stored once. (The
#: figure2/figure3/appendix notebooks define their own plans; scripts/run_grid.py reads every
#: notebook's ``PLAN``.)
EXPERIMENTS = {"table1": "table1", "table2": "table1", "figure1": "table1", "summary": "table1"}


def preset_default(preset: str):
    """``by_preset(value, defaults)``: ``value`` if given, else ``defaults[preset]`` (the grid
    a notebook runs at each scale preset when its parameter is None)."""
    def by_preset(value, defaults: dict):
        return defaults[preset] if value is None else value
    return by_preset


def data_root(data_dir=None) -> str:
    """``data_dir``, else $SSVI_DATA, else <repository>/data."""
    return str(data_dir or os.environ.get("SSVI_DATA") or repo_dir() / "data")


def resolve_density(sparsity: float | None = None, density: float | None = None,
                    default: float | None = None) -> float:
    """Density d = 1 - sparsity (the fraction of active weights per sparse tensor), checked.

    Give ``sparsity`` or ``density`` (not both); if neither, ``default`` (a density).
    """
    if sparsity is not None and density is not None:
        raise ValueError(f"give sparsity ({sparsity!r}) or density ({density!r}), not both "
                         "(density = 1 - sparsity)")
    if sparsity is not None:
        try:
            s = float(sparsity)
        except (TypeError, ValueError):
            raise ValueError(f"sparsity={sparsity!r} must be a number in [0, 1), e.g. 0.95 for "
                             "95% of the weights pruned") from None
        if not 0.0 <= s < 1.0 or math.isnan(s):
            hint = " (a percentage? write 0.95, not 95)" if 1.0 <= s <= 100.0 else ""
            raise ValueError(f"sparsity={sparsity!r} must be in [0, 1){hint}; "
                             "density = 1 - sparsity must be in (0, 1]")
        return round(1.0 - s, 12)
    d = default if density is None else density
    if d is None:
        raise ValueError("give a sparsity in [0, 1) or a density in (0, 1]")
    try:
        d = float(d)
    except (TypeError, ValueError):
        raise ValueError(f"density={d!r} must be a number in (0, 1]") from None
    if not 0.0 < d <= 1.0 or math.isnan(d):
        raise ValueError(f"density={d!r} must be in (0, 1] (density = 1 - sparsity; 0.1 means "
                         "90% sparse)")
    return d


def resolve_seeds(seeds=None, preset: str | None = None) -> tuple[int, ...]:
    """Seeds to run: None -> the preset's (1 seed at tiny/cpu, 0, 1, 2 at paper); an int n ->
    seeds 0..n-1; a list -> those seeds."""
    if seeds is None:
        return PRESET_SEEDS[E.resolve_preset(preset)]
    if isinstance(seeds, bool):
        raise ValueError(f"seeds={seeds!r} must be a number of seeds or a list of seeds")
    if isinstance(seeds, int):
        if seeds < 1:
            raise ValueError(f"seeds={seeds} must be >= 1 (a number of seeds) or a list of seeds")
        return tuple(range(seeds))
    try:
        out = tuple(int(s) for s in seeds)
    except (TypeError, ValueError):
        raise ValueError(f"seeds={seeds!r} must be a number of seeds or a list of integer "
                         "seeds") from None
    if not out or len(set(out)) != len(out) or min(out) < 0:
        raise ValueError(f"seeds={seeds!r} must be a non-empty list of distinct seeds >= 0")
    return out


def dataset_available(dataset: str, data_dir=None) -> bool:
    """True when ``dataset``'s files are present (synthetic: always)."""
    from .data import _LAYOUT
    if dataset == "synthetic":
        return True
    folder = Path(data_root(data_dir)) / _LAYOUT[dataset][0]
    return folder.is_dir() and any(folder.iterdir())


def resolve_datasets(dataset=None, preset: str | None = None, data_dir=None,
                     log=print) -> tuple[str, ...]:
    """Datasets to run: None -> the preset's (CIFAR-10; at paper also CIFAR-100 when its files
    exist, else skipped with a message); a name or a list of names -> those, checked."""
    if dataset is None:
        names = PRESET_DATASETS[E.resolve_preset(preset)]
        out = []
        for name in names:
            if name != names[0] and not dataset_available(name, data_dir):
                if log is not None:
                    log(f"skipping {name}: no files under the data directory "
                        f"({data_root(data_dir)}); put the official archive there to run it")
                continue
            out.append(name)
        return tuple(out)
    names = (dataset,) if isinstance(dataset, str) else tuple(dataset)
    bad = [n for n in names if n not in DATASETS]
    if bad or not names:
        raise ValueError(f"dataset={dataset!r} is not allowed; choose one of "
                         f"{', '.join(map(repr, DATASETS))} (or a list of them)")
    return names


@dataclass(frozen=True)
class Run:
    """One training run of a plan: stored in ``results/<experiment>/<run id>.json``."""
    experiment: str
    cfg: TrainConfig

    @property
    def run_id(self) -> str:
        """:func:`ssvi.experiments.run_id` of the configuration (the results file's name)."""
        return E.run_id(self.cfg)

    def describe(self) -> str:
        """'experiment/run-id  (dataset, method, density, seed, non-default settings)'."""
        c = self.cfg
        bits = [c.dataset, c.method, f"density {c.density:g}", f"seed {c.seed}"]
        if c.method == "ssvi":
            bits += [f"removal {c.removal}", f"addition {c.addition}"]
            if c.regrow_sigma != "mean":
                bits.append(f"regrow sigma {c.regrow_sigma_const:g}")
        if c.sigma_init_mean != TrainConfig.sigma_init_mean:
            bits.append(f"sigma0 mean {c.sigma_init_mean:g}")
        if not c.kl_warmup:
            bits.append("no KL warm-up")
        return f"{self.experiment}/{self.run_id}  ({', '.join(bits)})"


def plan(experiment: str, *, preset: str | None = None, dataset=None, seeds=None,
         sparsity: float | None = None, density: float | None = None,
         criterion: str | None = None, epochs: int | None = None, batch_size: int | None = None,
         device: str | None = None, data_dir: str | None = None, log=print,
         **options) -> list[Run]:
    """The runs of ``experiment`` (a key of :data:`EXPERIMENTS`) at the given scale.

    The common arguments are the notebooks' parameters (None = preset default; ``criterion`` is
    the removal criterion). ``sparsity``/``density`` replace the experiment's default SSVI
    level(s). ``options``: ``sparsities`` (table1, figure1, summary: the SSVI levels) and
    ``overrides`` (a dict of further TrainConfig fields, any experiment).
    """
    if experiment not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {experiment!r}; choose one of "
                         f"{', '.join(EXPERIMENTS)}")
    preset = E.resolve_preset(preset)
    seeds = resolve_seeds(seeds, preset)
    datasets = resolve_datasets(dataset, preset, data_dir, log=log)
    if criterion is not None and criterion not in REMOVALS:
        raise ValueError(f"criterion={criterion!r} is not allowed; choose one of "
                         f"{', '.join(map(repr, REMOVALS))}")
    chosen = None
    if sparsity is not None or density is not None:
        chosen = resolve_density(sparsity, density)
    common = dict(epochs=epochs, batch_size=batch_size, device=device, data_dir=data_root(data_dir),
                  removal=criterion, **options.pop("overrides", {}))
    builder = _PLANS[experiment]
    runs = builder(preset=preset, datasets=datasets, seeds=seeds, chosen=chosen,
                   common=common, **options)
    store = EXPERIMENTS[experiment]
    out, seen = [], set()
    for cfg in runs:
        run = Run(store, cfg)
        if (store, run.run_id) not in seen:
            seen.add((store, run.run_id))
            out.append(run)
    return out


def _cfg(preset, common, **kw) -> TrainConfig:
    return E.preset_config(preset, **{**common, **kw})


def _unknown(options: dict, experiment: str) -> None:
    if options:
        raise ValueError(f"{experiment}: unknown option(s) {', '.join(sorted(options))}")


def _plan_table1(*, preset, datasets, seeds, chosen, common, sparsities=None, **options):
    _unknown(options, "table1")
    if chosen is not None:
        densities = (chosen,)
    else:
        densities = tuple(resolve_density(s) for s in (sparsities or TABLE1_SPARSITIES))
    for ds in datasets:
        for seed in seeds:
            yield _cfg(preset, common, dataset=ds, method="dense_vi", density=1.0,
                             seed=seed)
            for d in densities:
                yield _cfg(preset, common, dataset=ds, method="ssvi", density=d, seed=seed)


def _plan_table2(*, preset, datasets, seeds, chosen, common, **options):
    _unknown(options, "table2")
    for ds in datasets:
        d = chosen if chosen is not None else resolve_density(TABLE2_SPARSITY[ds])
        for seed in seeds:
            yield _cfg(preset, common, dataset=ds, method="dense_vi", density=1.0,
                             seed=seed)
            yield _cfg(preset, common, dataset=ds, method="ssvi", density=d, seed=seed)


_PLANS = {"table1": _plan_table1, "table2": _plan_table2, "figure1": _plan_table1,
          "summary": _plan_table1}


def checkpoint_dir(run: Run, runs_dir: str | None = None) -> str:
    """Where :func:`execute` keeps a run's checkpoint: ``<repository>/runs/<experiment>/<run id>``."""
    return os.path.join(runs_dir or str(repo_dir() / "runs"), run.experiment, run.run_id)


def records_of(runs: Sequence[Run], results_dir: str | None = None) -> list[dict]:
    """The stored results files of ``runs`` (read back from disk, with their ``_path``)."""
    out = []
    for run in runs:
        path = E.result_path(run.experiment, run.cfg, results_root(results_dir))
        if not os.path.exists(path):
            raise FileNotFoundError(f"no results file {path}; run the plan first "
                                    "(ssvi.report.execute)")
        with open(path) as f:
            rec = json.load(f)
        rec["_path"] = path
        out.append(rec)
    return out


def is_done(run: Run, results_dir: str | None = None) -> bool:
    """True when the run's results file exists (it will be loaded, not trained)."""
    return os.path.exists(E.result_path(run.experiment, run.cfg, results_root(results_dir)))


def execute(runs: Sequence[Run], *, checkpoints: bool | None = None, results_dir=None,
            progress: bool = False, log=print) -> list[dict]:
    """Run (or load, by run id) every run of a plan; returns their results in plan order.

    ``checkpoints``: keep a resumable checkpoint per run under ``runs/`` (default: only at the
    paper preset, where a run is long enough to be interrupted). ``progress``: per-epoch lines.
    """
    out = []
    for i, run in enumerate(runs, 1):
        cfg = run.cfg
        preset = cfg.extra.get("preset")
        keep = (preset == "paper") if checkpoints is None else checkpoints
        cached = is_done(run, results_dir)
        if keep:
            cfg = dataclasses.replace(cfg, run_dir=checkpoint_dir(run))
        cfg = dataclasses.replace(cfg, progress=progress)
        if log is not None:
            log(f"[{i}/{len(runs)}] {'cached ' if cached else 'training'} {run.describe()}")
        out.append(E.run(run.experiment, cfg, results_dir=results_root(results_dir)))
    return out


# ---------------------------------------------------------------------------------------------
# 2. labels: data, scale, seeds, device
# ---------------------------------------------------------------------------------------------

DATASET_LABELS = {
    "cifar10": "CIFAR-10 (JPEG-75 copy)",
    "cifar100": "CIFAR-100",
    "synthetic": "synthetic 10-class data",
}
PAPER_DATASET_LABELS = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}
METHOD_LABELS = {"ssvi": "SSVI", "dense_vi": "dense VI (BNN)", "rigl": "RigL (deterministic)",
                 "dense": "dense deterministic"}


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
                notes.append(f"{text} {config[field]}")
        if config["regrow_sigma"] != default.regrow_sigma:
            notes.append(f"regrown sigma {config['regrow_sigma_const']:g}")
    if config["method"] in ("ssvi", "dense_vi"):
        if config["sigma_init_mean"] != default.sigma_init_mean:
            notes.append(f"sigma0 mean {config['sigma_init_mean']:g}")
        if not config["kl_warmup"]:
            notes.append("no KL warm-up")
    return name + (f" ({', '.join(notes)})" if notes else "")


def dataset_label(record_or_name) -> str:
    """'CIFAR-10 (JPEG-75 copy)', 'CIFAR-100' or 'synthetic 10-class data'.

    CIFAR-10 in this project is the JPEG quality-75 re-encoded copy (shared/data); a result whose
    ``data`` entry names another ``variant`` is labelled with it.
    """
    if isinstance(record_or_name, str):
        name, variant = record_or_name, None
    else:
        data = record_or_name.get("data") or {}
        name = data.get("name") or record_or_name["config"]["dataset"]
        variant = data.get("variant")
    if variant:
        return f"{PAPER_DATASET_LABELS.get(name, name)} ({variant})"
    return DATASET_LABELS.get(name, name)


def device_label(record) -> str:
    """'CPU' or the GPU's name (e.g. 'NVIDIA H100 80GB HBM3') of a stored result."""
    prov = record.get("provenance") or {}
    dev = str(prov.get("device", "?"))
    if dev.startswith("cuda"):
        return prov.get("device_name") or "GPU"
    return "CPU" if dev == "cpu" else dev


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


# ---------------------------------------------------------------------------------------------
# 3. tables
# ---------------------------------------------------------------------------------------------

METRICS = ("accuracy", "nll", "brier", "ece", "ece_release")
NUMERIC = METRICS + ("accuracy_pct", "active_weights", "measured_sparsity_pct",
                     "training_flops", "dense_training_flops", "flops_relative", "wall_time_s")
#: config fields that do not change what a run computes (left out of the seed-group key)
_NOT_IN_KEY = ("seed", "progress", "run_dir", "results_path", "data_dir")


def config_key(config: dict) -> str:
    """A hash of a run's configuration without its seed: runs that differ only by seed share it."""
    d = {k: v for k, v in config.items() if k not in _NOT_IN_KEY}
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:10]


def flatten(record: dict) -> dict:
    """One flat row of a stored result: its configuration, metrics, counts, FLOPs, provenance."""
    cfg = record["config"]
    m = record.get("metrics") or {}
    params = record.get("parameters") or {}
    flops = record.get("flops") or {}
    prov = record.get("provenance") or {}
    path = record.get("_path")
    row = {
        "experiment": os.path.basename(os.path.dirname(path)) if path else None,
        "run_id": os.path.splitext(os.path.basename(path))[0] if path else E.run_id(
            TrainConfig.from_dict(cfg)),
        "preset": (cfg.get("extra") or {}).get("preset"),
        "dataset": cfg["dataset"],
        "data": dataset_label(record),
        "model": cfg["model"],
        "width": cfg["width"],
        "method": cfg["method"],
        "method_label": method_label(cfg),
        "density": cfg["density"],
        "sparsity_pct": round(100.0 * (1.0 - cfg["density"]), 6),
        "removal": cfg["removal"],
        "addition": cfg["addition"],
        "regrow_sigma": cfg["regrow_sigma"],
        "regrow_sigma_const": cfg["regrow_sigma_const"],
        "sigma_init_mean": cfg["sigma_init_mean"],
        "kl_warmup": cfg["kl_warmup"],
        "seed": cfg["seed"],
        "epochs": cfg["epochs"],
        "batch_size": cfg["batch_size"],
        "n_train": (record.get("data") or {}).get("n_train"),
        "n_test": (record.get("data") or {}).get("n_test"),
        **{k: m.get(k) for k in METRICS},
        "accuracy_pct": None if m.get("accuracy") is None else 100.0 * m["accuracy"],
        "selection": record.get("selection"),
        "failed": bool(record.get("failed")),
        "active_weights": params.get("active_weights"),
        "total_weights": params.get("total_weights"),
        "measured_sparsity_pct": (None if params.get("density") is None
                                  else 100.0 * (1.0 - params["density"])),
        "training_flops": flops.get("training_flops"),
        "dense_training_flops": flops.get("dense_training_flops"),
        "flops_relative": flops.get("relative"),
        "device": device_label(record),
        "wall_time_s": prov.get("wall_time_s"),
        "commit": prov.get("git_commit"),
        "config_key": config_key(cfg),
        "setting": scale_label(record),
    }
    return row


def results_table(records: Iterable[dict], columns: Sequence[str] | None = None):
    """A pandas DataFrame with one :func:`flatten` row per result (``columns``: keep these)."""
    import pandas as pd
    df = pd.DataFrame([flatten(r) for r in records])
    if df.empty:
        df = pd.DataFrame(columns=list(flatten_columns()))
    if columns is not None:
        missing = [c for c in columns if c not in df.columns]
        if missing:
            raise ValueError(f"unknown column(s) {missing}; available: {list(df.columns)}")
        df = df[list(columns)]
    return df


def flatten_columns() -> tuple[str, ...]:
    """The column names :func:`flatten` produces."""
    cfg = TrainConfig()
    rec = {"config": cfg.to_dict(), "metrics": {}, "data": {}, "_path": "x/y.json"}
    return tuple(flatten(rec))


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
    ``seeds`` and ``devices`` are added and ``setting`` is relabelled with the seed count.
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
    "ece": ("ECE (top-label L1)", 4, False),
    "ece_release": ("ECE (release: marginal L2)", 4, False),
    "sparsity_pct": ("Sparsity (%)", 1, False),
    "measured_sparsity_pct": ("Sparsity, all weights (%)", 1, False),
    "active_weights": ("Active weights", 0, False),
    "training_flops": ("Training FLOPs", 2, True),
    "flops_relative": ("FLOPs rel. dense", 3, False),
}

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
        row = {"source": f"paper ({origin})", "dataset": r["dataset"], "method": method,
               "method_label": (r["label"] + (f" ({ref})" if ref else "")
                                + ("" if method else ", not implemented in ssvi")),
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

    Every row has a ``Source`` ('paper (Table N)', quoted, or 'ours') and a 'Data, scale, seeds,
    device' cell; numbers are never combined across sources. Rows are ordered by dataset, then
    method/sparsity, the paper's row first.
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
                same = (orow.get("method") == prow.get("method") and abs(
                    orow.get("sparsity_pct", -1) - prow.get("sparsity_pct", -2)) < 1e-6)
                if not placed[i] and same:
                    rows.append(orow.to_dict())
                    placed[i] = True
        rows += [orow.to_dict() for i, (_, orow) in enumerate(o.iterrows()) if not placed[i]]
    df = pd.DataFrame(rows) if rows else paper.iloc[0:0]
    return format_table(df, cols)


def format_table(df, columns: Sequence[str] | None = None):
    """Strings for display: 'mean ± std' per metric, plus Source / Method / setting columns."""
    import pandas as pd
    cols = list(columns or TABLE_COLUMNS)
    out = pd.DataFrame()
    if "source" in df:
        out["Source"] = df["source"].fillna("ours").values
    out["Data, scale, seeds, device"] = df["setting"].values
    out["Method"] = df["method_label"].values
    for c in cols:
        heading, digits, sci = TABLE_COLUMNS[c]
        vals = []
        for _, r in df.iterrows():
            mean = r.get(c)
            std = r.get(c + "_std")
            if mean is None or (isinstance(mean, float) and math.isnan(mean)):
                vals.append("–")
            elif c == "active_weights":
                vals.append(f"{mean:,.0f}" + ("" if std is None or std != std or std == 0
                                              else f" ± {std:,.0f}"))
            else:
                vals.append(fmt_mean_std(mean, std, digits, sci))
        out[heading] = vals
    return out
