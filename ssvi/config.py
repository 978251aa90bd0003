"""The run configuration. Its defaults are the authors' recipe, as read off
their public release (book/method.md lists it).

Every choice the paper leaves open is a field here, so one object describes a run completely
and is stored verbatim in every results JSON. This module is the one source of truth about the
fields: each field's metadata says

* its **role**, which the run id (:func:`ssvi.experiments.run_id`), the resume check
  (``ssvi.trainer``) and the report all derive from:

  - ``"result"``: changes what the run computes. Part of the run id; a checkpoint only resumes
    under the same values. ``extra`` is a result field on purpose: its tags (the preset name, the
    version of an ``on_update`` logger whose notes are stored with the result) name what was
    computed, so a changed tag is a new run.
  - ``"resume_free"``: may differ between a run and its resumption, and is not in the run id:
    ``progress``, ``download`` (a permission; the data fingerprint identifies the data), ``device``
    and ``fast``. ``device`` and ``fast`` change the numbers at the rounding level only (the
    fast path is bf16 autocast + channels_last on CUDA: the same estimator in lower precision),
    like running on other hardware; the provenance records the device and the path actually
    used. A run id names a computation (recipe, data, seed), not the arithmetic of a machine.
  - ``"path"``: where things are read or written (``data_dir``, ``run_dir``, ``results_path``).
    Never in the run id; the data actually read is identified by the data fingerprint.

* its **rule**: the type and the allowed range (:class:`Rule`), or for a choice field the allowed
  values, defined once in :data:`CHOICES`;
* **when the method uses it** (``used_if``). A setting the method ignores is stored as the value
  the method really uses (its default, ``density`` 1.0 for a dense method, ``eval_samples`` 1 for
  a deterministic one) so that the stored configuration is true; when the given value was not the
  default, an :class:`IgnoredSettingWarning` says so.

Adding a method is one line in :data:`METHOD_SPECS`.
"""
from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import ConfigError

# ---------------------------------------------------------------------------------------------
# roles
# ---------------------------------------------------------------------------------------------
RESULT = "result"            # changes the result: in the run id and the resume check
RESUME_FREE = "resume_free"  # may differ on resume; not in the run id
PATH = "path"                # a file or folder; not in the run id
ROLES = (RESULT, RESUME_FREE, PATH)


# ---------------------------------------------------------------------------------------------
# methods
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Method:
    """What a training method uses.

    ``bayesian``: mean-field Gaussian layers, the KL term, sampled evaluation (else deterministic
    masked layers, one evaluation pass). ``sparse``: a fixed-density mask maintained by
    :class:`ssvi.subspace.SubspaceController` (else every weight is active, density 1).
    ``fixed``: ``(field, value)`` pairs the method always uses whatever the config says (they are
    stored as such).

    ``baseline``: a Table-2 baseline of :mod:`ssvi.baselines` (its own layers, optimiser, loss
    and prediction; hyper-parameters ``<method>_<name>`` in ``extra``). For a baseline the
    method-dependent fields (those with a ``used_if``) are read only when listed in ``reads``
    or returned by ``reads_if(values)``; every other one is stored at the value it uses.
    """
    bayesian: bool
    sparse: bool
    fixed: tuple = ()
    baseline: bool = False
    reads: tuple = ()
    reads_if: Callable | None = None

    def fields_read(self, values: dict) -> tuple:
        """The method-dependent fields a baseline reads under ``values`` (a full field dict)."""
        return tuple(self.reads) + (tuple(self.reads_if(values)) if self.reads_if else ())


def _when_sgd(name: str, fields: tuple) -> Callable:
    """reads_if of a baseline that reads ``fields`` only with ``extra["<name>_optimizer"]`` sgd
    (VD and SBP train with Adam at their own ``<name>_lr`` by default)."""
    def reads(values: dict) -> tuple:
        extra = values.get("extra") or {}
        return fields if extra.get(f"{name}_optimizer") == "sgd" else ()
    return reads


