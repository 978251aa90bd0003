"""ssvi.corruptions: the regenerated CIFAR-10-C corruptions and the reader of the released files."""
from __future__ import annotations

import colorsys
import io

import numpy as np
import pytest
import torch
from PIL import Image

from ssvi.corruptions import (CIFAR10C_NAMES, CORRUPTIONS, PARAMS, SEVERITIES, corrupt,
                              disk_kernel, gaussian_kernel1d, load_cifar10c)

RANDOM = {"gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise"}


@pytest.fixture(scope="module")
def images(synthetic_small):
    return torch.from_numpy(synthetic_small.x_test[:16].copy())


def _quantise(x01):
    """The module's float -> uint8 rule (truncation, as np.uint8 in the original)."""
    return np.floor(np.clip(x01, 0, 1) * 255 + 1e-3).astype(np.uint8)


def test_required_corruptions_are_implemented():
    required = {"gaussian_noise", "shot_noise", "impulse_noise", "gaussian_blur", "contrast",
                "brightness", "jpeg_compression", "pixelate"}
    assert required <= set(CORRUPTIONS)
    assert set(CORRUPTIONS) <= set(CIFAR10C_NAMES)
    assert all(len(PARAMS[n]) == 5 for n in CORRUPTIONS)


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_shapes_dtypes_and_severity_monotonicity(images, name):
    dist = []
    for s in SEVERITIES:
        out = corrupt(images, name, s, seed=0)
        assert out.dtype == torch.uint8 and out.shape == images.shape
        dist.append((out.float() - images.float()).abs().mean().item())
    assert dist[0] > 0
    assert all(a < b for a, b in zip(dist, dist[1:])), dist
    out_np = corrupt(images.numpy(), name, 3, seed=0)
    assert isinstance(out_np, np.ndarray) and out_np.dtype == np.uint8
    assert np.array_equal(out_np, corrupt(images, name, 3, seed=0).numpy())


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_determinism_with_the_seed(images, name):
    a = corrupt(images, name, 4, seed=1)
    assert torch.equal(a, corrupt(images, name, 4, seed=1))
    if name in RANDOM:
        assert not torch.equal(a, corrupt(images, name, 4, seed=2))
    else:
        assert torch.equal(a, corrupt(images, name, 4, seed=2))


def test_bad_name_and_severity_list_the_allowed_values(images):
    with pytest.raises(ValueError) as err:
        corrupt(images, "snowstorm", 1)
    assert all(n in str(err.value) for n in CORRUPTIONS)
    for bad in (0, 6, 2.0, True, "3"):
        with pytest.raises(ValueError, match="1, 2, 3, 4, 5"):
            corrupt(images, "contrast", bad)
    with pytest.raises(ValueError, match="uint8"):
        corrupt(images.float(), "contrast", 1)


# -- each corruption against its definition --------------------------------------------------------
def test_gaussian_noise_has_the_official_standard_deviation():
    x = torch.full((64, 3, 32, 32), 128, dtype=torch.uint8)  # mid-grey: no clipping
    for s in (1, 5):
        d = corrupt(x, "gaussian_noise", s, seed=0).double() - 128
        c = PARAMS["gaussian_noise"][s - 1] * 255
        n = d.numel()
        # truncation lowers the mean by 0.5 on average; the std by at most sqrt(1/12) in quadrature
        assert abs(d.mean().item() + 0.5) < 4 * c / n ** 0.5
        assert abs(d.std().item() - c) < 0.02 * c + 0.3


def test_shot_noise_is_poisson():
    x = torch.full((64, 3, 32, 32), 102, dtype=torch.uint8)  # 0.4
    c = PARAMS["shot_noise"][0]
    out = corrupt(x, "shot_noise", 1, seed=0).double() / 255
    lam = 102 / 255 * c
    assert abs(out.var().item() - lam / c ** 2) < 0.05 * lam / c ** 2
    assert abs(out.mean().item() - 102 / 255) < 1 / 255  # within the truncation


def test_impulse_noise_amount_and_salt_fraction():
    x = torch.full((64, 3, 32, 32), 100, dtype=torch.uint8)
    out = corrupt(x, "impulse_noise", 5, seed=0)
    changed = out != 100
    amount = PARAMS["impulse_noise"][4]
    n = x.numel()
    assert abs(changed.float().mean().item() - amount) < 4 * (amount / n) ** 0.5
    assert set(out[changed].unique().tolist()) == {0, 255}
    salt = (out[changed] == 255).float().mean().item()
    assert abs(salt - 0.5) < 4 * 0.5 / changed.sum().item() ** 0.5


def test_gaussian_blur_matches_scipy_ndimage(images):
    ndimage = pytest.importorskip("scipy.ndimage")
    x = images.numpy()[:4] / 255.0
    for s in (1, 5):
        sigma = PARAMS["gaussian_blur"][s - 1]
        ref = ndimage.gaussian_filter(x, sigma=(0, 0, sigma, sigma), mode="nearest", truncate=4.0)
        out = corrupt(images[:4], "gaussian_blur", s).numpy().astype(int)
        assert np.abs(out - _quantise(ref).astype(int)).max() <= 1
    k = gaussian_kernel1d(1.0)
    assert len(k) == 9 and k.sum() == pytest.approx(1.0)


