"""Atomic files, versioned checkpoints and sparse checkpoints.

* :func:`atomic_save` / :func:`atomic_write_text` / :func:`atomic_write_json` write a temporary
  file next to the target, fsync it and ``os.replace`` it over the target, so a crash leaves
  either the old file or the new one, never half of one.
* :func:`save_checkpoint` / :func:`load_checkpoint` add and check a ``format``/``version`` header
  and turn every way a file can be unusable into a :class:`CheckpointError` that says what to do.
* :func:`save_sparse` / :func:`load_sparse` store only the active entries of each masked layer
  (flat indices, mu, rho), which is what makes a sparse BNN small on disk (Table 2, "Complexity").
  They rely on the invariant the subspace controller keeps: inactive entries have mu == 0 and
  rho == 0, so the round trip restores a bitwise-identical ``state_dict``.
"""
from __future__ import annotations

import json
import os
import pickle
import secrets
import zipfile
from pathlib import Path

import torch
import torch.nn as nn

from .errors import CheckpointError
from .layers import bayes_layers

FORMAT = "ssvi-checkpoint"
VERSION = 1


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """No file at the checkpoint path (also a FileNotFoundError)."""


# -- atomic writes -----------------------------------------------------------------------------
def _fsync_dir(directory: Path) -> None:
    """fsync a directory so a rename in it is durable; silently skipped where unsupported."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _temp_name(path: Path) -> Path:
    return path.parent / f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp"


def stale_temp_files(path) -> list[Path]:
    """Temporary files an interrupted atomic write of ``path`` left beside it
    (``.<name>.*.tmp``, and ``<name>.tmp`` from older versions)."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    found = list(path.parent.glob(f".{path.name}.*.tmp"))
    legacy = path.parent / f"{path.name}.tmp"
    if legacy.is_file():
        found.append(legacy)
    return sorted(p for p in found if p.is_file())


def remove_stale_temp_files(path) -> list[Path]:
    """Delete what :func:`stale_temp_files` finds (call it before a writer starts, when no other
    process writes ``path``); returns the deleted paths."""
    removed = []
    for tmp in stale_temp_files(path):
        try:
            tmp.unlink()
            removed.append(tmp)
        except FileNotFoundError:
            pass
    return removed


def _atomic_write(path, write) -> Path:
    """Call ``write(binary_file)`` on a temp file beside ``path``, fsync, then rename over it.

    The file is created with mode 0666 less the umask (0644 under umask 022), like ``open``;
    a temp file left by a crash is named ``.<name>.<pid>-<random>.tmp``
    (see :func:`remove_stale_temp_files`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)
    return path


def atomic_save(obj, path) -> Path:
    """``torch.save(obj, path)`` that never leaves a half-written ``path`` (temp file + rename)."""
    return _atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    data = text.encode("utf-8")
    return _atomic_write(path, lambda f: f.write(data))


def atomic_write_json(path, obj, *, indent: int = 2, sort_keys: bool = False) -> Path:
    """Write ``obj`` as JSON (indented, trailing newline) to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=sort_keys) + "\n")


# -- versioned checkpoints -----------------------------------------------------------------------
def save_checkpoint(path, payload: dict) -> Path:
    """Atomically save ``payload`` with ``"format": "ssvi-checkpoint", "version": 1`` added.

    Keep the payload to tensors, numbers, strings, lists and dicts (e.g. ``state_dict()``s and
    ``dataclasses.asdict(config)``) so that :func:`load_checkpoint` can read it with torch's safe
    ``weights_only`` loader.
    """
    if not isinstance(payload, dict):
        raise ValueError(f"save_checkpoint: payload must be a dict, got {type(payload).__name__}")
    clash = sorted({"format", "version"} & set(payload))
    if clash:
        raise ValueError(f"save_checkpoint: payload keys {clash} are reserved for the header")
    return atomic_save({"format": FORMAT, "version": VERSION, **payload}, path)


