"""Datasets and the on-device loader.

Images are kept as ``uint8`` arrays in **NCHW** order ``(N, 3, 32, 32)`` (the channel-major
order of the official CIFAR python batches, and the order the loader feeds the network);
labels are ``int64``.

Datasets (:func:`load_dataset`):

* ``cifar10``  -- ``<data_dir>/cifar-10-batches-py/`` (data_batch_1..5, test_batch, batches.meta)
* ``cifar100`` -- ``<data_dir>/cifar-100-python/`` (train, test, meta; the 100 fine labels)
* ``synthetic`` -- a small generated 10-class problem (:func:`make_synthetic`), for tests and
  the tiny preset. It is not CIFAR and results on it must be labelled "synthetic".

``data_dir`` is the argument, else ``$SSVI_DATA``, else ``./data``. The official files are
Python-2 pickles; they are read with ``encoding="latin1"`` and every ``bytes`` key/name is decoded,
so files written with either ``str`` or ``bytes`` keys load the same way.

Splits (:func:`split_train`): the validation split is the **last** ``val_size`` images of the
training set (the official order is already random; no seed involved), and ``train_subset`` /
``test_subset`` keep the **first** N images of what remains (not class-balanced; the official
orders are random, so the classes are close to balanced).

The loader (:class:`GPULoader`) keeps a whole split on the target device as uint8 and builds each
batch with batched tensor ops: random crop 32 with zero padding 4 and a horizontal flip (the
semantics of torchvision ``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip()``), then float
conversion and the per-channel normalisation of the recipe. The permutation and the augmentation
of epoch ``e`` come from a CPU ``torch.Generator`` seeded from ``(seed, e)`` only, so epoch ``e``
gives the same batches on any device and regardless of what was iterated before (exact resume).
"""
from __future__ import annotations

import math
import os
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

DATASETS = ("cifar10", "cifar100", "synthetic")

# Per-channel normalisation of the recipe (shared/reference/recipe.md), on the [0, 1] scale.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
NORMALIZATION = {
    "cifar10": (CIFAR10_MEAN, CIFAR10_STD),
    "cifar100": (CIFAR100_MEAN, CIFAR100_STD),
    "synthetic": (CIFAR10_MEAN, CIFAR10_STD),  # the CIFAR-10 statistics, so code paths match
}

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")
_LAYOUT = {  # folder, training files, test file, meta file, label key, class-name key
    "cifar10": ("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)),
                "test_batch", "batches.meta", "labels", "label_names"),
    "cifar100": ("cifar-100-python", ("train",), "test", "meta", "fine_labels",
                 "fine_label_names"),
}
_PRETTY = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}
MAKE_CIFAR10_HINT = "python ../shared/data/cifar10-jpeg75/make_cifar10.py data"


@dataclass
class ArrayDataset:
    """A dataset held in memory: uint8 NCHW images and int64 labels for both splits."""
    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


