#!/usr/bin/env python
"""Run every experiment of the book at one scale preset, resumably (``make grid PRESET=...``).

    python scripts/run_grid.py --preset cpu --dry-run    # list the runs and which are stored
    python scripts/run_grid.py --preset cpu              # train what is missing
    python scripts/run_grid.py --preset cpu --commit     # ... and git-commit each result file
    python scripts/run_grid.py --preset paper --only table1 --seeds 1
    python scripts/run_grid.py --preset cpu --stale      # also recompute stale results

The runs come from the registry (``ssvi.registry``: each artefact declares its runs at every
preset); a run shared by several artefacts (Table 2 and Figure 1 reuse Table 1's) is made once.
Each run keeps a checkpoint under ``runs/<folder>/<run id>/`` after every epoch and writes
``results/<folder>/<run id>.json`` when it finishes, so the grid can be stopped at any time and
started again (here or on another machine with the same ``runs/``) and continues where it
stopped. A progress bar and an estimate of the time left (from the runs trained so far) are
printed after every run. A run that fails is reported and the grid goes on; the exit status is
1 if any failed. ``SSVI_RERUN=1`` recomputes every run.

The notebooks then build the book from the stored results (``make book``), training nothing.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from ssvi import errors, registry, runner  # noqa: E402
from ssvi import experiments as E  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default=None,
                   help=f"one of {', '.join(E.PRESETS)} (default: $SSVI_PRESET, else "
                        f"{E.DEFAULT_PRESET})")
    p.add_argument("--only", action="append", metavar="ARTEFACT", choices=registry.names(),
                   help=f"only this artefact's runs (repeatable): {', '.join(registry.names())}")
    p.add_argument("--seeds", default=None,
                   help="a number of seeds ('3' = 0,1,2) or a comma list ('0,2'); default: "
                        "the preset's")
    p.add_argument("--dataset", default=None,
                   help="a comma list of datasets; default: each artefact's at the preset")
    p.add_argument("--data-dir", default=None, help="default: $SSVI_DATA, else <repo>/data")
    p.add_argument("--dry-run", action="store_true",
                   help="list the runs and their state (stored, stale, missing, ...) and exit")
    p.add_argument("--stale", action="store_true",
                   help="recompute stale results (computed by code that has changed since)")
    p.add_argument("--commit", action="store_true",
                   help="git-commit each results file as soon as it is written")
    p.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    p.add_argument("--debug", action="store_true", help="tracebacks instead of one-line errors")
    args = p.parse_args(argv)
    args.preset = E.resolve_preset(args.preset)
    if args.seeds is not None:
        try:
            args.seeds = ([int(s) for s in args.seeds.split(",") if s.strip()]
                          if "," in args.seeds else int(args.seeds))
        except ValueError:
            p.error(f"--seeds {args.seeds!r}: give a number of seeds or a comma list of seeds")
    if args.dataset is not None:
        args.dataset = [d.strip() for d in args.dataset.split(",") if d.strip()]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    runs = registry.grid(args.preset, only=args.only, seeds=args.seeds, dataset=args.dataset,
                         data_dir=args.data_dir)
    plan = runner.todo(runs, stale=args.stale)
    counts: dict[str, int] = {}
    for _, st, _ in plan:
        counts[st] = counts.get(st, 0) + 1
    print(f"preset {args.preset}: {len(runs)} runs ("
          + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + ")")
    if args.dry_run:
        for run, st, action in plan:
            ck = runner.checkpoint_dir(run) / "checkpoint.pt"
            note = " (checkpoint: resumes)" if action != "load" and ck.exists() else ""
            print(f"  {st:<10} {action:<8} {run.folder}/{run.run_id}  {run.describe()}{note}")
        return 0
    t0 = time.perf_counter()
    before = {(r.folder, r.run_id) for r, st, a in plan if a == "load"}
    records = runner.execute(runs, stale=args.stale, progress=not args.quiet,
                             commit=args.commit, keep_going=True)
    missing = len(runs) - len(records)
    made = len(records) - len(before)
    print(f"grid done in {(time.perf_counter() - t0) / 60:.1f} min: {made} computed, "
          f"{len(before)} already stored, {missing} failed")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(errors.cli_main(main))
