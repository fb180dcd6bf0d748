"""Prompts for on-policy training: the policy writes the responses, so only the prompts of a task are read.

    task source ─► task_prompts (distinct, usable, in data order) ─► PromptTokenizer ─► Prompts batches
                                                                     (prompt cut as training cuts it)

Any task's prompts serve: a preference task's (its chosen and rejected columns unused; a row the source marks
unusable is left out and counted), a prompt task's own (`task=imdb`), or a prompt file's (`task=prompts`).
`PromptDataModule` is a `PreferenceDataModule` whose training examples are prompts: validation stays the task's
preference pairs where it has them (`val/loss`, `val/rewards/accuracies` on held-out pairs), else prompts too
(only the samples' `val/reward` and `val/kl`). Training prompts are shuffled per epoch with the seed, shared out over
the data-parallel ranks (each rank samples its share) and resumed mid-epoch from a checkpoint like pairs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader

from dpo_lightning.data.datamodule import PreferenceDataModule
from dpo_lightning.data.sampler import ShuffledSampler
from dpo_lightning.data.sources.base import FILTERED, SPLITS
from dpo_lightning.data.tokenize import PairTokenizer, TokenizedPair, TokenizeSettings, truncate
from dpo_lightning.errors import ConfigError, DataError


def task_prompts(source: Any, split: str, skipped: Counter[str] | None = None, streaming: bool = True) -> Iterator[str]:
    """The text prompts of a task split, distinct, in data order: a prompt source's own `prompts(split)`
    (`task=imdb`, `task=prompts`), or the prompts of a preference source's usable rows.

    A bad row raises a DataError naming its file (or dataset), row and problem — or, given a `skipped` counter, is
    left out and counted there per problem. A row the task's recipe filters out (`sources.base.FILTERED`) is always
    left out, and counted when there is a counter. `streaming`: read a preference source lazily (only what is
    used), or whole (a source that cannot stream: rows in memory with a held-out share)."""
    if hasattr(source, "prompts"):
        prompts: Iterator[Any] = source.prompts(split, skipped)
    else:
        prompts = _usable_prompts(source.load(split, streaming=streaming), source.origin(split), skipped)
    seen: set[str] = set()
    for prompt in prompts:
        if not isinstance(prompt, str):
            raise ConfigError(
                "task", "sampling from a policy takes text prompts; this task's prompts are conversations"
            )
        if prompt not in seen:
            seen.add(prompt)
            yield prompt


def _usable_prompts(rows: Iterable[dict[str, Any]], origin: str, skipped: Counter[str] | None) -> Iterator[Any]:
    for row in rows:
        problem = row["problem"]
        if not problem:
            yield row["prompt"]
        elif skipped is not None:
            skipped[problem] += 1
        elif not problem.startswith(FILTERED):
            message = row.get("message") or f"{origin}: row {row['row']}: {problem}"
            raise DataError(f"{message} (set task.skip_bad_rows=true to skip and count bad rows)")


@dataclass(frozen=True)
class Prompts:
    """A training batch of an on-policy run: the token ids of B prompts (this rank's share of the step)."""

    ids: list[list[int]]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Prompts:
        """Token ids stay Python lists (the sampler pads them itself); Lightning's batch transfer calls this."""
        return self


class PromptTokenizer:
    """Prompt text → token ids cut as training would cut them beside a response of `max_new_tokens` tokens (the
    longest a sample can be): the `truncate` rule of the task's tokenization settings, so a sampled response
    never needs its prompt cut afterwards. Returns (ids, whether the prompt was cut)."""

    def __init__(self, tokenizer: Any, settings: TokenizeSettings, max_new_tokens: int) -> None:
        budget = settings.max_length - settings.max_prompt_length
        if max_new_tokens > budget:
            raise ConfigError(
                "algorithm.sampling.max_new_tokens",
                f"{max_new_tokens} tokens do not fit the response budget task.tokenize.max_length − "
                f"max_prompt_length = {settings.max_length} − {settings.max_prompt_length} = {budget}",
            )
        self.pair_tokenizer = PairTokenizer(tokenizer, settings)
        self.max_new_tokens = max_new_tokens

    def __call__(self, prompts: list[str]) -> list[tuple[list[int], bool]]:
        limits = self.pair_tokenizer.limits
        out = []
        for prompt_ids, kept in self.pair_tokenizer.prompt_ids(prompts):
            prompt_ids, _, cut = truncate(prompt_ids, [[0] * self.max_new_tokens], protected_suffix=kept, **limits)
            out.append((prompt_ids, cut.prompt))
        return out


class PromptDataModule(PreferenceDataModule):
    """Training batches of prompts (`Prompts`, `batch_size` prompts per optimizer step over all devices), for a
    module that samples its own responses; validation as the module docstring says.

    Args (beyond `PreferenceDataModule`'s):
        max_new_tokens: the longest sampled response (prompts are cut to leave room for it: `PromptTokenizer`).
        max_prompts: read at most this many distinct training prompts (None: all).
    """

    def __init__(self, *args: Any, max_new_tokens: int, max_prompts: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.encode = PromptTokenizer(self.tokenizer, self.tokenize, max_new_tokens)
        self.max_prompts = max_prompts
        self.prompt_ids: dict[str, list[list[int]]] = {}
        self.prompt_counts: dict[str, dict[str, Any]] = {}
        self.has_pairs = not hasattr(self.source, "prompts")  # a preference source: validation pairs

    def setup(self, stage: str | None = None) -> None:
        for split in SPLITS:
            if split not in self.prompt_ids and (split == "train" or not self.has_pairs):
                self.prompt_ids[split] = self._read_prompts(split)
        if self.has_pairs and "validation" not in self.pairs:
            super().setup(stage)  # prepares the pairs of both splits; training uses only their prompts

    def _read_prompts(self, split: str) -> list[list[int]]:
        skipped: Counter[str] | None = Counter() if self.skip_bad_rows else None
        texts = []
        for prompt in task_prompts(self.source, split, skipped, streaming=self.streaming):
            if self.max_prompts is not None and split == "train" and len(texts) == self.max_prompts:
                break
            texts.append(prompt)
        if not texts:
            raise DataError(f"{self.source.origin(split)}: no usable prompts")
        encoded = self.encode(texts)
        self.prompt_counts[split] = {
            "prompts": len(texts),
            "truncated_prompts": sum(cut for _, cut in encoded),
            "skipped": dict(skipped or {}),
        }
        return [ids for ids, _ in encoded]

    def train_dataloader(self) -> DataLoader:
        prompts = self.prompt_ids["train"]
        resume, self.resume_point = self.resume_point, None
        batch_size = self._micro_batch_size()
        sampler = self.training_sampler(ShuffledSampler(len(prompts), seed=self.seed), batch_size, resume)
        return DataLoader(prompts, batch_size=batch_size, sampler=sampler, collate_fn=Prompts)

    def val_dataloader(self) -> DataLoader:
        if self.has_pairs:
            return super().val_dataloader()
        return DataLoader(self.prompt_ids["validation"], batch_size=self.eval_batch_size, collate_fn=Prompts)

    def evaluation_pairs(self, count: int) -> list[TokenizedPair]:
        """Validation prompts for sampling: the pairs' (their chosen response shown beside the samples), or the
        prompts themselves with empty responses."""
        if self.has_pairs:
            return super().evaluation_pairs(count)
        return [TokenizedPair(ids, [], []) for ids in self.prompt_ids["validation"][:count]]

    def report(self) -> dict[str, dict[str, Any]]:
        """The prompt counts per split (prompts read, prompts cut, unusable rows skipped) and, where validation
        reads pairs, their row report."""
        pairs = super().report() if self.has_pairs else {}
        return {
            split: {
                **pairs.get(split, {}),
                **({"prompts": self.prompt_counts[split]} if split in self.prompt_counts else {}),
            }
            for split in SPLITS
        }
