"""Results records, schema version 2: what one finished run computed, and from what.

One run's record (``results/<experiment>/<run-id>.json``)::

    schema_version    2
    run_id            ssvi.experiments.run_id(config, data_fingerprint): the file's name
    config            the TrainConfig, every field (ssvi.config)
    metrics           the final test metrics        history   one entry per epoch
    ...               the trainer's other sections (parameters, flops, selection, update_log, ...)
    data_fingerprint  {"dataset", "variant", "sha256"} of the arrays used (ssvi.loader)
    code_fingerprint  sha256 of the ssvi/ sources that decide what a run computes (CODE_MODULES)
    provenance        commit, dirty flag, device, torch version, wall time, seed (ssvi.provenance)
    nonfinite         {JSON pointer: "nan" | "inf" | "-inf"} for every value stored as null

Files are strict JSON: a NaN or infinite number is written as ``null`` and listed under
``nonfinite`` (JSON pointers, RFC 6901, e.g. ``/metrics/nll``); :func:`read_record` puts the
values back. A record whose code fingerprint differs from the current code's is **stale**
(:func:`is_stale`): the code that would compute it has changed since.
"""
from __future__ import annotations

import hashlib
import json
import math
import warnings
from pathlib import Path

from . import checkpoint as ckpt
from .config import IgnoredSettingWarning, TrainConfig
from .errors import ConfigError, ResultsFileError
from .paths import results_root

SCHEMA_VERSION = 2

_PACKAGE = Path(__file__).resolve().parent

#: the ssvi/ modules (paths relative to ssvi/) whose code decides what a run computes
#: (training, evaluation, data, the stored counts); their sources make the code fingerprint
CODE_MODULES = (
    "cifar.py", "config.py", "corruptions.py", "criteria.py", "distributed.py",
    "evaluations.py", "fast.py", "flops.py", "layers.py", "loader.py", "loop.py", "metrics.py",
    "models.py", "subspace.py", "synthetic.py", "trainer.py",
    # the Table-2 baselines (ssvi/baselines/): their layers, samplers, objectives and counts
    "baselines/__init__.py", "baselines/aeb.py", "baselines/base.py", "baselines/mbnn.py",
    "baselines/mcmc_common.py", "baselines/sbp.py", "baselines/sghmc.py",
    "baselines/training.py", "baselines/vd.py",
)
#: the ssvi/ modules that do not change a result (plumbing, tables, statistics, messages); every
#: module is in exactly one of the two lists (tests/test_results.py checks it)
NOT_CODE_MODULES = (
    "__init__.py", "__main__.py", "checkpoint.py", "claims.py", "errors.py", "experiments.py",
    "findings.py", "paths.py", "plots.py", "provenance.py", "registry.py", "report.py",
    "results.py", "runner.py", "stats.py",
)

#: keys every schema-2 record has, with their JSON types
REQUIRED = {"schema_version": int, "run_id": str, "config": dict, "metrics": dict,
            "history": list, "data_fingerprint": dict, "code_fingerprint": str,
            "provenance": dict, "nonfinite": dict}
DATA_FINGERPRINT_KEYS = ("dataset", "variant", "sha256")


class NotAResultError(ResultsFileError):
    """A JSON file in a results folder that is not a current results record (a stray file, or
    one written by an older schema); :func:`load_results` skips it with a warning."""


class StrayFileWarning(UserWarning):
    """A file in a results folder was skipped because it is not a current results record."""


# ---------------------------------------------------------------------------------------------
# fingerprints
# ---------------------------------------------------------------------------------------------
def code_fingerprint(modules=None) -> str:
    """sha256 (hex) of the sources of ``modules`` (default :data:`CODE_MODULES`), each as its
    name and its text with normalised line ends; a listed module that does not exist adds
    nothing."""
    h = hashlib.sha256()
    for name in sorted(CODE_MODULES if modules is None else modules):
        path = _PACKAGE / name
        if not path.is_file():
            continue
        text = path.read_bytes().replace(b"\r\n", b"\n")
        h.update(name.encode() + b"\0" + hashlib.sha256(text).digest())
    return h.hexdigest()


