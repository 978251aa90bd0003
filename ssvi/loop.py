"""One training epoch of Algorithm 1: the only training loop in ssvi.

Used by :func:`ssvi.trainer.train`, ``benchmarks/bench_train.py`` and the tests. For every
minibatch, step ``t`` (counted over the whole run) is either a subspace update of the
controller (``controller.is_update_step(t)``: every Delta T steps before T_end, Algorithm 1
lines 10-11) or one VI optimisation step (eq. 1/3) done by ``step_fn(x, y, kl_coef)``, which
returns the minibatch loss. A Table-2 baseline uses the same loop with its own step function
(:class:`ssvi.baselines.training.MethodStep`) and the ``before_step`` / ``after_step`` hooks.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

import torch


@dataclasses.dataclass
class EpochResult:
    """What one epoch did: ``loss_sum`` (float64 tensor on the loss's device, summed over the
    optimisation steps, not synchronised), ``n_steps``, ``n_updates``, ``step`` (the global step
    after the epoch), ``notes`` (what ``on_update`` returned, in order, Nones dropped) and
    ``step_notes`` (what ``after_step`` returned, in order, Nones dropped)."""
    loss_sum: torch.Tensor
    n_steps: int
    n_updates: int
    step: int
    notes: list
    step_notes: list = dataclasses.field(default_factory=list)

    @property
    def mean_loss(self) -> float:
        """Mean loss over the optimisation steps (one host sync)."""
        return float(self.loss_sum) / max(self.n_steps, 1)


class Progress:
    """A tqdm bar when ``enabled`` (else nothing); ``update(n)`` and ``close()``."""

    def __init__(self, enabled: bool, total: int, desc: str):
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total, desc=desc, leave=False, mininterval=1.0)

    def update(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def train_epoch(batches: Iterable, step_fn: Callable, kl_coef: float, *, step: int = 0,
                controller=None, update_loss: Callable | None = None,
                on_update: Callable | None = None, after_update: Callable | None = None,
                before_step: Callable | None = None, after_step: Callable | None = None,
                progress: Progress | None = None) -> EpochResult:
    """Run one epoch over ``batches`` ((x, y) pairs) starting at global step ``step``.

    On an update step of ``controller``: ``on_update(controller, t)`` (its non-None return
    values are collected in ``notes``), then ``controller.update(t, update_loss(x, y, t))``
    (``update_loss`` gives the ``loss_fn(k)`` of the addition criterion, eq. 9), then
    ``after_update(controller, t, stats)``. Otherwise ``loss += step_fn(x, y, kl_coef)``.
    ``before_step(t)`` runs before either; ``after_step(t, x, y)`` after every optimisation
    step (its non-None return values are collected in ``step_notes``). ``NonFiniteLossError``
    from the update propagates.
    """
    if controller is not None and update_loss is None:
        raise ValueError("train_epoch: a controller needs update_loss(x, y, step) for its "
                         "addition criterion")
    loss_sum = None
    n_steps = n_updates = 0
    notes, step_notes = [], []
    for x, y in batches:
        if before_step is not None:
            before_step(step)
        if controller is not None and controller.is_update_step(step):
            if on_update is not None:
                note = on_update(controller, step)
                if note is not None:
                    notes.append(note)
            stats = controller.update(step, update_loss(x, y, step))
            if after_update is not None:
                after_update(controller, step, stats)
            n_updates += 1
        else:
            loss = step_fn(x, y, kl_coef)
            if loss_sum is None:
                loss_sum = torch.zeros((), device=loss.device, dtype=torch.float64)
            loss_sum += loss
            n_steps += 1
            if after_step is not None:
                note = after_step(step, x, y)
                if note is not None:
                    step_notes.append(note)
        step += 1
        if progress is not None:
            progress.update(1)
    if loss_sum is None:
        loss_sum = torch.zeros((), dtype=torch.float64)
    return EpochResult(loss_sum, n_steps, n_updates, step, notes, step_notes)
