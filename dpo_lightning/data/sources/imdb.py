"""`task=imdb`: prompts for the DPO paper's controlled-sentiment task — short prefixes of IMDb movie reviews.

The paper (Rafailov et al. 2023, §6.1) prompts the policy with prefixes of `stanfordnlp/imdb` reviews and
scores continuations with a sentiment classifier; its preference pairs are sampled from the SFT model, not
read from a dataset. So this task holds prompts only: `python -m dpo_lightning.cli.pairs task=imdb …` samples
and labels the pairs, and training reads them with `task=local`. A raw row `{"text": "...", "label": 0 | 1}`
becomes the prompt "the first k words of the review" (HTML line breaks `<br />` replaced by spaces), k drawn
uniformly from [min_prefix_words, max_prefix_words] by a per-row seeded RNG (the paper: 2–8 GPT-2 tokens).
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Iterator
from typing import Any

import datasets

from dpo_lightning.data.sources.base import HubSource, as_text
from dpo_lightning.data.sources.files import UNREADABLE, UNREADABLE_ERROR, decode_json_columns
from dpo_lightning.errors import ConfigError, DataError, RowProblem

_LINE_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)


class IMDbPrompts(HubSource):
    """Review-prefix prompts from `stanfordnlp/imdb` (or local files in its schema, `task.source.data_files`)."""

    required_columns = ("text",)
    text_columns = ("text",)

    def __init__(self, *, min_prefix_words: int = 2, max_prefix_words: int = 8, seed: int = 0, **hub: Any) -> None:
        """`hub`: HubSource's arguments (path, splits, subset, data_dir, revision, data_files)."""
        super().__init__(**hub)
        if not 1 <= min_prefix_words <= max_prefix_words:
            raise ConfigError(
                "task.source.min_prefix_words",
                f"need 1 ≤ min_prefix_words ≤ max_prefix_words, got {min_prefix_words} and {max_prefix_words}",
            )
        self.min_prefix_words, self.max_prefix_words, self.seed = min_prefix_words, max_prefix_words, seed

    def prefix(self, text: str, index: int) -> str:
        """The prompt of review `index`: its first k words, k ∈ [min, max] from an RNG seeded by (seed, index)
        (all its words if it has fewer); `RowProblem` if it has none."""
        words = _LINE_BREAK.sub(" ", text).split()
        if not words:  # an empty prompt would be sampled from padding alone
            raise RowProblem("text: no words")
        count = random.Random(f"{self.seed}:{index}").randint(self.min_prefix_words, self.max_prefix_words)
        return " ".join(words[:count])

    def parse(self, row: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError("IMDbPrompts holds prompts only; see prompts()")

    def prompts(self, split: str, skipped: Counter[str] | None = None) -> Iterator[str]:
        """The prompts of `split`, in dataset order, read lazily (a stream: only what is used is read). A bad row
        raises a DataError naming it, or, given a `skipped` counter, is counted there by its problem."""
        origin = self.origin(split)
        self.check_columns(rows := self.read(split, streaming=True), origin)
        for index, row in enumerate(map(decode_json_columns, rows)):
            if row.get(UNREADABLE):  # a stand-in for an unreadable line (files.py): no prompt to make
                if skipped is None:
                    raise DataError(row[UNREADABLE_ERROR])
                skipped[row[UNREADABLE]] += 1
                continue
            try:
                yield self.prefix(as_text(row["text"], "text"), index)
            except RowProblem as problem:
                if skipped is None:
                    raise DataError(f"{origin}: row {index}: {problem}") from None
                skipped[str(problem)] += 1

    def load(self, split: str, streaming: bool = False) -> datasets.Dataset | datasets.IterableDataset:
        raise ConfigError(
            "task",
            "task=imdb holds prompts only (the paper samples its pairs from the SFT model): run "
            "`python -m dpo_lightning.cli.pairs task=imdb policy=<SFT run>`, then train on the pairs with task=local",
        )
