"""Source rows → tokenized pairs (or rankings): one function for map-style and streaming data alike.

    rows (row, prompt, chosen, rejected, problem, message)
      └─ triple_problem ─► render conversations with the chat template ─► PairTokenizer ─► prepared columns
    ranked rows (row, prompt, responses, scores, problem, message)
      ├─ data.rankings=whole: RankingPreparer ─► ranked_problem ─► render ─► PairTokenizer.rankings ─► columns
      └─ data.rankings=pairs: flatten_rankings ─► triple rows (one per pair of `data.ranking_pairs`) ─► as above

A row that fails keeps its place with its `problem` and no token ids; `RowReport` then decides, in one
place, whether that stops the run (an error naming dataset, split, row and field, or for an unreadable line
its file and line) or is skipped and counted (`skip_bad_rows`). Rows that the task's recipe filters out are
always skipped and counted. Usable rows that repeat an earlier usable row's prompt, chosen and rejected are
kept and counted (`duplicate_pairs`), and so are usable rows whose text holds a special token's text, encoded as
text (`rows_with_special_token_text`, see `tokenize.py`).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator
from typing import Any

from transformers import PreTrainedTokenizerBase

from dpo_lightning.data.chat import render
from dpo_lightning.data.rankings import ranking_pairs, ranks_from_scores
from dpo_lightning.data.sources.base import FILTERED
from dpo_lightning.data.tokenize import PairTokenizer, Rendered, Text, TokenizedPair, TokenizedRanking, Truncation
from dpo_lightning.data.validate import ranked_problem, triple_problem
from dpo_lightning.errors import DataError, RowProblem

# Read by RowReport.
REPORT_COLUMNS: tuple[str, ...] = (
    "row",
    "problem",
    "message",
    "prompt_truncated",
    "responses_truncated",
    "pair_key",
    "special_token_text",
)
# Two different responses that became the same token ids: cut to the same tokens, or encoded alike.
IDENTICAL_AFTER_TRUNCATION = "chosen: identical to rejected after truncation"
IDENTICAL_TOKENS = "chosen: identical to rejected as tokens"


def _text_parts(texts: tuple) -> Iterator[Text]:
    """The texts among a row's rendered parts: a ranking's responses one by one, its scores left out."""
    for part in texts:
        if isinstance(part, list):
            yield from (item for item in part if isinstance(item, (str, Rendered)))
        else:
            yield part


def pair_key(*texts: Any) -> str:
    """A digest of an example's texts (and scores): equal for equal examples (what counts duplicates without
    keeping the texts)."""
    return hashlib.blake2b(repr(texts).encode(), digest_size=16).hexdigest()


class Preparer:
    """A batched `datasets.map` function over source rows (`__call__`) giving REPORT_COLUMNS and `id_columns`,
    plus the example (`example`) and evaluation pair of a prepared row. A subclass names the `source_columns` its
    checks read and implements the steps of one batch: `_problem` (the row check), `_texts` (render
    conversations), `_encode` (tokenize the rendered rows) and `_token_problem` (a check of the token ids)."""

    id_columns: tuple[str, ...] = ()  # the prepared columns `example` reads (attributes of the example)
    source_columns: tuple[str, ...] = ()  # the source columns `_problem` and `_texts` take, in order

    def __init__(self, tokenizer: PreTrainedTokenizerBase, pair_tokenizer: PairTokenizer) -> None:
        self.tokenizer = tokenizer
        self.pair_tokenizer = pair_tokenizer

    def __call__(self, rows: dict[str, list]) -> dict[str, list]:
        problems = list(rows["problem"])
        texts: dict[int, tuple] = {}  # position in this batch → rendered texts
        for i, values in enumerate(zip(*(rows[column] for column in self.source_columns), strict=True)):
            problems[i] = problems[i] or self._problem(*values)
            if problems[i]:
                continue
            try:
                texts[i] = self._texts(*values)
            except RowProblem as problem:
                problems[i] = str(problem)
        encoded = dict(zip(texts, self._encode(list(texts.values())), strict=True))  # position → (example, cut)
        for i, (example, cut) in list(encoded.items()):
            if problem := self._token_problem(example, cut):
                problems[i] = problem
                del encoded[i]
        positions = range(len(problems))
        out: dict[str, list] = {"row": list(rows["row"]), "problem": problems, "message": list(rows["message"])}
        for column in self.id_columns:
            out[column] = [getattr(encoded[i][0], column) if i in encoded else [] for i in positions]
        out["prompt_truncated"] = [i in encoded and encoded[i][1].prompt for i in positions]
        out["responses_truncated"] = [i in encoded and encoded[i][1].responses for i in positions]
        out["pair_key"] = [pair_key(*texts[i]) if i in encoded else "" for i in positions]
        special_text = self.pair_tokenizer.has_special_text
        out["special_token_text"] = [i in encoded and any(map(special_text, _text_parts(texts[i]))) for i in positions]
        return out

    def _problem(self, *values: Any) -> str:
        raise NotImplementedError

    def _texts(self, *values: Any) -> tuple:
        raise NotImplementedError

    def _encode(self, texts: list[tuple]) -> list[tuple[Any, Truncation]]:
        raise NotImplementedError

    def _token_problem(self, example: Any, cut: Truncation) -> str:
        raise NotImplementedError


class PairPreparer(Preparer):
    """Source rows → `row, problem, message, prompt_ids, chosen_ids, rejected_ids`, `prompt_truncated` /
    `responses_truncated` flags, and `pair_key` ("" for a bad row)."""

    id_columns: tuple[str, ...] = ("prompt_ids", "chosen_ids", "rejected_ids")
    source_columns: tuple[str, ...] = ("prompt", "chosen", "rejected")

    @staticmethod
    def example(row: dict[str, Any]) -> TokenizedPair:
        """A prepared row's `id_columns` → the pair."""
        return TokenizedPair(row["prompt_ids"], row["chosen_ids"], row["rejected_ids"])

    @staticmethod
    def evaluation_pair(row: dict[str, Any]) -> TokenizedPair:
        """The pair whose prompt (and chosen response, for the table) sampling evaluation uses."""
        return PairPreparer.example(row)

    def _problem(self, prompt: Any, chosen: Any, rejected: Any) -> str:
        return triple_problem(prompt, chosen, rejected)

    def _texts(self, prompt: Any, chosen: Any, rejected: Any) -> tuple[Text, Text, Text]:
        if isinstance(prompt, str):
            return prompt, chosen, rejected
        specials = self.pair_tokenizer.specials
        prompt_text, chosen_text = render(self.tokenizer, prompt, chosen, specials, "chosen")
        _, rejected_text = render(self.tokenizer, prompt, rejected, specials, "rejected")
        return prompt_text, chosen_text, rejected_text

    def _encode(self, texts: list[tuple]) -> list[tuple[TokenizedPair, Truncation]]:
        prompts, chosen, rejected = ([parts[k] for parts in texts] for k in range(3))
        return self.pair_tokenizer(prompts, chosen, rejected)

    def _token_problem(self, pair: TokenizedPair, cut: Truncation) -> str:
        if pair.chosen_ids != pair.rejected_ids:
            return ""
        # different texts (triple_problem), the same tokens
        return IDENTICAL_AFTER_TRUNCATION if cut.responses else IDENTICAL_TOKENS


