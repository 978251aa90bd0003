"""The paper's artefacts as data: their parameters, the runs each needs at every preset, where
those runs are stored and what they evaluate beyond the test metrics.

One call gives a notebook its results (training what is missing, loading the rest)::

    recs = registry.records("table1", sparsity=0.95)       # Records: list of results records
    recs.params["sparsities"], recs.preset, recs.runs        # what was resolved and run

and ``scripts/run_grid.py`` (``make grid PRESET=...``) runs :func:`grid`, every run of every
artefact at a preset, each stored once.

* :data:`ARTEFACTS` declares each artefact once: its parameters (name, notebook default, check),
  its storage folder (Table 2 and Figure 1 reuse Table 1's runs and add Table 2's sparse-BNN
  baselines, :data:`TABLE2_BASELINES`, so all three share ``table1``), the evaluation it adds
  (``shift``, ``removal_iou``, ``regrow_sigma_ratio``: :mod:`ssvi.evaluations`) and whether a
  diverged run is stored as a failed result (Figure 2 right looks for divergence).
* :data:`PRESET_DEFAULTS` says what a parameter left at None means at each preset (seeds,
  datasets, sparsity grids, ...). A preset is one entry; ``"base"`` names the preset it starts
  from, so a new preset (with its scale in :data:`ssvi.experiments.PRESETS`) is a data change.
"""
from __future__ import annotations

import difflib
import math
import types
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from . import evaluations as EV
from . import experiments as E
from .config import ADDITIONS, DATASETS, METHODS, REGROW_SIGMA, REMOVALS, TrainConfig
from .corruptions import CIFAR10C_NAMES, CORRUPTIONS
from .errors import ConfigError

# ---------------------------------------------------------------------------------------------
# what a parameter left at None means at each preset
# ---------------------------------------------------------------------------------------------

#: the eight corruptions of the cpu preset's shift appendix
SHIFT_CPU = ("gaussian_noise", "shot_noise", "impulse_noise", "gaussian_blur", "contrast",
             "brightness", "jpeg_compression", "pixelate")
#: the four corruptions of the laptop preset's shift appendix: one of each family (noise, blur,
#: weather-like contrast, digital)
SHIFT_LAPTOP = ("gaussian_noise", "gaussian_blur", "contrast", "jpeg_compression")
#: the laptop preset's smaller setting for the ablations: a 10,000-image training subset, the
#: preset's epochs (the test set stays the full 10,000 images with 5 draws)
LAPTOP_ABLATION = {"train_subset": 10000, "epochs": E.LAPTOP_EPOCHS}
#: Table 2: the sparsity the paper reports SSVI at, per dataset
TABLE2_SPARSITY = {"cifar10": 0.95, "cifar100": 0.9, "synthetic": 0.95}
#: Table 2's sparse-BNN baselines (ssvi.baselines, issue 11), those TrainConfig knows: a method
#: that is not (yet) a CHOICES["method"] is left out of the plans instead of failing them
TABLE2_BASELINES = tuple(m for m in ("vd", "sbp", "aeb", "mbnn") if m in METHODS)
#: the baselines that prune to a target density (Table 2's sparsity); the others reach the
#: sparsity their posterior gives and store density 1 (no target)
TARGET_DENSITY_BASELINES = ("aeb",)

