"""CIFAR-10-C-style image corruptions (Hendrycks & Dietterich, ICLR 2019), regenerated, for the
distribution-shift evaluation of the paper (its Appendix D.1).

These are corruptions computed here with the severity parameters of the official generator
``make_cifar_c.py`` (github.com/hendrycks/robustness, ImageNet-C/create_c); they are NOT the
released CIFAR-10-C files. Read those, when you have them, with :func:`load_cifar10c`. Results
on regenerated corruptions must be labelled as such: the random draws differ from the released
ones, and so do the images they start from when the clean set is the JPEG-75 copy of CIFAR-10.

Implemented (:data:`CORRUPTIONS`), each at severities 1-5, on uint8 batches (N, 3, H, W):

=================  ===================================================  ==========================
name               parameter per severity 1..5 (official values)        implementation
=================  ===================================================  ==========================
gaussian_noise     std 0.04, 0.06, 0.08, 0.09, 0.10                      x + c * N(0, 1)
shot_noise         rate 500, 250, 100, 75, 50                            Poisson(c * x) / c
impulse_noise      amount 0.01, 0.02, 0.03, 0.05, 0.07                   salt & pepper, 50/50, per
                                                                         element (skimage s&p)
speckle_noise      std 0.06, 0.10, 0.12, 0.16, 0.20                      x + x * c * N(0, 1)
gaussian_blur      sigma 0.4, 0.6, 0.7, 0.8, 1.0                         separable Gaussian,
                                                                         truncate 4, edge mode
                                                                         "nearest" (skimage)
defocus_blur       disk (radius, alias blur) (0.3, 0.4), (0.4, 0.5),     disk kernel blurred by a
                   (0.5, 0.6), (1, 0.2), (1.5, 0.1)                      3x3 Gaussian, reflect-101
                                                                         borders (as cv2)
contrast           factor 0.75, 0.5, 0.4, 0.3, 0.15                      (x - m) * c + m, m the
                                                                         per-image channel means
brightness         +V 0.05, 0.1, 0.15, 0.2, 0.3                          V += c in HSV, exactly
jpeg_compression   quality 80, 65, 58, 50, 40                            PIL JPEG (4:2:0), per
                                                                         image on the CPU
pixelate           scale 0.95, 0.9, 0.85, 0.75, 0.65                     PIL BOX down to
                                                                         int(32 c), BOX up, per
                                                                         image on the CPU
=================  ===================================================  ==========================

Differences from the original code, all documented choices:

* Randomness comes from a CPU ``torch.Generator`` seeded with ``seed`` (the original used the
  global numpy RNG), so results are deterministic and identical on every device. The same seed
  at every severity gives coupled draws (the same underlying noise, scaled per severity).
* brightness: ``V += c`` in HSV keeps hue and saturation, which is exactly multiplying the RGB
  pixel by ``min(V + c, 1) / V`` (black pixels become grey ``c``); done that way, without the
  HSV round trip, so equal up to float rounding.
* Arithmetic is float32 (the original: float64). The final conversion truncates like
  ``np.uint8`` in the original, with a 1e-3 guard so unchanged pixels stay unchanged.
* Not implemented: glass_blur, motion_blur, zoom_blur, snow, frost, fog, elastic_transform
  (and the extras spatter, saturate); motion_blur/snow need ImageMagick and frost needs the
  original texture files.
"""
from __future__ import annotations

import io

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .cifar import data_root

SEVERITIES = (1, 2, 3, 4, 5)
PARAMS = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
    "shot_noise": (500, 250, 100, 75, 50),
    "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),
    "speckle_noise": (0.06, 0.10, 0.12, 0.16, 0.20),
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),
    "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1.0, 0.2), (1.5, 0.1)),
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),
    "jpeg_compression": (80, 65, 58, 50, 40),
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),
}
CORRUPTIONS = tuple(PARAMS)

# The files of the released CIFAR-10-C (15 benchmark corruptions + 4 extra ones).
CIFAR10C_NAMES = (
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
    "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform",
    "pixelate", "jpeg_compression", "speckle_noise", "gaussian_blur", "spatter", "saturate")
CIFAR10C_PER_SEVERITY = 10000


# -- the corruptions on float images in [0, 1] (N, 3, H, W) ----------------------------------------
def _randn(x, g):
    return torch.randn(x.shape, generator=g, dtype=x.dtype).to(x.device)


def _rand(x, g):
    return torch.rand(x.shape, generator=g, dtype=x.dtype).to(x.device)