def is_stale(record: dict, current: str | None = None) -> bool:
    """True when ``record`` was computed by other code than today's: its code fingerprint differs
    from ``current`` (default: :func:`code_fingerprint`) or is missing."""
    return record.get("code_fingerprint") != (current or code_fingerprint())


# ---------------------------------------------------------------------------------------------
# strict JSON: non-finite numbers as null + flag
# ---------------------------------------------------------------------------------------------
def _escape(key) -> str:
    return str(key).replace("~", "~0").replace("/", "~1")


def _unescape(part: str) -> str:
    return part.replace("~1", "/").replace("~0", "~")


def _plain(obj, pointer: str, flags: dict):
    """A JSON-ready copy of ``obj`` (numpy/torch scalars as numbers, tuples as lists) with every
    non-finite float replaced by None and recorded in ``flags``."""
    if isinstance(obj, dict):
        return {str(k): _plain(v, f"{pointer}/{_escape(k)}", flags) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v, f"{pointer}/{i}", flags) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, str, int)):
        return obj
    if isinstance(obj, float):
        if math.isfinite(obj):
            return obj
        flags[pointer] = "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
        return None
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 0) == 0:
        return _plain(obj.item(), pointer, flags)          # numpy / torch scalars
    if hasattr(obj, "tolist"):
        return _plain(obj.tolist(), pointer, flags)        # numpy arrays, tensors
    raise TypeError(f"results: {pointer or '/'} holds a {type(obj).__name__}, which JSON "
                    "cannot store")


def nonfinite_values(record: dict) -> dict:
    """``{JSON pointer: "nan" | "inf" | "-inf"}`` for every non-finite number in ``record``."""
    flags: dict = {}
    _plain({k: v for k, v in record.items() if k != "nonfinite"}, "", flags)
    return flags


def _resolve(record, pointer: str):
    """(container, key) that ``pointer`` (RFC 6901) points into; KeyError/IndexError if absent."""
    parts = [_unescape(p) for p in pointer.split("/")[1:]]
    if not parts:
        raise KeyError(pointer)
    node = record
    for p in parts[:-1]:
        node = node[int(p)] if isinstance(node, list) else node[p]
    last = parts[-1]
    if isinstance(node, list):
        last = int(last)
        node[last]  # IndexError if absent
    elif last not in node:
        raise KeyError(pointer)
    return node, last


# ---------------------------------------------------------------------------------------------
# records
# ---------------------------------------------------------------------------------------------
def make_record(cfg: TrainConfig, *, metrics: dict, history: list, data_fingerprint: dict,
                provenance: dict, **sections) -> dict:
    """The schema-2 record of a finished run of ``cfg`` (what ``ssvi.trainer`` returns and
    writes). ``sections`` are stored as given (parameters, flops, selection, update_log, ...).
    Non-finite numbers stay in the returned dict and are listed under ``nonfinite``."""
    from .experiments import run_id
    clash = set(sections) & (set(REQUIRED) | {"schema_version"})
    if clash:
        raise ValueError(f"make_record: {', '.join(sorted(clash))} are set by make_record itself")
    missing = [k for k in DATA_FINGERPRINT_KEYS if k not in data_fingerprint]
    if missing:
        raise ValueError(f"make_record: the data fingerprint lacks {', '.join(missing)}")
    record = {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id(cfg, data_fingerprint),
        "config": cfg.to_dict(),
        "metrics": metrics,
        **sections,
        "history": history,
        "data_fingerprint": dict(data_fingerprint),
        "code_fingerprint": code_fingerprint(),
        "provenance": provenance,
    }
    record["nonfinite"] = nonfinite_values(record)
    return record


def dumps(record: dict) -> str:
    """``record`` as strict JSON text (indented, trailing newline): non-finite numbers as null,
    listed under ``nonfinite``; keys starting with "_" (added by :func:`load_results`) left out."""
    flags: dict = {}
    body = {k: v for k, v in record.items() if not str(k).startswith("_") and k != "nonfinite"}
    plain = _plain(body, "", flags)
    plain["nonfinite"] = flags
    return json.dumps(plain, indent=2, allow_nan=False) + "\n"