PRESET_DEFAULTS: dict[str, dict] = {
    "tiny": {
        "base": None,
        # threads: torch threads while training (1: tiny runs are faster on one busy core)
        "*": {"seeds": (0,), "dataset": ("cifar10",), "threads": 1},
        "table1": {"sparsities": (0.9, 0.95)},
        "figure2_sparsity": {"sparsities": (0.5, 0.9), "criteria": ("snr_abs",)},
        "figure2_robustness": {"sigma_means": (0.001, 0.01), "criteria": ("snr_abs",)},
        "figure3_ablations": {"mc_steps": (2,), "sigma_consts": (1e-6,)},
        "appendix_shift": {"corruptions": ("gaussian_noise", "contrast", "pixelate"),
                           "severities": (1, 5)},
        "appendix_iou": {"criteria": tuple(REMOVALS)},
    },
    "cpu": {
        "base": "tiny",
        "*": {"threads": None},
        "figure2_sparsity": {"sparsities": (0.5, 0.9, 0.99)},
        "figure2_robustness": {"criteria": ("snr_abs", "abs_mu")},
        "figure3_ablations": {"mc_steps": (3,), "sigma_consts": (1e-6, 1e-4, 1e-2)},
        "appendix_shift": {"corruptions": SHIFT_CPU, "severities": (1, 2, 3, 4, 5)},
    },
    # laptop (issue 10): Table 1, Table 2 and Figure 2 (left) at the preset's full scale with
    # three seeds; the ablations (Figure 2 right, Figure 3, the appendices) at a smaller setting,
    # LAPTOP_ABLATION, stated on their pages
    "laptop": {
        "base": "cpu",
        # baseline_hp: hyper-parameters of Table 2's baselines at this preset. AEB's sparse-phase
        # step (the release's, scaled) is tuned for 1,000 sparse epochs; in two it cannot re-fit
        # the pruned network (chance accuracy at the cpu preset), so the laptop uses 0.01
        "*": {"seeds": (0, 1, 2), "baseline_hp": {"aeb_lr_sparse": 0.01}},
        "figure2_sparsity": {"sparsities": (0.5, 0.9, 0.95)},
        "figure2_robustness": {**LAPTOP_ABLATION, "criteria": ("snr_abs", "abs_mu")},
        "figure3_ablations": {**LAPTOP_ABLATION, "mc_steps": (3,),
                              "sigma_consts": (1e-6, 1e-4, 1e-2)},
        "appendix_shift": {**LAPTOP_ABLATION, "corruptions": SHIFT_LAPTOP,
                           "severities": (1, 3, 5)},
        "appendix_iou": {**LAPTOP_ABLATION},
    },
    "paper": {
        "base": "cpu",
        "*": {"seeds": (0, 1, 2)},
        # CIFAR-100 joins the tables when its files are present (skipped with a message if not)
        "table1": {"optional_datasets": ("cifar100",)},
        "table2": {"optional_datasets": ("cifar100",)},
        "figure2_sparsity": {"sparsities": (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99),
                             "criteria": tuple(REMOVALS)},
        "figure2_robustness": {"sigma_means": (0.001, 0.002, 0.004, 0.006, 0.008, 0.01),
                               "criteria": tuple(REMOVALS)},
        "figure3_ablations": {"mc_steps": (2, 4, 8),
                              "sigma_consts": (1e-6, 1e-5, 1e-4, 1e-3, 1e-2)},
        "appendix_shift": {"corruptions": None},   # None: every implemented corruption
    },
}


def preset_defaults(preset: str, artefact: str) -> dict:
    """What None means for ``artefact``'s parameters at ``preset`` (following ``base``)."""
    if preset not in PRESET_DEFAULTS:
        raise ConfigError(f"preset {preset!r} has no entry in ssvi.registry.PRESET_DEFAULTS; "
                          f"known: {', '.join(PRESET_DEFAULTS)}")
    chain, name = [], preset
    while name is not None:
        chain.append(PRESET_DEFAULTS[name])
        name = PRESET_DEFAULTS[name].get("base")
    out: dict = {}
    key = ARTEFACTS[artefact].defaults_from if artefact in ARTEFACTS else artefact
    for entry in reversed(chain):
        out.update(entry.get("*", {}))
        out.update(entry.get(key, {}))
    return out


# ---------------------------------------------------------------------------------------------
# parameters: checks that turn a notebook's value into a checked one (one-line errors)
# ---------------------------------------------------------------------------------------------

def _bad(name, value, what) -> ConfigError:
    return ConfigError(f"{name}={value!r} {what}")


def _as_list(name, value) -> list:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        return [value]
    out = list(value)
    if not out:
        raise _bad(name, value, "is empty; give at least one value")
    return out


