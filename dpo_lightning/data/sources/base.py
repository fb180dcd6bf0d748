"""The source interface: one small class per task, turning raw rows of any schema into triples.

A source returns, for a split name ("train" or "validation"), rows with the columns

    row                        the row's 0-based position among the split's records as read: over its files
                               in order (JSON Lines: non-blank lines), before any hold-out (for naming bad rows)
    prompt, chosen, rejected   a string each, or (conversational data) a list of {"role", "content"} messages
                               — or, from a ranked source (`ranked = True`, `data/rankings.py`), instead of
                               chosen and rejected:
    responses, scores          K ≥ 2 responses (strings or message lists) and a number each, higher is better
    problem                    "" for a usable row; "<field>: <reason>" for a row that cannot be used;
                               "filtered: <reason>" for a row the task's recipe leaves out on purpose; the
                               reason alone ("malformed JSON") for a stand-in of an unreadable line (files.py)
    message                    a stand-in's whole error, "<file>: line <n>: <reason> (<detail>)"; else ""

as a `datasets.Dataset`, or with `streaming=True` a `datasets.IterableDataset` read lazily. Sources never
tokenize and never drop rows: every row keeps its place, so that the data module can report a bad one
(dataset, split, row, field) or skip and count it, and count the filtered ones.

`RowSource` maps raw rows through a task's `parse`; `HubSource` reads them for every hub task: a Hugging Face
hub dataset (`path`, `subset`, `revision`) or local files in the hub schema (`data_files`), through
`datasets.load_dataset` either way, so the fixtures exercise the real run's parsing code path.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import datasets

from dpo_lightning.data.fingerprint import Versioned
from dpo_lightning.data.sources.files import (
    JSON_ENCODED,
    UNREADABLE,
    UNREADABLE_ERROR,
    check_data_file,
    decode_json_columns,
    first_line,
    read_files,
)
from dpo_lightning.errors import ConfigError, DataError, RowFiltered, RowProblem

TRIPLE_COLUMNS: tuple[str, ...] = ("prompt", "chosen", "rejected")
RANKED_COLUMNS: tuple[str, ...] = ("prompt", "responses", "scores")  # a ranked source's row (data/rankings.py)
SPLITS: tuple[str, ...] = ("train", "validation")
FILTERED = "filtered: "  # prefix of the `problem` of a row left out by the task's recipe (always skipped, counted)
# A conversation: a list of {"role", "content"} messages (sources normalise messages to exactly these keys).
MESSAGES = datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")})
POSITION = "__row__"  # raw column: the row's position in its files, where rows were reordered (a hold-out)


def as_text(value: Any, field: str) -> str:
    """`value` if it is a string, else `RowProblem` naming `field` — a number is never silently made text."""
    if value is None:
        raise RowProblem(f"{field}: missing")
    if not isinstance(value, str):
        raise RowProblem(f"{field}: expected a string, got {type(value).__name__}")
    return value


class PreferenceSource(Protocol):
    """What `PreferenceDataModule` needs from a task."""

    def load(self, split: str, streaming: bool = False) -> datasets.Dataset | datasets.IterableDataset:
        """Rows of `split` with the columns row, prompt, chosen, rejected, problem, message (module docstring)."""
        ...

    def origin(self, split: str) -> str:
        """Where a split's rows come from (hub id or files, and the split): used to name bad rows."""
        ...


def row_features(conversational: bool, ranked: bool = False) -> datasets.Features:
    """The column types of a source's output (triples, or `ranked` rows); explicit, because a bad row's values
    are None."""
    value = MESSAGES if conversational else datasets.Value("string")
    text = datasets.Value("string")
    if ranked:
        data = {"prompt": value, "responses": datasets.List(value), "scores": datasets.List(datasets.Value("float64"))}
    else:
        data = dict.fromkeys(TRIPLE_COLUMNS, value)
    return datasets.Features({"row": datasets.Value("int64"), **data, "problem": text, "message": text})


def is_ranked(source: object) -> bool:
    """Whether `source` gives ranked rows (prompt, responses, scores) rather than triples."""
    return bool(getattr(source, "ranked", False))


def _data_columns(columns: Any) -> list[str]:
    """The columns of the data itself, without those this package adds (stand-ins, positions)."""
    return [c for c in columns if c not in (UNREADABLE, UNREADABLE_ERROR, JSON_ENCODED, POSITION)]


