"""The arrays a run uses, the one on-device loader, and the data fingerprint of a run.

Splits (:func:`split_train`): the validation split is the **last** ``val_size`` images of the
training set (the official order is already random; no seed involved), and ``train_subset`` /
``test_subset`` keep the **first** N images of what remains (not class-balanced; the official
orders are random, so the classes are close to balanced).

The loader (:class:`Loader`) keeps a whole split on the target device as uint8 and builds each
batch with batched tensor ops: random crop 32 with zero padding 4 and a horizontal flip (the
semantics of torchvision ``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip()``), then float
conversion and the per-channel normalisation of the recipe. The permutation and the augmentation
of epoch ``e`` come from a CPU ``torch.Generator`` seeded from ``(seed, e)`` only, so epoch ``e``
gives the same batches on any device and regardless of what was iterated before (exact resume).
With ``shard=(rank, world)`` it serves rank ``rank``'s contiguous 1/``world`` of every global
batch (data parallelism, :mod:`ssvi.distributed`).

The data fingerprint (:func:`data_fingerprint`, :attr:`Data.fingerprint`) says what a run was
computed from: the dataset, its variant (:func:`ssvi.cifar.identify_variant`) and the sha256 of
the arrays actually used (train, validation and test after the subsets).
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from .cifar import (CIFAR10_MEAN, CIFAR10_STD, LAYOUT, ArrayDataset, data_root, identify_variant,
                    load_cifar)
from .config import DATASETS
from .errors import ConfigError, DataError
from .synthetic import make_synthetic

__all__ = ["ArrayDataset", "Data", "Loader", "SplitError", "arrays_sha256", "crop_flip",
           "data_fingerprint", "epoch_seed", "load_dataset", "make_loaders", "resolve_device",
           "split_arrays", "split_train"]


class SplitError(DataError, ValueError):
    """The data cannot give the requested split (also a ValueError)."""


def load_dataset(name: str, data_dir=None, download: bool = False) -> ArrayDataset:
    """Load ``name`` (``cifar10``, ``cifar100`` or ``synthetic``) as uint8 NCHW arrays."""
    if name == "synthetic":
        return make_synthetic()
    if name in LAYOUT:
        return load_cifar(name, data_dir, download)
    raise ConfigError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


def split_train(x: np.ndarray, y: np.ndarray, val_size: int = 0, train_subset: int | None = None):
    """Hold out the LAST ``val_size`` training images, then keep the FIRST ``train_subset``.

    Returns ``(x_train, y_train, x_val, y_val)``; the validation arrays are None when
    ``val_size == 0``. The validation split does not depend on ``train_subset``.
    """
    n = len(x)
    if val_size < 0 or val_size >= n:
        raise SplitError(f"val_size={val_size} must be in [0, {n}) for {n} training images")
    x_val = y_val = None
    if val_size:
        x_val, y_val = x[n - val_size:], y[n - val_size:]
        x, y = x[:n - val_size], y[:n - val_size]
    if train_subset is not None:
        if not 1 <= train_subset <= len(x):
            raise SplitError(f"train_subset={train_subset} must be in [1, {len(x)}] "
                             f"(training images left after val_size={val_size})")
        x, y = x[:train_subset], y[:train_subset]
    return x, y, x_val, y_val


def split_arrays(ds: ArrayDataset, val_size: int = 0, train_subset: int | None = None,
                 test_subset: int | None = None) -> dict:
    """The arrays a run uses: ``x_train, y_train, x_val, y_val, x_test, y_test`` (val: None when
    ``val_size == 0``), after :func:`split_train` and the FIRST ``test_subset`` test images."""
    x_tr, y_tr, x_val, y_val = split_train(ds.x_train, ds.y_train, val_size, train_subset)
    x_te, y_te = ds.x_test, ds.y_test
    if test_subset is not None:
        if not 1 <= test_subset <= len(x_te):
            raise SplitError(f"test_subset={test_subset} must be in [1, {len(x_te)}]")
        x_te, y_te = x_te[:test_subset], y_te[:test_subset]
    return dict(x_train=x_tr, y_train=y_tr, x_val=x_val, y_val=y_val, x_test=x_te, y_test=y_te)


# -- batches ---------------------------------------------------------------------------------------
def epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit generator seed that depends only on ``(seed, epoch)``."""
    if seed < 0 or epoch < 0:
        raise ValueError(f"seed and epoch must be >= 0, got seed={seed}, epoch={epoch}")
    a, b = np.random.SeedSequence([int(seed), int(epoch)]).generate_state(2, np.uint32)
    return (int(a) << 31) ^ int(b)