def choice(allowed: Sequence) -> Callable:
    """Check: one of ``allowed``."""
    def check(name, value):
        if value not in allowed:
            raise _bad(name, value,
                       f"is not allowed; choose one of {', '.join(map(repr, allowed))}")
        return value
    return check


def choices(allowed: Sequence) -> Callable:
    """Check: one or more of ``allowed`` (a tuple, duplicates dropped)."""
    def check(name, value):
        vals = _as_list(name, value)
        bad = [v for v in vals if v not in allowed]
        if bad:
            raise _bad(name, value, f"has {', '.join(map(repr, bad))}, not allowed; choose from "
                       f"{', '.join(map(repr, allowed))}")
        return tuple(dict.fromkeys(vals))
    return check


def numbers(kind=float, lo=None, hi=None, lo_open=False, hi_open=False, what="") -> Callable:
    """Check: one or more numbers of ``kind`` in the given range (a sorted tuple)."""
    def ok(x):
        return ((lo is None or (x > lo if lo_open else x >= lo))
                and (hi is None or (x < hi if hi_open else x <= hi)))

    def check(name, value):
        try:
            vals = [kind(v) for v in _as_list(name, value)]
        except (TypeError, ValueError):
            raise _bad(name, value, f"must be {kind.__name__} values{what}") from None
        if any(isinstance(v, float) and math.isnan(v) for v in vals) or not all(map(ok, vals)):
            raise _bad(name, value, f"is out of range{what}")
        return tuple(sorted(set(vals)))
    return check


def number(kind=float, **kw) -> Callable:
    """Check: one number (see :func:`numbers`)."""
    many = numbers(kind, **kw)

    def check(name, value):
        if isinstance(value, (list, tuple)):
            raise _bad(name, value, "must be one number, not a list")
        return many(name, value)[0]
    return check


def sparsity_check(name, value):
    """A sparsity in [0, 1) (0.95 = 95% of the weights pruned)."""
    hint = " (a percentage? write 0.95, not 95)" if isinstance(value, (int, float)) and \
        1 <= value <= 100 else ""
    return number(float, lo=0.0, hi=1.0, hi_open=True,
                  what=f": a sparsity in [0, 1){hint}")(name, value)


def density_check(name, value):
    """A density 1 - sparsity in (0, 1]."""
    return number(float, lo=0.0, hi=1.0, lo_open=True,
                  what=": a density in (0, 1] (density = 1 - sparsity; 0.1 = 90% sparse)")(
        name, value)


def seeds_check(name, value):
    """A number of seeds n (seeds 0..n-1) or a list of distinct seeds >= 0."""
    if isinstance(value, bool):
        raise _bad(name, value, "must be a number of seeds or a list of seeds")
    if isinstance(value, int):
        if value < 1:
            raise _bad(name, value, "must be >= 1 (a number of seeds) or a list of seeds")
        return tuple(range(value))
    vals = _as_list(name, value)
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in vals) \
            or len(set(vals)) != len(vals):
        raise _bad(name, value,
                   "must be a number of seeds or a list of distinct integer seeds >= 0")
    return tuple(vals)


def optional(check: Callable) -> Callable:
    """Check: None (the preset's value) or ``check``."""
    return lambda name, value: None if value is None else check(name, value)


def anything(name, value):
    return value


@dataclass(frozen=True)
class Param:
    """A notebook parameter: its default (None: the preset's), its check and what it means."""
    name: str
    default: object = None
    check: Callable = anything
    help: str = ""
    display: bool = False    # True: changes what is shown, not which runs are made


COMMON = (
    Param("preset", None, anything,   # checked by ssvi.experiments.resolve_preset
          "scale preset; None: $SSVI_PRESET, else the default preset"),
    Param("dataset", None, choices(DATASETS), "a dataset or a list; None: the preset's"),
    Param("seeds", None, seeds_check, "a number of seeds or a list of seeds; None: the preset's"),
    Param("epochs", None, optional(number(int, lo=1)), "None: the preset's"),
    Param("batch_size", None, optional(number(int, lo=1)), "None: the preset's"),
    Param("train_subset", None, optional(number(int, lo=1)),
          "the first n training images only; None: the preset's (all)"),
    Param("device", None, anything, "'cpu', 'cuda', 'auto'; None: the preset's"),
    Param("data_dir", None, anything, "None: $SSVI_DATA, else <repository>/data"),
)
SPARSITY = (
    Param("sparsity", None, sparsity_check, "SSVI sparsity in [0, 1); None: the artefact's"),
    Param("density", None, density_check, "or the density 1 - sparsity (give one of the two)"),
    Param("criterion", "snr_abs", choice(REMOVALS), "SSVI removal criterion"),
)