#: method name -> what it uses; CHOICES["method"] is derived from it
METHOD_SPECS: dict[str, Method] = {
    "ssvi": Method(bayesian=True, sparse=True),
    "dense_vi": Method(bayesian=True, sparse=False),
    # RigL: magnitude removal, gradient (mean-forward) addition, deterministic weights
    "rigl": Method(bayesian=False, sparse=True,
                   fixed=(("removal", "abs_mu"), ("addition", "mean"))),
    "dense": Method(bayesian=False, sparse=False),  # deterministic dense network
    # the Table-2 baselines (ssvi.baselines); only AEB prunes to a target density, VD, SBP and
    # mBNN reach the sparsity their posterior gives (density stored as 1: no target)
    "vd": Method(bayesian=False, sparse=False, baseline=True,
                 reads=("kl_warmup", "eval_samples"),
                 reads_if=_when_sgd("vd", ("lr", "momentum", "weight_decay"))),
    "sbp": Method(bayesian=False, sparse=False, baseline=True,
                  reads=("kl_warmup", "eval_samples", "weight_decay"),
                  reads_if=_when_sgd("sbp", ("lr", "momentum"))),
    "aeb": Method(bayesian=False, sparse=False, baseline=True,
                  reads=("density", "first_layer_dense", "eval_samples")),
    "mbnn": Method(bayesian=False, sparse=False, baseline=True, reads=("eval_samples",)),
}

#: the baseline methods; their hyper-parameters are the ``extra`` keys ``<method>_<name>``
BASELINES = tuple(k for k, m in METHOD_SPECS.items() if m.baseline)

#: removal criteria that read lambda (eq. 8)
LAMBDA_REMOVALS = ("e_exp_abs", "snr_exp_abs")

#: the allowed values of every choice field, defined once
CHOICES: dict[str, tuple] = {
    "dataset": ("cifar10", "cifar100", "synthetic"),
    "model": ("resnet18", "small_cnn", "mlp"),
    "method": tuple(METHOD_SPECS),
    "allocation": ("uniform", "erk"),
    "removal": ("abs_mu", "snr", "e_abs", "snr_abs", "e_exp_abs", "snr_exp_abs"),
    "addition": ("mc1", "mean", "mck"),  # eq. 9 criteria 1, 2, 3
    "regrow_sigma": ("mean", "mean_rho", "const"),  # mean_rho: the release's mean of rho
}
DATASETS = CHOICES["dataset"]
MODELS = CHOICES["model"]
METHODS = CHOICES["method"]
ALLOCATIONS = CHOICES["allocation"]
REMOVALS = CHOICES["removal"]
ADDITIONS = CHOICES["addition"]
REGROW_SIGMA = CHOICES["regrow_sigma"]


class IgnoredSettingWarning(UserWarning):
    """A setting the chosen method ignores was replaced by the value the method uses."""