class RankingPreparer(Preparer):
    """For `data.rankings=whole`: ranked source rows → `row, problem, message, prompt_ids, response_ids` [K],
    `ranks` [K] (`data/rankings.py`), the truncation flags and `pair_key` (of the texts and the scores)."""

    id_columns: tuple[str, ...] = ("prompt_ids", "response_ids", "ranks")
    source_columns: tuple[str, ...] = ("prompt", "responses", "scores")

    @staticmethod
    def example(row: dict[str, Any]) -> TokenizedRanking:
        """A prepared row's `id_columns` → the ranking."""
        return TokenizedRanking(row["prompt_ids"], row["response_ids"], row["ranks"])

    @staticmethod
    def evaluation_pair(row: dict[str, Any]) -> TokenizedPair:
        """The ranking's prompt with its first best and first worst response, for sampling evaluation."""
        ranks = row["ranks"]
        best, worst = ranks.index(min(ranks)), ranks.index(max(ranks))
        return TokenizedPair(row["prompt_ids"], row["response_ids"][best], row["response_ids"][worst])

    def _problem(self, prompt: Any, responses: Any, scores: Any) -> str:
        return ranked_problem(prompt, responses, scores)

    def _texts(self, prompt: Any, responses: list[Any], scores: list[float]) -> tuple[Text, list[Text], list[float]]:
        if isinstance(prompt, str):
            return prompt, responses, scores
        specials = self.pair_tokenizer.specials
        rendered = [
            render(self.tokenizer, prompt, response, specials, f"responses[{index}]")
            for index, response in enumerate(responses)
        ]
        return rendered[0][0], [text for _, text in rendered], scores

    def _encode(self, texts: list[tuple]) -> list[tuple[TokenizedRanking, Truncation]]:
        prompts, responses, scores = ([parts[k] for parts in texts] for k in range(3))
        return self.pair_tokenizer.rankings(prompts, responses, [ranks_from_scores(s) for s in scores])

    def _token_problem(self, ranking: TokenizedRanking, cut: Truncation) -> str:
        """'' unless two different response texts became the same token ids (cut alike, or encoded alike)."""
        for i, ids in enumerate(ranking.response_ids):
            if ids in ranking.response_ids[:i]:
                how = "after truncation" if cut.responses else "as tokens"
                return f"responses[{i}]: identical to responses[{ranking.response_ids.index(ids)}] {how}"
        return ""