def test_defocus_kernel_and_filter():
    # radius 0.3: the disk is the centre pixel, blurred by a 3x3 Gaussian of sigma 0.4
    g = np.exp(-1 / (2 * 0.4 ** 2))
    k = disk_kernel(0.3, 0.4)
    assert k.shape == (3, 3) and k.sum() == pytest.approx(1.0)
    assert k[1, 1] == pytest.approx((1 / (1 + 2 * g)) ** 2)
    assert np.allclose(k, k.T) and np.allclose(k, k[::-1])
    big = disk_kernel(1.5, 0.1)
    assert big.sum() == pytest.approx(1.0) and big[2, 2] == pytest.approx(1 / 9, rel=1e-6)
    ndimage = pytest.importorskip("scipy.ndimage")
    img = (np.arange(32 * 32).reshape(32, 32) % 251).astype(np.uint8)
    x = torch.from_numpy(np.stack([img, img.T, 255 - img])[None].copy())
    ref = np.stack([ndimage.correlate(c / 255.0, disk_kernel(1.0, 0.2), mode="mirror")
                    for c in x[0].numpy()])  # "mirror" = cv2 BORDER_REFLECT_101
    out = corrupt(x, "defocus_blur", 4)[0].numpy().astype(int)
    assert np.abs(out - _quantise(ref).astype(int)).max() <= 1


def test_contrast_matches_its_formula(images):
    x = images.numpy() / 255.0
    m = x.mean(axis=(2, 3), keepdims=True)
    ref = _quantise((x - m) * 0.4 + m)
    assert np.abs(corrupt(images, "contrast", 3).numpy().astype(int) - ref).max() <= 1


def test_brightness_matches_an_hsv_round_trip():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (2, 3, 8, 8)).astype(np.uint8)
    x[0, :, 0, 0] = 0  # a black pixel
    x[0, :, 0, 1] = (250, 10, 10)  # a pixel that saturates V
    c = PARAMS["brightness"][2]
    ref = np.empty((2, 3, 8, 8))
    for n in range(2):
        for i in range(8):
            for j in range(8):
                h, s, v = colorsys.rgb_to_hsv(*(x[n, :, i, j] / 255.0))
                ref[n, :, i, j] = colorsys.hsv_to_rgb(h, s, min(v + c, 1.0))
    out = corrupt(torch.from_numpy(x), "brightness", 3).numpy().astype(int)
    assert np.abs(out - _quantise(ref).astype(int)).max() <= 1
    assert out[0, :, 0, 0].tolist() == [int(c * 255 + 1e-3)] * 3


def test_jpeg_and_pixelate_are_the_pil_operations_per_image(images):
    img = images[5].permute(1, 2, 0).numpy()  # HWC for PIL
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=58)
    ref = np.asarray(Image.open(buf))
    assert np.array_equal(corrupt(images, "jpeg_compression", 3)[5].permute(1, 2, 0).numpy(), ref)
    small = Image.fromarray(img).resize((24, 24), Image.Resampling.BOX)
    ref = np.asarray(small.resize((32, 32), Image.Resampling.BOX))
    assert np.array_equal(corrupt(images, "pixelate", 4)[5].permute(1, 2, 0).numpy(), ref)


# -- the released files ----------------------------------------------------------------------------
def _fake_cifar10c(folder, m=4):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (5 * m, 32, 32, 3)).astype(np.uint8)   # NHWC as released
    y = np.tile(rng.integers(0, 10, m), 5).astype(np.uint8)
    np.save(folder / "fog.npy", x)
    np.save(folder / "labels.npy", y)
    return x, y


def test_load_released_cifar10c(tmp_path):
    x, y = _fake_cifar10c(tmp_path / "CIFAR-10-C")
    for root in (tmp_path, tmp_path / "CIFAR-10-C"):
        images, labels = load_cifar10c(root, "fog", 3)
        assert images.shape == (4, 3, 32, 32) and images.dtype == np.uint8
        assert labels.dtype == np.int64 and labels.tolist() == y[8:12].tolist()
        assert np.array_equal(images, x[8:12].transpose(0, 3, 1, 2))
    assert np.array_equal(load_cifar10c(tmp_path, "fog", 5)[0][3], x[19].transpose(2, 0, 1))


def test_load_cifar10c_errors(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="CIFAR-10-C"):
        load_cifar10c(tmp_path, "fog", 1)
    _fake_cifar10c(tmp_path / "CIFAR-10-C")
    with pytest.raises(FileNotFoundError, match="frost.npy"):
        load_cifar10c(tmp_path, "frost", 1)
    with pytest.raises(ValueError, match="glass_blur"):
        load_cifar10c(tmp_path, "nonsense", 1)
    with pytest.raises(ValueError, match="1, 2, 3, 4, 5"):
        load_cifar10c(tmp_path, "fog", 7)
    monkeypatch.setenv("SSVI_DATA", str(tmp_path))
    assert load_cifar10c(None, "fog", 1)[0].shape == (4, 3, 32, 32)
    np.save(tmp_path / "CIFAR-10-C" / "fog.npy", np.zeros((7, 32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="damaged"):
        load_cifar10c(tmp_path, "fog", 1)


def test_load_cifar10c_default_folder_is_the_one_data_folder(tmp_path, monkeypatch):
    """root=None is ssvi.cifar.data_root(): $SSVI_DATA, else <repository>/data, never the cwd."""
    from ssvi.cifar import data_root
    _fake_cifar10c(tmp_path / "data" / "CIFAR-10-C")
    monkeypatch.delenv("SSVI_DATA", raising=False)
    monkeypatch.chdir(tmp_path)  # ./data/CIFAR-10-C exists here, but is not the data folder
    if (data_root() / "CIFAR-10-C" / "fog.npy").is_file():
        pytest.skip("the repository's data folder holds CIFAR-10-C")
    with pytest.raises(FileNotFoundError, match=str(data_root() / "CIFAR-10-C")):
        load_cifar10c(None, "fog", 1)
