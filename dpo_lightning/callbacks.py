"""Training throughput: pairs/s and tokens/s of training steps (validation excluded), summed over devices."""

from __future__ import annotations

import time

import lightning as L

from dpo_lightning.data.collate import Batch


class Throughput(L.Callback):
    """Logs `train/pairs_per_s` and `train/tokens_per_s` every step and keeps run totals for summary.json.

    A step is timed from batch start to batch end (forward, backward and optimizer step; data loading and
    validation excluded). Rates are per-device rates × world size; tokens are `Batch.num_tokens`, the non-padding
    tokens the batch feeds the model (a prompt counts once per row that computes it: twice in the padded layout,
    once in the prefix-shared and packed ones), so compare layouts by pairs/s. The first step (warm-up: allocation,
    lazy initialisation) is left out of the run totals when there is more than one.
    """

    def __init__(self) -> None:
        self._start = 0.0
        self.steps: list[tuple[int, int, float]] = []  # (pairs, tokens, seconds) per step on this device

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Batch, batch_idx: int
    ) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch: Batch, batch_idx: int
    ) -> None:
        seconds = time.perf_counter() - self._start
        if batch.placeholder:  # no data on this rank (end of a stream): not throughput
            return
        self.steps.append((batch.num_pairs, batch.num_tokens, seconds))
        scale = trainer.world_size / seconds
        pl_module.log("train/pairs_per_s", batch.num_pairs * scale, on_step=True, prog_bar=True)
        pl_module.log("train/tokens_per_s", batch.num_tokens * scale, on_step=True)

    def totals(self, world_size: int) -> dict[str, float]:
        """Run-level rates over all timed steps (first step excluded when there are others)."""
        steps = self.steps[1:] if len(self.steps) > 1 else self.steps
        seconds = sum(s for _, _, s in steps)
        if not steps or seconds == 0:
            return {}
        return {
            "train/pairs_per_s": world_size * sum(p for p, _, _ in steps) / seconds,
            "train/tokens_per_s": world_size * sum(t for _, t, _ in steps) / seconds,
        }
