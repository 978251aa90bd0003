"""Atomic writes, versioned checkpoints with clear errors, exact sparse round trips, provenance."""
import json
import os
import socket

import pytest
import torch

import ssvi.checkpoint as ckpt
from ssvi.checkpoint import (CheckpointError, CheckpointNotFoundError,
                             atomic_write_json, atomic_write_text, load_checkpoint, load_sparse,
                             read_sparse_metadata, save_checkpoint, save_sparse)
from ssvi.layers import bayes_layers, mode
from ssvi.models import build_model
from ssvi.provenance import git_state, provenance


def set_random_masks(model, density, seed=0):
    """Exact-density random masks; inactive mu and rho set to 0 (the controller's invariant)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, m in bayes_layers(model):
            n = m.mask.numel()
            keep = torch.randperm(n, generator=g)[: max(1, round(density * n))]
            mask = torch.zeros(n, dtype=torch.bool)
            mask[keep] = True
            m.mask.copy_(mask.view_as(m.mask))
            m.mu.masked_fill_(~m.mask, 0.0)         # +0.0 (mul_ by the mask would leave -0.0)
            if m.rho is not None:
                m.rho.masked_fill_(~m.mask, 0.0)
    return model


def randomize_other_state(model, seed=0):
    """Non-trivial BN statistics and biases, so the dense part of the round trip is tested too."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif not name.endswith(("mu", "rho", "mask")) and t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=g))
            elif name.endswith("num_batches_tracked"):
                t.fill_(123)


def assert_state_bitwise_equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and sa[k].shape == sb[k].shape, k
        bits = (lambda t: t.reshape(-1).view(torch.uint8)) if sa[k].is_floating_point() else (
            lambda t: t)
        assert torch.equal(bits(sa[k]), bits(sb[k])), k    # bitwise, so -0.0 != 0.0, NaN == NaN


@pytest.mark.parametrize("name,width,bayesian", [("small_cnn", 1.0, True),
                                                 ("resnet18", 0.125, True),
                                                 ("small_cnn", 0.5, False)])
def test_sparse_round_trip_is_bitwise_exact(tmp_path, name, width, bayesian):
    torch.manual_seed(1)
    model = set_random_masks(build_model(name, width=width, bayesian=bayesian), 0.1)
    randomize_other_state(model)
    meta = {"model": name, "width": width, "num_classes": 10}
    save_sparse(model, tmp_path / "s.pt", metadata=meta)
    assert read_sparse_metadata(tmp_path / "s.pt") == meta
    torch.manual_seed(2)                       # a fresh model with different values everywhere
    fresh = build_model(name, width=width, bayesian=bayesian)
    assert load_sparse(tmp_path / "s.pt", fresh) == meta
    assert_state_bitwise_equal(model, fresh)
    model.eval(), fresh.eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad(), mode(model, "mean"), mode(fresh, "mean"):
        assert torch.equal(model(x), fresh(x))


def test_negative_zeros_come_back_as_positive_zeros(tmp_path):
    model = set_random_masks(build_model("small_cnn", width=0.25), 0.3)
    with torch.no_grad():
        for _, m in bayes_layers(model):
            m.mu.masked_fill_(~m.mask, -0.0)
    save_sparse(model, tmp_path / "s.pt")
    fresh = build_model("small_cnn", width=0.25)
    load_sparse(tmp_path / "s.pt", fresh)
    for (_, a), (_, b) in zip(bayes_layers(model), bayes_layers(fresh)):
        assert torch.equal(a.mu, b.mu)                      # equal as numbers
        assert not torch.signbit(b.mu[~b.mask]).any()        # stored zeros are +0.0


def test_sparse_file_is_much_smaller(tmp_path):
    model = set_random_masks(build_model("resnet18", width=0.125), 0.05)
    torch.save(model.state_dict(), tmp_path / "dense.pt")
    save_sparse(model, tmp_path / "sparse.pt")
    ratio = os.path.getsize(tmp_path / "sparse.pt") / os.path.getsize(tmp_path / "dense.pt")
    assert ratio < 0.15, ratio


def test_sparse_indices_int32_and_values_fp32(tmp_path):
    model = set_random_masks(build_model("small_cnn", width=0.25), 0.3)
    save_sparse(model, tmp_path / "s.pt")
    layers = load_checkpoint(tmp_path / "s.pt")["sparse_model"]["layers"]
    for name, m in bayes_layers(model):
        assert layers[name]["index"].dtype == torch.int32
        assert layers[name]["mu"].dtype == torch.float32
        assert layers[name]["index"].numel() == m.n_active()


def test_save_sparse_refuses_to_drop_nonzero_inactive_values(tmp_path):
    model = set_random_masks(build_model("small_cnn", width=0.25), 0.3)
    first = bayes_layers(model)[0][1]
    with torch.no_grad():
        first.rho[~first.mask] = 0.5
    with pytest.raises(ValueError, match="inactive entries with non-zero rho"):
        save_sparse(model, tmp_path / "s.pt")
    assert not (tmp_path / "s.pt").exists()


def test_load_sparse_mismatch_errors(tmp_path):
    model = set_random_masks(build_model("small_cnn", width=0.25), 0.3)
    save_sparse(model, tmp_path / "s.pt", metadata={"width": 0.25})
    with pytest.raises(ValueError, match="shape"):
        load_sparse(tmp_path / "s.pt", build_model("small_cnn", width=0.5))
    with pytest.raises(ValueError, match="masked layers"):
        load_sparse(tmp_path / "s.pt", build_model("mlp", width=0.25))
    with pytest.raises(ValueError, match="deterministic"):
        load_sparse(tmp_path / "s.pt", build_model("small_cnn", width=0.25, bayesian=False))
    save_checkpoint(tmp_path / "plain.pt", {"step": 1})
    with pytest.raises(CheckpointError, match="not a sparse model"):
        load_sparse(tmp_path / "plain.pt", model)


