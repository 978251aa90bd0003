"""Test fakes: generated images written in the exact official CIFAR python layouts.

``write_fake_cifar`` writes Python-2 pickles like the official files (``bytes`` as Python-2
``str`` opcodes), so readers using ``encoding="latin1"`` (torchvision, ssvi) and
``encoding="bytes"`` (the CIFAR web page's snippet) both see the usual keys.
``poison_cross_entropy`` makes the trainer's loss NaN from a chosen call on (divergence tests).
"""
from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np

from ssvi.cifar import CIFAR10_CLASSES, LAYOUT
from ssvi.synthetic import synthetic_images


class _Py2Pickler(pickle._Pickler):
    """Writes ``bytes`` as Python-2 ``str`` opcodes, as the official files do."""
    dispatch = dict(pickle._Pickler.dispatch)

    def _save_py2_str(self, obj):
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str


def dump_py2(obj, path: Path) -> None:
    """Pickle ``obj`` to ``path`` at protocol 2 with Python-2 byte strings."""
    with open(path, "wb") as f:
        _Py2Pickler(f, protocol=2).dump(obj)


def write_fake_cifar(root, kind: str = "cifar10", n_train: int = 100, n_test: int = 50,
                     seed: int = 0) -> Path:
    """Write generated images in the exact official python layout of ``kind`` under ``root``.

    The images are synthetic-style patterns (so a model can learn them) with the 10 or 100
    classes of ``kind``; CIFAR-10's ``n_train`` images are spread over the five training
    batches. Returns the dataset folder (e.g. ``root/cifar-10-batches-py``).
    """
    lay = LAYOUT[kind]
    n_classes = 10 if kind == "cifar10" else 100
    x_train, y_train = synthetic_images(n_train, n_classes, seed, 1)
    x_test, y_test = synthetic_images(n_test, n_classes, seed, 2)
    folder = Path(root) / lay.folder
    folder.mkdir(parents=True, exist_ok=True)

    def batch(x, y, label, first):
        entry = {b"batch_label": label.encode(), b"data": x.reshape(len(x), 3072),
                 b"filenames": [b"fake_%06d.png" % (first + i) for i in range(len(x))]}
        if kind == "cifar10":
            entry[b"labels"] = [int(v) for v in y]
        else:
            entry[b"fine_labels"] = [int(v) for v in y]
            entry[b"coarse_labels"] = [int(v) // 5 for v in y]
        return entry

    chunks = np.array_split(np.arange(n_train), len(lay.train_files))
    for i, (name, idx) in enumerate(zip(lay.train_files, chunks)):
        dump_py2(batch(x_train[idx], y_train[idx], f"training batch {i + 1} of "
                       f"{len(lay.train_files)}", int(idx[0]) if len(idx) else 0), folder / name)
    dump_py2(batch(x_test, y_test, "testing batch 1 of 1", n_train), folder / lay.test_file)
    if kind == "cifar10":
        meta = {b"label_names": [c.encode() for c in CIFAR10_CLASSES],
                b"num_cases_per_batch": int(len(chunks[0])), b"num_vis": 3072}
    else:
        meta = {b"fine_label_names": [b"fake_fine_%02d" % c for c in range(100)],
                b"coarse_label_names": [b"fake_coarse_%02d" % c for c in range(20)]}
    dump_py2(meta, folder / lay.meta_file)
    return folder


def poison_cross_entropy(monkeypatch, after: int) -> None:
    """From its ``after + 1``-th call on, ``ssvi.trainer``'s cross-entropy returns NaN."""
    from ssvi import trainer
    real_ce = trainer.F.cross_entropy
    calls = {"n": 0}

    def poisoned(*a, **k):
        calls["n"] += 1
        out = real_ce(*a, **k)
        return out * float("nan") if calls["n"] > after else out

    monkeypatch.setattr(trainer.F, "cross_entropy", poisoned)
