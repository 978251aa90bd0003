"""The data modules: ssvi.cifar (reading the official CIFAR layouts safely, the data folder, the
variant), ssvi.synthetic, and ssvi.loader (splits, the loader and its shards, the fingerprint)."""
from __future__ import annotations

import dataclasses
import os
import pickle
import shutil

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF

import ssvi.cifar as cifar
import ssvi.loader as loader_mod
from fakes import write_fake_cifar
from ssvi.cifar import (CIFAR10_MEAN, CIFAR10_STD, data_root, dataset_available, identify_variant,
                        load_cifar)
from ssvi.config import TrainConfig
from ssvi.errors import DataError
from ssvi.loader import (Loader, crop_flip, data_fingerprint, load_dataset, make_loaders,
                         split_train)
from ssvi.paths import repo_dir
from ssvi.synthetic import make_synthetic


# -- reading the official layout -------------------------------------------------------------------
def test_fake_cifar10_has_the_official_layout_and_reads_back(fake_cifar10_root):
    folder = fake_cifar10_root / "cifar-10-batches-py"
    names = {p.name for p in folder.iterdir()}
    assert names == {f"data_batch_{i}" for i in range(1, 6)} | {"test_batch", "batches.meta"}
    # the reader recommended on the CIFAR web page: bytes keys, uint8 (N, 3072) CHW rows
    raw = []
    for i in range(1, 6):
        with open(folder / f"data_batch_{i}", "rb") as f:
            raw.append(pickle.load(f, encoding="bytes"))
    assert all(set(r) >= {b"data", b"labels", b"batch_label", b"filenames"} for r in raw)
    with open(folder / "test_batch", "rb") as f:  # torchvision's way: latin1, str keys
        test = pickle.load(f, encoding="latin1")
    assert "data" in test and "labels" in test
    ds = load_cifar("cifar10", fake_cifar10_root)
    rows = np.concatenate([r[b"data"] for r in raw])
    assert ds.x_train.shape == (60, 3, 32, 32) and ds.x_train.dtype == np.uint8
    assert ds.x_test.shape == (30, 3, 32, 32)
    assert ds.y_train.dtype == np.int64 and ds.y_test.dtype == np.int64
    # row layout: 1024 red, 1024 green, 1024 blue values, each row-major
    assert np.array_equal(ds.x_train[7, 1, 2, 5], rows[7, 1024 + 2 * 32 + 5])
    assert np.array_equal(ds.x_train.reshape(60, -1), rows)
    assert ds.y_train.tolist() == sum((r[b"labels"] for r in raw), [])
    assert ds.y_test.tolist() == test["labels"]
    assert ds.class_names[0] == "airplane" and ds.num_classes == 10
    assert ds.mean == CIFAR10_MEAN and ds.std == CIFAR10_STD


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_reads_python3_pickles_with_bytes_keys(tmp_path, protocol):
    """A hand-made batch pickled by Python 3 (bytes keys; protocol 2 pickles them through
    _codecs.encode, protocol 5 arrays through numpy's _frombuffer): pixel positions checked."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    img = np.zeros((3, 32, 32), np.uint8)
    img[0], img[1], img[2] = 10, 20, 30
    img[0, 0, 1] = 99   # red, row 0, column 1
    img[2, 31, 0] = 7   # blue, last row, column 0
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": img.reshape(1, 3072), b"labels": [3]}, f, protocol=protocol)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [b"c%d" % i for i in range(10)]}, f)
    ds = load_cifar("cifar10", tmp_path)
    x = ds.x_test[0]
    assert x[0, 0, 1] == 99 and x[0, 0, 0] == 10 and x[1, 5, 5] == 20 and x[2, 31, 0] == 7
    assert ds.y_train.tolist() == [3] * 5 and ds.class_names[9] == "c9"


def test_fake_cifar100(fake_cifar100_root):
    ds = load_dataset("cifar100", fake_cifar100_root)
    assert ds.num_classes == 100 and ds.x_train.shape == (50, 3, 32, 32)
    with open(fake_cifar100_root / "cifar-100-python" / "train", "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    assert ds.y_train.tolist() == raw[b"fine_labels"]
    assert raw[b"coarse_labels"] != raw[b"fine_labels"]  # the fine labels are the ones read
    assert ds.mean == cifar.CIFAR100_MEAN and ds.std == cifar.CIFAR100_STD


def test_data_dir_resolution(fake_cifar10_root, tmp_path, monkeypatch):
    monkeypatch.setenv("SSVI_DATA", str(fake_cifar10_root))
    assert len(load_dataset("cifar10").x_train) == 60            # $SSVI_DATA
    with pytest.raises(FileNotFoundError):
        load_dataset("cifar10", data_dir=tmp_path)              # the argument wins
    monkeypatch.delenv("SSVI_DATA")
    monkeypatch.chdir(tmp_path)  # not the working directory: the repository's data folder
    assert data_root() == repo_dir() / "data"
    assert data_root(tmp_path) == tmp_path


def test_missing_data_message_says_how_to_provide_it(tmp_path, monkeypatch):
    monkeypatch.delenv("SSVI_DATA", raising=False)
    with pytest.raises(FileNotFoundError) as err:
        load_dataset("cifar10", tmp_path)
    msg = str(err.value)
    assert "\n" not in msg and isinstance(err.value, DataError)  # one line, shown by the CLI
    for needle in (str(tmp_path / "cifar-10-batches-py"), "SSVI_DATA", "data_dir",
                   "download=True", "internet",
                   "python ../shared/data/cifar10-jpeg75/make_cifar10.py data", "JPEG"):
        assert needle in msg, needle
    with pytest.raises(FileNotFoundError, match="cifar-100-python"):
        load_dataset("cifar100", tmp_path)


def test_download_failure_and_success_paths(tmp_path, monkeypatch):
    def offline(kind, root):
        raise OSError("no route to host")

    monkeypatch.setattr(cifar, "_download", offline)
    with pytest.raises(FileNotFoundError, match="no route to host"):
        load_dataset("cifar10", tmp_path, download=True)
    calls = []

    def fake_download(kind, root):  # stands in for torchvision's download + extraction
        calls.append(kind)
        write_fake_cifar(root, kind, n_train=10, n_test=5)

    monkeypatch.setattr(cifar, "_download", fake_download)
    assert len(load_dataset("cifar10", tmp_path, download=True).x_train) == 10
    assert len(load_dataset("cifar10", tmp_path, download=True).x_train) == 10
    assert calls == ["cifar10"]  # present data is not downloaded again


@pytest.mark.parametrize("damage", ["truncate", "garbage", "wrong_object"])
def test_corrupt_pickle_is_named(fake_cifar10_root, tmp_path, damage):
    root = tmp_path / "copy"
    shutil.copytree(fake_cifar10_root, root)
    path = root / "cifar-10-batches-py" / "data_batch_3"
    raw = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "garbage":
        path.write_bytes(b"not a pickle at all" * 10)
    else:
        path.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(DataError, match="data_batch_3") as err:
        load_cifar("cifar10", root)
    assert "\n" not in str(err.value) and "recreate" in str(err.value)


def test_unknown_dataset():
    with pytest.raises(ValueError, match="cifar10, cifar100, synthetic"):
        load_dataset("mnist")


# -- splits and the synthetic set ------------------------------------------------------------------
def test_split_train_takes_val_from_the_end_and_subset_from_the_start():
    x = np.arange(20)[:, None]
    y = np.arange(20)
    xt, yt, xv, yv = split_train(x, y, val_size=5, train_subset=4)
    assert yv.tolist() == [15, 16, 17, 18, 19] and yt.tolist() == [0, 1, 2, 3]
    _, _, xv2, _ = split_train(x, y, val_size=5)
    assert np.array_equal(xv, xv2)  # the validation split does not depend on train_subset
    xt, yt, xv, yv = split_train(x, y)
    assert xv is None and yv is None and len(xt) == 20
    with pytest.raises(ValueError, match="val_size"):
        split_train(x, y, val_size=20)
    with pytest.raises(ValueError, match="train_subset"):
        split_train(x, y, val_size=5, train_subset=16)


def test_synthetic_is_deterministic_and_learnable():
    a, b = make_synthetic(300, 300, seed=0), make_synthetic(300, 300, seed=0)
    assert np.array_equal(a.x_train, b.x_train) and np.array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.x_train, make_synthetic(300, 300, seed=1).x_train)
    assert a.name == "synthetic" and all(n.startswith("synthetic") for n in a.class_names)
    assert a.x_train.dtype == np.uint8 and a.x_train.shape == (300, 3, 32, 32)
    assert np.bincount(a.y_train, minlength=10).min() > 10
    # learnable: a nearest-class-mean rule on the per-channel image means beats chance (10%)
    def feats(x):
        return x.reshape(len(x), 3, -1).mean(-1)
    centres = np.stack([feats(a.x_train)[a.y_train == c].mean(0) for c in range(10)])
    d = ((feats(a.x_test)[:, None, :] - centres[None]) ** 2).sum(-1)
    assert np.mean(d.argmin(1) == a.y_test) > 0.3


# -- the loader ------------------------------------------------------------------------------------
def test_crop_flip_equals_torchvision_random_crop_and_flip():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (12, 3, 32, 32), dtype=torch.uint8, generator=g)
    dy = torch.randint(0, 9, (12,), generator=g)
    dx = torch.randint(0, 9, (12,), generator=g)
    flip = torch.arange(12) % 2 == 0
    dy[0], dx[0], dy[1], dx[1] = 0, 8, 8, 0  # the extreme offsets
    out = crop_flip(x, dy, dx, flip)
    for i in range(12):
        # torchvision RandomCrop(32, padding=4): pad with 0, crop at (i, j) in [0, 8]^2
        ref = TF.crop(TF.pad(x[i], [4]), int(dy[i]), int(dx[i]), 32, 32)
        if flip[i]:
            ref = TF.hflip(ref)
        assert torch.equal(out[i], ref), i


def test_loader_normalisation_order_and_sizes():
    n = 10
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8)
    y = torch.arange(n)
    loader = Loader(x, y, 4, mean=CIFAR10_MEAN, std=CIFAR10_STD)
    assert len(loader) == 3 and loader.num_samples == n
    batches = list(loader)
    assert [len(b[1]) for b in batches] == [4, 4, 2]
    xs = torch.cat([b[0] for b in batches])
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    assert xs.dtype == torch.float32
    torch.testing.assert_close(xs, (x.double() / 255 - mean.double()).div(std.double()).float(),
                               atol=1e-5, rtol=1e-5)
    assert torch.equal(torch.cat([b[1] for b in batches]), y)
    assert len(Loader(x, y, 4, drop_last=True)) == 2
    cl = next(iter(Loader(x, y, 4, channels_last=True)))[0]
    assert cl.is_contiguous(memory_format=torch.channels_last)


def _indexed_images(n):
    """Images whose pixels encode their index (no augmentation: recover the permutation)."""
    idx = torch.arange(n)
    x = torch.zeros(n, 3, 32, 32, dtype=torch.uint8)
    x[:, 0] = (idx % 256).view(n, 1, 1).to(torch.uint8)
    x[:, 1] = (idx // 256).view(n, 1, 1).to(torch.uint8)
    return x, idx


def test_loader_epochs_are_seeded_permutations_independent_of_history():
    x, y = _indexed_images(300)
    loader = Loader(x, y, 64, shuffle=True, seed=3)

    def order(epoch, ld=loader):
        return torch.cat([b for _, b in ld.epoch_batches(epoch)])

    first = order(2)
    assert sorted(first.tolist()) == list(range(300))  # a permutation: each image once
    assert not torch.equal(first, torch.arange(300))
    _ = order(0), order(1), order(5)
    assert torch.equal(order(2), first)                  # same epoch, any history
    assert not torch.equal(order(3), first)              # epochs differ
    assert not torch.equal(order(2, Loader(x, y, 64, shuffle=True, seed=4)), first)
    # labels travel with their images
    for xb, yb in loader.epoch_batches(1):
        assert torch.equal(torch.round(xb[:, 0, 0, 0] * 255).long() + 256 * torch.round(
            xb[:, 1, 0, 0] * 255).long(), yb)
    loader.set_epoch(2)
    assert torch.equal(torch.cat([b for _, b in loader]), first)


def test_augmentation_is_deterministic_and_well_distributed():
    g = torch.Generator().manual_seed(1)
    x = torch.randint(1, 256, (512, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.zeros(512, dtype=torch.long)
    loader = Loader(x, y, 128, shuffle=True, augment=True, seed=0)
    a = torch.cat([b for b, _ in loader.epoch_batches(4)])
    list(loader.epoch_batches(0))
    assert torch.equal(torch.cat([b for b, _ in loader.epoch_batches(4)]), a)
    order, dy, dx, flip = loader.epoch_plan(4)
    assert int(dy.min()) == 0 and int(dy.max()) == 8 and int(dx.min()) == 0 and int(dx.max()) == 8
    assert abs(flip.float().mean().item() - 0.5) < 4 * 0.5 / 512 ** 0.5
    # the batches are crop_flip of the permuted images with the plan's offsets
    ref = crop_flip(x[order], dy, dx, flip).float() / 255
    torch.testing.assert_close(a, ref)


def test_loader_rejects_bad_input():
    with pytest.raises(ValueError, match="uint8"):
        Loader(torch.zeros(4, 3, 32, 32), torch.zeros(4), 2)
    with pytest.raises(ValueError, match="labels"):
        Loader(torch.zeros(4, 3, 32, 32, dtype=torch.uint8), torch.zeros(3), 2)
    with pytest.raises(ValueError, match="batch_size"):
        Loader(torch.zeros(4, 3, 32, 32, dtype=torch.uint8), torch.zeros(4), 0)


# -- make_loaders ----------------------------------------------------------------------------------
def test_make_loaders_from_a_config(fake_cifar10_root):
    cfg = TrainConfig(dataset="cifar10", data_dir=str(fake_cifar10_root), val_size=10,
                      train_subset=40, test_subset=20, batch_size=16, seed=1, device="cpu")
    d = make_loaders(cfg)
    ds = load_cifar("cifar10", fake_cifar10_root)
    assert (d.n_train, d.num_classes, d.name) == (40, 10, "cifar10")
    assert d.train.num_samples == 40 and d.val.num_samples == 10 and d.test.num_samples == 20
    assert d.train.shuffle and d.train.augment and not d.test.augment and not d.val.shuffle
    assert d.class_names == ds.class_names
    assert torch.equal(torch.cat([yb for _, yb in d.val]), torch.from_numpy(ds.y_train[50:]))
    assert torch.equal(torch.cat([yb for _, yb in d.test]), torch.from_numpy(ds.y_test[:20]))
    xb, yb = next(iter(d.train))
    assert xb.shape == (16, 3, 32, 32) and xb.device.type == "cpu"
    cfg2 = TrainConfig(dataset="cifar10", data_dir=str(fake_cifar10_root), augment=False,
                       device="cpu")
    d2 = make_loaders(cfg2)
    assert d2.val is None and d2.n_train == 60 and not d2.train.augment


def test_make_loaders_synthetic():
    cfg = TrainConfig(dataset="synthetic", train_subset=100, test_subset=50, device="cpu")
    d = make_loaders(cfg, device="cpu")
    assert d.name == "synthetic" and d.n_train == 100 and d.test.num_samples == 50


# -- the restricted unpickler (issue 9, item 8) ----------------------------------------------------
class _Call:
    """Pickles as a call of ``fn(*args)`` (what a crafted batch can ask the unpickler to do)."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _crafted_root(fake_cifar10_root, tmp_path, payload):
    root = tmp_path / "copy"
    shutil.copytree(fake_cifar10_root, root)
    path = root / "cifar-10-batches-py" / "data_batch_1"
    with open(path, "rb") as f:
        entry = pickle.load(f, encoding="bytes")
    entry[b"batch_label"] = payload
    with open(path, "wb") as f:
        pickle.dump(entry, f, protocol=2)
    return root


