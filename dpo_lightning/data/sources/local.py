"""`task=local`: your own preference data in JSONL / JSON / Parquet / CSV files, in any of TRL's formats.

    standard          {"prompt": "…", "chosen": "…", "rejected": "…"}
    conversational    {"prompt": [messages…], "chosen": [assistant message], "rejected": [assistant message]}
    implicit prompt   {"chosen": "…", "rejected": "…"}          (task.source.prompt_column=null)
                      {"chosen": [messages…], "rejected": [messages…]}

Messages are {"role": "system" | "user" | "assistant", "content": "…"}; conversational rows are rendered
with the model tokenizer's chat template. With an implicit prompt, the prompt is the longest common prefix
of chosen and rejected: whole messages for conversations; for text, cut back to the last whitespace so
that both responses start at a word (" 42" / " 41", not "2" / "1").

Ranked data (`data/rankings.py`; task.source.responses_column set): K ≥ 2 responses per prompt, each scored (higher is
better) or ranked (response indices, best first):

    scored            {"prompt": "…", "responses": ["…", "…", "…"], "scores": [7, 9.5, 2]}
    ranked            {"prompt": "…", "responses": ["…", "…", "…"], "ranking": [1, 0, 2]}
                      (task.source.scores_column=null task.source.ranking_column=ranking)
    conversational    {"prompt": [messages…], "responses": [[assistant message], …], "scores": […]}

A ranking becomes scores with `scores_from_ranking` (place p of K scores K − p). Ranked rows need a prompt column.
"""

from __future__ import annotations

import math

import datasets

from dpo_lightning.data.chat import Messages, as_messages
from dpo_lightning.data.rankings import ranking_problem, scores_from_ranking, scores_problem
from dpo_lightning.data.sources.base import POSITION, RowSource, as_text
from dpo_lightning.data.sources.files import UNREADABLE, check_data_file, read_files
from dpo_lightning.errors import ConfigError, RowProblem


def split_common_prefix(chosen: str, rejected: str) -> tuple[str, str, str]:
    """(prompt, chosen response, rejected response) for an implicit prompt: the longest common prefix, cut
    back to the start of the word where the texts differ and before the whitespace in front of that word."""
    differ = (i for i, (a, b) in enumerate(zip(chosen, rejected, strict=False)) if a != b)
    start = next(differ, min(len(chosen), len(rejected)))  # length of the common prefix
    while start > 0 and not chosen[start - 1].isspace():  # back to the start of the differing word …
        start -= 1
    end = start
    while end > 0 and chosen[end - 1].isspace():  # … and before the whitespace in front of it
        end -= 1
    return chosen[:end], chosen[end:], rejected[end:]