def crop_flip(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor,
              padding: int = 4) -> torch.Tensor:
    """Batched random crop with zero padding, then horizontal flip, as one gather.

    Image i is zero-padded by ``padding`` on every side and cropped at rows ``dy[i]:dy[i]+H``,
    columns ``dx[i]:dx[i]+W`` of the padded image (``dy, dx`` in ``[0, 2*padding]``), which is
    torchvision ``RandomCrop(H, padding)`` with offsets (i, j) = (dy, dx); then mirrored
    left-right where ``flip[i]``. ``x``: (N, C, H, W), any dtype; returns the same shape.
    """
    n, c, h, w = x.shape
    dev = x.device
    xp = F.pad(x, (padding, padding, padding, padding))
    ar_h = torch.arange(h, device=dev)
    ar_w = torch.arange(w, device=dev)
    rows = dy.to(dev).view(n, 1) + ar_h                                       # (N, H)
    cols = dx.to(dev).view(n, 1) + torch.where(flip.to(dev).view(n, 1), w - 1 - ar_w, ar_w)
    return xp[torch.arange(n, device=dev).view(n, 1, 1, 1),
              torch.arange(c, device=dev).view(1, c, 1, 1),
              rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]


class Loader:
    """A whole split on ``device`` as uint8 NCHW, served in batches of normalised floats.

    ``shuffle`` permutes the images every epoch; ``augment`` applies random crop 32 with zero
    padding 4 and a horizontal flip (p = 0.5) per image. Both default to off (an eval loader).
    Epoch ``e`` (``epoch_batches(e)``) is a pure function of ``(seed, e)``. Iterating the loader
    itself yields the batches of ``loader.epoch`` (set with :meth:`set_epoch`, default 0).
    ``mean``/``std`` are per-channel on the [0, 1] scale; None means only ``x / 255``.
    Batches are ``(x, y)``: float (N, C, H, W) of ``dtype`` (``channels_last`` if asked) and
    int64 labels, both on ``device``.

    ``shard=(rank, world)``: ``batch_size`` is the global batch (divisible by ``world``) and the
    loader yields rank ``rank``'s contiguous 1/``world`` of every global batch, with the same
    permutation and augmentation as the unsharded loader; only the shard is gathered. A final
    global batch smaller than ``world`` images is skipped, and a final batch not divisible by
    ``world`` loses its last ``size % world`` images. ``num_samples`` stays the split's size.
    """

    def __init__(self, x, y, batch_size: int, *, shuffle: bool = False, augment: bool = False,
                 drop_last: bool = False, seed: int = 0, device="cpu", mean=None, std=None,
                 padding: int = 4, channels_last: bool = False, dtype=torch.float32,
                 shard: tuple[int, int] | None = None):
        x = torch.as_tensor(x)
        y = torch.as_tensor(y)
        if x.dtype != torch.uint8 or x.dim() != 4:
            raise ValueError(f"Loader expects uint8 images (N, C, H, W), got {x.dtype} "
                             f"{tuple(x.shape)}")
        if y.shape != (x.shape[0],):
            raise ValueError(f"Loader: {tuple(y.shape)} labels for {x.shape[0]} images")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
        if x.shape[0] == 0:
            raise ValueError("Loader: the split is empty")
        self.device = torch.device(device)
        self.x = x.to(self.device)
        self.y = y.to(device=self.device, dtype=torch.int64)
        self.batch_size = int(batch_size)
        self.shuffle, self.augment, self.drop_last = bool(shuffle), bool(augment), bool(drop_last)
        self.seed, self.padding = int(seed), int(padding)
        self.channels_last, self.dtype = bool(channels_last), dtype
        self.epoch = 0
        self.rank, self.world_size = self._check_shard(shard)
        c = x.shape[1]
        mean = torch.zeros(c, dtype=torch.float64) if mean is None else torch.as_tensor(
            mean, dtype=torch.float64)
        std = torch.ones(c, dtype=torch.float64) if std is None else torch.as_tensor(
            std, dtype=torch.float64)
        if mean.shape != (c,) or std.shape != (c,) or bool((std <= 0).any()):
            raise ValueError(f"mean and std need {c} entries each (std > 0), got {mean.tolist()}"
                             f" and {std.tolist()}")
        self.mean, self.std = tuple(mean.tolist()), tuple(std.tolist())
        # (x / 255 - mean) / std  ==  x * scale + shift
        self._scale = (1.0 / (255.0 * std)).view(1, c, 1, 1).to(self.device, dtype)
        self._shift = (-mean / std).view(1, c, 1, 1).to(self.device, dtype)

    def _check_shard(self, shard) -> tuple[int, int]:
        rank, world = (0, 1) if shard is None else (int(shard[0]), int(shard[1]))
        if world < 1 or not 0 <= rank < world:
            raise ValueError(f"shard=(rank, world) needs 0 <= rank < world, got {shard}")
        if self.batch_size % world:
            raise ValueError(f"batch_size={self.batch_size} (the global batch) must be divisible "
                             f"by the number of processes ({world})")
        return rank, world

    def sharded(self, rank: int, world: int) -> "Loader":
        """This loader with ``shard=(rank, world)``; the device tensors are shared, not copied."""
        out = copy.copy(self)
        out.rank, out.world_size = out._check_shard((rank, world))
        return out

    @property
    def num_samples(self) -> int:
        return int(self.x.shape[0])

    def _global_batches(self) -> int:
        n, b = self.num_samples, self.batch_size
        return n // b if self.drop_last else math.ceil(n / b)

    def _shard_rows(self, lo: int, hi: int) -> tuple[int, int]:
        """Rows of global batch ``[lo, hi)`` that belong to this rank."""
        per = (hi - lo) // self.world_size
        start = lo + self.rank * per
        return start, start + per

    def _batch_rows(self):
        b, n = self.batch_size, self.num_samples
        for i in range(self._global_batches()):
            lo, hi = self._shard_rows(i * b, min((i + 1) * b, n))
            if hi > lo:
                yield lo, hi

    def __len__(self) -> int:
        return sum(1 for _ in self._batch_rows())

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch that ``iter(loader)`` serves."""
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.epoch_batches(self.epoch)

    def epoch_plan(self, epoch: int):
        """The CPU tensors that define epoch ``epoch`` (for every rank alike): (order, dy, dx,
        flip); the last three are None without augmentation, ``order`` without shuffling."""
        n = self.num_samples
        g = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
        order = torch.randperm(n, generator=g) if self.shuffle else None
        if not self.augment:
            return order, None, None, None
        offsets = torch.randint(0, 2 * self.padding + 1, (2, n), generator=g)
        flip = torch.randint(0, 2, (n,), generator=g).bool()
        return order, offsets[0], offsets[1], flip

    def normalize(self, x_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 images -> normalised floats of ``dtype`` (channels_last if asked)."""
        x = torch.addcmul(self._shift, x_uint8.to(self.dtype), self._scale)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def epoch_batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches ``(x, y)`` of epoch ``epoch``; a pure function of ``(seed, epoch)``."""
        order, dy, dx, flip = self.epoch_plan(epoch)
        # the plan goes to the device once per epoch: no per-batch host-to-device copies
        if order is not None:
            order = order.to(self.device, non_blocking=True)
        if dy is not None:
            dy, dx, flip = (t.to(self.device, non_blocking=True) for t in (dy, dx, flip))
        for lo, hi in self._batch_rows():
            if order is None:
                xb, yb = self.x[lo:hi], self.y[lo:hi]
            else:
                idx = order[lo:hi]
                xb, yb = self.x[idx], self.y[idx]
            if dy is not None:
                xb = crop_flip(xb, dy[lo:hi], dx[lo:hi], flip[lo:hi], self.padding)
            yield self.normalize(xb), yb

    def random_batch(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """One global batch of ``batch_size`` images drawn with replacement by ``generator`` (a
        CPU generator), augmented like the epoch batches; this rank's shard of it. Used by the
        K-step addition criterion."""
        n, b = self.num_samples, min(self.batch_size, self.num_samples)
        idx = torch.randint(0, n, (b,), generator=generator)
        xb = self.x[idx.to(self.device)]
        if self.augment:
            offsets = torch.randint(0, 2 * self.padding + 1, (2, b), generator=generator)
            flip = torch.randint(0, 2, (b,), generator=generator).bool()
            dy, dx, flip = (t.to(self.device) for t in (offsets[0], offsets[1], flip))
            xb = crop_flip(xb, dy, dx, flip, self.padding)
        x, y = self.normalize(xb), self.y[idx.to(self.device)]
        if self.world_size == 1:
            return x, y
        lo, hi = self._shard_rows(0, b)
        return x[lo:hi], y[lo:hi]


# -- the data fingerprint --------------------------------------------------------------------------
_PARTS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")
_FINGERPRINTS: dict = {}   # (source, val_size, train_subset, test_subset) -> fingerprint
_VARIANTS: dict = {}       # source -> identify_variant(...)
_LAST_LOADED: dict = {}    # source -> ArrayDataset (at most one, for data_fingerprint)


def _source(name: str, data_dir) -> tuple | None:
    """What identifies the files behind ``name``: the folder and each file's size and mtime
    (None when a file is missing)."""
    if name not in LAYOUT:
        return (name,)
    folder = (data_root(data_dir) / LAYOUT[name].folder).resolve()
    try:
        stats = tuple((f, st.st_size, st.st_mtime_ns) for f in LAYOUT[name].files
                      for st in [Path(folder, f).stat()])
    except OSError:
        return None
    return (name, str(folder), stats)


def _key(cfg, source) -> tuple:
    return (source, cfg.val_size, cfg.train_subset, cfg.test_subset)


def arrays_sha256(arrays: dict) -> str:
    """sha256 over the named arrays (``x_train, y_train, x_val, y_val, x_test, y_test``; None
    for an absent split), each with its name, dtype and shape."""
    h = hashlib.sha256()
    for part in _PARTS:
        arr = arrays.get(part)
        if arr is None:
            h.update(f"{part}:none;".encode())
            continue
        a = np.ascontiguousarray(np.asarray(arr))
        h.update(f"{part}:{a.dtype.str}:{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _fingerprint(cfg, ds: ArrayDataset, arrays: dict, source) -> dict:
    variant = _VARIANTS.get(source) if source is not None else None
    if variant is None:
        variant = identify_variant(ds.name, ds.x_train)
        if source is not None:
            _VARIANTS[source] = variant
    fp = {"dataset": ds.name, "variant": variant, "sha256": arrays_sha256(arrays)}
    if source is not None:
        _FINGERPRINTS[_key(cfg, source)] = fp
    return dict(fp)


def data_fingerprint(cfg) -> dict:
    """``{"dataset", "variant", "sha256"}`` of the arrays a :class:`ssvi.config.TrainConfig`
    uses (``dataset, data_dir, download, val_size, train_subset, test_subset``).

    Cached per process, keyed by the files' folder, sizes and mtimes and the subsets, so asking
    for many runs loads each dataset once.
    """
    source = _source(cfg.dataset, cfg.data_dir)
    if source is not None and _key(cfg, source) in _FINGERPRINTS:
        return dict(_FINGERPRINTS[_key(cfg, source)])
    ds = _LAST_LOADED.get(source) if source is not None else None
    if ds is None:
        ds = load_dataset(cfg.dataset, cfg.data_dir, cfg.download)
        source = _source(cfg.dataset, cfg.data_dir)  # the files exist now
        _LAST_LOADED.clear()
        if source is not None:
            _LAST_LOADED[source] = ds
    arrays = split_arrays(ds, cfg.val_size, cfg.train_subset, cfg.test_subset)
    return _fingerprint(cfg, ds, arrays, source)


# -- everything a run needs ------------------------------------------------------------------------
@dataclass
class Data:
    """The loaders of one run. ``val`` is None when ``val_size == 0``; ``n_train`` is the size
    of the training split actually used (the N of the KL scaling); ``fingerprint`` is the
    :func:`data_fingerprint` of the arrays in the loaders."""
    train: Loader
    val: Loader | None
    test: Loader
    num_classes: int
    n_train: int
    class_names: tuple[str, ...]
    name: str
    mean: tuple[float, ...] = CIFAR10_MEAN
    std: tuple[float, ...] = CIFAR10_STD
    fingerprint: dict = dataclasses.field(default_factory=dict)


def resolve_device(device) -> torch.device:
    """``"auto"``/None -> cuda when available, else cpu; otherwise a checked torch.device."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ConfigError(f"device={device!r} is not a valid torch device ({e}); "
                          "use 'auto', 'cpu' or 'cuda[:N]'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r} requested but CUDA is not available; "
                          "use 'cpu' or 'auto'")
    return dev


