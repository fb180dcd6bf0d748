"""Source rows → tokenized pairs: one function for map-style and streaming data alike.

    rows (row, prompt, chosen, rejected, problem)
      └─ triple_problem ─► render conversations with the chat template ─► PairTokenizer ─► prepared columns

A row that fails keeps its place with its `problem` and no token ids; `RowReport` then decides, in one
place, whether that stops the run (an error naming dataset, split, row and field) or is skipped and
counted (`skip_bad_rows`). Rows that the task's recipe filters out are always skipped and counted.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from transformers import PreTrainedTokenizerBase

from dpo_lightning.data.chat import render
from dpo_lightning.data.sources.base import FILTERED, RowProblem
from dpo_lightning.data.tokenize import PairTokenizer
from dpo_lightning.data.validate import triple_problem
from dpo_lightning.errors import DataError

REPORT_COLUMNS: tuple[str, ...] = ("row", "problem", "prompt_truncated", "responses_truncated")  # read by RowReport


class PairPreparer:
    """Batched `datasets.map` function: source rows → `row, problem, prompt_ids, chosen_ids, rejected_ids`,
    plus `prompt_truncated` / `responses_truncated` flags."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, pair_tokenizer: PairTokenizer) -> None:
        self.tokenizer = tokenizer
        self.pair_tokenizer = pair_tokenizer

    def _texts(self, prompt: Any, chosen: Any, rejected: Any) -> tuple[str, str, str]:
        if isinstance(prompt, str):
            return prompt, chosen, rejected
        prompt_text, chosen_text = render(self.tokenizer, prompt, chosen)
        _, rejected_text = render(self.tokenizer, prompt, rejected)
        return prompt_text, chosen_text, rejected_text

    def __call__(self, rows: dict[str, list]) -> dict[str, list]:
        problems = list(rows["problem"])
        texts: dict[int, tuple[str, str, str]] = {}  # position in this batch → rendered texts
        for i, triple in enumerate(zip(rows["prompt"], rows["chosen"], rows["rejected"], strict=True)):
            problems[i] = problems[i] or triple_problem(*triple)
            if problems[i]:
                continue
            try:
                texts[i] = self._texts(*triple)
            except RowProblem as problem:
                problems[i] = str(problem)
        prompts, chosen, rejected = ([parts[k] for parts in texts.values()] for k in range(3))
        encoded = dict(zip(texts, self.pair_tokenizer(prompts, chosen, rejected), strict=True))  # position → pair
        out: dict[str, list] = {"row": list(rows["row"]), "problem": problems}
        for column in ("prompt_ids", "chosen_ids", "rejected_ids"):
            out[column] = [getattr(encoded[i][0], column) if i in encoded else [] for i in range(len(problems))]
        out["prompt_truncated"] = [i in encoded and encoded[i][1].prompt for i in range(len(problems))]
        out["responses_truncated"] = [i in encoded and encoded[i][1].responses for i in range(len(problems))]
        return out


class RowReport:
    """What happened to one split's rows: usable pairs, skipped and filtered rows per reason, truncations."""

    def __init__(self, origin: str, skip_bad_rows: bool) -> None:
        self.origin = origin
        self.skip_bad_rows = skip_bad_rows
        self.rows = 0
        self.skipped: Counter[str] = Counter()
        self.filtered: Counter[str] = Counter()
        self.truncated_prompts = 0
        self.truncated_responses = 0

    def account(self, prepared: dict[str, list]) -> list[bool]:
        """Count a prepared batch's rows (columns row, problem, prompt_truncated, responses_truncated); raise
        `DataError` naming its first bad row unless `skip_bad_rows`. Returns whether each row is usable."""
        problems = prepared["problem"]
        bad = [(row, p) for row, p in zip(prepared["row"], problems, strict=True) if p and not p.startswith(FILTERED)]
        if bad and not self.skip_bad_rows:
            (row, problem), more = bad[0], len(bad) - 1
            hint = f" (and {more} more bad rows; set task.skip_bad_rows=true to skip them)" if more else ""
            raise DataError(f"{self.origin}: row {row}: {problem}{hint}")
        self.skipped.update(problem for _, problem in bad)
        self.filtered.update(p.removeprefix(FILTERED) for p in problems if p.startswith(FILTERED))
        usable = [not problem for problem in problems]
        self.rows += sum(usable)
        self.truncated_prompts += sum(f for f, ok in zip(prepared["prompt_truncated"], usable, strict=True) if ok)
        self.truncated_responses += sum(f for f, ok in zip(prepared["responses_truncated"], usable, strict=True) if ok)
        return usable

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "skipped": dict(self.skipped),
            "filtered": dict(self.filtered),
            "truncated_prompts": self.truncated_prompts,
            "truncated_responses": self.truncated_responses,
        }

    def merge(self, other: dict[str, Any]) -> None:
        """Add another report's counts (another rank's, or a dataloader worker's)."""
        self.rows += other["rows"]
        self.skipped.update(other["skipped"])
        self.filtered.update(other["filtered"])
        self.truncated_prompts += other["truncated_prompts"]
        self.truncated_responses += other["truncated_responses"]
