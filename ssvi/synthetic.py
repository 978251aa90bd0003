"""The ``synthetic`` dataset: a small generated 10-class image problem, for tests and the tiny
preset. It is not CIFAR, and results on it must be labelled "synthetic" (data variant
"generated").

Each image is a class colour tint plus an oriented grating of class-dependent angle and
frequency with a random phase, plus pixel noise; 3x32x32 uint8, like CIFAR, and normalised with
the CIFAR-10 statistics so that the code paths match.
"""
from __future__ import annotations

import numpy as np

from .cifar import NORMALIZATION, ArrayDataset

TINT, AMPLITUDE, NOISE = 0.06, (0.06, 0.15), 0.2  # class signal vs pixel noise


def synthetic_images(n: int, n_classes: int, seed: int, stream: int):
    """``n`` images (uint8 (n, 3, 32, 32)) and int64 labels of ``n_classes`` learnable classes.

    The class prototypes depend on ``seed`` only (shared by every ``stream``); labels, phases,
    amplitudes and noise come from the generator ``(seed, stream)``.
    """
    if n < 0:
        raise ValueError(f"number of images must be >= 0, got {n}")
    proto = np.random.default_rng([seed, 0])  # class prototypes: shared by train and test
    tint = proto.normal(size=(n_classes, 3))
    tint /= np.linalg.norm(tint, axis=1, keepdims=True)
    angle = np.pi * np.arange(n_classes) / n_classes
    freq = 2.0 + (np.arange(n_classes) % 3)
    rng = np.random.default_rng([seed, stream])
    y = rng.integers(0, n_classes, n)
    phase = rng.uniform(0, 2 * np.pi, n)
    amp = rng.uniform(*AMPLITUDE, n)
    yy, xx = np.meshgrid(np.arange(32, dtype=np.float32), np.arange(32, dtype=np.float32),
                         indexing="ij")
    cos, sin = np.cos(angle[y]).astype(np.float32), np.sin(angle[y]).astype(np.float32)
    coord = xx[None] * cos[:, None, None] + yy[None] * sin[:, None, None]      # (N, 32, 32)
    grating = np.cos((2 * np.pi / 32) * freq[y].astype(np.float32)[:, None, None] * coord
                     + phase.astype(np.float32)[:, None, None])
    img = rng.standard_normal(size=(n, 3, 32, 32), dtype=np.float32)
    img *= NOISE
    img += (0.5 + TINT * tint[y]).astype(np.float32)[:, :, None, None]
    img += (amp.astype(np.float32)[:, None, None] * grating)[:, None]
    x = np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)
    return x, y.astype(np.int64)


def make_synthetic(n_train: int = 5000, n_test: int = 1000, seed: int = 0) -> ArrayDataset:
    """The ``synthetic`` dataset: 10 generated classes of 3x32x32 uint8 images (not CIFAR).

    Deterministic given ``seed``; a small network learns it to well above chance in one epoch.
    """
    x_train, y_train = synthetic_images(n_train, 10, seed, 1)
    x_test, y_test = synthetic_images(n_test, 10, seed, 2)
    mean, std = NORMALIZATION["synthetic"]
    return ArrayDataset("synthetic", x_train, y_train, x_test, y_test,
                        tuple(f"synthetic_{c}" for c in range(10)), mean, std)