# ---------------------------------------------------------------------------------------------
# runs and artefacts
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Run:
    """One training run: stored in ``results/<folder>/<run id>.json``; a checkpoint under
    ``runs/<folder>/<run id>/`` while it trains. ``allow_failure``: a diverged run is stored as
    a failed result instead of raising."""
    folder: str
    cfg: TrainConfig
    allow_failure: bool = False

    @property
    def run_id(self) -> str:
        return E.run_id(self.cfg)

    @property
    def evaluation(self) -> dict | None:
        """The extra evaluation of this run (``cfg.extra["evaluation"]``), or None."""
        return (self.cfg.extra or {}).get("evaluation")

    def describe(self) -> str:
        """'dataset, method, density, seed' and every setting that differs from the recipe."""
        c, d = self.cfg, TrainConfig
        bits = [c.dataset, c.method, f"density {c.density:g}", f"seed {c.seed}"]
        if c.method == "ssvi":
            bits += [f"removal {c.removal}", f"addition {c.addition}"]
            if c.addition == "mck":
                bits.append(f"K {c.addition_k}")
            if c.regrow_sigma != d.regrow_sigma:
                bits.append(f"regrow sigma {c.regrow_sigma}" + (
                    f" {c.regrow_sigma_const:g}" if c.regrow_sigma == "const" else ""))
        if c.sigma_init_mean != d.sigma_init_mean:
            bits.append(f"sigma0 mean {c.sigma_init_mean:g}")
        if not c.kl_warmup:
            bits.append("no KL warm-up")
        if self.evaluation:
            bits.append(f"+ {self.evaluation['name']}")
        return ", ".join(bits)


@dataclass(frozen=True)
class Artefact:
    """A table or figure of the paper: parameters, storage folder, the runs it needs."""
    name: str
    title: str
    folder: str
    params: tuple[Param, ...]
    plan: Callable                    # plan(p: Params) -> iterable of TrainConfig
    allow_failure: bool = False
    defaults_from: str | None = None  # use another artefact's PRESET_DEFAULTS entry

    def __post_init__(self):
        if self.defaults_from is None:
            object.__setattr__(self, "defaults_from", self.name)

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    def defaults(self) -> dict:
        """The notebook defaults (None: the preset's value)."""
        return {p.name: p.default for p in self.params}


