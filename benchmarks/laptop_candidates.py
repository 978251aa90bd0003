"""Accuracy against CPU minutes for a laptop-scale candidate (issue 10 §2): one `ssvi train` run
that also records, per epoch, the process CPU time and the wall time since the start.

    python benchmarks/laptop_candidates.py --threads 1 -- --dataset cifar10 --data-dir data \\
        --model resnet18 --width 0.125 --method dense_vi --epochs 4 --lr 0.05 --fast true \\
        --results-path results/laptop_candidates/resnet18_w0.125_dense_vi.json

Everything after ``--`` is passed to ``python -m ssvi train``. Each history entry of the results
JSON gains ``process_cpu_s`` (``time.process_time()``: all threads of this process, training and
evaluation up to the end of that epoch) and ``wall_s`` (wall clock since the start, inflated when
the machine is shared); the top level gains ``cpu_minutes``, ``children_cpu_minutes`` (compile workers) and ``threads``. CPU time is the
figure to plan a grid with on a shared machine.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _children_cpu() -> float:
    """CPU seconds of finished child processes (inductor's compile workers once they exit)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    own, rest = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else ([], argv)
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(own)
    import torch
    torch.set_num_threads(args.threads)
    from ssvi import trainer
    from ssvi.__main__ import main as ssvi_main

    cpu0, wall0 = time.process_time(), time.perf_counter()
    original = trainer._format_entry

    def format_entry(entry, epochs):   # called once per epoch, with the stored history entry
        entry["process_cpu_s"] = time.process_time() - cpu0
        entry["children_cpu_s"] = _children_cpu()
        entry["wall_s"] = time.perf_counter() - wall0
        entry["load_avg_1min"] = os.getloadavg()[0]
        return original(entry, epochs) + (f"  cpu {entry['process_cpu_s'] / 60:.1f} min"
                                          f"  wall {entry['wall_s'] / 60:.1f} min")

    trainer._format_entry = format_entry
    rc = ssvi_main(["train", *rest])
    out = rest[rest.index("--results-path") + 1] if "--results-path" in rest else None
    if out and os.path.exists(out):
        res = json.loads(Path(out).read_text())
        res["cpu_minutes"] = (time.process_time() - cpu0) / 60
        res["children_cpu_minutes"] = _children_cpu() / 60
        res["wall_minutes"] = (time.perf_counter() - wall0) / 60
        res["threads"] = args.threads
        res["launched_by"] = "benchmarks/laptop_candidates.py"
        tmp = out + ".tmp"
        Path(tmp).write_text(json.dumps(res, indent=1))
        os.replace(tmp, out)
    return rc or 0


if __name__ == "__main__":
    sys.exit(main())
