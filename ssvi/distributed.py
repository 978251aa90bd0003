"""Multi-GPU data parallelism: torchrun + DistributedDataParallel, the same model as one process.

Run any training command under torchrun; nothing else changes::

    torchrun --nproc_per_node=4 -m ssvi train --preset paper --method ssvi --density 0.1

:func:`ssvi.trainer.train` calls :func:`init_distributed`, which reads torchrun's ``WORLD_SIZE``,
``RANK`` and ``LOCAL_RANK``. With ``WORLD_SIZE`` unset or 1 everything below is a no-op. Choices,
each made so that N processes train the SAME model as one process at the same global batch:

* **Global batch.** ``cfg.batch_size`` is the global batch (the recipe's 128). Every rank builds
  the same loader (same seed, so the same permutation and augmentation) and takes a contiguous
  1/N of every global batch (:class:`ssvi.loader.Loader` with ``shard=(rank, N)``);
  ``batch_size`` must be divisible by N. A final partial batch whose size is not divisible by N
  loses its last ``size % N`` images in that epoch (none for 50,000 images, batch 128 and N in
  1, 2, 4, 8).
* **Gradients.** DDP averages the rank gradients of mean CE + kl_coef * KL: the gradient of the
  global-batch loss (equal shards). The KL term is the same on every rank.
* **BatchNorm.** Statistics over the global batch (``sync_bn=True``, the default): torch's
  ``SyncBatchNorm`` on CUDA, :class:`AllReduceBatchNorm` (all-reduced sums, differentiable) on
  other backends such as gloo/CPU. Per-rank statistics (``sync_bn=False``, what most DDP
  reference code does) are faster but normalise over batch/N images: a different model.
* **Masks.** Initial masks come from the controller's own seeded generator: identical on every
  rank. Removal scores are computed from parameters, identical on every rank. Addition scores
  use dL/dw from ``torch.autograd.grad``, which DDP does not reduce, so
  ``controller.grad_reduce`` is set to an all-reduce mean: every rank scores the global-batch
  gradient and picks the same entries.
* **Noise.** Each rank reseeds its RNG from ``(seed, rank, epoch)`` at the start of every epoch,
  so ranks draw independent LRT noise (shared noise would correlate the shards) and a resumed run
  draws what an uninterrupted one draws.
* **Output.** Only rank 0 logs, writes checkpoints and writes results; every rank evaluates.
"""
from __future__ import annotations

import atexit
import dataclasses
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn


def env_world_size() -> int:
    """WORLD_SIZE set by torchrun (1 when unset)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


# -- BatchNorm over the global batch on any backend ---------------------------------------------------
class _AllReduceSum(torch.autograd.Function):
    """Differentiable sum over ranks: the gradient of sum_r x_r w.r.t. x_r is the sum over ranks
    of the incoming gradients."""

    @staticmethod
    def forward(ctx, x):
        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class AllReduceBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are the mean and biased variance over the GLOBAL
    batch of all ranks (two differentiable all-reduces: the sums, then the squared deviations).

    Same semantics as ``nn.BatchNorm*d`` in one process holding the whole batch, including the
    running statistics (unbiased variance, ``momentum``). Used where ``nn.SyncBatchNorm`` is not
    available (it requires CUDA); in eval mode or without a process group it is plain BatchNorm.
    """

    def _check_input_dim(self, x):
        if x.dim() < 2:
            raise ValueError(f"AllReduceBatchNorm expects (N, C, ...) input, got {tuple(x.shape)}")

    def forward(self, x):
        self._check_input_dim(x)
        if not (self.training and dist.is_available() and dist.is_initialized()
                and dist.get_world_size() > 1):
            return super().forward(x)
        dims = [0] + list(range(2, x.dim()))
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = torch.tensor([float(x.numel() // x.shape[1])], device=x.device)
        dist.all_reduce(count)
        n = count[0]
        mean = _AllReduceSum.apply(x.sum(dims)) / n
        var = _AllReduceSum.apply((x - mean.view(shape)).square().sum(dims)) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                     else self.momentum)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * n / (n - 1), alpha=m)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def convert_batchnorm(model: nn.Module, device_type: str) -> nn.Module:
    """Replace every BatchNorm of ``model`` by its global-batch twin IN PLACE (parameters and
    buffers are the same tensors, so an optimizer built before keeps working). Returns ``model``
    (a new module only if ``model`` itself is a BatchNorm)."""
    if device_type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)

    def convert(module):
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(
                module, AllReduceBatchNorm):
            new = AllReduceBatchNorm(module.num_features, module.eps, module.momentum,
                                     module.affine, module.track_running_stats)
            if module.affine:
                new.weight, new.bias = module.weight, module.bias
            if module.track_running_stats:
                new.running_mean, new.running_var = module.running_mean, module.running_var
                new.num_batches_tracked = module.num_batches_tracked
            new.train(module.training)
            return new
        for name, child in module.named_children():
            module.add_module(name, convert(child))
        return module

    return convert(model)


