"""Execute the runs of :mod:`ssvi.registry`: train what is missing, load what is stored.

A run's results file is ``results/<folder>/<run id>.json``; while it trains, its checkpoint is
``runs/<folder>/<run id>/checkpoint.pt`` (written after every epoch), so an interrupted run or
grid started again resumes where it stopped, on this machine or another one with the same
``runs/`` folder. Results files are written as each run finishes; the checkpoint is then
deleted, except for runs whose evaluation reads the trained network (``shift``).

A run whose id is already stored under another artefact's folder (Figure 2's SSVI run at 90%
is Table 1's) is loaded from there, not trained again. Each run is in one of these states
(:func:`state`): ``missing`` (no results file); ``stored``; ``stale`` (stored by code whose
fingerprint differs from the current code: loaded and marked, or recomputed with
``stale=True``); ``failed`` (a stored divergence, for artefacts that record them); or
``incomplete`` (stored without the evaluation its artefact adds: completed from the checkpoint,
or retrained). ``SSVI_RERUN=1`` recomputes every run (once: see :func:`rerun_since`).

:func:`execute` prints one line per run with a progress bar and an estimate of the time left,
from the mean time of the runs trained so far.
"""
from __future__ import annotations

import dataclasses
import math
import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from . import evaluations as EV
from . import experiments as E
from . import paths
from .errors import DivergenceError

# --------------------------------------------------------------------------------------------
# where a run lives, and what is stored
# --------------------------------------------------------------------------------------------


def result_path(run) -> Path:
    """Where ``run``'s record is: ``results/<folder>/<run id>.json``, or the same run id stored
    under another artefact's folder (the same id is the same computation: it is made once);
    ``$SSVI_RESULTS`` overrides ``results/``."""
    own = Path(E.result_path(run.folder, run.cfg))
    if own.exists():
        return own
    return next(iter(sorted(own.parent.parent.glob(f"*/{own.name}"))), own)


def checkpoint_dir(run) -> Path:
    """``runs/<folder>/<run id>`` (``$SSVI_RUNS`` overrides ``runs/``)."""
    return Path(paths.runs_root()) / run.folder / run.run_id


def _results():
    from . import results
    return results


def read(path) -> dict:
    """The validated record at ``path`` with ``_path`` and ``_stale`` set (ssvi.results)."""
    res = _results()
    rec = res.read_record(path)
    rec["_path"] = str(path)
    rec["_stale"] = bool(res.is_stale(rec))
    return rec


def _write(path, record: dict) -> None:
    _results().write_record(path, {k: v for k, v in record.items() if not k.startswith("_")})


def state(run) -> str:
    """'missing', 'stored', 'stale', 'failed' or 'incomplete' (see the module docstring)."""
    path = result_path(run)
    if not path.exists():
        return "missing"
    rec = read(path)
    if rec.get("failed"):
        return "failed"
    ev = run.evaluation
    if ev and ev["name"] in EV.AFTER_TRAINING and ev["name"] not in (rec.get("evaluations") or {}):
        return "incomplete"
    return "stale" if rec["_stale"] else "stored"


_STARTED = time.time()


def rerun_since() -> float | None:
    """With ``SSVI_RERUN=1``: the time (epoch seconds) before which a stored result is recomputed,
    ``$SSVI_RERUN_SINCE`` (set by scripts/build_book.sh, so the notebooks of one book build
    recompute a shared run once) or else the start of this process; None without SSVI_RERUN."""
    if os.environ.get("SSVI_RERUN", "").strip().lower() not in ("1", "true", "yes"):
        return None
    return float(os.environ.get("SSVI_RERUN_SINCE") or _STARTED)


# --------------------------------------------------------------------------------------------
# one run
# --------------------------------------------------------------------------------------------