# -- locating and reading the official files -------------------------------------------------------
def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The data directory: ``data_dir`` if given, else ``$SSVI_DATA``, else ``./data``."""
    if data_dir is not None:
        return Path(data_dir)
    return Path(os.environ.get("SSVI_DATA") or "data")


def _missing_message(kind: str, folder: Path, missing: list[str], download_error=None) -> str:
    pretty = _PRETTY[kind]
    lines = [
        f"{pretty} not found: expected the official python-version files in {folder} "
        f"(missing: {', '.join(missing)}).",
        "Provide the data in one of these ways:",
        f"  * put the extracted official archive there, i.e. {folder.name}/ inside the data "
        "directory, and pass data_dir=<that directory> or set the SSVI_DATA environment "
        "variable (default: ./data);",
        "  * pass download=True (TrainConfig.download=True) to let torchvision download it "
        "(needs internet access);",
    ]
    if kind == "cifar10":
        lines.append(f"  * on the project machines (no internet): run `{MAKE_CIFAR10_HINT}` from "
                     "the repository root; it writes the JPEG quality-75 re-encoded copy of "
                     "CIFAR-10 (label results 'CIFAR-10 (JPEG-75 copy)').")
    else:
        lines.append("  * note: the project machines hold no copy of CIFAR-100; tests use "
                     "ssvi.data.write_fake_cifar(root, 'cifar100').")
    if download_error is not None:
        lines.append(f"The download attempt failed: {type(download_error).__name__}: "
                     f"{download_error}")
    return "\n".join(lines)


def _decode(v):
    return v.decode("latin1") if isinstance(v, bytes) else v


def _read_pickle(path: Path) -> dict:
    """Load one official CIFAR pickle (Python-2 format) into a dict with ``str`` keys."""
    try:
        with open(path, "rb") as f:
            obj = pickle.load(f, encoding="latin1")
    except Exception as e:  # truncated or corrupt files raise many different errors
        raise ValueError(f"cannot read {path}: the file is corrupt or truncated "
                         f"({type(e).__name__}: {e}). Delete {path.parent} and recreate it "
                         "(extract the archive again, download=True, or make_cifar10.py).") from e
    if not isinstance(obj, dict):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not the dict of an official "
                         "CIFAR python batch; recreate the folder")
    return {_decode(k): v for k, v in obj.items()}


def _get(entry: dict, key: str, path: Path):
    if key not in entry:
        raise ValueError(f"{path} has no {key!r} entry (keys: {', '.join(sorted(entry))}); "
                         "it is not an official CIFAR python batch of this dataset")
    return entry[key]


def _read_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    entry = _read_pickle(path)
    data = np.asarray(_get(entry, "data", path))
    labels = np.asarray(_get(entry, label_key, path), dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: 'data' should be uint8 (N, 3072), got {data.dtype} "
                         f"{data.shape}; the file is damaged")
    if labels.shape != (data.shape[0],):
        raise ValueError(f"{path}: {len(labels)} labels for {data.shape[0]} images; "
                         "the file is damaged")
    return data.reshape(-1, 3, 32, 32), labels


def _download(kind: str, root: Path) -> None:
    import torchvision  # only needed for downloading

    cls = torchvision.datasets.CIFAR10 if kind == "cifar10" else torchvision.datasets.CIFAR100
    root.mkdir(parents=True, exist_ok=True)
    cls(root=str(root), train=True, download=True)  # one archive holds both splits


def load_cifar(kind: str, data_dir=None, download: bool = False) -> ArrayDataset:
    """Read CIFAR-10 or CIFAR-100 from the official python batches (see the module docstring)."""
    if kind not in _LAYOUT:
        raise ValueError(f"unknown CIFAR kind {kind!r}; choose 'cifar10' or 'cifar100'")
    folder_name, train_files, test_file, meta_file, label_key, names_key = _LAYOUT[kind]
    root = resolve_data_dir(data_dir)
    folder = root / folder_name
    needed = [*train_files, test_file, meta_file]
    missing = [f for f in needed if not (folder / f).is_file()]
    if missing:
        error = None
        if download:
            try:
                _download(kind, root)
            except Exception as e:  # no network, checksum failure, disk full, ...
                error = e
            missing = [f for f in needed if not (folder / f).is_file()]
        if missing:
            raise FileNotFoundError(_missing_message(kind, folder, missing, error)) from error
    parts = [_read_batch(folder / f, label_key) for f in train_files]
    x_train = np.concatenate([p[0] for p in parts])
    y_train = np.concatenate([p[1] for p in parts])
    x_test, y_test = _read_batch(folder / test_file, label_key)
    meta = _read_pickle(folder / meta_file)
    class_names = tuple(_decode(n) for n in _get(meta, names_key, folder / meta_file))
    for split, y in (("train", y_train), ("test", y_test)):
        if len(y) and (y.min() < 0 or y.max() >= len(class_names)):
            raise ValueError(f"{folder}: {split} labels outside [0, {len(class_names)}); "
                             "the files are damaged")
    mean, std = NORMALIZATION[kind]
    return ArrayDataset(kind, x_train, y_train, x_test, y_test, class_names, mean, std)


# -- writing data in the official layout (tests, examples) -----------------------------------------
class _Py2Pickler(pickle._Pickler):
    """Writes ``bytes`` as Python-2 ``str`` opcodes, as the official files do, so readers using
    ``encoding="latin1"`` (torchvision) and ``encoding="bytes"`` both see the usual keys."""
    dispatch = dict(pickle._Pickler.dispatch)

    def _save_py2_str(self, obj):
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str


def _dump_py2(obj, path: Path) -> None:
    with open(path, "wb") as f:
        _Py2Pickler(f, protocol=2).dump(obj)


def write_fake_cifar(root, kind: str = "cifar10", n_train: int = 100, n_test: int = 50,
                     seed: int = 0) -> Path:
    """Write generated images in the exact official python layout of ``kind`` under ``root``.

    The images are :func:`make_synthetic`-style patterns (so a model can learn them) with the
    10 or 100 classes of ``kind``; CIFAR-10's ``n_train`` images are spread over the five
    training batches. Returns the dataset folder (e.g. ``root/cifar-10-batches-py``).
    """
    if kind not in _LAYOUT:
        raise ValueError(f"unknown CIFAR kind {kind!r}; choose 'cifar10' or 'cifar100'")
    folder_name, train_files, test_file, meta_file, label_key, names_key = _LAYOUT[kind]
    n_classes = 10 if kind == "cifar10" else 100
    x_train, y_train = _synthetic_images(n_train, n_classes, seed, 1)
    x_test, y_test = _synthetic_images(n_test, n_classes, seed, 2)
    folder = Path(root) / folder_name
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

    chunks = np.array_split(np.arange(n_train), len(train_files))
    for i, (name, idx) in enumerate(zip(train_files, chunks)):
        _dump_py2(batch(x_train[idx], y_train[idx], f"training batch {i + 1} of "
                        f"{len(train_files)}", int(idx[0]) if len(idx) else 0), folder / name)
    _dump_py2(batch(x_test, y_test, "testing batch 1 of 1", n_train), folder / test_file)
    if kind == "cifar10":
        meta = {b"label_names": [c.encode() for c in CIFAR10_CLASSES],
                b"num_cases_per_batch": int(len(chunks[0])), b"num_vis": 3072}
    else:
        meta = {b"fine_label_names": [b"fake_fine_%02d" % c for c in range(100)],
                b"coarse_label_names": [b"fake_coarse_%02d" % c for c in range(20)]}
    _dump_py2(meta, folder / meta_file)
    return folder


# -- the synthetic dataset -------------------------------------------------------------------------
TINT, AMPLITUDE, NOISE = 0.06, (0.06, 0.15), 0.2  # synthetic: class signal vs pixel noise


def _synthetic_images(n: int, n_classes: int, seed: int, stream: int):
    """``n`` images of ``n_classes`` learnable classes: a class colour tint plus an oriented
    grating of class-dependent angle and frequency with a random phase, plus pixel noise."""
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
    Normalised with the CIFAR-10 statistics.
    """
    x_train, y_train = _synthetic_images(n_train, 10, seed, 1)
    x_test, y_test = _synthetic_images(n_test, 10, seed, 2)
    mean, std = NORMALIZATION["synthetic"]
    return ArrayDataset("synthetic", x_train, y_train, x_test, y_test,
                        tuple(f"synthetic_{c}" for c in range(10)), mean, std)