# ---------------------------------------------------------------------------------------------
# rules
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rule:
    """The type and allowed range of a field.

    ``kind``: "choice" (one of CHOICES[name]), "bool", "int", "float" (finite), "str", "path"
    (a str or os.PathLike, stored as str), "device" ("auto" or what torch.device parses),
    "dict" (JSON values, stored with the results).
    ``low``/``high``: bounds, open when ``low_open``/``high_open``. ``optional``: None allowed.
    ``hint``: said after the range in the error message.
    """
    kind: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    optional: bool = False
    hint: str = ""

    def describe(self, name: str) -> str:
        """The allowed values in words, e.g. "a finite number in (0, 1]"."""
        if self.kind == "choice":
            s = "one of " + ", ".join(map(repr, CHOICES[name]))
        elif self.kind == "bool":
            s = "True or False"
        elif self.kind in ("int", "float"):
            noun = "an integer" if self.kind == "int" else "a finite number"
            if self.kind == "int" and self.low == 1 and self.high is None:
                s = "a positive integer (>= 1)"
            elif self.low is not None and self.high is not None:
                s = (f"{noun} in {'(' if self.low_open else '['}{self.low:g}, "
                     f"{self.high:g}{')' if self.high_open else ']'}")
            elif self.low is not None:
                s = f"{noun} {'>' if self.low_open else '>='} {self.low:g}"
            else:
                s = noun
        elif self.kind == "dict":
            s = "a dict of JSON values (str keys)"
        elif self.kind == "path":
            s = "a path"
        elif self.kind == "device":
            s = "'auto' or a torch device such as 'cpu', 'cuda', 'cuda:1'"
        else:
            s = "a string"
        return s + (" or None" if self.optional else "")

    def check(self, name: str, value):
        """``value`` in canonical form (int, float, str...); ConfigError if it breaks the rule."""
        if value is None:
            if self.optional:
                return None
            self._fail(name, value)
        kind = self.kind
        if kind == "choice":
            if not isinstance(value, str) or value not in CHOICES[name]:
                raise ConfigError(f"{name}={value!r} is not allowed; choose one of "
                                  f"{', '.join(map(repr, CHOICES[name]))}")
            return value
        if kind == "bool":
            if isinstance(value, bool) or type(value).__name__ == "bool_":
                return bool(value)
            self._fail(name, value)
        if kind in ("int", "float"):
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                self._fail(name, value)
            if kind == "int":
                if not isinstance(value, numbers.Integral):
                    if not (math.isfinite(value) and float(value).is_integer()):
                        self._fail(name, value)
                value = int(value)
            else:
                value = float(value)
                if not math.isfinite(value):
                    self._fail(name, value)
            if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
                self._fail(name, value)
            if self.high is not None and (value > self.high
                                          or (self.high_open and value == self.high)):
                self._fail(name, value)
            return value
        if kind == "path":
            if isinstance(value, (str, os.PathLike)):
                return os.fspath(value)
            self._fail(name, value)
        if kind == "str":
            if isinstance(value, str):
                return value
            self._fail(name, value)
        if kind == "device":
            if isinstance(value, str) and value == "auto":
                return value
            try:
                import torch
                torch.device(value)
            except (RuntimeError, TypeError, ValueError):
                self._fail(name, value)
            return str(value)
        if kind == "dict":
            if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
                self._fail(name, value)
            try:
                json.dumps(value, allow_nan=False)
            except (TypeError, ValueError):
                self._fail(name, value)
            return dict(value)
        raise AssertionError(f"unknown rule kind {kind!r} for field {name}")

    def _fail(self, name, value):
        hint = f" ({self.hint})" if self.hint else ""
        raise ConfigError(f"{name}={value!r} is not allowed; it must be "
                          f"{self.describe(name)}{hint}")


def _bayesian(v: dict) -> bool:
    return METHOD_SPECS[v["method"]].bayesian


def _sparse(v: dict) -> bool:
    return METHOD_SPECS[v["method"]].sparse


def _always(v: dict) -> bool:
    """Read by every method but a baseline that does not list it (:class:`Method`)."""
    return True


_NOT_SET = object()


def _f(default=dataclasses.MISSING, *, role: str, rule: Rule, used_if=None, unused=_NOT_SET,
       factory=dataclasses.MISSING, doc: str = ""):
    """A TrainConfig field with its role, rule, and when the method uses it.

    ``used_if(values) -> bool`` (values: the field dict) says whether the method reads the field;
    ``unused``: the value stored when it does not (default: the field's default).
    """
    meta = {"role": role, "rule": rule, "used_if": used_if, "doc": doc}
    if unused is not _NOT_SET:
        meta["unused"] = unused
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def _unit(lo_open=False, hi_open=False, hint=""):
    return Rule("float", 0.0, 1.0, lo_open, hi_open, hint=hint)


_POS = Rule("float", 0.0, low_open=True)
_NONNEG = Rule("float", 0.0)
_POS_INT = Rule("int", 1)