class RowSource:
    """Reads raw rows (`read`, per subclass) and maps every row through `parse` into the columns of the
    module docstring; a subclass implements `read`, `parse` and `origin`."""

    required_columns: tuple[str, ...] = ()  # raw columns that `parse` reads
    text_columns: tuple[str, ...] = ()  # raw columns of text: read as text from a CSV file ("42" stays "42")
    conversational: bool = False  # True: `parse` returns message lists (normalised with `chat.as_messages`)
    ranked: bool = False  # True: `parse` returns {"prompt", "responses", "scores"} (RANKED_COLUMNS)

    def origin(self, split: str) -> str:
        raise NotImplementedError

    def read(self, split: str, streaming: bool) -> datasets.Dataset | datasets.IterableDataset:
        """The raw rows of `split`, before `parse`."""
        raise NotImplementedError

    def parse(self, row: dict[str, Any]) -> dict[str, Any]:
        """One raw row → {"prompt", "chosen", "rejected"} (ranked: {"prompt", "responses", "scores"}); raise
        `RowProblem` or `RowFiltered` if it can't be used."""
        raise NotImplementedError

    def load(self, split: str, streaming: bool = False) -> datasets.Dataset | datasets.IterableDataset:
        rows = self.read(split, streaming)
        columns = rows.column_names  # None for a stream whose schema is only known once read
        self.check_columns(rows, self.origin(split))
        features = row_features(self.conversational, self.ranked)
        parse = partial(self._parse_row, origin=self.origin(split))
        parsed = rows.map(Versioned(parse), with_indices=True, remove_columns=columns, features=features)
        return parsed if columns is not None else parsed.select_columns(list(features))

    def check_columns(
        self, rows: datasets.Dataset | datasets.IterableDataset, origin: str, required: tuple[str, ...] | None = None
    ) -> None:
        """`DataError` naming `origin` if `rows` lack a required column (when the schema is known): one of
        `required`, by default `required_columns`."""
        columns = rows.column_names
        required = self.required_columns if required is None else required
        missing = [c for c in required if columns is not None and c not in columns]
        if missing:
            raise DataError(f"{origin}: missing column(s) {missing}; found {_data_columns(columns)}")

    def _parse_row(self, row: dict[str, Any], index: int, origin: str) -> dict[str, Any]:
        index = row.get(POSITION, index)
        triple, message = {}, ""
        if row.get(UNREADABLE):  # a stand-in for an unreadable line (files.py)
            problem, message = row[UNREADABLE], row[UNREADABLE_ERROR]
        else:
            try:
                triple, problem = self.parse(decode_json_columns(row)), ""
            except RowProblem as error:
                problem = str(error)
            except RowFiltered as error:
                problem = FILTERED + str(error)
            except KeyError as missing:
                found = sorted(_data_columns(row))
                raise DataError(f"{origin}: row {index}: missing column {missing}; found {found}") from None
        columns = RANKED_COLUMNS if self.ranked else TRIPLE_COLUMNS
        return {"row": index, **{c: triple.get(c) for c in columns}, "problem": problem, "message": message}


class HubSource(RowSource):
    """Reads a hub dataset, or local files in its schema; subclasses implement `parse`.

    Args:
        path: hub dataset id (e.g. "Anthropic/hh-rlhf").
        splits: our split name → the dataset's split name, e.g. {"train": "train", "validation": "test"}.
        subset: the hub dataset's config name (`datasets`' `name`), if it has several.
        data_dir: a folder inside the hub dataset to read (e.g. one subset of a Parquet export).
        revision: hub branch, tag or commit.
        data_files: local files in the hub schema instead of the hub: our split name → a file or a list of
            files (read as shards of one split); a None value reads that split from the hub. The same parsing
            code path runs on them.
    """

    def __init__(
        self,
        path: str,
        splits: Mapping[str, str],
        subset: str | None = None,
        data_dir: str | None = None,
        revision: str | None = None,
        data_files: Mapping[str, str | list[str]] | None = None,
    ) -> None:
        if not splits or set(splits) - set(SPLITS):
            raise ConfigError("task.source.splits", f"keys must be among {list(SPLITS)}, got {sorted(splits or {})}")
        self.path, self.subset, self.data_dir, self.revision = path, subset, data_dir, revision
        self.splits = dict(splits)
        self.data_files: dict[str, list[Path]] = {}
        for split, files in (data_files or {}).items():
            if files is None:  # this split comes from the hub
                continue
            if split not in SPLITS:
                raise ConfigError("task.source.data_files", f"keys must be among {list(SPLITS)}, got {split!r}")
            files = [files] if isinstance(files, str) else list(files)
            self.data_files[split] = [check_data_file(f"task.source.data_files.{split}", file) for file in files]

    def origin(self, split: str) -> str:
        if split in self.data_files:
            return f"{', '.join(str(f) for f in self.data_files[split])} ({split})"
        subset = f" ({self.subset})" if self.subset else ""
        return f"{self.path}{subset} split {self.splits.get(split, split)!r}"

    def read(self, split: str, streaming: bool) -> datasets.Dataset | datasets.IterableDataset:
        if split in self.data_files:
            return read_files(self.data_files[split], streaming, self.text_columns)
        if split not in self.splits:
            raise ConfigError("task.source.splits", f"no {split!r} split configured; have {sorted(self.splits)}")
        try:
            return datasets.load_dataset(
                self.path,
                name=self.subset,
                data_dir=self.data_dir,
                revision=self.revision,
                split=self.splits[split],
                streaming=streaming,
            )
        except Exception as error:  # offline, unknown id or subset, no access, a loading script: one line
            raise DataError(
                f"cannot load {self.path!r} from the Hugging Face hub ({first_line(error)}); without network, point "
                "the task at local files in the hub schema: "
                "task.source.data_files.train=FILE task.source.data_files.validation=FILE"
            ) from error