def write_record(path, record: dict) -> Path:
    """Write ``record`` to ``path`` atomically as strict JSON (see :func:`dumps`)."""
    return ckpt.atomic_write_text(path, dumps(record))


def _what_to_do(path) -> str:
    return (f"delete {path} and run again to recompute it (or restore it with "
            f"`git checkout -- {path}` if it was committed)")


def read_record(path) -> dict:
    """The record stored in ``path``, validated, with its non-finite values put back.

    Raises :class:`ssvi.errors.ResultsFileError` naming the file when it cannot be read, is not
    JSON (e.g. truncated) or is a malformed record; :class:`NotAResultError` (a subclass) when it
    is valid JSON but not a schema-2 results record.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ResultsFileError(f"cannot read results file {path} ({type(e).__name__}: {e}); "
                               f"{_what_to_do(path)}") from e
    bare = []

    def constant(name):
        bare.append(name)
        return None

    try:
        obj = json.loads(text, parse_constant=constant)
    except json.JSONDecodeError as e:
        raise ResultsFileError(
            f"results file {path} is not valid JSON ({e.msg} at line {e.lineno}, column "
            f"{e.colno}; truncated or corrupt); {_what_to_do(path)}") from None
    if not isinstance(obj, dict) or not ({"config", "schema_version"} & set(obj)):
        raise NotAResultError(f"{path} is not an ssvi results file (no 'config' or "
                              "'schema_version'); move it out of the results folder")
    version = obj.get("schema_version")
    if version is None or (isinstance(version, int) and version < SCHEMA_VERSION):
        raise NotAResultError(f"{path} was written by an older ssvi (results schema "
                              f"{version or 1}, without code and data fingerprints) and is "
                              "ignored; run again to recompute it, then delete it")
    if version != SCHEMA_VERSION:
        raise ResultsFileError(f"results file {path} has schema_version {version!r}; this ssvi "
                               f"reads schema {SCHEMA_VERSION}: update ssvi, or "
                               f"{_what_to_do(path)}")
    bad = [f"{k} (missing)" if k not in obj else f"{k} (not a {t.__name__})"
           for k, t in REQUIRED.items() if not isinstance(obj.get(k), t)]
    bad += [f"data_fingerprint.{k} (missing)" for k in DATA_FINGERPRINT_KEYS
            if isinstance(obj.get("data_fingerprint"), dict) and k not in obj["data_fingerprint"]]
    if bare:
        bad.append(f"bare {', '.join(sorted(set(bare)))} (not JSON)")
    if not bad:
        for pointer, kind in obj["nonfinite"].items():
            try:
                node, key = _resolve(obj, pointer)
            except (KeyError, IndexError, ValueError, TypeError):
                bad.append(f"nonfinite entry {pointer} (no such value)")
                continue
            if node[key] is not None or kind not in ("nan", "inf", "-inf"):
                bad.append(f"nonfinite entry {pointer}={kind!r} (the value is not null or the "
                           "kind is not nan/inf/-inf)")
                continue
            node[key] = float(kind)
    if not bad:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", IgnoredSettingWarning)
                TrainConfig.from_dict(obj["config"])
        except (ConfigError, TypeError) as e:
            bad.append(f"config ({e})")
    if bad:
        raise ResultsFileError(f"results file {path} is malformed: {'; '.join(bad)}; "
                               f"{_what_to_do(path)}")
    return obj


def load_results(experiment: str, results_dir=None) -> list[dict]:
    """Every results record of ``experiment`` (``<results>/<experiment>/*.json``), each with
    ``_path`` (its file) and ``_stale`` (:func:`is_stale`) added.

    A file that is not a current record is skipped with a :class:`StrayFileWarning` naming it; a
    truncated or malformed one raises :class:`ssvi.errors.ResultsFileError` naming it.
    """
    folder = Path(results_root(results_dir)) / experiment
    current = code_fingerprint()
    out = []
    for path in sorted(folder.glob("*.json")):
        try:
            rec = read_record(path)
        except NotAResultError as e:
            warnings.warn(f"skipped: {e}", StrayFileWarning, stacklevel=2)
            continue
        rec["_path"] = str(path)
        rec["_stale"] = is_stale(rec, current)
        out.append(rec)
    return out
