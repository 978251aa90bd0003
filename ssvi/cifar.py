"""CIFAR-10 and CIFAR-100 from the official python batches: where they are, reading them safely,
and which copy they are.

* ``cifar10``  -- ``<data root>/cifar-10-batches-py/`` (data_batch_1..5, test_batch, batches.meta)
* ``cifar100`` -- ``<data root>/cifar-100-python/`` (train, test, meta; the 100 fine labels)

The data root is resolved in ONE place, :func:`data_root`: the argument, else ``$SSVI_DATA``,
else ``<repository>/data`` (:func:`ssvi.paths.repo_dir`), whatever the working directory.

The official files are Python-2 pickles. They are read with a restricted unpickler that admits
only what those files hold (numpy arrays and their dtypes, lists, dicts, strings, bytes and
numbers); a file that asks for anything else (a crafted batch can name any callable, e.g.
``os.system``) is refused with a :class:`~ssvi.errors.DataError` naming it, before anything is
called. Keys and class names are decoded from ``bytes``, so files written with ``str`` or
``bytes`` keys load the same way.

Images are returned as ``uint8`` **NCHW** ``(N, 3, 32, 32)`` (the channel-major order of the
batches' 3072-value rows), labels as ``int64``. :func:`identify_variant` names the copy: the
JPEG-75 re-encoding of CIFAR-10 made by ``make_cifar10.py`` is recognised by the sha256 of its
training images; anything else (the original CIFAR-10 included) is "unrecognised".
"""
from __future__ import annotations

import hashlib
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ConfigError, DataError
from .paths import repo_dir

# Per-channel normalisation of the recipe (the authors' recipe), on the [0, 1] scale.
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


@dataclass(frozen=True)
class Layout:
    """The official python layout of one dataset."""
    folder: str
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: str
    names_key: str

    @property
    def files(self) -> tuple[str, ...]:
        return (*self.train_files, self.test_file, self.meta_file)


LAYOUT = {
    "cifar10": Layout("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)),
                      "test_batch", "batches.meta", "labels", "label_names"),
    "cifar100": Layout("cifar-100-python", ("train",), "test", "meta", "fine_labels",
                       "fine_label_names"),
}
PRETTY = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "synthetic": "synthetic"}
MAKE_CIFAR10_HINT = "python ../shared/data/cifar10-jpeg75/make_cifar10.py data"

# sha256 of the JPEG-75 copy's training images as uint8 (50000, 32, 32, 3) NHWC, in file order
# (REFERENCE_SHA256['x_train'] of the copy's make_cifar10.py).
JPEG75_X_TRAIN_SHA256 = "5aaf8a2cf2e577ff4dbb15e4f368840fab5aca1812bcc69682005f8dc661d466"


class DataNotFoundError(DataError, FileNotFoundError):
    """The dataset's files are not in the data folder (also a FileNotFoundError)."""


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


# -- where the data are ----------------------------------------------------------------------------
def data_root(data_dir: str | os.PathLike | None = None) -> Path:
    """THE data folder: ``data_dir`` if given, else ``$SSVI_DATA``, else ``<repository>/data``."""
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir)
    env = os.environ.get("SSVI_DATA")
    return Path(env) if env else repo_dir() / "data"


def _layout(name: str) -> Layout:
    if name not in LAYOUT:
        raise ConfigError(f"unknown CIFAR dataset {name!r}; choose 'cifar10' or 'cifar100'")
    return LAYOUT[name]


def dataset_available(name: str, data_dir=None) -> bool:
    """True when every official file of ``name`` is in the data folder (synthetic: always)."""
    if name == "synthetic":
        return True
    folder = data_root(data_dir) / _layout(name).folder
    return all((folder / f).is_file() for f in _layout(name).files)


