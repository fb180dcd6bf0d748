"""PreferenceDataModule: source → checked triples → tokenized pairs → collated batches."""

from __future__ import annotations

from functools import partial

import datasets
import lightning as L
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from dpo_lightning.data.collate import Batch, collate_padded
from dpo_lightning.data.sources.base import PreferenceSource
from dpo_lightning.data.tokenize import TokenizedPair, TruncationMode, tokenize_rows
from dpo_lightning.data.validate import check_triples
from dpo_lightning.errors import ConfigError

SPLITS: tuple[str, ...] = ("train", "validation")


class PreferenceDataModule(L.LightningDataModule):
    """Map-style preference data for training and validation.

    `batch_size` is the global batch in pairs: each device gets
    `batch_size / (world_size × accumulate_grad_batches)` pairs per step, so the optimizer always sees
    `batch_size` pairs whatever the number of devices.
    """

    def __init__(
        self,
        source: PreferenceSource,
        tokenizer: PreTrainedTokenizerBase,
        *,
        batch_size: int,
        eval_batch_size: int,
        max_length: int,
        max_prompt_length: int,
        truncation_mode: TruncationMode,
        skip_bad_rows: bool = False,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.source = source
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.tokenize_options = {
            "max_length": max_length,
            "max_prompt_length": max_prompt_length,
            "truncation_mode": truncation_mode,
        }
        self.skip_bad_rows = skip_bad_rows
        self.num_workers = num_workers
        self.pairs: dict[str, datasets.Dataset] = {}
        self.report: dict[str, dict] = {}  # per split: rows, skipped per reason, truncations

    def setup(self, stage: str | None = None) -> None:
        for split in SPLITS:
            if split not in self.pairs:
                self.pairs[split] = self._prepare(split)

    def _prepare(self, split: str) -> datasets.Dataset:
        origin = self.source.origin(split)
        rows, skipped = check_triples(self.source.load(split), origin, self.skip_bad_rows)
        if len(rows) == 0:
            raise ConfigError("task", f"{origin}: no usable rows in split {split!r}")
        pairs = rows.map(
            partial(tokenize_rows, tokenizer=self.tokenizer, **self.tokenize_options),
            batched=True,
            remove_columns=rows.column_names,
            desc=f"tokenizing {split}",
        )
        self.report[split] = {
            "rows": len(pairs),
            "skipped": dict(skipped),
            "truncated_prompts": int(sum(pairs["prompt_truncated"])),
            "truncated_responses": int(sum(pairs["responses_truncated"])),
        }
        return pairs.select_columns(["prompt_ids", "chosen_ids", "rejected_ids"])

    def _micro_batch_size(self) -> int:
        trainer = self.trainer
        shards = (trainer.world_size * trainer.accumulate_grad_batches) if trainer is not None else 1
        if self.batch_size % shards:
            raise ConfigError(
                "data.batch_size",
                f"{self.batch_size} is not divisible by world_size × accumulate_grad_batches = {shards}",
            )
        return self.batch_size // shards

    def _loader(self, split: str, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(
            self.pairs[split].with_format(None),
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            collate_fn=partial(_collate_rows, pad_token_id=self.tokenizer.pad_token_id),
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self._micro_batch_size(), shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("validation", self.eval_batch_size, shuffle=False)


def _collate_rows(rows: list[dict], pad_token_id: int) -> Batch:
    return collate_padded([TokenizedPair(**row) for row in rows], pad_token_id)