@pytest.mark.parametrize("how", ["os.system", "eval", "object_array"])
def test_crafted_batch_is_refused_and_nothing_runs(fake_cifar10_root, tmp_path, how):
    marker = tmp_path / "pwned"
    if how == "os.system":
        payload = _Call(os.system, f"touch {marker}")
    elif how == "eval":
        payload = _Call(eval, f"open({str(marker)!r}, 'w').close()")
    else:  # an object array could hold anything; the official files never have one
        payload = np.array([1, "x"], dtype=object)
    root = _crafted_root(fake_cifar10_root, tmp_path, payload)
    with pytest.raises(DataError, match="data_batch_1") as err:
        load_cifar("cifar10", root)
    assert "refused" in str(err.value) and "\n" not in str(err.value)
    assert not marker.exists()  # the callable was never called


def test_the_restricted_reader_still_reads_a_plain_python_pickle(fake_cifar10_root, tmp_path):
    root = _crafted_root(fake_cifar10_root, tmp_path, "training batch 1 of 5, re-pickled")
    assert np.array_equal(load_cifar("cifar10", root).x_train,
                          load_cifar("cifar10", fake_cifar10_root).x_train)


# -- which copy, and the data fingerprint ----------------------------------------------------------
def test_identify_variant_of_fakes_and_generated_data(fake_cifar10_root):
    assert identify_variant("cifar10", load_cifar("cifar10", fake_cifar10_root).x_train) \
        == "unrecognised"
    assert identify_variant("synthetic", make_synthetic(10, 10).x_train) == "generated"
    full_size = np.zeros((50000, 3, 32, 32), np.uint8)  # the right shape is not enough
    assert identify_variant("cifar10", full_size) == "unrecognised"