def load_dataset(name: str, data_dir=None, download: bool = False) -> ArrayDataset:
    """Load ``name`` (``cifar10``, ``cifar100`` or ``synthetic``) as uint8 NCHW arrays."""
    if name == "synthetic":
        return make_synthetic()
    if name in _LAYOUT:
        return load_cifar(name, data_dir, download)
    raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


def split_train(x: np.ndarray, y: np.ndarray, val_size: int = 0, train_subset: int | None = None):
    """Hold out the LAST ``val_size`` training images, then keep the FIRST ``train_subset``.

    Returns ``(x_train, y_train, x_val, y_val)``; the validation arrays are None when
    ``val_size == 0``. The validation split does not depend on ``train_subset``.
    """
    n = len(x)
    if val_size < 0 or val_size >= n:
        raise ValueError(f"val_size={val_size} must be in [0, {n}) for {n} training images")
    x_val = y_val = None
    if val_size:
        x_val, y_val = x[n - val_size:], y[n - val_size:]
        x, y = x[:n - val_size], y[:n - val_size]
    if train_subset is not None:
        if not 1 <= train_subset <= len(x):
            raise ValueError(f"train_subset={train_subset} must be in [1, {len(x)}] "
                             f"(training images left after val_size={val_size})")
        x, y = x[:train_subset], y[:train_subset]
    return x, y, x_val, y_val


# -- the on-device loader --------------------------------------------------------------------------
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