def make_loaders(cfg, device=None, eval_batch_size: int | None = None,
                 channels_last: bool = False) -> Data:
    """Build the train / val / test loaders of a :class:`ssvi.config.TrainConfig`.

    Uses ``cfg.dataset, data_dir, download, val_size, train_subset, test_subset, augment,
    batch_size, seed``. ``device`` defaults to ``cfg.device`` ("auto": cuda if available).
    The training loader shuffles and (if ``cfg.augment``) augments; val/test loaders do neither
    and use ``eval_batch_size`` (default ``max(cfg.batch_size, 500)``).
    """
    dev = resolve_device(cfg.device if device is None else device)
    ds = load_dataset(cfg.dataset, cfg.data_dir, cfg.download)
    a = split_arrays(ds, cfg.val_size, cfg.train_subset, cfg.test_subset)
    source = _source(cfg.dataset, cfg.data_dir)
    fp = _FINGERPRINTS.get(_key(cfg, source)) if source is not None else None
    fp = dict(fp) if fp is not None else _fingerprint(cfg, ds, a, source)
    ebs = int(eval_batch_size or max(cfg.batch_size, 500))
    common = dict(device=dev, mean=ds.mean, std=ds.std, channels_last=channels_last)
    train = Loader(a["x_train"], a["y_train"], cfg.batch_size, shuffle=True, augment=cfg.augment,
                   seed=cfg.seed, **common)
    val = None if a["x_val"] is None else Loader(a["x_val"], a["y_val"], ebs, **common)
    test = Loader(a["x_test"], a["y_test"], ebs, **common)
    return Data(train, val, test, ds.num_classes, len(a["x_train"]), ds.class_names, ds.name,
                ds.mean, ds.std, fp)