def train_run(run, *, progress: bool = False, fresh: bool = False, log=print) -> dict:
    """Train ``run`` (resuming from its checkpoint unless ``fresh``), add its evaluation, write
    its results file and return the record. A diverged run of an artefact that records
    divergence is stored as a failed record; otherwise the DivergenceError propagates."""
    from .trainer import train as train_cfg
    ckdir = checkpoint_dir(run)
    if fresh and ckdir.exists():
        shutil.rmtree(ckdir)
    path = result_path(run)
    cfg = dataclasses.replace(run.cfg, run_dir=str(ckdir), results_path=str(path),
                              progress=progress)
    try:
        train_cfg(cfg, on_update=EV.on_update_hook(run.evaluation), log=log)
    except DivergenceError as err:
        if not run.allow_failure:
            raise
        _write(path, _failed_record(cfg, err))
        return read(path)
    rec = read(path)
    ev = run.evaluation
    if ev and ev["name"] in EV.AFTER_TRAINING:
        return evaluate_after(run, rec)   # keeps the checkpoint: the evaluation reads it
    shutil.rmtree(ckdir, ignore_errors=True)   # the results file is final; free the disk
    return rec


def evaluate_after(run, rec: dict) -> dict:
    """Add ``run``'s after-training evaluation (``shift``, ``regrow_sigma_ratio``) to its stored
    record, from the network in its checkpoint (retrained when the checkpoint is gone); returns
    the record."""
    from .checkpoint import load_checkpoint
    from .loader import resolve_device
    from .trainer import CHECKPOINT_NAME, build_model_for
    ck = checkpoint_dir(run) / CHECKPOINT_NAME
    if not ck.exists():
        return train_run(run, fresh=True, log=_quiet)
    device = resolve_device(run.cfg.device)
    payload = load_checkpoint(ck, map_location=device)
    num_classes = 100 if run.cfg.dataset == "cifar100" else 10
    model = build_model_for(run.cfg, num_classes).to(device)
    model.load_state_dict(payload["model"])
    t0 = time.perf_counter()
    out = EV.after_training(model, run.cfg, run.evaluation, device)
    out["wall_time_s"] = time.perf_counter() - t0
    rec = {k: v for k, v in rec.items() if not k.startswith("_")}
    rec.setdefault("evaluations", {})[run.evaluation["name"]] = out
    _write(result_path(run), rec)
    return read(result_path(run))


def _failed_record(cfg, err) -> dict:
    """A schema-2 record of a diverged run: no metrics, ``failed`` = the one-line reason."""
    from .loader import data_fingerprint
    from .provenance import provenance
    return _results().make_record(cfg, metrics={}, history=[],
                                  data_fingerprint=data_fingerprint(cfg),
                                  provenance=provenance(seed=cfg.seed), failed=str(err))


def commit_result(path, message: str, log=print) -> bool:
    """``git add -f`` + ``git commit`` of one results file (``make grid --commit``), so a long
    grid never loses finished work. Returns False (with a message) when git refuses."""
    repo = paths.repo_dir()
    rel = os.path.relpath(path, repo)
    for cmd in (["git", "add", "-f", "--", rel],
                ["git", "commit", "-q", "-m", message, "--", rel]):
        proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True)
        if proc.returncode != 0:
            log(f"    could not commit {rel}: {(proc.stderr or proc.stdout).strip()[:300]}")
            return False
    log(f"    committed {rel}")
    return True


# --------------------------------------------------------------------------------------------
# many runs
# --------------------------------------------------------------------------------------------


def _minutes(s: float) -> str:
    return f"{s:.0f} s" if s < 90 else (f"{s / 60:.1f} min" if s < 5400 else f"{s / 3600:.1f} h")


def bar(done: int, total: int, width: int = 20) -> str:
    """'[#####...............]  5/20'."""
    fill = round(width * done / total) if total else width
    return f"[{'#' * fill}{'.' * (width - fill)}] {done:>{len(str(total))}}/{total}"