def _missing_message(name: str, folder: Path, missing: list[str], download_error=None) -> str:
    what = "all its files" if len(missing) == len(LAYOUT[name].files) else ", ".join(missing)
    msg = (f"{PRETTY[name]} not found in {folder} (missing: {what}); put the extracted official "
           f"python archive there ({folder.name}/ inside the data folder, chosen by --data-dir / "
           "data_dir=... or the SSVI_DATA environment variable, default <repository>/data), or "
           "pass download=True (needs internet)")
    if name == "cifar10":
        msg += (f", or on the project machines (no internet) run `{MAKE_CIFAR10_HINT}` from the "
                "repository root, which writes the JPEG quality-75 copy of CIFAR-10")
    else:
        msg += ("; the project machines hold no CIFAR-100 (tests write a fake one with "
                "tests/fakes.py write_fake_cifar)")
    if download_error is not None:
        msg += (f". The download attempt failed: {type(download_error).__name__}: "
                f"{' '.join(str(download_error).split())}")
    return msg


# -- reading the official pickles, safely ----------------------------------------------------------
class _Refused(Exception):
    def __init__(self, what: str):
        super().__init__(what)
        self.what = what


def _checked_dtype(*args):
    dt = np.dtype(*args)
    if dt.hasobject:
        raise _Refused(f"a numpy array of Python objects ({dt})")
    return dt