def _gaussian_noise(x, c, g):
    return x + c * _randn(x, g)


def _shot_noise(x, c, g):
    rate = (x * c).cpu()
    return (torch.poisson(rate, generator=g) / c).to(x.device)


def _impulse_noise(x, c, g):
    flipped = _rand(x, g) < c
    salted = _rand(x, g) < 0.5
    return torch.where(flipped, salted.to(x.dtype), x)


def _speckle_noise(x, c, g):
    return x + x * (c * _randn(x, g))


def _separable(x, k1d, mode):
    """Correlate every channel with ``k1d`` along H and W; borders by F.pad ``mode``."""
    r = (len(k1d) - 1) // 2
    n, ch, h, w = x.shape
    k = torch.as_tensor(k1d, dtype=x.dtype, device=x.device)
    y = F.pad(x.reshape(n * ch, 1, h, w), (r, r, r, r), mode=mode)
    y = F.conv2d(y, k.view(1, 1, 1, -1))
    y = F.conv2d(y, k.view(1, 1, -1, 1))
    return y.reshape(n, ch, h, w)


def gaussian_kernel1d(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """The normalised 1-D Gaussian of scipy.ndimage / skimage: radius int(truncate*sigma + 0.5)."""
    r = int(truncate * float(sigma) + 0.5)
    t = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-0.5 * t * t / float(sigma) ** 2)
    return k / k.sum()


def _gaussian_blur(x, c, g):
    return _separable(x, gaussian_kernel1d(c), "replicate")  # skimage mode="nearest"


def disk_kernel(radius: float, alias_blur: float) -> np.ndarray:
    """The defocus kernel of make_cifar_c.py: a normalised disk on a 17x17 grid, blurred by
    cv2.GaussianBlur(ksize=3, sigmaX=alias_blur) (reflect-101 borders), cropped to its
    nonzero support (which does not change the filtered image)."""
    t = np.arange(-8, 9, dtype=np.float64)
    xx, yy = np.meshgrid(t, t)
    d = ((xx ** 2 + yy ** 2) <= radius ** 2).astype(np.float64)
    d /= d.sum()
    g = np.exp(-np.arange(-1, 2) ** 2 / (2.0 * alias_blur ** 2))
    g /= g.sum()
    p = np.pad(d, 1, mode="reflect")  # numpy "reflect" == cv2 BORDER_REFLECT_101
    d = sum(g[i] * p[i:i + 17, :] for i in range(3))[:, 1:-1]
    p = np.pad(d, ((0, 0), (1, 1)), mode="reflect")
    d = sum(g[i] * p[:, i:i + 17] for i in range(3))
    nz = np.nonzero(d)
    r = int(max(np.abs(nz[0] - 8).max(), np.abs(nz[1] - 8).max()))
    return d[8 - r:9 + r, 8 - r:9 + r]


def _defocus_blur(x, c, g):
    k = torch.as_tensor(disk_kernel(*c), dtype=x.dtype, device=x.device)
    r = (k.shape[0] - 1) // 2
    n, ch, h, w = x.shape
    y = F.pad(x.reshape(n * ch, 1, h, w), (r, r, r, r), mode="reflect")  # cv2 filter2D border
    return F.conv2d(y, k.view(1, 1, *k.shape)).reshape(n, ch, h, w)


def _contrast(x, c, g):
    m = x.mean(dim=(2, 3), keepdim=True)
    return (x - m) * c + m


def _brightness(x, c, g):
    v = x.amax(dim=1, keepdim=True)
    v_new = (v + c).clamp(max=1.0)
    return torch.where(v > 0, x * (v_new / v.clamp_min(1e-12)), v_new.expand_as(x))


def _per_image_pil(x_uint8, fn):
    arr = x_uint8.permute(0, 2, 3, 1).cpu().numpy()
    out = np.stack([np.asarray(fn(Image.fromarray(a)), dtype=np.uint8) for a in arr])
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous().to(x_uint8.device)


def _jpeg(img, quality):
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=int(quality))
    return Image.open(buf).convert("RGB")


def _pixelate(img, c):
    w, h = img.size
    small = img.resize((int(w * c), int(h * c)), Image.Resampling.BOX)
    return small.resize((w, h), Image.Resampling.BOX)