def todo(runs: Sequence, *, stale: bool = False, rerun: bool | None = None) -> list[tuple]:
    """``(run, state, action)`` for each run; action is 'load', 'train', 'retrain' (fresh, no
    resume) or 'evaluate' (add the missing evaluation). ``rerun``: recompute every stored result
    (default: those older than :func:`rerun_since` when ``SSVI_RERUN=1``)."""
    since = rerun_since() if rerun is None else (math.inf if rerun else None)
    out = []
    for run in runs:
        st = state(run)
        if st != "missing" and since is not None and result_path(run).stat().st_mtime < since:
            action = "retrain"
        elif st == "missing":
            action = "train"
        elif st == "incomplete":
            action = "evaluate"
        elif st == "stale" and stale:
            action = "retrain"
        else:
            action = "load"
        out.append((run, st, action))
    return out


def execute(runs: Sequence, *, train: bool = True, stale: bool = False,
            rerun: bool | None = None, progress: bool = False, commit: bool = False,
            threads: int | None = None, keep_going: bool = False, log=print) -> list[dict]:
    """Train what is missing (``train=True``) and load the rest; return the records in order.
    With ``train=False`` only the stored records are returned (the missing ones are left out).

    ``stale``: recompute stale results; ``rerun``: recompute all (default: ``SSVI_RERUN``).
    ``progress``: the trainer's per-epoch lines. ``commit``: git-commit each results file as it
    lands. ``threads``: torch threads while training. ``keep_going``: a run that fails is
    reported and skipped (its record is left out) instead of stopping the others.
    """
    plan = todo(runs, stale=stale, rerun=rerun)
    work = [(r, s, a) for r, s, a in plan if a != "load"]
    if work and not train:
        if log is not None:
            log(f"{len(plan)} run(s): {len(plan) - len(work)} stored; {len(work)} not stored "
                "(left out; `make grid` makes them)")
        work = []
    old_threads = None
    if work and threads:
        import torch
        old_threads = torch.get_num_threads()
        torch.set_num_threads(int(threads))
    if log is not None and plan and train:
        log(f"{len(plan)} run(s): {len(plan) - len(work)} stored, {len(work)} to compute")
    by_key, spent, failures = {}, [], []
    try:
        for i, (run, st, action) in enumerate(work, 1):
            t0 = time.perf_counter()
            key = (run.folder, run.run_id)
            if log is not None and progress:   # the grid: say what runs now, epochs follow
                log(f"{bar(i - 1, len(work))}  {action} {run.folder}/{run.run_id}  "
                    f"({run.describe()})")
            try:
                if action == "evaluate":
                    rec = evaluate_after(run, read(result_path(run)))
                else:
                    rec = train_run(run, progress=progress, fresh=action == "retrain",
                                    log=log if progress else _quiet)
            except Exception as err:
                if not keep_going:
                    raise
                failures.append(f"{run.folder}/{run.run_id}: {type(err).__name__}: {err}")
                if log is not None:
                    log(f"    FAILED: {type(err).__name__}: {err}")
                continue
            by_key[key] = rec
            spent.append(time.perf_counter() - t0)
            if commit:
                commit_result(result_path(run), f"results: {run.folder}/{run.run_id} "
                                                f"({run.describe()})", log=log or _quiet)
            if log is not None:
                left = len(work) - i
                eta = f", about {_minutes(left * sum(spent) / len(spent))} left" if left else ""
                note = " (diverged, stored as failed)" if rec.get("failed") else ""
                done = {"evaluate": "evaluated", "retrain": "retrained"}.get(action, "trained")
                log(f"{bar(i, len(work))}  {done} {run.folder}/{run.run_id} in "
                    f"{_minutes(spent[-1])}{note}{eta}")
    finally:
        if old_threads is not None:
            import torch
            torch.set_num_threads(old_threads)
    out = []
    for run, _, _ in plan:
        key = (run.folder, run.run_id)
        if key in by_key:
            out.append(by_key[key])
        elif result_path(run).exists():
            out.append(read(result_path(run)))
    if failures and log is not None:
        log("failed runs:\n  " + "\n  ".join(failures))
    return out


def _quiet(*_args, **_kw):
    return None