class ColumnSource(RowSource):
    """Rows in any of the formats of the module docstring, their columns named by the arguments; a subclass reads
    the raw rows (`raw`) and names them (`origin`). `LocalSource` reads files, `sources.rows.RowsSource` Python rows.

    Validation is the subclass's own (`has_validation`) or a seeded hold-out of `val_size` rows (a fraction in
    (0, 1) or a count) of the training rows (map-style only: a stream has no random access). Rows are triples, or
    ranked rows when `responses_column` is set; these read `scores_column` or `ranking_column`.
    """

    settings = "task.source"  # where the arguments sit in the config: ConfigErrors name `<settings>.<argument>`
    unit = "file"  # what holds a split's rows, for messages

    def __init__(
        self,
        has_validation: bool,
        val_size: float = 0.05,
        prompt_column: str | None = "prompt",
        chosen_column: str = "chosen",
        rejected_column: str = "rejected",
        seed: int = 0,
        responses_column: str | None = None,
        scores_column: str | None = "scores",
        ranking_column: str | None = None,
    ) -> None:
        self.has_validation = has_validation
        if not has_validation and not val_size > 0:
            raise ConfigError(self.key("val_size"), f"must be a fraction in (0, 1) or a row count ≥ 1, got {val_size}")
        self.val_size = val_size
        self.prompt_column, self.chosen_column, self.rejected_column = prompt_column, chosen_column, rejected_column
        self.responses_column, self.scores_column, self.ranking_column = responses_column, scores_column, ranking_column
        self.ranked = responses_column is not None
        if self.ranked:
            self._check_ranked_columns()
            columns = (prompt_column, responses_column, scores_column, ranking_column)
        else:
            if ranking_column is not None:
                raise ConfigError(
                    self.key("ranking_column"),
                    f"applies to ranked data only: set {self.key('responses_column')} too",
                )
            columns = (prompt_column, chosen_column, rejected_column)
        self.required_columns = tuple(c for c in columns if c is not None)
        self.text_columns = tuple(c for c in self.required_columns if c not in (scores_column, ranking_column))
        self.seed = seed
        self._held_out: datasets.DatasetDict | None = None

    def key(self, argument: str) -> str:
        """The config key of one of the arguments, as ConfigErrors name it."""
        return f"{self.settings}.{argument}" if self.settings else argument

    def raw(self, split: str, streaming: bool) -> datasets.Dataset | datasets.IterableDataset:
        """The raw rows of `split`: "train", or "validation" where the subclass has its own (`has_validation`)."""
        raise NotImplementedError

    def whole_origin(self) -> str:
        """What the training rows are named by before a hold-out splits them."""
        return self.origin("train")

    def _check_ranked_columns(self) -> None:
        if self.prompt_column is None:
            raise ConfigError(
                self.key("prompt_column"), "ranked rows need a prompt column (implicit prompts are for pairs)"
            )
        if (self.scores_column is None) == (self.ranking_column is None):
            key = self.key("ranking_column") if self.ranking_column is not None else self.key("scores_column")
            raise ConfigError(
                key,
                f"ranked rows need exactly one of {self.key('scores_column')} and {self.key('ranking_column')} "
                "(null the other)",
            )

    def read(self, split: str, streaming: bool) -> datasets.Dataset | datasets.IterableDataset:
        if self.has_validation:
            rows = self.raw(split, streaming)
        elif streaming:
            raise ConfigError(
                self.key("val_path"), f"streaming needs a separate validation {self.unit} (a stream has no hold-out)"
            )
        else:
            if self._held_out is None:
                self._held_out = self._hold_out(self.raw("train", False))
            rows = self._held_out["train" if split == "train" else "test"]
        self.conversational = self._is_conversational(rows)
        return rows

    def _hold_out(self, rows: datasets.Dataset) -> datasets.DatasetDict:
        """A seeded split of `rows` into "train" and "test" (validation) parts, both non-empty; each row keeps
        its position in the file (column POSITION), which names it in errors."""
        self.check_columns(rows, self.whole_origin())
        held_out = self.val_size if self.val_size < 1 else int(self.val_size)
        count = math.ceil(held_out * len(rows)) if held_out < 1 else held_out
        if not 1 <= count < len(rows):
            raise ConfigError(self.key("val_size"), f"holds out {count} of {len(rows)} rows; both splits need ≥ 1")
        rows = rows.add_column(POSITION, range(len(rows)))
        return rows.train_test_split(test_size=count, seed=self.seed, shuffle=True)

    def _is_conversational(self, rows: datasets.Dataset | datasets.IterableDataset) -> bool:
        """Whether a response is a message list (from the schema, or the first readable row of a stream): a value
        of the chosen column, or an item of the responses column."""
        column = self.responses_column if self.ranked else self.chosen_column
        if rows.features is not None and column in rows.features:
            feature = rows.features[column]
            if self.ranked:
                feature = _item_feature(feature)
            return _item_feature(feature) is not None
        first = next((row for row in rows if not row.get(UNREADABLE)), {})  # the first readable row
        value = first.get(column)
        if self.ranked:
            value = value[0] if isinstance(value, list) and value else None
        return isinstance(value, list)

    def parse(self, row: dict) -> dict:
        if self.ranked:
            return self._parse_ranked(row)
        fields = [("prompt", self.prompt_column), ("chosen", self.chosen_column), ("rejected", self.rejected_column)]
        convert = as_messages if self.conversational else as_text
        triple = {field: convert(row[column], field) for field, column in fields if column is not None}
        if self.prompt_column is None:
            triple = self._split_implicit_prompt(triple["chosen"], triple["rejected"])
        return triple

    def _parse_ranked(self, row: dict) -> dict:
        convert = as_messages if self.conversational else as_text
        prompt = convert(row[self.prompt_column], "prompt")
        responses = row[self.responses_column]
        if not isinstance(responses, list):
            raise RowProblem(f"responses: expected a list of responses, got {type(responses).__name__}")
        if len(responses) < 2:
            raise RowProblem(f"responses: {len(responses)} response(s); a ranking needs at least 2")
        responses = [convert(response, f"responses[{i}]") for i, response in enumerate(responses)]
        if self.ranking_column is not None:
            ranking = row[self.ranking_column]
            if problem := ranking_problem(ranking, len(responses)):
                raise RowProblem(problem)
            scores = scores_from_ranking(ranking)
        else:
            scores = row[self.scores_column]
        if problem := scores_problem(scores, len(responses)):
            raise RowProblem(problem)
        return {"prompt": prompt, "responses": responses, "scores": [float(score) for score in scores]}

    def _split_implicit_prompt(self, chosen: str | Messages, rejected: str | Messages) -> dict:
        if isinstance(chosen, list):
            shared = 0
            while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
                shared += 1
            prompt, chosen, rejected = chosen[:shared], chosen[shared:], rejected[shared:]
        elif chosen is None or rejected is None:
            raise RowProblem("chosen: missing" if chosen is None else "rejected: missing")
        else:
            prompt, chosen, rejected = split_common_prefix(chosen, rejected)
        if not prompt:
            raise RowProblem("prompt: chosen and rejected share no common prefix (implicit prompt)")
        return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