class Params(dict):
    """Resolved parameters of an artefact (``p["seeds"]`` or ``p.seeds``), plus ``preset``."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _config(p: Params, dataset: str, **fields) -> TrainConfig:
    """A TrainConfig at ``p.preset`` with the common overrides of the notebook."""
    return E.preset_config(p.preset, dataset=dataset, epochs=p.epochs, batch_size=p.batch_size,
                           train_subset=p.get("train_subset"), device=p.device,
                           data_dir=p.data_dir, progress=False, **fields)


def _chosen_density(p: Params) -> float | None:
    if p.get("sparsity") is not None and p.get("density") is not None:
        raise ConfigError(f"give sparsity ({p.sparsity!r}) or density ({p.density!r}), not both "
                          "(density = 1 - sparsity)")
    if p.get("sparsity") is not None:
        return round(1.0 - p.sparsity, 12)
    return p.get("density")


def _plan_table1(p: Params):
    chosen = _chosen_density(p)
    densities = (chosen,) if chosen is not None else tuple(round(1 - s, 12) for s in p.sparsities)
    for ds in p.dataset:
        for seed in p.seeds:
            yield _config(p, ds, method="dense_vi", density=1.0, seed=seed)
            for d in densities:
                yield _config(p, ds, method="ssvi", density=d, removal=p.criterion, seed=seed)


def _table2_density(p: Params, ds: str) -> float:
    chosen = _chosen_density(p)
    return chosen if chosen is not None else round(1 - TABLE2_SPARSITY[ds], 12)


def _baseline_configs(p: Params, ds: str, d: float):
    """The sparse-BNN baselines of Table 2 on ``ds``: AEB pruned to density ``d``, the others at
    the sparsity their posterior reaches."""
    hp = p.get("baseline_hp") or {}
    for m in p.baselines:
        own = {k: v for k, v in hp.items() if k.startswith(m + "_")}
        for seed in p.seeds:
            fields = dict(density=d) if m in TARGET_DENSITY_BASELINES else {}
            yield _config(p, ds, method=m, seed=seed, extra=own or None, **fields)


def _plan_table2(p: Params):
    for ds in p.dataset:
        d = _table2_density(p, ds)
        for seed in p.seeds:
            yield _config(p, ds, method="dense_vi", density=1.0, seed=seed)
            yield _config(p, ds, method="ssvi", density=d, removal=p.criterion, seed=seed)
        yield from _baseline_configs(p, ds, d)


def _plan_figure1(p: Params):
    """Table 1's runs (dense VI, SSVI at its sparsities) and Table 2's baselines."""
    yield from _plan_table1(p)
    for ds in p.dataset:
        yield from _baseline_configs(p, ds, round(1 - TABLE2_SPARSITY[ds], 12))


def _plan_figure2_sparsity(p: Params):
    for ds in p.dataset:
        if "rigl" in p.methods:
            for s in p.sparsities:
                for seed in p.seeds:
                    yield _config(p, ds, method="rigl", density=round(1 - s, 12), seed=seed,
                                  removal="abs_mu", addition="mean")
        if "ssvi" in p.methods:
            for c in p.criteria:
                for s in p.sparsities:
                    for seed in p.seeds:
                        yield _config(p, ds, method="ssvi", density=round(1 - s, 12), seed=seed,
                                      removal=c)


def _plan_figure2_robustness(p: Params):
    for ds in p.dataset:
        arms = [("dense_vi", 1.0, "snr_abs")] + [("ssvi", p.density, c) for c in p.criteria]
        for method, density, removal in arms:
            for warm in p.kl_warmups:
                for s in p.sigma_means:
                    for seed in p.seeds:
                        yield _config(p, ds, method=method, density=density, removal=removal,
                                      sigma_init_mean=s, kl_warmup=warm, seed=seed)


def _figure3_arms(p: Params) -> list[dict]:
    """Figure 3's arms: the default (mc1, mean sigma) and one changed factor each."""
    arms = [{}]
    if "mean" in p.additions:
        arms.append(dict(addition="mean"))
    if "mck" in p.additions:
        arms += [dict(addition="mck", addition_k=k) for k in p.mc_steps]
    arms += [dict(regrow_sigma="const", regrow_sigma_const=c) for c in p.sigma_consts]
    arms += [dict(regrow_sigma=r) for r in p.regrow_sigmas if r != "const"]
    return arms


#: the Figure 3 arms whose trained network is measured by ``regrow_sigma_ratio``
_RATIO_ARMS = ("mean", "mean_rho")


def _plan_figure3_ablations(p: Params):
    ratio = {"evaluation": EV.spec("regrow_sigma_ratio")}
    for ds in p.dataset:
        for arm in _figure3_arms(p):
            extra = ratio if (arm.get("regrow_sigma", "mean") in _RATIO_ARMS
                              and arm.get("addition", "mc1") == "mc1") else None
            for seed in p.seeds:
                yield _config(p, ds, method="ssvi", density=p.density, removal=p.criterion,
                              seed=seed, extra=extra, **arm)