def test_identify_variant_recognises_the_jpeg75_copy_only(monkeypatch):
    """The copy made by make_cifar10.py (it writes PROVENANCE.txt) is "jpeg75"; any other
    CIFAR-10, e.g. the original, differs somewhere and is "unrecognised"."""
    monkeypatch.delenv("SSVI_DATA", raising=False)
    if not (data_root() / "cifar-10-batches-py" / "PROVENANCE.txt").is_file():
        pytest.skip(f"no JPEG-75 copy (made by make_cifar10.py) in {data_root()}")
    x = load_cifar("cifar10").x_train
    assert identify_variant("cifar10", x) == "jpeg75"
    other = x.copy()
    other[123, 1, 4, 5] ^= 1
    assert identify_variant("cifar10", other) == "unrecognised"
    assert identify_variant("cifar100", x) == "unrecognised"


def _cfg(root, **kw):
    return TrainConfig(**{**dict(dataset="cifar10", data_dir=str(root), device="cpu"), **kw})


def test_fingerprint_hashes_the_arrays_used(tmp_path, monkeypatch):
    a = tmp_path / "a"
    b = tmp_path / "b"
    write_fake_cifar(a, "cifar10", n_train=40, n_test=20, seed=0)
    write_fake_cifar(b, "cifar10", n_train=40, n_test=20, seed=1)  # same shapes, other pixels
    fa = data_fingerprint(_cfg(a))
    assert set(fa) == {"dataset", "variant", "sha256"}
    assert (fa["dataset"], fa["variant"]) == ("cifar10", "unrecognised")
    assert len(fa["sha256"]) == 64
    assert data_fingerprint(_cfg(a)) == fa
    assert data_fingerprint(_cfg(b))["sha256"] != fa["sha256"]
    assert data_fingerprint(_cfg(a, train_subset=30))["sha256"] != fa["sha256"]
    assert data_fingerprint(_cfg(a, val_size=5))["sha256"] != fa["sha256"]
    assert data_fingerprint(_cfg(a, test_subset=10))["sha256"] != fa["sha256"]
    # the arrays, not where they are: a copy of the folder has the same fingerprint
    shutil.copytree(a, tmp_path / "c")
    assert data_fingerprint(_cfg(tmp_path / "c")) == fa
    # a built Data holds the same dict, for the arrays in its loaders
    d = make_loaders(_cfg(a, train_subset=30, val_size=5, test_subset=10))
    assert d.fingerprint == data_fingerprint(_cfg(a, train_subset=30, val_size=5, test_subset=10))
    synth = data_fingerprint(TrainConfig(dataset="synthetic", train_subset=100, device="cpu"))
    assert synth["variant"] == "generated" and synth["dataset"] == "synthetic"


