#!/usr/bin/env python
"""Run every experiment of the paper at one scale preset (by default ``paper``, on a GPU).

    python scripts/run_grid.py --dry-run                 # list the runs, say which exist
    python scripts/run_grid.py                           # train what is missing, then execute
                                                         # every notebook at the preset
    python scripts/run_grid.py --only table1 --seeds 1   # one experiment, one seed

The notebooks are the single source of truth for which runs an experiment needs: each one's
``parameters`` cell and the code cells up to the one that defines ``PLAN`` are executed here
(no training happens there), with ``preset``, ``seeds`` and ``dataset`` injected as papermill
would. ``PLAN`` holds TrainConfigs (or ``ssvi.report.Run`` objects, or tuples holding a
TrainConfig); the experiment folder is the notebook's ``TRAIN_EXPERIMENT`` or ``EXPERIMENT``.

Then, per run: skipped if ``results/<experiment>/<run-id>.json`` exists (the run-id cache),
else trained with a checkpoint under ``runs/<experiment>/<run-id>/`` so that an interrupted
grid resumes where it stopped when started again. Runs whose config carries an ``on_update``
entry in ``extra`` (they log something through a hook their notebook defines, e.g. the IoU
appendix) and runs that diverge (non-finite loss) are left to their notebook. Finally every
notebook is executed with papermill at the preset (``--no-notebooks`` skips this), which loads
the stored runs, trains what was left to it and evaluates (e.g. distribution shift); the
executed copies are written to ``build_scratch/grid/``.

Datasets: CIFAR-10 always; CIFAR-100 too when its files exist under the data directory,
otherwise it is skipped with a message.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing

import nbformat  # noqa: E402

import ssvi.experiments as E  # noqa: E402
import ssvi.report as R  # noqa: E402
from ssvi.config import TrainConfig  # noqa: E402

#: every experiment notebook of the paper, in book order (the summary page reuses table1's runs)
NOTEBOOKS = ("table1", "table2", "figure1", "figure2_sparsity", "figure2_robustness",
             "figure3_ablations", "appendix_shift", "appendix_iou")
DATASETS = ("cifar10", "cifar100")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="paper", help="tiny, cpu or paper (default: paper)")
    p.add_argument("--only", action="append", metavar="EXPERIMENT",
                   help=f"run only this experiment (repeatable); one of {', '.join(NOTEBOOKS)}")
    p.add_argument("--seeds", default=None,
                   help="a number of seeds ('3' = 0,1,2) or a comma list ('0,2'); "
                        "default: the preset's (paper: 0,1,2)")
    p.add_argument("--datasets", default=",".join(DATASETS),
                   help="comma list (default: cifar10,cifar100; a dataset without files is "
                        "skipped with a message)")
    p.add_argument("--data-dir", default=None, help="default: $SSVI_DATA, else <repo>/data")
    p.add_argument("--dry-run", action="store_true", help="list the runs and exit")
    p.add_argument("--no-notebooks", action="store_true",
                   help="train only; do not execute the notebooks afterwards")
    p.add_argument("--out", default=str(REPO / "build_scratch" / "grid"),
                   help="folder for the executed notebooks")
    args = p.parse_args(argv)
    args.preset = E.resolve_preset(args.preset)
    for name in args.only or ():
        if name not in NOTEBOOKS:
            p.error(f"--only {name!r}: choose one of {', '.join(NOTEBOOKS)}")
    args.only = list(args.only or NOTEBOOKS)
    try:
        if args.seeds is None:
            seeds = None
        elif "," in args.seeds:
            seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        else:
            seeds = int(args.seeds)
        args.seeds = list(R.resolve_seeds(seeds, args.preset))
    except ValueError as e:
        p.error(f"--seeds {args.seeds!r}: {e}")
    args.datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    bad = [d for d in args.datasets if d not in ("cifar10", "cifar100", "synthetic")]
    if bad:
        p.error(f"--datasets: unknown {bad}; choose from cifar10, cifar100, synthetic")
    return args


def notebook_params(path: Path) -> str:
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code" and "parameters" in cell.metadata.get("tags", []):
            return cell.source
    raise ValueError(f"{path} has no cell tagged 'parameters'")


def _code(source: str) -> str:
    """A cell's source without IPython magics / shell lines (not needed to build a plan)."""
    return "\n".join(l for l in source.splitlines() if not l.lstrip().startswith(("%", "!")))