@dataclass
class TrainConfig:
    """One run, completely: data, model, method, Bayesian layers, subspace updates (Algorithm 1),
    optimisation, evaluation, and where to read and write. Validated and normalised on creation
    (:meth:`validate`); :func:`result_fields` are what the run computes from."""
    # data
    dataset: str = _f("cifar10", role=RESULT, rule=Rule("choice"))
    data_dir: str | None = _f(None, role=PATH, rule=Rule("path", optional=True),
                              doc="None: $SSVI_DATA, else <repository>/data")
    download: bool = _f(False, role=RESUME_FREE, rule=Rule("bool"),
                        doc="allow torchvision's download when the data are absent")
    val_size: int = _f(0, role=RESULT, rule=Rule("int", 0),
                       doc="held-out validation images taken from the train set")
    train_subset: int | None = _f(None, role=RESULT, rule=Rule("int", 1, optional=True),
                                  doc="use only the first N training images (small presets)")
    test_subset: int | None = _f(None, role=RESULT, rule=Rule("int", 1, optional=True),
                                 doc="use only the first N test images")
    augment: bool = _f(True, role=RESULT, rule=Rule("bool"),
                       doc="random crop (pad 4) + horizontal flip")
    # model
    model: str = _f("resnet18", role=RESULT, rule=Rule("choice"))
    width: float = _f(1.0, role=RESULT, rule=_POS,
                      doc="channel multiplier (1.0 = 64/128/256/512)")
    method: str = _f("ssvi", role=RESULT, rule=Rule("choice"))
    density: float = _f(0.1, role=RESULT, used_if=_sparse, unused=1.0,
                        rule=_unit(lo_open=True, hint="density = 1 - sparsity; 0.1 means 90% "
                                                      "sparse"),
                        doc="1 - sparsity, per sparse tensor; rounded to 12 significant digits")
    first_layer_dense: bool = _f(True, role=RESULT, rule=Rule("bool"), used_if=_sparse,
                                 doc="the recipe keeps the stem conv dense")
    allocation: str = _f("uniform", role=RESULT, rule=Rule("choice"), used_if=_sparse)
    # Bayesian layers (recipe: prior N(0, 0.005^2), mu ~ N(0, 0.01^2), sigma0 = |N(6e-4, 5e-4^2)|)
    prior_sigma: float = _f(0.005, role=RESULT, rule=_POS, used_if=_bayesian)
    mu_init_std: float = _f(0.01, role=RESULT, rule=_NONNEG, used_if=_bayesian)
    sigma_init_mean: float = _f(0.0006, role=RESULT, rule=_POS, used_if=_bayesian)
    sigma_init_std: float = _f(0.0005, role=RESULT, rule=_NONNEG, used_if=_bayesian)
    kl_scale: float = _f(0.01, role=RESULT, rule=_NONNEG, used_if=_bayesian,
                         doc="loss = CE + beta * kl_scale / N_train * KL_sum")
    kl_warmup: bool = _f(True, role=RESULT, rule=Rule("bool"), used_if=_bayesian,
                         doc="beta = min(2 * epoch / epochs, 1), epoch from 1")
    # subspace updates (Algorithm 1)
    update_every: int = _f(100, role=RESULT, rule=_POS_INT, used_if=_sparse,
                           doc="Delta T, optimisation steps between mask updates")
    t_end_frac: float = _f(0.75, role=RESULT, rule=_unit(), used_if=_sparse,
                           doc="updates stop at T_end = t_end_frac * total steps")
    alpha: float = _f(0.3, role=RESULT, rule=_unit(), used_if=_sparse,
                      doc="r_t = alpha / 2 * (1 + cos(pi t / T_end))")
    removal: str = _f("snr_abs", role=RESULT, rule=Rule("choice"), used_if=_sparse)
    lam: float = _f(1.0, role=RESULT, rule=Rule("float", 0.0, low_open=True,
                                                hint="lambda of eq. 8"),
                    used_if=lambda v: _sparse(v) and v["removal"] in LAMBDA_REMOVALS,
                    doc="lambda of eq. 8 (removal e_exp_abs, snr_exp_abs)")
    addition: str = _f("mc1", role=RESULT, rule=Rule("choice"), used_if=_sparse)
    addition_k: int = _f(3, role=RESULT, rule=_POS_INT,
                         used_if=lambda v: _sparse(v) and v["addition"] == "mck",
                         doc="K of the K-step Monte Carlo addition criterion (addition mck)")
    regrow_sigma: str = _f("mean", role=RESULT, rule=Rule("choice"),
                           used_if=lambda v: _sparse(v) and _bayesian(v),
                           doc="sigma of regrown weights: mean of active sigma, or a constant")
    regrow_sigma_const: float = _f(1e-6, role=RESULT, rule=_POS,
                                   used_if=lambda v: (_sparse(v) and _bayesian(v)
                                                      and v["regrow_sigma"] == "const"))
    # optimisation (SGD, two parameter groups, cosine LR stepped per epoch)
    epochs: int = _f(200, role=RESULT, rule=_POS_INT)
    batch_size: int = _f(128, role=RESULT, rule=_POS_INT)
    lr: float = _f(0.01, role=RESULT, rule=_POS, used_if=_always, doc="mu, BatchNorm and biases")
    lr_rho: float = _f(0.01, role=RESULT, rule=_POS, used_if=_bayesian, doc="rho")
    momentum: float = _f(0.9, role=RESULT, rule=_unit(hi_open=True), used_if=_always)
    weight_decay: float = _f(5e-4, role=RESULT, rule=_NONNEG, used_if=_always,
                             doc="not applied to rho")
    # evaluation
    eval_samples: int = _f(5, role=RESULT, rule=_POS_INT, used_if=_bayesian, unused=1,
                           doc="K posterior draws, each shared by the whole test set")
    eval_every: int = _f(1, role=RESULT, rule=_POS_INT,
                         doc="epochs between test evaluations (last epoch always)")
    # run
    seed: int = _f(0, role=RESULT, rule=Rule("int", 0))
    device: str = _f("auto", role=RESUME_FREE, rule=Rule("device"),
                     doc="auto: cuda if available, else cpu")
    fast: bool | None = _f(None, role=RESUME_FREE, rule=Rule("bool", optional=True),
                           used_if=_always,
                           doc="None: the fast path on CUDA, the reference path on CPU (the "
                               "baselines always run the reference path)")
    run_dir: str | None = _f(None, role=PATH, rule=Rule("path", optional=True),
                             doc="checkpoints; None: no checkpoints")
    results_path: str | None = _f(None, role=PATH, rule=Rule("path", optional=True),
                                  doc="results JSON; None: not written")
    progress: bool = _f(True, role=RESUME_FREE, rule=Rule("bool"))
    extra: dict = _f(role=RESULT, rule=Rule("dict"), factory=dict,
                     doc="tags stored with the results and part of the run id, and a "
                         "baseline's hyper-parameters <method>_<name> (e.g. vd_lr; CLI --hp), "
                         "checked against ssvi.baselines at creation")

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Check every field (ConfigError: one line naming the field, the value and the allowed
        range), put values in canonical form (density to 12 significant digits, ints as int,
        floats as float) and replace settings the method ignores (IgnoredSettingWarning when the
        given value was not the default)."""
        for f in dataclasses.fields(self):
            setattr(self, f.name, f.metadata["rule"].check(f.name, getattr(self, f.name)))
        self.density = canonical_density(self.density)
        self.extra, dropped = method_extra(self.method, self.extra)
        if dropped:
            warnings.warn(f"method {self.method!r} ignores the hyper-parameter(s) "
                          f"{', '.join(f'{k}={v!r}' for k, v in dropped.items())} of another "
                          "method; left out of the stored config", IgnoredSettingWarning,
                          stacklevel=3)
        changes = normalise(self.to_dict())
        if changes:
            for name, (_, new) in changes.items():
                setattr(self, name, new)
            loud = {k: v for k, v in changes.items() if v[0] != default_value(k)}
            if loud:
                given = ", ".join(f"{k}={old!r}" for k, (old, _) in loud.items())
                stored = ", ".join(f"{k}={new!r}" for k, (_, new) in loud.items())
                warnings.warn(f"method {self.method!r} ignores {given}; stored as {stored}, "
                              "the value(s) it uses", IgnoredSettingWarning, stacklevel=4)

    @property
    def spec(self) -> Method:
        """What the method uses (:data:`METHOD_SPECS`)."""
        return METHOD_SPECS[self.method]

    @property
    def bayesian(self) -> bool:
        return self.spec.bayesian

    @property
    def sparse(self) -> bool:
        return self.spec.sparse

    @property
    def baseline(self) -> bool:
        """A Table-2 baseline of :mod:`ssvi.baselines` (vd, sbp, aeb, mbnn)."""
        return self.spec.baseline

    def ignored_fields(self) -> tuple[str, ...]:
        """The fields this configuration's method does not read (stored at the value it uses)."""
        return unused_fields(self.to_dict())

    def result_dict(self) -> dict:
        """The result fields only: what the run computes (the run id's and resume check's key)."""
        return {k: getattr(self, k) for k in result_fields()}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ConfigError(f"unknown TrainConfig field(s) {', '.join(sorted(unknown))}; "
                              f"allowed: {', '.join(sorted(names))}")
        return cls(**d)


