"""Shared pytest fixtures. Data fixtures: small generated datasets in the official layouts."""
from __future__ import annotations

import pytest
import torch

from fakes import write_fake_cifar
from ssvi.synthetic import make_synthetic


@pytest.fixture(scope="session")
def fake_cifar10_root(tmp_path_factory):
    """A data directory holding a generated CIFAR-10 (60 train / 30 test) in the official
    ``cifar-10-batches-py`` python layout."""
    root = tmp_path_factory.mktemp("fake_cifar10")
    write_fake_cifar(root, "cifar10", n_train=60, n_test=30, seed=0)
    return root


@pytest.fixture(scope="session")
def fake_cifar100_root(tmp_path_factory):
    """A data directory holding a generated CIFAR-100 (50 train / 20 test) in the official
    ``cifar-100-python`` layout."""
    root = tmp_path_factory.mktemp("fake_cifar100")
    write_fake_cifar(root, "cifar100", n_train=50, n_test=20, seed=0)
    return root


@pytest.fixture(scope="session")
def synthetic_small():
    """The synthetic dataset at a small size (200 train / 100 test images)."""
    return make_synthetic(n_train=200, n_test=100, seed=0)


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tiny test tensors run much faster on one thread than split across two busy cores."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
