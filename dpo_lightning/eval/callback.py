"""Samples at every validation: what the policy writes, what the reference writes, their rewards and the KL.

    fixed validation prompts ─► sample π and π_ref ─► log π(y), log π_ref(y) of the policy samples ─► val/kl
                                                  └─► task reward r(x, y) of both                    ─► val/reward
                                                  └─► samples/step_<N>.csv (and a W&B Table)

The prompts are the first `samples.num_prompts` validation pairs', tokenized exactly as training sees them;
sampling is seeded, so successive validations differ only through the weights. Under DDP/FSDP each process
samples an equal share of the prompts (every forward of a sharded model is a collective) and the rows are
gathered; every process logs the same numbers, rank 0 writes the table.
"""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger

from dpo_lightning.data.streaming import all_ranks
from dpo_lightning.data.tokenize import TokenizedPair
from dpo_lightning.eval.kl import kl_estimate, mean_and_standard_error
from dpo_lightning.eval.rewards import Reward
from dpo_lightning.eval.sampling import (
    SamplingSettings,
    completion_text,
    sample_completions,
    sample_logprobs,
    truncated,
)

log = logging.getLogger(__name__)

# The table's columns: texts; ground-truth rewards (empty without a task reward); the policy sample's length
# in tokens, whether it was cut at max_new_tokens before its EOS (1) or not (0), and its summed log-probs under π
# and π_ref (their difference is the sample's KL term).
COLUMNS = (
    "prompt", "policy", "reference", "chosen", "policy_reward", "reference_reward",
    "policy_tokens", "policy_truncated", "policy_logp", "reference_logp",
)  # fmt: skip