def test_fingerprint_loads_each_dataset_once(tmp_path, monkeypatch):
    write_fake_cifar(tmp_path, "cifar10", n_train=40, n_test=20, seed=2)
    calls = []
    real = loader_mod.load_cifar

    def counting(*a, **k):
        calls.append(a)
        return real(*a, **k)

    monkeypatch.setattr(loader_mod, "load_cifar", counting)
    cfgs = [_cfg(tmp_path, train_subset=n, seed=s) for n in (10, 20, 30) for s in (0, 1, 2)]
    prints = [data_fingerprint(c) for c in cfgs]
    assert len(calls) == 1
    assert len({p["sha256"] for p in prints}) == 3  # the seed does not change the data
    assert data_fingerprint(dataclasses.replace(cfgs[0], train_subset=35)) != prints[0]
    assert len(calls) == 1


# -- shards ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("n, batch, world", [(120, 24, 3), (100, 20, 2), (98, 8, 4), (99, 8, 2)])
def test_shards_are_disjoint_and_cover_the_epoch(n, batch, world):
    x, y = _indexed_images(n)
    full = Loader(x, y, batch, shuffle=True, augment=True, seed=5)
    shards = [Loader(x, y, batch, shuffle=True, augment=True, seed=5, shard=(r, world))
              for r in range(world)]
    parts = [list(s.epoch_batches(3)) for s in shards]
    assert all(len(s) == len(p) for s, p in zip(shards, parts))
    seen = [torch.cat([yb for _, yb in p]) for p in parts]
    for a in range(world):
        for b in range(a + 1, world):
            assert not set(seen[a].tolist()) & set(seen[b].tolist())  # disjoint
    # batch by batch, the shards concatenate to the unsharded batch (images and augmentation),
    # less the last size % world images of a final partial batch
    expected = []
    for i, (xb, yb) in enumerate(full.epoch_batches(3)):
        keep = len(yb) // world * world
        expected.append(yb[:keep])
        if keep:
            assert torch.equal(torch.cat([p[i][0] for p in parts]), xb[:keep])
            assert torch.equal(torch.cat([p[i][1] for p in parts]), yb[:keep])
    assert sorted(torch.cat(seen).tolist()) == sorted(torch.cat(expected).tolist())
    if n % batch == 0:
        assert sorted(torch.cat(seen).tolist()) == list(range(n))  # every image exactly once
    whole = full.random_batch(torch.Generator().manual_seed(9))
    got = [s.random_batch(torch.Generator().manual_seed(9)) for s in shards]
    for k in (0, 1):
        assert torch.equal(torch.cat([g[k] for g in got]), whole[k])


def test_shard_option_is_checked():
    x, y = _indexed_images(8)
    with pytest.raises(ValueError, match="divisible"):
        Loader(x, y, 4, shard=(0, 3))
    with pytest.raises(ValueError, match="rank"):
        Loader(x, y, 4, shard=(2, 2))


def test_dataset_available_needs_every_official_file(fake_cifar10_root, tmp_path):
    assert dataset_available("cifar10", fake_cifar10_root)
    assert not dataset_available("cifar100", fake_cifar10_root)
    assert dataset_available("synthetic", tmp_path)
    root = tmp_path / "copy"
    shutil.copytree(fake_cifar10_root, root)
    (root / "cifar-10-batches-py" / "test_batch").unlink()
    assert not dataset_available("cifar10", root)  # a partial folder is not the dataset