class GPULoader:
    """A whole split on ``device`` as uint8 NCHW, served in batches of normalised floats.

    ``shuffle`` permutes the images every epoch; ``augment`` applies random crop 32 with zero
    padding 4 and a horizontal flip (p = 0.5) per image. Both default to off (an eval loader).
    Epoch ``e`` (``epoch_batches(e)``) is a pure function of ``(seed, e)``. Iterating the loader
    itself yields the batches of ``loader.epoch`` (set with :meth:`set_epoch`, default 0).
    ``mean``/``std`` are per-channel on the [0, 1] scale; None means only ``x / 255``.
    Batches are ``(x, y)``: float (N, C, H, W) of ``dtype`` (``channels_last`` if asked) and
    int64 labels, both on ``device``.
    """

    def __init__(self, x, y, batch_size: int, *, shuffle: bool = False, augment: bool = False,
                 drop_last: bool = False, seed: int = 0, device="cpu", mean=None, std=None,
                 padding: int = 4, channels_last: bool = False, dtype=torch.float32):
        x = torch.as_tensor(x)
        y = torch.as_tensor(y)
        if x.dtype != torch.uint8 or x.dim() != 4:
            raise ValueError(f"GPULoader expects uint8 images (N, C, H, W), got {x.dtype} "
                             f"{tuple(x.shape)}")
        if y.shape != (x.shape[0],):
            raise ValueError(f"GPULoader: {tuple(y.shape)} labels for {x.shape[0]} images")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
        if x.shape[0] == 0:
            raise ValueError("GPULoader: the split is empty")
        self.device = torch.device(device)
        self.x = x.to(self.device)
        self.y = y.to(device=self.device, dtype=torch.int64)
        self.batch_size = int(batch_size)
        self.shuffle, self.augment, self.drop_last = bool(shuffle), bool(augment), bool(drop_last)
        self.seed, self.padding = int(seed), int(padding)
        self.channels_last, self.dtype = bool(channels_last), dtype
        self.epoch = 0
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

    @property
    def num_samples(self) -> int:
        return int(self.x.shape[0])

    def __len__(self) -> int:
        n, b = self.num_samples, self.batch_size
        return n // b if self.drop_last else math.ceil(n / b)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch that ``iter(loader)`` serves."""
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.epoch_batches(self.epoch)

    def epoch_plan(self, epoch: int):
        """The CPU tensors that define epoch ``epoch``: (order, dy, dx, flip); the last three
        are None without augmentation."""
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
        if order is not None:
            order = order.to(self.device, non_blocking=True)
        if dy is not None:
            dy, dx, flip = (t.to(self.device, non_blocking=True) for t in (dy, dx, flip))
        b = self.batch_size
        for i in range(len(self)):
            lo, hi = i * b, min((i + 1) * b, self.num_samples)
            if order is None:
                xb, yb = self.x[lo:hi], self.y[lo:hi]
            else:
                idx = order[lo:hi]
                xb, yb = self.x[idx], self.y[idx]
            if dy is not None:
                xb = crop_flip(xb, dy[lo:hi], dx[lo:hi], flip[lo:hi], self.padding)
            yield self.normalize(xb), yb

    def random_batch(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """One batch of ``batch_size`` images drawn with replacement by ``generator`` (a CPU
        generator), augmented like the epoch batches. Used by the K-step addition criterion."""
        n, b = self.num_samples, min(self.batch_size, self.num_samples)
        idx = torch.randint(0, n, (b,), generator=generator)
        xb = self.x[idx.to(self.device)]
        if self.augment:
            offsets = torch.randint(0, 2 * self.padding + 1, (2, b), generator=generator)
            flip = torch.randint(0, 2, (b,), generator=generator).bool()
            dy, dx, flip = (t.to(self.device) for t in (offsets[0], offsets[1], flip))
            xb = crop_flip(xb, dy, dx, flip, self.padding)
        return self.normalize(xb), self.y[idx.to(self.device)]


# -- everything a run needs ------------------------------------------------------------------------
@dataclass
class Data:
    """The loaders of one run. ``val`` is None when ``val_size == 0``; ``n_train`` is the size
    of the training split actually used (the N of the KL scaling)."""
    train: GPULoader
    val: GPULoader | None
    test: GPULoader
    num_classes: int
    n_train: int
    class_names: tuple[str, ...]
    name: str
    mean: tuple[float, ...] = CIFAR10_MEAN
    std: tuple[float, ...] = CIFAR10_STD


def resolve_device(device) -> torch.device:
    """``"auto"``/None -> cuda when available, else cpu; otherwise a checked torch.device."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"device={device!r} is not a valid torch device ({e}); "
                         "use 'auto', 'cpu' or 'cuda[:N]'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} requested but CUDA is not available; "
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
    x_tr, y_tr, x_val, y_val = split_train(ds.x_train, ds.y_train, cfg.val_size, cfg.train_subset)
    x_te, y_te = ds.x_test, ds.y_test
    if cfg.test_subset is not None:
        if not 1 <= cfg.test_subset <= len(x_te):
            raise ValueError(f"test_subset={cfg.test_subset} must be in [1, {len(x_te)}]")
        x_te, y_te = x_te[:cfg.test_subset], y_te[:cfg.test_subset]
    ebs = int(eval_batch_size or max(cfg.batch_size, 500))
    common = dict(device=dev, mean=ds.mean, std=ds.std, channels_last=channels_last)
    train = GPULoader(x_tr, y_tr, cfg.batch_size, shuffle=True, augment=cfg.augment,
                      seed=cfg.seed, **common)
    val = None if x_val is None else GPULoader(x_val, y_val, ebs, **common)
    test = GPULoader(x_te, y_te, ebs, **common)
    return Data(train, val, test, ds.num_classes, len(x_tr), ds.class_names, ds.name,
                ds.mean, ds.std)