def _latin1_bytes(text, encoding="latin1", *rest):
    """How Python 3 pickles ``bytes`` at protocol < 3: ``_codecs.encode(str, 'latin1')``."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1") or rest:
        raise _Refused(f"_codecs.encode with {type(text).__name__}, {encoding!r}")
    return text.encode("latin1")


def _empty_bytes(*args):
    """How Python 3 pickles ``b""`` at protocol < 3: ``bytes()``."""
    if args:
        raise _Refused(f"bytes{args!r}")
    return b""


def _allowed_globals() -> dict:
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy < 2
        from numpy.core import multiarray, numeric
    table = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): _checked_dtype,
             ("_codecs", "encode"): _latin1_bytes, ("__builtin__", "bytes"): _empty_bytes,
             ("builtins", "bytes"): _empty_bytes}
    for pkg in ("numpy.core", "numpy._core"):  # written by numpy 1 / numpy 2
        table[(f"{pkg}.multiarray", "_reconstruct")] = multiarray._reconstruct
        table[(f"{pkg}.multiarray", "scalar")] = multiarray.scalar
        table[(f"{pkg}.numeric", "_frombuffer")] = numeric._frombuffer
    return table


_ALLOWED = _allowed_globals()


class _BatchUnpickler(pickle.Unpickler):
    """An Unpickler whose ``find_class`` admits only the numpy reconstruction functions (with
    object dtypes refused) and latin-1 bytes; lists, dicts, strings, bytes and numbers need no
    class. Everything else raises :class:`_Refused` before it is called."""

    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise _Refused(f"{module}.{name}") from None

    def persistent_load(self, pid):
        raise _Refused(f"a persistent id ({pid!r})")


def _decode(v):
    return v.decode("latin1") if isinstance(v, bytes) else v


def _read_pickle(path: Path) -> dict:
    """Load one official CIFAR pickle (Python-2 format) into a dict with ``str`` keys."""
    recreate = (f"delete {path.parent} and recreate it (extract the official archive again, "
                "download=True, or make_cifar10.py)")
    try:
        with open(path, "rb") as f:
            obj = _BatchUnpickler(f, encoding="latin1").load()
    except _Refused as e:
        raise DataError(f"refused to read {path}: it asks for {e.what}, which an official CIFAR "
                        "python batch never holds (only numpy arrays, lists, dicts, strings, "
                        "bytes and numbers), so it may be crafted to run code; nothing was "
                        f"executed; {recreate}") from None
    except Exception as e:  # truncated or corrupt files raise many different errors
        raise DataError(f"cannot read {path}: the file is corrupt or truncated "
                        f"({type(e).__name__}: {' '.join(str(e).split())}); {recreate}") from e
    if not isinstance(obj, dict):
        raise DataError(f"{path} holds a {type(obj).__name__}, not the dict of an official "
                        f"CIFAR python batch; {recreate}")
    return {_decode(k): v for k, v in obj.items()}


def _get(entry: dict, key: str, path: Path):
    if key not in entry:
        raise DataError(f"{path} has no {key!r} entry (keys: {', '.join(map(str, entry))}); it "
                        "is not an official CIFAR python batch of this dataset; recreate the "
                        "folder")
    return entry[key]


def _read_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    entry = _read_pickle(path)
    data = np.asarray(_get(entry, "data", path))
    try:
        labels = np.asarray(_get(entry, label_key, path), dtype=np.int64)
    except (TypeError, ValueError) as e:
        raise DataError(f"{path}: {label_key!r} is not a list of integer labels ({e}); the file "
                        "is damaged; recreate the folder") from None
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: 'data' should be uint8 (N, 3072), got {data.dtype} "
                        f"{data.shape}; the file is damaged; recreate the folder")
    if labels.shape != (data.shape[0],):
        raise DataError(f"{path}: {labels.size} labels for {data.shape[0]} images; the file is "
                        "damaged; recreate the folder")
    return data.reshape(-1, 3, 32, 32), labels


def _download(name: str, root: Path) -> None:
    import torchvision  # only needed for downloading

    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    root.mkdir(parents=True, exist_ok=True)
    cls(root=str(root), train=True, download=True)  # one archive holds both splits


def load_cifar(name: str, data_dir=None, download: bool = False) -> ArrayDataset:
    """Read CIFAR-10 or CIFAR-100 from the official python batches under :func:`data_root`."""
    lay = _layout(name)
    root = data_root(data_dir)
    folder = root / lay.folder
    missing = [f for f in lay.files if not (folder / f).is_file()]
    if missing:
        error = None
        if download:
            try:
                _download(name, root)
            except Exception as e:  # no network, checksum failure, disk full, ...
                error = e
            missing = [f for f in lay.files if not (folder / f).is_file()]
        if missing:
            raise DataNotFoundError(_missing_message(name, folder, missing, error)) from error
    parts = [_read_batch(folder / f, lay.label_key) for f in lay.train_files]
    x_train = np.concatenate([p[0] for p in parts])
    y_train = np.concatenate([p[1] for p in parts])
    x_test, y_test = _read_batch(folder / lay.test_file, lay.label_key)
    meta = _read_pickle(folder / lay.meta_file)
    class_names = tuple(_decode(n) for n in _get(meta, lay.names_key, folder / lay.meta_file))
    for split, y in (("train", y_train), ("test", y_test)):
        if len(y) and (y.min() < 0 or y.max() >= len(class_names)):
            raise DataError(f"{folder}: {split} labels outside [0, {len(class_names)}); the "
                            "files are damaged; recreate the folder")
    mean, std = NORMALIZATION[name]
    return ArrayDataset(name, x_train, y_train, x_test, y_test, class_names, mean, std)


# -- which copy ------------------------------------------------------------------------------------
def identify_variant(name: str, x_train: np.ndarray) -> str:
    """Which copy of ``name`` the (full, unsplit) training images ``x_train`` are.

    "generated" for ``synthetic``; "jpeg75" for CIFAR-10 whose uint8 NCHW ``x_train``, laid out
    NHWC, has the sha256 of the JPEG-75 re-encoding (:data:`JPEG75_X_TRAIN_SHA256`);
    "unrecognised" for anything else (an original CIFAR-10 is never called the JPEG-75 copy).
    """
    if name == "synthetic":
        return "generated"
    x = np.asarray(x_train)
    if name == "cifar10" and x.dtype == np.uint8 and x.shape == (50000, 3, 32, 32):
        nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        if hashlib.sha256(nhwc.tobytes()).hexdigest() == JPEG75_X_TRAIN_SHA256:
            return "jpeg75"
    return "unrecognised"
