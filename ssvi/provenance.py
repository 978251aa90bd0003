"""Run provenance: which code, on which hardware and software, when, with which seed.

Stored in every results record (``record["provenance"]``, :mod:`ssvi.results`) so a number can be
traced to the code and machine that produced it; the key of the commit is ``commit``. Host names
are deliberately not recorded. Which code computed a result is also fixed, independently of git,
by the record's code fingerprint (:func:`ssvi.results.code_fingerprint`).
"""
from __future__ import annotations

import datetime
import os
import platform
import subprocess
from pathlib import Path

import torch

_REPO_DIR = Path(__file__).resolve().parent.parent


def _git(*args: str, cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_state(repo_dir=None) -> dict:
    """``{"commit": full sha or "unknown", "dirty": bool or None}`` for ``repo_dir``.

    ``repo_dir`` defaults to the checkout holding the ``ssvi`` package. ``dirty`` is True when
    tracked files differ from the commit (untracked files, e.g. fresh results, do not count);
    it is None when the commit is unknown (no git, not a repository, or no commit yet).
    """
    cwd = Path(repo_dir) if repo_dir is not None else _REPO_DIR
    sha = _git("rev-parse", "--verify", "HEAD", cwd=cwd)
    if not sha:
        return {"commit": "unknown", "dirty": None}
    status = _git("status", "--porcelain", "--untracked-files=no", cwd=cwd)
    return {"commit": sha, "dirty": None if status is None else bool(status)}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def device_info(device=None) -> dict:
    """Name of ``device`` (a CUDA device name, else the CPU model) and the CPU thread counts.

    ``device`` defaults to "cuda" when CUDA is available, else "cpu".
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    info = {"device": str(device), "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "cpu": _cpu_name()}
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
        info["cuda_version"] = torch.version.cuda
    else:
        info["device_name"] = info["cpu"]
    return info


def provenance(device=None, seed=None, wall_time_s=None, repo_dir=None, fast=None,
               cpu_time_s=None) -> dict:
    """Provenance record of a run (results schema 2, ``record["provenance"]``).

    Keys: ``commit`` (full sha or "unknown") and ``dirty`` (tracked files differ from it; None
    when unknown), ``device`` ("cpu", "cuda:0"...), ``device_name`` (GPU or CPU model),
    ``torch_threads``, ``cpu_count``, ``cpu``, ``cuda_version`` (CUDA only), ``torch`` (version),
    ``python_version``, ``platform``, ``timestamp_utc``, ``seed``, ``wall_time_s`` (the caller's
    measured run time, as given), ``cpu_time_s`` (the process CPU time of the run, all threads, as
    given: the figure to plan a grid with on a shared machine) and ``fast`` (whether the fast
    path ran; None if not said).

    Never raises for a missing git or repository (the commit is then "unknown"). Records no host
    name: results are committed to a public repository, and the device name says the hardware.
    """
    return {
        **git_state(repo_dir),
        **device_info(device),
        "torch": torch.__version__,
        "python_version": platform.python_version(),
        "platform": f"{platform.system()} {platform.release()} {platform.machine()}",
        "timestamp_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "seed": seed,
        "wall_time_s": None if wall_time_s is None else float(wall_time_s),
        "cpu_time_s": None if cpu_time_s is None else float(cpu_time_s),
        "fast": None if fast is None else bool(fast),
    }