_FLOAT_OPS = {"gaussian_noise": _gaussian_noise, "shot_noise": _shot_noise,
              "impulse_noise": _impulse_noise, "speckle_noise": _speckle_noise,
              "gaussian_blur": _gaussian_blur, "defocus_blur": _defocus_blur,
              "contrast": _contrast, "brightness": _brightness}
_PIL_OPS = {"jpeg_compression": _jpeg, "pixelate": _pixelate}


def _check_severity(severity) -> None:
    if (isinstance(severity, bool) or not isinstance(severity, (int, np.integer))
            or severity not in SEVERITIES):
        raise ValueError(f"severity={severity!r} is not allowed; choose one of "
                         f"{', '.join(map(str, SEVERITIES))}")


def _check(name: str, severity) -> None:
    if name not in PARAMS:
        raise ValueError(f"unknown corruption {name!r}; implemented: {', '.join(CORRUPTIONS)}")
    _check_severity(severity)


def corrupt(images, name: str, severity: int, seed: int = 0):
    """Corrupt a batch of uint8 images (N, 3, H, W) with ``name`` at ``severity`` (1-5).

    Deterministic given ``seed``. Accepts a torch tensor (any device; the result stays there)
    or a numpy array (the result is numpy); returns uint8 of the same shape.
    """
    _check(name, severity)
    as_numpy = isinstance(images, np.ndarray)
    x = torch.from_numpy(np.ascontiguousarray(images)) if as_numpy else images
    if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8 or x.dim() != 4 \
            or x.shape[1] != 3:
        raise ValueError("corrupt expects uint8 images of shape (N, 3, H, W), got "
                         f"{getattr(x, 'dtype', type(x))} {tuple(getattr(x, 'shape', ()))}")
    c = PARAMS[name][severity - 1]
    if name in _PIL_OPS:
        out = _per_image_pil(x, lambda img: _PIL_OPS[name](img, c))
    else:
        g = torch.Generator().manual_seed(int(seed))
        y = _FLOAT_OPS[name](x.float() / 255.0, c, g)
        out = torch.floor(y.clamp(0.0, 1.0) * 255.0 + 1e-3).to(torch.uint8)
    return out.cpu().numpy() if as_numpy else out


# -- the released CIFAR-10-C files -----------------------------------------------------------------
def load_cifar10c(root, name: str, severity: int):
    """Read one (corruption, severity) block of the RELEASED CIFAR-10-C.

    ``root`` is the ``CIFAR-10-C`` folder or a folder containing it (None: the data folder,
    :func:`ssvi.cifar.data_root`). Each ``<name>.npy`` holds 5 * M images (N, 32, 32, 3) uint8,
    severities 1..5 in consecutive blocks of M (M = 10000 in the release), and ``labels.npy``
    the matching labels. Returns ``(images uint8 (M, 3, 32, 32), labels int64 (M,))``.
    """
    if name not in CIFAR10C_NAMES:
        raise ValueError(f"unknown CIFAR-10-C corruption {name!r}; the release has: "
                         f"{', '.join(CIFAR10C_NAMES)}")
    _check_severity(severity)
    root = data_root(root)
    folder = root if (root / "labels.npy").is_file() else root / "CIFAR-10-C"
    files = [folder / f"{name}.npy", folder / "labels.npy"]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(
            f"released CIFAR-10-C not found: missing {', '.join(missing)}. Download CIFAR-10-C "
            "(Hendrycks & Dietterich 2019, zenodo.org/record/2535967) and extract it so that "
            f"{root / 'CIFAR-10-C'} holds <corruption>.npy and labels.npy, or pass that folder "
            "as root. Without it (e.g. on the project machines) use the regenerated "
            "corruptions of ssvi.corruptions.corrupt, and label them as regenerated.")
    x = np.load(files[0], mmap_mode="r")
    y = np.load(files[1], mmap_mode="r")
    n = x.shape[0]
    if (x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (32, 32, 3) or n == 0
            or n % len(SEVERITIES) or y.shape != (n,)):
        raise ValueError(f"{files[0]} / labels.npy: expected uint8 (5 * M, 32, 32, 3) images "
                         f"(M = {CIFAR10C_PER_SEVERITY} in the release) and as many labels, got "
                         f"{x.dtype} {x.shape} and {y.shape}; the files are damaged or not "
                         "CIFAR-10-C")
    m = n // len(SEVERITIES)
    block = slice((severity - 1) * m, severity * m)
    images = np.ascontiguousarray(np.asarray(x[block]).transpose(0, 3, 1, 2))
    return images, np.asarray(y[block], dtype=np.int64)