def flatten_rankings(rows: dict[str, list], mode: str) -> dict[str, list]:
    """Batched `datasets.map` function for `data.rankings=pairs`: ranked source rows → triple rows (row, prompt,
    chosen, rejected, problem, message), one per (better, worse) pair of `mode` (`data/rankings.py`), each keeping
    its ranking's `row`. A bad ranking stays one row, with its problem and no texts, to be reported or counted."""
    out: dict[str, list] = {key: [] for key in ("row", "prompt", "chosen", "rejected", "problem", "message")}

    def add(row: int, prompt: Any, chosen: Any, rejected: Any, problem: str, message: str) -> None:
        for key, value in zip(out, (row, prompt, chosen, rejected, problem, message), strict=True):
            out[key].append(value)

    columns = (rows[key] for key in ("row", "prompt", "responses", "scores", "problem", "message"))
    for row, prompt, responses, scores, problem, message in zip(*columns, strict=True):
        problem = problem or ranked_problem(prompt, responses, scores)
        if problem:
            add(row, None, None, None, problem, message)
            continue
        for better, worse in ranking_pairs(ranks_from_scores(scores), mode):
            add(row, prompt, responses[better], responses[worse], "", message)
    return out


class RowReport:
    """What happened to one split's rows: usable pairs, skipped and filtered rows per reason, truncations, duplicate
    pairs (among the rows this report accounts, or all that share `seen_pairs`), and usable rows whose text holds a
    special token's text."""

    def __init__(self, origin: str, skip_bad_rows: bool, seen_pairs: set[str] | None = None) -> None:
        self.origin = origin
        self.skip_bad_rows = skip_bad_rows
        self.seen_pairs = set() if seen_pairs is None else seen_pairs  # `pair_key`s of the usable rows so far
        self.rows = 0
        self.skipped: Counter[str] = Counter()
        self.filtered: Counter[str] = Counter()
        self.truncated_prompts = 0
        self.truncated_responses = 0
        self.duplicate_pairs = 0
        self.rows_with_special_token_text = 0

    def account(self, prepared: dict[str, list]) -> list[bool]:
        """Count a prepared batch's rows (the REPORT_COLUMNS); raise `DataError` naming its first bad row (its
        `message` if it has one) unless `skip_bad_rows`. Returns whether each row is usable."""
        problems = prepared["problem"]
        bad = [
            (row, problem, message)
            for row, problem, message in zip(prepared["row"], problems, prepared["message"], strict=True)
            if problem and not problem.startswith(FILTERED)
        ]
        if bad and not self.skip_bad_rows:
            (row, problem, message), more = bad[0], len(bad) - 1
            hint = f" (and {more} more bad rows; set task.skip_bad_rows=true to skip them)" if more else ""
            raise DataError(f"{message or f'{self.origin}: row {row}: {problem}'}{hint}")
        self.skipped.update(problem for _, problem, _ in bad)
        self.filtered.update(p.removeprefix(FILTERED) for p in problems if p.startswith(FILTERED))
        usable = [not problem for problem in problems]
        self.rows += sum(usable)
        self.truncated_prompts += sum(f for f, ok in zip(prepared["prompt_truncated"], usable, strict=True) if ok)
        self.truncated_responses += sum(f for f, ok in zip(prepared["responses_truncated"], usable, strict=True) if ok)
        self.rows_with_special_token_text += sum(
            f for f, ok in zip(prepared["special_token_text"], usable, strict=True) if ok
        )
        for key, ok in zip(prepared["pair_key"], usable, strict=True):
            if ok:
                self.duplicate_pairs += key in self.seen_pairs
                self.seen_pairs.add(key)
        return usable

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "skipped": dict(self.skipped),
            "filtered": dict(self.filtered),
            "truncated_prompts": self.truncated_prompts,
            "truncated_responses": self.truncated_responses,
            "duplicate_pairs": self.duplicate_pairs,
            "rows_with_special_token_text": self.rows_with_special_token_text,
        }

    def merge(self, other: dict[str, Any]) -> None:
        """Add another report's counts (another rank's, or a dataloader worker's)."""
        self.rows += other["rows"]
        self.skipped.update(other["skipped"])
        self.filtered.update(other["filtered"])
        self.truncated_prompts += other["truncated_prompts"]
        self.truncated_responses += other["truncated_responses"]
        self.duplicate_pairs += other["duplicate_pairs"]
        self.rows_with_special_token_text += other["rows_with_special_token_text"]