# ---------------------------------------------------------------------------------------------
# the fields, by role and by use
# ---------------------------------------------------------------------------------------------
_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _check_roles() -> None:
    for f in _FIELDS.values():
        if f.metadata.get("role") not in ROLES or not isinstance(f.metadata.get("rule"), Rule):
            raise TypeError(f"TrainConfig.{f.name} has no role/rule: declare it with _f(..., "
                            f"role=<one of {ROLES}>, rule=Rule(...))")
    for name in CHOICES:
        if name not in _FIELDS:
            raise TypeError(f"CHOICES[{name!r}] names no TrainConfig field")


_check_roles()


def default_value(name: str):
    """The default of field ``name``."""
    f = _FIELDS[name]
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def role(name: str) -> str:
    """The role of field ``name``: "result", "resume_free" or "path"."""
    return _FIELDS[name].metadata["role"]


def rule(name: str) -> Rule:
    """The type and allowed range of field ``name``."""
    return _FIELDS[name].metadata["rule"]


def fields_with_role(r: str) -> tuple[str, ...]:
    if r not in ROLES:
        raise ValueError(f"unknown role {r!r}; choose one of {ROLES}")
    return tuple(n for n, f in _FIELDS.items() if f.metadata["role"] == r)


def result_fields() -> tuple[str, ...]:
    """Fields that change the result: the run id and the resume check are built from these."""
    return fields_with_role(RESULT)


