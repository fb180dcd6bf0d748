"""Faults during training: a diverging loss, and preemption.

`DivergenceGuard`: a NaN or infinite loss or gradient norm stops training before the optimizer applies it:
`DivergenceError` names the step, epoch and batch, and the last checkpoint, which still holds the last good
weights (nothing is saved after the bad step). The check sits before the optimizer step, where DDP has already
averaged the gradients, so every rank sees the same non-finite norm and all stop together. The guard computes the
total gradient norm once per optimizer step and uses it three times: it logs it as `train/grad_norm` (before
clipping), checks it, and clips the gradients with it (`trainer.gradient_clip_val`, which `run` hands to the
guard instead of Lightning: Lightning's clipping would compute the same norm a second time). Under fp16 mixed
precision a non-finite gradient is the loss scaler's business (it skips that step and lowers the scale), so only
the loss is checked there.

`Preemption`: SIGTERM (a cluster preempting the job) → at the end of the current optimizer step every rank
saves `checkpoints/last.ckpt` and stops (see the class). The run's summary says "preempted", and `resume=auto`
continues it.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch.distributed.tensor import DTensor

from dpo_lightning.errors import RunError

log = logging.getLogger(__name__)


class DivergenceError(RunError):
    """Training met a non-finite loss or gradient."""


def gradient_norm(optimizer: torch.optim.Optimizer) -> torch.Tensor:
    """The total L2 norm of the gradients `optimizer` is about to apply (a scalar; sharded gradients: all of them)."""
    gradients = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    if not gradients:
        return torch.zeros(())
    norm = torch.nn.utils.get_total_norm(gradients)
    return norm.full_tensor() if isinstance(norm, DTensor) else norm


class DivergenceGuard(L.Callback):
    """Stops on a NaN/inf loss or gradient norm, before the optimizer step (see the module docstring).

    Args:
        max_norm: clip the gradients' total L2 norm to this (as `torch.nn.utils.clip_grad_norm_` does, with the
            norm the guard has computed already); None or 0: no clipping.
    """

    def __init__(self, max_norm: float | None = None) -> None:
        self.max_norm = max_norm
        self.batch_idx = 0
        self.bad_loss: float | None = None

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.batch_idx = batch_idx

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss.detach()).all():
            self.bad_loss = float(loss.detach().float().sum())

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        total_norm = gradient_norm(optimizer)
        norm = float(total_norm)
        pl_module.log("train/grad_norm", norm, on_step=True)
        scaled = str(trainer.precision) == "16-mixed"  # the GradScaler handles non-finite gradients
        if self.bad_loss is not None:
            self._stop(trainer, f"non-finite loss ({self.bad_loss})")
        if not math.isfinite(norm) and not scaled:
            self._stop(trainer, f"non-finite gradient norm ({norm})")
        if self.max_norm:  # grad ← grad · min(1, max_norm / (norm + 1e-6)), torch's clip_grad_norm_ arithmetic
            parameters = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            torch.nn.utils.clip_grads_with_norm_(parameters, self.max_norm, total_norm)

    def _stop(self, trainer: L.Trainer, problem: str) -> None:
        checkpoint = trainer.checkpoint_callback
        last = Path(checkpoint.dirpath) / "last.ckpt" if checkpoint is not None and checkpoint.dirpath else None
        kept = f"last checkpoint: {last}" if last is not None and last.exists() else "no checkpoint saved yet"
        raise DivergenceError(
            f"training diverged at step {trainer.global_step + 1} (epoch {trainer.current_epoch}, batch "
            f"{self.batch_idx}): {problem}; the update was not applied; {kept}"
        )


class Preemption(L.Callback):
    """On SIGTERM, every rank saves `path` (the run's last.ckpt) at the end of the current optimizer step and
    stops with Lightning's SIGTERMException.

    This callback's own SIGTERM handler (in place of Lightning's during training) only notes the signal. At each
    optimizer-step boundary the ranks decide together whether any of them was signalled (one tiny all-reduce per
    step under DDP/FSDP), so all stop after the same step — also when only one process got the signal — and never
    between the micro-batches of one step, whose accumulated gradients a checkpoint could not hold.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.requested = False
        self.step_at_start = 0
        self.saved: Path | None = None
        self._previous_handler: Any = None

    def _note_signal(self, signal_number: int, frame: Any) -> None:
        self.requested = True

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            self._previous_handler = signal.signal(signal.SIGTERM, self._note_signal)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.step_at_start = trainer.global_step

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step == self.step_at_start:  # between the micro-batches of one optimizer step
            return
        if trainer.strategy.reduce_boolean_decision(self.requested, all=False):
            trainer.save_checkpoint(self.path)
            self.saved = self.path
            log.warning("SIGTERM: saved %s at step %d; resume=auto continues", self.path, trainer.global_step)
            raise SIGTERMException

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore_handler()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore_handler()

    def _restore_handler(self) -> None:
        if self._previous_handler is not None:
            signal.signal(signal.SIGTERM, self._previous_handler)
            self._previous_handler = None
