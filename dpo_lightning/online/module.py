"""OnlineDPOModule: DPO (or any pairwise or ranking objective) on samples of the policy being trained.

    Prompts [B] ─► Rollouts(policy) ─► rankings [≤ B] ─► collate (the run's layout) ─► DPOLitModule._step
      (this rank's share)  K samples a prompt, labelled             prompt computed once for its K samples

Each training step samples the current policy (Guo et al. 2024, "Direct Language Model Alignment from Online AI
Feedback"): K responses to each prompt, ranked by the labeller; a pairwise objective trains on the pairs
`algorithm.pairs` takes from each ranking (best_vs_worst, all, …), a ranking objective on the whole ranking. A step
whose prompts all gave ties still runs a forward and backward on a placeholder ranking (its loss × 0), so that every
data-parallel rank takes part in each gradient all-reduce; each rank's loss is weighed by its share of the step's
loss terms (ranks can keep different numbers: ties), so that the gradient is the mean over all of them. Validation
is DPOLitModule's: the task's held-out pairs where it has them, and the samples callback's `val/reward`, `val/kl`.

Logged each step: `train/rollout/score` (the labeller's mean score of the samples), `train/rollout/tokens_per_s`
(generated tokens per second of sampling, this rank), `train/rollout/sampling_s`, `train/rollout/labelling_s`,
`train/rollout/rankings` (this rank's rankings trained on), and the running counts of `online/rollouts.py`
(`rollout_counts`, kept in checkpoints and reported in summary.json).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch

from dpo_lightning.data.collate import Batch, Collate, collate_function, placeholder_batch
from dpo_lightning.data.prompts import Prompts
from dpo_lightning.data.streaming import all_ranks
from dpo_lightning.online.rollouts import Rollouts
from dpo_lightning.training.module import DPOLitModule


class CountsRollouts:
    """Keeps `rollout_counts` and `rollout_reasons` (Counters the module updates on every rollout) in checkpoints,
    summed over ranks; for LightningModules that sample their own training data."""

    rollout_counts: Counter[str]
    rollout_reasons: Counter[str]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep the run's rollout counts summed over ranks (every rank saves: the gathering is a collective)."""
        super().on_save_checkpoint(checkpoint)
        report = rollout_report(self)
        checkpoint["rollout_counts"], checkpoint["rollout_reasons"] = report["counts"], report["reasons"]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The saved totals go to rank 0 (the others start from zero), so that summing over ranks counts them once."""
        super().on_load_checkpoint(checkpoint)
        first = self.global_rank == 0
        self.rollout_counts = Counter(checkpoint.get("rollout_counts", {}) if first else {})
        self.rollout_reasons = Counter(checkpoint.get("rollout_reasons", {}) if first else {})


class OnlineDPOModule(CountsRollouts, DPOLitModule):
    """DPOLitModule trained on its own rollouts.

    Args:
        rollouts: samples, labels and ranks the prompts (`online.rollouts.Rollouts`).
        collate: the layout's collate function, with the pairs a pairwise objective takes from a ranking bound
            (`data.collate.collate_function(layout, pad, max_tokens, ranking_pairs=algorithm.pairs)`); None: the
            packed layout, best vs worst.
        **kwargs: DPOLitModule's arguments (model, loss, optimizer, reference, kl_reference).
    """

    def __init__(self, *, rollouts: Rollouts, collate: Collate | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        pad = rollouts.tokenizer.pad_token_id
        self.rollouts = rollouts
        self.collate = collate or collate_function("packed", pad, ranking_pairs="best_vs_worst")
        self.rollout_counts: Counter[str] = Counter()  # over the run so far (all steps, this rank)
        self.rollout_reasons: Counter[str] = Counter()  # why labels failed

    def training_step(self, batch: Prompts, batch_idx: int) -> torch.Tensor:
        world, rank, accumulate = (
            self.trainer.world_size,
            self.trainer.global_rank,
            self.trainer.accumulate_grad_batches,
        )
        draw = self.global_step * accumulate + batch_idx % accumulate  # this rank's micro-batch number in the run
        rollout = self.rollouts(self.policy, batch.ids, seed_offset=draw * world + rank, synced_gpus=world > 1)
        self.rollout_counts.update(rollout.counts)
        self.rollout_reasons.update(rollout.reasons)
        trained = self._rollout_batch(rollout.rankings).to(self.device)
        if world > 1:  # ranks can keep different numbers of examples (ties): weigh each rank by its share
            trained.loss_weight = self._share_of_step(trained)
        sampling_rate = rollout.sample_tokens / rollout.sampling_s if rollout.sampling_s > 0 else 0.0
        metrics = {
            "train/rollout/tokens_per_s": sampling_rate,
            "train/rollout/sampling_s": rollout.sampling_s,
            "train/rollout/labelling_s": rollout.labelling_s,
            "train/rollout/rankings": float(len(rollout.rankings)),
        }
        if rollout.mean_score == rollout.mean_score:  # not NaN: some sample was scored
            metrics["train/rollout/score"] = rollout.mean_score
        self.log_dict(metrics, batch_size=len(batch.ids))
        return self._step(trained, "train")

    def _share_of_step(self, batch: Batch) -> float:
        """W × this rank's loss terms ÷ all ranks' (1 where none has any): DDP averages the ranks' gradients, so
        scaled this way the step's gradient is that of the mean over every rank's loss terms, as one process's."""
        mine = (
            0
            if batch.placeholder
            else (batch.num_pairs if self.objective.takes_rankings else batch.pair_index.shape[1])
        )
        total = self.trainer.strategy.reduce(torch.tensor(float(mine), device=self.device), reduce_op="sum")
        return self.trainer.world_size * mine / float(total) if float(total) > 0 else 1.0

    def _rollout_batch(self, rankings: list) -> Batch:
        if rankings:
            return self.collate(rankings)
        return placeholder_batch(self.rollouts.tokenizer.pad_token_id, self.collate, ranked=True)

    def validation_step(self, batch: Batch | Prompts, batch_idx: int) -> torch.Tensor | None:
        if isinstance(batch, Prompts):  # a prompt-only task: validation is the samples callback's alone
            return None
        return super().validation_step(batch, batch_idx)


def rollout_report(module: CountsRollouts) -> dict[str, dict[str, int]]:
    """The run's rollout counts and failure reasons summed over every rank (a collective call), for summary.json."""
    totals: dict[str, Counter[str]] = {"counts": Counter(), "reasons": Counter()}
    for counts, reasons in all_ranks((dict(module.rollout_counts), dict(module.rollout_reasons))):
        totals["counts"].update(counts)
        totals["reasons"].update(reasons)
    return {name: {key: n for key, n in sorted(counter.items()) if n} for name, counter in totals.items()}