# -- the per-run context -------------------------------------------------------------------------------
@dataclass
class DistContext:
    """Rank, world size and device of this process, and the DDP plumbing of one run."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    sync_bn: bool = True

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard_data(self, data):
        """``data`` with its training loader replaced by this rank's shard of it
        (:meth:`ssvi.loader.Loader.sharded`)."""
        if not self.active:
            return data
        return dataclasses.replace(data, train=data.train.sharded(self.rank, self.world_size))

    def wrap(self, model: nn.Module) -> nn.Module:
        """Global-batch BatchNorm (if ``sync_bn``) and DistributedDataParallel; the identity in
        one process. Buffers are not broadcast: masks and BN statistics agree on every rank."""
        if not self.active:
            return model
        if self.sync_bn:
            model = convert_batchnorm(model, self.device.type)
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids, **_no_buffer_sync())

    def all_reduce_mean(self, t: torch.Tensor) -> torch.Tensor:
        """The mean of ``t`` over ranks (a new tensor; ``t`` itself is left alone)."""
        if not self.active:
            return t
        out = t.clone()
        dist.all_reduce(out)
        return out / self.world_size

    def attach_controller(self, controller) -> None:
        """Make the controller score additions with the all-reduced gradient."""
        if controller is not None and self.active:
            controller.grad_reduce = self.all_reduce_mean

    def seed_epoch(self, seed: int, epoch: int) -> None:
        """Reseed this rank's RNG from ``(seed, rank, epoch)`` (no-op in one process)."""
        if self.active:
            a, b = np.random.SeedSequence([int(seed), int(self.rank), int(epoch)]).generate_state(
                2, np.uint32)
            torch.manual_seed((int(a) << 31) ^ int(b))



def _no_buffer_sync() -> dict:
    """DDP keyword that turns off the per-forward buffer broadcast (renamed in newer torch)."""
    import inspect
    params = inspect.signature(nn.parallel.DistributedDataParallel).parameters
    return ({"forward_sync_buffers": False} if "forward_sync_buffers" in params
            else {"broadcast_buffers": False})


def init_distributed(device: torch.device, *, sync_bn: bool = True) -> DistContext:
    """The :class:`DistContext` of this process: one process unless torchrun set WORLD_SIZE > 1.

    Under torchrun: initialises the default process group (nccl on CUDA, gloo otherwise) unless
    one exists, and puts CUDA runs on ``cuda:LOCAL_RANK``. The group then lives until the process
    exits, so several ``train()`` calls in one torchrun job share it (a destroyed default group
    cannot be re-created under torchrun's rendezvous).
    """
    device = torch.device(device)
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() \
        else env_world_size()
    if world <= 1:
        return DistContext(device=device, sync_bn=sync_bn)
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        atexit.register(_destroy_group)
    return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(),
                       local_rank=local_rank, device=device, sync_bn=sync_bn)


def _destroy_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