def test_checkpoint_round_trip_and_header(tmp_path):
    payload = {"step": 7, "state": {"w": torch.arange(5.0)}, "config": {"lr": 0.01}}
    save_checkpoint(tmp_path / "c.pt", payload)
    raw = torch.load(tmp_path / "c.pt", weights_only=True)
    assert raw["format"] == "ssvi-checkpoint" and raw["version"] == 1
    back = load_checkpoint(tmp_path / "c.pt")
    assert set(back) == set(payload) and back["step"] == 7 and back["config"] == {"lr": 0.01}
    assert torch.equal(back["state"]["w"], payload["state"]["w"])
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(tmp_path / "d.pt", {"version": 2})


def test_missing_corrupt_and_foreign_files(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "absent.pt")
    assert issubclass(CheckpointNotFoundError, FileNotFoundError)
    assert issubclass(CheckpointError, RuntimeError)
    save_checkpoint(tmp_path / "c.pt", {"w": torch.randn(1000)})
    data = (tmp_path / "c.pt").read_bytes()
    for cut in (10, len(data) // 2, len(data) - 30):
        (tmp_path / "t.pt").write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="corrupt or truncated.*delete it to start over"):
            load_checkpoint(tmp_path / "t.pt")
    (tmp_path / "g.pt").write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(tmp_path / "g.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(tmp_path / "empty.pt")
    torch.save({"w": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not an ssvi checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    torch.save({"format": "ssvi-checkpoint", "version": 99}, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="newer"):
        load_checkpoint(tmp_path / "future.pt")


def test_atomic_save_keeps_old_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "c.pt"
    save_checkpoint(target, {"step": 1})
    before = target.read_bytes()
    real_save = torch.save

    def failing_save(obj, f, *a, **k):
        f.write(b"half a checkpoint")          # some bytes reach the temp file, then a crash
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(target, {"step": 2})
    monkeypatch.setattr(ckpt.torch, "save", real_save)
    assert target.read_bytes() == before
    assert load_checkpoint(target) == {"step": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]   # no temp file left


def test_atomic_text_and_json(tmp_path):
    atomic_write_text(tmp_path / "sub" / "a.txt", "héllo\n")
    assert (tmp_path / "sub" / "a.txt").read_text(encoding="utf-8") == "héllo\n"
    atomic_write_json(tmp_path / "b.json", {"b": 1, "a": [1.5, None]}, sort_keys=True)
    text = (tmp_path / "b.json").read_text()
    assert json.loads(text) == {"a": [1.5, None], "b": 1} and text.index('"a"') < text.index('"b"')
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.json", "sub"]


def test_provenance(tmp_path):
    p = provenance(seed=3, wall_time_s=1.5)
    json.dumps(p)                                  # serialisable as is
    assert p["seed"] == 3 and p["wall_time_s"] == 1.5
    assert p["torch"] == torch.__version__
    assert p["device_name"] and p["torch_threads"] >= 1
    assert p["timestamp_utc"].endswith("+00:00")
    assert p["commit"] == "unknown" or len(p["commit"]) == 40
    host = socket.gethostname()
    assert len(host) < 4 or host not in json.dumps(p)
    outside = git_state(tmp_path)                  # tmp_path is not a git repository
    assert outside == {"commit": "unknown", "dirty": None}


class NotAllowed:                                   # not on torch's weights_only allow-list
    pass


def test_unsafe_objects_get_a_clear_message(tmp_path):
    save_checkpoint(tmp_path / "c.pt", {"obj": NotAllowed()})
    with pytest.raises(CheckpointError, match="safe loader.*weights_only=False"):
        load_checkpoint(tmp_path / "c.pt")
    assert isinstance(load_checkpoint(tmp_path / "c.pt", weights_only=False)["obj"], NotAllowed)


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_written_files_respect_the_umask(tmp_path, umask):
    """Checkpoints and JSON files are created like open() creates them (0666 less the umask),
    not 0600 as a mkstemp temp file would be."""
    old = os.umask(umask)
    try:
        save_checkpoint(tmp_path / "c.pt", {"step": 1})
        atomic_write_json(tmp_path / "r.json", {"a": 1})
    finally:
        os.umask(old)
    for name in ("c.pt", "r.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def test_temp_files_of_a_killed_write_are_found_and_removed(tmp_path):
    target = tmp_path / "checkpoint.pt"
    save_checkpoint(target, {"step": 1})
    left = [tmp_path / ".checkpoint.pt.123-abcd.tmp", tmp_path / "checkpoint.pt.tmp"]
    for p in left:
        p.write_bytes(b"half a checkpoint")       # what a kill -9 during a write leaves
    (tmp_path / ".other.json.1-ff.tmp").write_bytes(b"{")    # another file's: not ours
    assert ckpt.stale_temp_files(target) == sorted(left)
    assert ckpt.remove_stale_temp_files(target) == sorted(left)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.json.1-ff.tmp", "checkpoint.pt"]
    assert load_checkpoint(target) == {"step": 1}
    assert ckpt.stale_temp_files(tmp_path / "absent" / "x.pt") == []


def test_checkpoint_error_is_an_ssvi_error():
    from ssvi.errors import CheckpointError as Base, SSVIError
    assert CheckpointError is Base and issubclass(CheckpointError, SSVIError)
