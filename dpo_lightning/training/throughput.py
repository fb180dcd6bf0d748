"""Training throughput: pairs/s (rankings/s), tokens/s of training steps (validation excluded), summed over devices."""

from __future__ import annotations

import time

import lightning as L

from dpo_lightning.data.collate import Batch


class Throughput(L.Callback):
    """Logs `train/pairs_per_s` and `train/tokens_per_s` every step (and `train/rankings_per_s` for ranked
    batches) and keeps run totals for summary.json. A ranked batch's pairs are those of `data.ranking_pairs`
    in its rankings (`Batch.pair_index`): what a pairwise loss trains on.

    A step is timed from batch start to batch end (forward, backward and optimizer step; data loading and
    validation excluded). Rates are per-device rates × world size; tokens are `Batch.num_tokens`, the non-padding
    tokens the batch feeds the model (a prompt counts once per row that computes it: twice in the padded layout,
    once in the prefix-shared and packed ones), so compare layouts by pairs/s. The first step (warm-up: allocation,
    lazy initialisation) is left out of the run totals when there is more than one. The batch counted is the one the
    module trained on (`trained_batch`, where it has one: an on-policy step builds it from its rollouts, whose
    sampling time is part of the step).
    """

    def __init__(self) -> None:
        self._start = 0.0
        self.steps: list[tuple[int, int, int, float]] = []  # (pairs, rankings, tokens, seconds) a step, this device

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Batch, batch_idx: int
    ) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch: Batch, batch_idx: int
    ) -> None:
        seconds = time.perf_counter() - self._start
        batch = getattr(pl_module, "trained_batch", None) or batch  # what the model trained on (on-policy: rollouts)
        if (
            not isinstance(batch, Batch) or batch.placeholder
        ):  # no pairs (PPO), or no data on this rank  # no data on this rank (end of a stream): not throughput
            return
        pairs, rankings = batch.pair_index.shape[1], batch.num_pairs if batch.ranked else 0
        self.steps.append((pairs, rankings, batch.num_tokens, seconds))
        scale = trainer.world_size / seconds
        pl_module.log("train/pairs_per_s", pairs * scale, on_step=True, prog_bar=True)
        pl_module.log("train/tokens_per_s", batch.num_tokens * scale, on_step=True)
        if batch.ranked:
            pl_module.log("train/rankings_per_s", rankings * scale, on_step=True)

    def totals(self, world_size: int) -> dict[str, float]:
        """Run-level rates over all timed steps (first step excluded when there are others)."""
        steps = self.steps[1:] if len(self.steps) > 1 else self.steps
        seconds = sum(step[-1] for step in steps)
        if not steps or seconds == 0:
            return {}
        pairs, rankings, tokens = (world_size * sum(step[i] for step in steps) / seconds for i in range(3))
        totals = {"train/pairs_per_s": pairs, "train/tokens_per_s": tokens}
        return totals | ({"train/rankings_per_s": rankings} if rankings else {})