def resume_free_fields() -> tuple[str, ...]:
    """Fields that may differ between a run and its resumption (not in the run id)."""
    return fields_with_role(RESUME_FREE)


def path_fields() -> tuple[str, ...]:
    """Fields that are files or folders (not in the run id)."""
    return fields_with_role(PATH)


def canonical_density(density: float) -> float:
    """``density`` rounded to 12 significant digits, so 1 - 0.9 is stored as 0.1."""
    return float(f"{float(density):.12g}")


def unused_fields(values: dict) -> tuple[str, ...]:
    """The fields that the method of ``values`` (a full field dict) does not read: for a
    baseline, every method-dependent field (one with a ``used_if``) it does not list
    (:meth:`Method.fields_read`)."""
    spec = METHOD_SPECS[values["method"]]
    if spec.baseline:
        read = spec.fields_read(values)
        return tuple(n for n, f in _FIELDS.items()
                     if f.metadata["used_if"] is not None and n not in read)
    return tuple(n for n, f in _FIELDS.items()
                 if f.metadata["used_if"] is not None and not f.metadata["used_if"](values))


def method_extra(method: str, extra: dict) -> tuple[dict, dict]:
    """(``extra`` in canonical form, the hyper-parameters it held for another baseline).

    Keys ``<baseline>_<name>`` are baseline hyper-parameters. Those of ``method`` are checked
    against its ``Hparams`` (:func:`ssvi.baselines.base.canonical_hparams`: ConfigError for an
    unknown name or a bad value) and kept in canonical type unless equal to the default; those
    of another baseline are dropped (returned, for the warning). Other keys are tags, kept."""
    mine, dropped, out = {}, {}, {}
    for key, value in extra.items():
        owner = next((b for b in BASELINES if key.startswith(b + "_")), None)
        if owner is None:
            out[key] = value
        elif owner == method:
            mine[key] = value
        else:
            dropped[key] = value
    if METHOD_SPECS[method].baseline:
        from .baselines import canonical_hparams, method_class
        try:
            out.update(canonical_hparams(method_class(method).Hparams, method, mine))
        except (TypeError, ValueError) as e:
            raise ConfigError(" ".join(str(e).split())) from None
    return out, dropped


def normalise(values: dict) -> dict:
    """``{field: (given, stored)}`` for every setting of ``values`` (a full field dict, left
    unchanged) that the method ignores or fixes: the stored value is the method's fixed value,
    else the field's ``unused`` value, else its default."""
    v = dict(values)
    changes = {}
    for name, value in METHOD_SPECS[v["method"]].fixed:
        if v[name] != value:
            changes[name] = (v[name], value)
            v[name] = value
    for name in unused_fields(v):
        meta = _FIELDS[name].metadata
        target = meta["unused"] if "unused" in meta else default_value(name)
        if v[name] != target:
            changes[name] = (values[name], target)
            v[name] = target
    return changes


def describe_fields() -> list[dict]:
    """One dict per field: name, role, default, allowed values in words, doc (for --help and the
    report)."""
    return [{"name": n, "role": f.metadata["role"], "default": default_value(n),
             "allowed": f.metadata["rule"].describe(n), "doc": f.metadata["doc"]}
            for n, f in _FIELDS.items()]