class LocalSource(ColumnSource):
    """Rows from local files; see the module docstring for the formats.

    Validation comes from `val_path` if given, else a seeded hold-out of `val_size` rows (a fraction in (0, 1)
    or a count) from `path` (map-style only: a stream has no random access, so it needs `val_path`). Rows are
    triples, or ranked rows when `responses_column` is set; these read `scores_column` or `ranking_column`.
    """

    def __init__(
        self,
        path: str,
        val_path: str | None = None,
        val_size: float = 0.05,
        prompt_column: str | None = "prompt",
        chosen_column: str = "chosen",
        rejected_column: str = "rejected",
        seed: int = 0,
        responses_column: str | None = None,
        scores_column: str | None = "scores",
        ranking_column: str | None = None,
    ) -> None:
        self.files = {"train": check_data_file("task.source.path", path)}
        if val_path is not None:
            self.files["validation"] = check_data_file("task.source.val_path", val_path)
        super().__init__(
            val_path is not None,
            val_size,
            prompt_column,
            chosen_column,
            rejected_column,
            seed,
            responses_column,
            scores_column,
            ranking_column,
        )

    def origin(self, split: str) -> str:
        if split in self.files:
            return str(self.files[split])
        return f"{self.files['train']} (held-out {split} rows)"

    def whole_origin(self) -> str:
        return str(self.files["train"])

    def raw(self, split: str, streaming: bool) -> datasets.Dataset | datasets.IterableDataset:
        return read_files([self.files[split]], streaming, self.text_columns)


def _item_feature(feature: object) -> object | None:
    """The item type of a list column's type (`datasets.List`, `LargeList` or a Python list); None if not a list."""
    if isinstance(feature, (datasets.List, datasets.LargeList)):
        return feature.feature
    if isinstance(feature, list):
        return feature[0]
    return None