def _plan_appendix_shift(p: Params):
    names = p.corruptions or tuple(CORRUPTIONS)
    allowed = CIFAR10C_NAMES if p.cifar10c_dir else CORRUPTIONS
    bad = [n for n in names if n not in allowed]
    if bad:
        raise ConfigError(f"corruptions {bad} are not available "
                          f"({'released CIFAR-10-C' if p.cifar10c_dir else 'ssvi.corruptions'}); "
                          f"choose from {', '.join(allowed)}")
    if p.cifar10c_dir and set(p.dataset) != {"cifar10"}:
        raise ConfigError("cifar10c_dir holds CIFAR-10-C, which only fits dataset='cifar10'")
    evaluation = EV.spec("shift", corruptions=list(names), severities=list(p.severities),
                         corruption_seed=int(p.corruption_seed), cifar10c_dir=p.cifar10c_dir)
    for ds in p.dataset:
        for m in p.methods:
            for seed in p.seeds:
                fields = {"ssvi": dict(density=p.density, removal=p.criterion),
                          "rigl": dict(density=p.density, removal="abs_mu", addition="mean")
                          }.get(m, dict(density=1.0))
                yield _config(p, ds, method=m, seed=seed, extra={"evaluation": evaluation},
                              **fields)


def _plan_appendix_iou(p: Params):
    if len(p.criteria) < 2:
        raise ConfigError(f"criteria={list(p.criteria)!r}: give at least two different criteria "
                          "to compare")
    evaluation = EV.spec("removal_iou", criteria=list(p.criteria))
    for ds in p.dataset:
        for seed in p.seeds:
            yield _config(p, ds, method="ssvi", density=p.density, removal=p.criterion,
                          seed=seed, extra={"evaluation": evaluation})


_DENSITY_SSVI = Param("density", 0.1, number(float, lo=0.0, hi=1.0, lo_open=True, hi_open=True,
                                              what=": an SSVI density in (0, 1)"),
                      "SSVI density (0.1 = 90% sparse, as in the paper)")
_CRITERIA = Param("criteria", None, choices(REMOVALS), "removal criteria; None: the preset's")


def _maybe_empty(check: Callable) -> Callable:
    """``check``, or an empty tuple for an empty list."""
    def out(name, value):
        if isinstance(value, (list, tuple)) and not value:
            return ()
        return check(name, value)
    return out


_BASELINES = Param("baselines", TABLE2_BASELINES,
                   _maybe_empty(choices(TABLE2_BASELINES or ("vd",))),
                   "Table 2's sparse-BNN baselines to run (ssvi.baselines); [] for none")