def load_checkpoint(path, map_location="cpu", *, weights_only: bool = True) -> dict:
    """Load a checkpoint written by :func:`save_checkpoint`; returns the payload (header removed).

    Raises :class:`CheckpointError` (:class:`CheckpointNotFoundError` when the file is missing)
    with a message saying what is wrong and what to do.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFoundError(f"no checkpoint at {path}")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated (not a complete torch "
                              "zip archive); delete it to start over or restore a backup")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=weights_only)
    except pickle.UnpicklingError as e:
        lines = str(e).splitlines() or [type(e).__name__]
        first = lines[0]
        if "weights only load failed" in str(e).lower():
            reason = next((ln.strip() for ln in lines if "WeightsUnpickler error" in ln), first)
            raise CheckpointError(
                f"checkpoint {path} cannot be read by torch's safe loader ({reason}): it is "
                "corrupt, or holds objects other than tensors, numbers, strings, lists and dicts; "
                "restore a backup, or pass weights_only=False if you trust the file") from e
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({first}); "
                              "delete it to start over or restore a backup") from e
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile, KeyError,
            IndexError, UnicodeDecodeError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({reason}); "
                              "delete it to start over or restore a backup") from e
    if not isinstance(obj, dict) or obj.get("format") != FORMAT or "version" not in obj:
        raise CheckpointError(f"{path} is not an ssvi checkpoint (no 'format': '{FORMAT}' and "
                              "'version' header); write it with ssvi.checkpoint.save_checkpoint")
    if obj["version"] > VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {obj['version']}, newer than "
                              f"this ssvi ({VERSION}); upgrade ssvi to read it")
    return {k: v for k, v in obj.items() if k not in ("format", "version")}


# -- sparse checkpoints --------------------------------------------------------------------------
def _layer_keys(name: str) -> tuple[str, str, str]:
    prefix = f"{name}." if name else ""
    return f"{prefix}mu", f"{prefix}rho", f"{prefix}mask"


def save_sparse(model: nn.Module, path, metadata: dict | None = None) -> Path:
    """Save ``model`` keeping only the active entries of each masked layer (exact, fp32 stays fp32).

    Per masked layer: its shape, the flat indices of active entries (int32, int64 past 2^31
    entries), mu there, and rho there (None for a deterministic layer). Every other state_dict
    entry (BatchNorm, biases, ...) is stored as is, and ``metadata`` (e.g. model name, width,
    num_classes) is stored for rebuilding the model. Raises ValueError if an inactive entry has a
    non-zero mu or rho, since that value would be lost.
    """
    layers = {}
    skip = set()
    for name, m in bayes_layers(model):
        skip.update(_layer_keys(name))
        flat = torch.nonzero(m.mask.detach().reshape(-1)).reshape(-1)      # int64, sorted
        entry = {"shape": list(m.mu.shape), "rho": None}
        for key in ("mu", "rho"):
            t = getattr(m, key)
            if t is None:
                continue
            t = t.detach().reshape(-1)
            values = t.index_select(0, flat)
            # non-zeros outside the mask = all non-zeros - non-zeros on the mask (-0.0 counts as 0)
            n_lost = int(torch.count_nonzero(t)) - int(torch.count_nonzero(values))
            if n_lost:
                raise ValueError(f"save_sparse: layer {name!r} has {n_lost} inactive entries with "
                                 f"non-zero {key}; zero them (mask False => mu = rho = 0) first")
            entry[key] = values.cpu()
        small = m.mask.numel() <= torch.iinfo(torch.int32).max
        entry["index"] = (flat.to(torch.int32) if small else flat).cpu()
        layers[name] = entry
    dense = {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if k not in skip}
    return save_checkpoint(path, {"sparse_model": {"layers": layers, "dense": dense},
                                  "metadata": dict(metadata or {})})


def read_sparse_metadata(path) -> dict:
    """The ``metadata`` dict stored by :func:`save_sparse` (to rebuild the model before loading)."""
    return _load_sparse_payload(path)["metadata"]


def _load_sparse_payload(path) -> dict:
    payload = load_checkpoint(path)
    if "sparse_model" not in payload:
        raise CheckpointError(f"{path} is an ssvi checkpoint but not a sparse model "
                              "(no 'sparse_model' entry); it was not written by save_sparse")
    return payload


def load_sparse(path, model: nn.Module) -> dict:
    """Restore a :func:`save_sparse` file into ``model`` (same architecture); returns metadata.

    Masks, mu and rho are set on the stored active entries and to zero elsewhere; every other
    state_dict entry is loaded as stored. Raises ValueError naming the mismatch when layer names,
    shapes or Bayesian/deterministic kinds differ from ``model``.
    """
    payload = _load_sparse_payload(path)
    stored = payload["sparse_model"]["layers"]
    ours = dict(bayes_layers(model))
    if set(stored) != set(ours):
        raise ValueError(f"load_sparse: {path} does not match the model's masked layers; only in "
                         f"file: {sorted(set(stored) - set(ours))}, only in model: "
                         f"{sorted(set(ours) - set(stored))}; rebuild the model from the stored "
                         f"metadata {payload['metadata']}")
    state = dict(payload["sparse_model"]["dense"])
    for name, m in ours.items():
        s = stored[name]
        if list(m.mu.shape) != list(s["shape"]):
            raise ValueError(f"load_sparse: layer {name!r} has shape {list(m.mu.shape)} in the "
                             f"model but {s['shape']} in {path}")
        if (m.rho is None) != (s["rho"] is None):
            kinds = ("deterministic", "Bayesian")
            raise ValueError(f"load_sparse: layer {name!r} is {kinds[m.rho is not None]} in the "
                             f"model but {kinds[s['rho'] is not None]} in {path}")
        numel, index = m.mu.numel(), s["index"].long()
        if index.numel() and (index.min() < 0 or index.max() >= numel):
            raise CheckpointError(f"checkpoint {path}: layer {name!r} has indices out of range; "
                                  "the file is corrupt")
        mu_key, rho_key, mask_key = _layer_keys(name)
        mask = torch.zeros(numel, dtype=torch.bool).index_fill_(0, index, True)
        state[mask_key] = mask.reshape(m.mu.shape)
        for key, value in ((mu_key, s["mu"]), (rho_key, s["rho"])):
            if value is not None:
                if value.shape != index.shape:
                    raise CheckpointError(f"checkpoint {path}: layer {name!r} stores "
                                          f"{value.numel()} values for {index.numel()} indices; "
                                          "the file is corrupt")
                full = torch.zeros(numel, dtype=value.dtype).index_copy_(0, index, value)
                state[key] = full.reshape(m.mu.shape)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"load_sparse: {path} does not fit the model ({e}); rebuild the model "
                         f"from the stored metadata {payload['metadata']}") from e
    return payload["metadata"]