def extract_plan(path: Path, params: dict) -> tuple[str, list[TrainConfig]]:
    """(experiment folder, TrainConfigs) of ``path``'s ``PLAN`` under the injected ``params``.

    Executes the parameters cell, then ``params`` (as papermill injects them), then the code
    cells in order until one defines ``PLAN``.
    """
    nb = nbformat.read(path, as_version=4)
    ns: dict = {"__name__": f"grid_{path.stem}"}
    cells = [c for c in nb.cells if c.cell_type == "code"]
    start = next((i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", [])),
                 None)
    if start is None:
        raise ValueError(f"{path} has no cell tagged 'parameters'")
    cwd = os.getcwd()
    os.chdir(path.parent)  # as when the notebook runs
    try:
        exec(compile(_code(cells[start].source), f"{path.name}[parameters]", "exec"), ns)
        unknown = [k for k in params if k not in ns]
        if unknown:
            raise ValueError(f"{path.name} has no parameter(s) {unknown}")
        ns.update(params)
        for i, cell in enumerate(cells[start + 1:], start + 1):
            exec(compile(_code(cell.source), f"{path.name}[cell {i}]", "exec"), ns)
            if "PLAN" in ns:
                break
        else:
            raise ValueError(f"{path.name}: no code cell defines PLAN")
    finally:
        os.chdir(cwd)
    experiment = ns.get("TRAIN_EXPERIMENT") or ns.get("EXPERIMENT")
    if not experiment:
        raise ValueError(f"{path.name} defines PLAN but neither EXPERIMENT nor TRAIN_EXPERIMENT")
    cfgs = []
    for entry in ns["PLAN"]:
        if isinstance(entry, R.Run):
            experiment, cfg = entry.experiment, entry.cfg
        elif isinstance(entry, TrainConfig):
            cfg = entry
        else:
            cfg = next((x for x in entry if isinstance(x, TrainConfig)), None)
            if cfg is None:
                raise ValueError(f"{path.name}: a PLAN entry holds no TrainConfig: {entry!r}")
        cfgs.append(cfg)
    return experiment, cfgs


def describe(cfg: TrainConfig) -> str:
    return R.Run("-", cfg).describe().split("  ", 1)[1]


def needs_notebook(cfg: TrainConfig) -> bool:
    """True for runs that log through an on_update hook their notebook defines."""
    return "on_update" in (cfg.extra or {})


def train(experiment: str, cfg: TrainConfig) -> str:
    """Train one run with a resumable checkpoint; returns 'trained' or why it was left."""
    from ssvi.trainer import NonFiniteLossError
    run = R.Run(experiment, cfg)
    cfg = dataclasses.replace(cfg, run_dir=R.checkpoint_dir(run), progress=True)
    try:
        E.run(experiment, cfg, results_dir=R.results_root())
    except NonFiniteLossError as e:
        print(f"    diverged ({e}); left to the notebook, which records the failure")
        return "diverged"
    return "trained"


def execute_notebook(name: str, params: dict, out_dir: Path) -> None:
    import papermill as pm
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{name}-{params.get('dataset', 'default')}.ipynb"
    pm.execute_notebook(str(REPO / "notebooks" / f"{name}.ipynb"), str(out), parameters=params,
                        cwd=str(REPO / "notebooks"), kernel_name="python3", progress_bar=False)
    print(f"    wrote {out}")


def main(argv=None) -> int:
    args = parse_args(argv)
    datasets = []
    for d in args.datasets:
        if R.dataset_available(d, args.data_dir):
            datasets.append(d)
        else:
            print(f"skipping {d}: no files under {R.data_root(args.data_dir)} "
                  f"(put the official archive there to include it)")
    if not datasets:
        print("no dataset available; nothing to do", file=sys.stderr)
        return 1
    if args.data_dir:
        os.environ["SSVI_DATA"] = os.path.abspath(args.data_dir)

    todo, seen, jobs = [], set(), []
    for name in args.only:
        path = REPO / "notebooks" / f"{name}.ipynb"
        if not path.exists():
            print(f"{name}: notebooks/{name}.ipynb does not exist yet; skipped")
            continue
        for ds in datasets:
            params = {"preset": args.preset, "seeds": args.seeds, "dataset": ds}
            with contextlib.redirect_stdout(io.StringIO()):  # the notebook's own plan printout
                experiment, cfgs = extract_plan(path, params)
            jobs.append((name, params))
            new = done = shared = 0
            for cfg in cfgs:
                key = (experiment, E.run_id(cfg))
                if key in seen:
                    shared += 1
                    continue
                seen.add(key)
                if R.is_done(R.Run(experiment, cfg)):
                    done += 1
                else:
                    new += 1
                    todo.append((name, experiment, cfg))
            print(f"{name} [{ds}]: {len(cfgs)} runs in results/{experiment}/: {done} stored, "
                  f"{new} to run, {shared} shared with an earlier notebook")

    print(f"\n{len(todo)} run(s) to make at preset {args.preset!r}, seeds {args.seeds}:")
    for name, experiment, cfg in todo:
        note = "  [trained by its notebook: on_update hook]" if needs_notebook(cfg) else ""
        print(f"  {experiment}/{E.run_id(cfg)}  {describe(cfg)}{note}")
    if args.dry_run:
        return 0

    failures = []
    t0 = time.perf_counter()
    for i, (name, experiment, cfg) in enumerate(todo, 1):
        if needs_notebook(cfg):
            continue
        print(f"\n[{i}/{len(todo)}] {experiment}/{E.run_id(cfg)}  {describe(cfg)}", flush=True)
        try:
            train(experiment, cfg)
        except Exception as e:  # keep going: one broken run must not stop a GPU session
            failures.append(f"{experiment}/{E.run_id(cfg)}: {type(e).__name__}: {e}")
            print(f"    FAILED: {type(e).__name__}: {e}")
    print(f"\ntraining phase done in {(time.perf_counter() - t0) / 60:.1f} min")

    if not args.no_notebooks:
        for name, params in jobs:
            print(f"\nexecuting notebooks/{name}.ipynb with {params}", flush=True)
            try:
                execute_notebook(name, params, Path(args.out))
            except Exception as e:
                failures.append(f"notebook {name} {params}: {type(e).__name__}: {e}")
                print(f"    FAILED: {type(e).__name__}: {str(e)[:2000]}")
    if failures:
        print("\nfailures:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