ARTEFACTS: dict[str, Artefact] = {a.name: a for a in (
    Artefact("table1", "Table 1: dense BNN against SSVI", "table1", COMMON + SPARSITY,
             _plan_table1),
    Artefact("table2", "Table 2: SSVI against earlier sparse BNNs", "table1",
             COMMON + SPARSITY + (_BASELINES,), _plan_table2),
    Artefact("figure1", "Figure 1: training FLOPs against accuracy", "table1",
             COMMON + SPARSITY + (_BASELINES,), _plan_figure1, defaults_from="table1"),
    Artefact("figure2_sparsity", "Figure 2 (left): accuracy across sparsities, SSVI and RigL",
             "figure2_sparsity", COMMON + (
                 Param("sparsities", None, numbers(float, lo=0.0, hi=1.0, hi_open=True,
                                                   what=": sparsities in [0, 1)"),
                       "target sparsities; None: the preset's"),
                 _CRITERIA,
                 Param("methods", ("ssvi", "rigl"), choices(("ssvi", "rigl")), "curves"),
             ), _plan_figure2_sparsity),
    Artefact("figure2_robustness", "Figure 2 (right): robustness to sigma0, dense VI and SSVI",
             "figure2_robustness", COMMON + (
                 _DENSITY_SSVI, _CRITERIA,
                 Param("sigma_means", None, numbers(float, lo=0.0, lo_open=True,
                                                    what=": means of the sigma0 draw, > 0"),
                       "sigma0 means; None: the preset's"),
                 Param("kl_warmups", (True, False), choices((True, False)), "KL warm-up on/off"),
             ), _plan_figure2_robustness, allow_failure=True),
    Artefact("figure3_ablations", "Figure 3: addition criterion and sigma re-initialisation",
             "figure3_ablations", COMMON + (
                 _DENSITY_SSVI, SPARSITY[2],
                 Param("additions", ("mc1", "mean", "mck"), choices(ADDITIONS),
                       "addition criteria (eq. 9)"),
                 Param("mc_steps", None, numbers(int, lo=2, what=": K >= 2 (K = 1 is mc1)"),
                       "K of 'mck'; None: the preset's"),
                 Param("sigma_consts", None, numbers(float, lo=0.0, lo_open=True,
                                                     what=": constants > 0"),
                       "constant sigma of re-grown weights; None: the preset's"),
                 Param("regrow_sigmas", tuple(r for r in ("mean_rho",) if r in REGROW_SIGMA),
                       _maybe_empty(choices(REGROW_SIGMA)),
                       "further re-grown sigma arms besides 'mean' and the constants: "
                       "'mean_rho' is the release's softplus(mean rho)"),
             ), _plan_figure3_ablations),
    Artefact("appendix_shift", "Appendix: distribution shift", "appendix_shift", COMMON + (
        Param("methods", ("ssvi", "dense_vi"), choices(METHODS), "methods"),
        _DENSITY_SSVI, SPARSITY[2],
        Param("corruptions", None, choices(tuple(dict.fromkeys(CORRUPTIONS + CIFAR10C_NAMES))),
              "corruption names; None: the preset's"),
        Param("severities", None, numbers(int, lo=1, hi=5, what=": severities 1..5"),
              "None: the preset's"),
        Param("corruption_seed", 0, number(int, lo=0), "seed of the random corruptions"),
        Param("cifar10c_dir", None, anything, "folder of the RELEASED CIFAR-10-C; None: "
              "regenerate the corruptions"),
    ), _plan_appendix_shift),
    Artefact("appendix_iou", "Appendix: IoU of the removal criteria", "appendix_iou", COMMON + (
        _DENSITY_SSVI, SPARSITY[2], _CRITERIA,
        Param("early_fraction", 0.25, number(float, lo=0.0, hi=0.5, lo_open=True,
                                             what=": in (0, 0.5]"),
              "early = the first this fraction of the updates, late = the last", display=True),
    ), _plan_appendix_iou),
)}


def names() -> tuple[str, ...]:
    """The artefacts, in book order."""
    return tuple(ARTEFACTS)


def artefact(name: str) -> Artefact:
    if name not in ARTEFACTS:
        raise ConfigError(f"unknown artefact {name!r}; choose one of {', '.join(ARTEFACTS)}")
    return ARTEFACTS[name]


def check_names(name: str, given: Iterable[str]) -> None:
    """Refuse parameter names ``name`` does not have, in one line naming the allowed ones."""
    a = artefact(name)
    unknown = [k for k in given if k not in a.param_names]
    if unknown:
        near = [m for k in unknown for m in difflib.get_close_matches(k, a.param_names, 1)]
        hint = f" (did you mean {', '.join(map(repr, near))}?)" if near else ""
        raise ConfigError(f"{name}: unknown parameter(s) {', '.join(map(repr, unknown))}{hint}; "
                          f"allowed: {', '.join(a.param_names)}")


def resolve(name: str, **given) -> Params:
    """``name``'s parameters: ``given`` checked, None replaced by the preset's value."""
    check_names(name, given)
    a = artefact(name)
    values = {**a.defaults(), **given}
    preset = E.resolve_preset(values["preset"])
    out = Params(preset=preset)
    defaults = preset_defaults(preset, name)
    for prm in a.params:
        if prm.name == "preset":
            continue
        value = values[prm.name]
        if value is None and prm.name in defaults:
            value = defaults[prm.name]
            if prm.name == "dataset":
                value = tuple(value) + _present(defaults.get("optional_datasets", ()), values)
        out[prm.name] = prm.check(prm.name, value) if value is not None else None
    for key in ("sparsities", "threads", "baseline_hp"):        # preset-only settings
        if key in defaults and key not in out:
            out[key] = defaults[key]
    return out