class SampleEvaluation(L.Callback):
    """Samples, rewards and KL at the end of every validation (not the sanity check).

    Args:
        num_prompts: how many validation pairs to sample on (`PreferenceDataModule.evaluation_pairs`, fetched at
            setup): their prompts are sampled from; their chosen responses go in the table's `chosen` column,
            for win rates against the dataset.
        tokenizer: the policy's tokenizer (pad/EOS ids, decoding).
        settings: sampling settings (`samples/` config).
        reward: the task's ground-truth reward, or None.
        folder: where `step_<N>.csv` tables go.
        kl: estimate KL(π ‖ π_ref) from the policy samples (needs a reference model; see DPOLitModule).
    """

    def __init__(
        self,
        num_prompts: int,
        tokenizer: Any,
        settings: SamplingSettings,
        reward: Reward | None,
        folder: Path,
        kl: bool = True,
    ) -> None:
        self.num_prompts = num_prompts
        self.prompts: list[TokenizedPair] = []
        self.tokenizer = tokenizer
        self.settings = settings
        self.reward = reward
        self.folder = folder
        self.kl = kl
        self.last_table: Path | None = None
        self._latest: tuple[int, dict[str, float]] | None = None  # (global step, metrics) of the last sampling

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not self.prompts and self.num_prompts > 0:
            self.prompts = trainer.datamodule.evaluation_pairs(self.num_prompts)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not self.prompts:
            return
        if self._latest is not None and self._latest[0] == trainer.global_step:  # same weights: the final
            self._log(pl_module, self._latest[1])  # validation after the last training step re-logs, no resampling
            return
        rows = [row for rows in all_ranks(self._my_rows(trainer, pl_module)) for row in rows]
        rows.sort(key=lambda row: row.pop("index"))
        metrics = self._metrics(rows, trainer.global_step)
        self._latest = (trainer.global_step, metrics)
        self._log(pl_module, metrics)
        if trainer.is_global_zero:
            self._write(rows, trainer)
            log.info(
                "samples at step %d: %s",
                trainer.global_step,
                " · ".join(f"{name} {value:.3f}" for name, value in metrics.items()),
            )

    @staticmethod
    def _log(pl_module: L.LightningModule, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():  # the same on every rank: no sync needed
            pl_module.log(name, value, on_step=False, on_epoch=True, sync_dist=False)

    def _my_rows(self, trainer: L.Trainer, pl_module: L.LightningModule) -> list[dict[str, Any]]:
        """This process's share of the table: an equal number of prompts on every rank (the last ones repeated
        where the share runs out, and dropped after), so that sharded models see matching collectives."""
        rank, world = trainer.global_rank, trainer.world_size
        share = math.ceil(len(self.prompts) / world)
        indices = list(range(rank * share, min((rank + 1) * share, len(self.prompts))))
        padded = indices + [indices[-1] if indices else 0] * (share - len(indices))
        pairs = [self.prompts[i] for i in padded]
        prompt_ids = [pair.prompt_ids for pair in pairs]
        sample = dict(tokenizer=self.tokenizer, settings=self.settings, seed_offset=rank, synced_gpus=world > 1)
        policy_samples = sample_completions(pl_module.policy, prompt_ids, **sample)
        scoring = dict(pad_token_id=self.tokenizer.pad_token_id, batch_size=self.settings.batch_size)
        policy_logps = sample_logprobs(pl_module.policy, prompt_ids, policy_samples, **scoring)
        with pl_module.reference_model() as reference:
            reference_samples = reference_logps = None
            if reference is not None:
                reference_samples = sample_completions(reference, prompt_ids, **sample)
                if self.kl:
                    reference_logps = sample_logprobs(reference, prompt_ids, policy_samples, **scoring)

        rows = []
        for k, pair in enumerate(pairs[: len(indices)]):
            prompt, policy_text = completion_text(self.tokenizer, pair.prompt_ids, policy_samples[k])
            rows.append(
                {
                    "index": indices[k],
                    "prompt": prompt,
                    "policy": policy_text,
                    "reference": completion_text(self.tokenizer, pair.prompt_ids, reference_samples[k])[1]
                    if reference_samples is not None
                    else "",
                    "chosen": completion_text(self.tokenizer, pair.prompt_ids, pair.chosen_ids)[1],
                    "policy_tokens": len(policy_samples[k]),
                    "policy_truncated": int(truncated(policy_samples[k], self.tokenizer.eos_token_id)),
                    "policy_logp": float(policy_logps[k]),
                    "reference_logp": float(reference_logps[k]) if reference_logps is not None else None,
                }
            )
        if self.reward is not None:
            prompts = [row["prompt"] for row in rows]
            for column in ("policy", "reference") if reference_samples is not None else ("policy",):
                scores = self.reward(prompts, [row[column] for row in rows])
                for row, score in zip(rows, scores, strict=True):
                    row[f"{column}_reward"] = score
        return rows

    def _metrics(self, rows: list[dict[str, Any]], step: int) -> dict[str, float]:
        """val/reward (± its standard error) of the policy samples, val/reference_reward, val/kl (± error),
        val/sample_tokens (mean policy sample length), val/truncated_samples (the share of policy samples cut at
        `max_new_tokens` before their EOS: where it is above 0, val/kl is the KL of the samples' first
        `max_new_tokens` tokens, a lower bound of the sequence-level KL; see `eval.kl`), val/step (the step)."""
        metrics: dict[str, float] = {}
        for column, name in (("policy_reward", "val/reward"), ("reference_reward", "val/reference_reward")):
            values = [row[column] for row in rows if row.get(column) is not None]
            if values:
                metrics[name], metrics[f"{name}_se"] = mean_and_standard_error(torch.tensor(values))
        if all(row["reference_logp"] is not None for row in rows):
            policy_logps, reference_logps = (
                torch.tensor([row[k] for row in rows]) for k in ("policy_logp", "reference_logp")
            )
            metrics["val/kl"], metrics["val/kl_se"] = kl_estimate(policy_logps, reference_logps)
        metrics["val/sample_tokens"] = sum(row["policy_tokens"] for row in rows) / len(rows)
        metrics["val/truncated_samples"] = sum(row["policy_truncated"] for row in rows) / len(rows)
        metrics["val/step"] = float(step)
        return metrics

    def _write(self, rows: list[dict[str, Any]], trainer: L.Trainer) -> None:
        """samples/step_<N>.csv (N: global step, 6 digits), and a W&B Table when that logger is on."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"step_{trainer.global_step:06d}.csv"
        with path.open("w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows({column: row.get(column, "") for column in COLUMNS} for row in rows)
        self.last_table = path
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                data = [[row.get(column, "") for column in COLUMNS] for row in rows]
                logger.log_table("val/samples", columns=list(COLUMNS), data=data, step=trainer.global_step)