def _present(optional_datasets, values) -> tuple:
    from .cifar import data_root, dataset_available
    out = []
    for ds in optional_datasets:
        if dataset_available(ds, values.get("data_dir")):
            out.append(ds)
        else:
            print(f"skipping {ds}: no files under {data_root(values.get('data_dir'))}; put the "
                  "official archive there to include it")
    return tuple(out)


def plan(name: str, **given) -> list[Run]:
    """The runs ``name`` needs with these parameters, each once, in plan order."""
    return _plan(name, resolve(name, **given))


def _plan(name: str, p: Params) -> list[Run]:
    a = ARTEFACTS[name]
    out, seen = [], set()
    for cfg in a.plan(p):
        run = Run(a.folder, cfg, a.allow_failure)
        if (run.folder, run.run_id) not in seen:
            seen.add((run.folder, run.run_id))
            out.append(run)
    return out


def grid_configs(preset: str) -> list[TrainConfig]:
    """The distinct configurations of every artefact's runs at ``preset``, without reading any
    data (a run id needs the data fingerprint; this does not): for counting and costing a grid."""
    out: dict[str, TrainConfig] = {}
    for name in names():
        for cfg in ARTEFACTS[name].plan(resolve(name, preset=preset)):
            out.setdefault(repr(sorted(cfg.result_dict().items())), cfg)
    return list(out.values())


def grid(preset: str, only: Sequence[str] | None = None, **given) -> list[Run]:
    """Every run of every artefact (or of ``only``) at ``preset``, each run id once.

    ``given``: parameters passed to every artefact that has them (e.g. ``seeds``, ``dataset``).
    """
    out, seen = [], set()
    for name in only or names():
        a = artefact(name)
        kw = {k: v for k, v in given.items() if k in a.param_names and v is not None}
        for run in plan(name, preset=preset, **kw):
            if run.run_id not in seen:     # the same id is the same computation
                seen.add(run.run_id)
                out.append(run)
    return out


class Records(list):
    """The results records of an artefact's runs, in plan order (each with ``_path``), with the
    ``artefact`` name, the resolved ``params`` (:class:`Params`), its ``preset`` and ``runs``."""

    def __init__(self, records, artefact: str, params: Params, runs: list[Run]):
        super().__init__(records)
        self.artefact, self.params, self.runs, self.preset = artefact, params, runs, params.preset


def records(name: str, *, train: bool = True, log=print, **given) -> Records:
    """THE call a notebook makes: check ``given``, train the missing runs (``ssvi.runner``),
    load the stored ones, and return every record of the artefact's runs. ``train=False``:
    only the records already stored (e.g. for the claims scorecard)."""
    from . import runner
    p = resolve(name, **given)
    runs = _plan(name, p)
    recs = runner.execute(runs, train=train, threads=p.get("threads"), log=log)
    return Records(recs, name, p, runs)


# names IPython puts into a fresh kernel's namespace (used when no snapshot is given)
_KERNEL_NAMES = frozenset({"In", "Out", "get_ipython", "exit", "quit", "open"})


def notebook_params(name: str, namespace: dict, before: Iterable[str] | None = None) -> dict:
    """The parameters a notebook was run with, checked.

    ``namespace`` is the notebook's ``globals()`` after its parameters cell (and papermill's
    injected cell). Every declared parameter found there is returned; any other name defined
    since ``before`` (a snapshot ``set(globals())`` taken before the parameters cell; without it,
    any public name not made by the kernel) is refused, so a misspelt ``-p sparsityy 0.5`` stops
    the notebook with a one-line error instead of running the default plan. In IPython this also
    turns on the one-line display of ssvi's errors (:func:`ssvi.errors.notebook_mode`).
    """
    from .errors import notebook_mode
    notebook_mode()
    a = artefact(name)
    before = set(before or ())
    new = [k for k in namespace
           if k not in before and not k.startswith("_") and k not in _KERNEL_NAMES
           and not isinstance(namespace[k], types.ModuleType)]
    check_names(name, new)
    return {k: namespace[k] for k in a.param_names if k in namespace}
