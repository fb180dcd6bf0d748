"""Preference rows held in Python: a list of dicts or a `datasets.Dataset`, parsed exactly as `task=local` files.

    [{"prompt": "…", "chosen": "…", "rejected": "…"}, …]            pairs
    [{"prompt": [messages…], "chosen": [messages…], …}, …]          conversations
    [{"chosen": "…", "rejected": "…"}, …]                           implicit prompt (no "prompt" key anywhere)
    [{"prompt": "…", "responses": ["…", …], "scores": [7, 2, …]}]   ranked rows ("ranking" instead of "scores":
                                                                     response indices, best first)

`RowsSource` is `LocalSource` (`sources/local.py`) with Python rows in place of files: the same formats, the same
parsing and checks, the same seeded hold-out, and a bad row named the same way — `data: row 2: chosen: empty`,
where `data` (or `val_data`) is the argument that held it and 2 its 0-based position there. A list is turned into
a `datasets.Dataset` column by column, over the keys of all its rows (a key a row lacks is missing there); an item
that is not a dict becomes a stand-in that is reported as a bad row, as an unreadable line of a file is; a column
that mixes strings with other values is held JSON-encoded, as `files.py` does for JSON Lines, so that a number
where text belongs is reported ("expected a string, got int"), never made text.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import datasets
import pyarrow as pa

from dpo_lightning.data.sources.files import JSON_ENCODED, UNREADABLE, UNREADABLE_ERROR
from dpo_lightning.data.sources.local import ColumnSource
from dpo_lightning.errors import ConfigError, DataError

Rows = Sequence[Mapping[str, Any]] | datasets.Dataset  # what `RowsSource` (and `PreferenceDataModule`) take as data
NOT_A_DICT = "not a dict"  # the reason of a stand-in for a list item that is not a row
COLUMN_ARGUMENTS = (
    "prompt_column",
    "chosen_column",
    "rejected_column",
    "responses_column",
    "scores_column",
    "ranking_column",
)  # `LocalSource`'s arguments that name columns


def is_rows(data: object) -> bool:
    """Whether `data` is rows held in Python (a `datasets.Dataset`, or a list or tuple) rather than a source."""
    return isinstance(data, (datasets.Dataset, list, tuple))


def column_names(rows: Rows) -> list[str]:
    """The keys of all rows, in order of first appearance (a Dataset's columns)."""
    if isinstance(rows, datasets.Dataset):
        return list(rows.column_names)
    return list(dict.fromkeys(key for row in rows if isinstance(row, Mapping) for key in row))


def inferred_columns(columns: Sequence[str]) -> dict[str, str | None]:
    """`LocalSource`'s column arguments for rows with these columns: ranked rows where there are "responses" and no
    "chosen" (scored by "scores", else ranked by "ranking"), an implicit prompt where pairs have no "prompt"."""
    if "responses" in columns and "chosen" not in columns:
        if "scores" not in columns and "ranking" in columns:
            return {"responses_column": "responses", "scores_column": None, "ranking_column": "ranking"}
        return {"responses_column": "responses"}
    return {"prompt_column": None} if "prompt" not in columns and "chosen" in columns else {}


def rows_dataset(rows: Rows, name: str) -> datasets.Dataset:
    """`rows` as a `datasets.Dataset` (module docstring); a one-line error if it is not rows or has none."""
    if isinstance(rows, datasets.Dataset):
        if len(rows) == 0:
            raise DataError(f"{name}: has no rows")
        return rows
    if not isinstance(rows, (list, tuple)):
        raise ConfigError(name, f"must be a list of dicts or a datasets.Dataset, got {type(rows).__name__}")
    if not rows:
        raise DataError(f"{name}: has no rows")
    columns = column_names(rows)
    if not columns:
        raise DataError(f"{name}: has no rows (no item is a dict: row 0 is a {type(rows[0]).__name__})")
    records = [_record(row, index, name) for index, row in enumerate(rows)]
    table = {column: [record.get(column) for record in records] for column in columns}
    if any(UNREADABLE in record for record in records):
        table |= {
            UNREADABLE: [record.get(UNREADABLE, "") for record in records],
            UNREADABLE_ERROR: [record.get(UNREADABLE_ERROR, "") for record in records],
        }
    try:
        return _dataset(table, _mixed(table), name)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):  # e.g. a list of mixed items
        return _dataset(table, [c for c in columns if any(not isinstance(v, str | None) for v in table[c])], name)


def _record(row: Any, index: int, name: str) -> dict[str, Any]:
    """A row as a dict, or a stand-in for an item that is not one (reported as a bad row: `RowSource`)."""
    if isinstance(row, Mapping):
        return dict(row)
    error = f"{name}: row {index}: {NOT_A_DICT} (got {type(row).__name__})"
    return {UNREADABLE: NOT_A_DICT, UNREADABLE_ERROR: error}


def _kind(value: Any) -> str:
    """The kind of a value, as far as Arrow can hold a column of it: text, list, dict, bool, number or other."""
    for kind, types in (("text", str), ("list", (list, tuple)), ("dict", Mapping), ("bool", bool)):
        if isinstance(value, types):
            return kind
    return "number" if isinstance(value, int | float) else type(value).__name__


def _mixed(table: dict[str, list[Any]]) -> list[str]:
    """The columns whose values (None aside) are of more than one kind."""
    return [c for c, values in table.items() if len({_kind(v) for v in values if v is not None}) > 1]


def _dataset(table: dict[str, list[Any]], encoded: list[str], name: str) -> datasets.Dataset:
    """The Dataset of `table`, the `encoded` columns' values JSON-encoded (decoded again before parsing)."""
    if not encoded:
        return datasets.Dataset.from_dict(table)
    table = dict(table)
    for column in encoded:
        table[column] = [_json(value, index, column, name) for index, value in enumerate(table[column])]
    return datasets.Dataset.from_dict(table | {JSON_ENCODED: [encoded] * len(table[encoded[0]])})


def _json(value: Any, index: int, column: str, name: str) -> str | None:
    if value is None:
        return None
    try:
        return json.dumps(value)
    except (TypeError, ValueError) as error:
        raise DataError(f"{name}: row {index}: {column}: cannot be held as data ({error})") from None


class RowsSource(ColumnSource):
    """Preference rows held in Python, in any of `task=local`'s formats (module docstring).

    Args:
        data: the training rows: a list of dicts or a `datasets.Dataset`.
        val_data: the validation rows, likewise; None: a seeded hold-out of `val_size` rows of `data`.
        val_size: the held-out share of `data` (a fraction in (0, 1)) or row count, when `val_data` is None.
        seed: the seed of the hold-out.
        columns: `LocalSource`'s column arguments (`prompt_column`, `chosen_column`, `rejected_column`,
            `responses_column`, `scores_column`, `ranking_column`), for rows whose keys differ from the module
            docstring's; without them the format is read off the keys (`inferred_columns`).
    """

    settings = ""  # the arguments are the datamodule's (or this class's) own: ConfigErrors name them as they are
    unit = "set"
    # each split's rows, named by the argument that held them
    names: ClassVar[dict[str, str]] = {"train": "data", "validation": "val_data"}

    def __init__(
        self,
        data: Rows,
        val_data: Rows | None = None,
        *,
        val_size: float = 0.05,
        seed: int = 0,
        **columns: str | None,
    ) -> None:
        self.rows = {"train": rows_dataset(data, self.names["train"])}
        if val_data is not None:
            self.rows["validation"] = rows_dataset(val_data, self.names["validation"])
        unknown = sorted(set(columns) - set(COLUMN_ARGUMENTS))
        if unknown:
            raise ConfigError(unknown[0], f"is not a column argument; use {', '.join(COLUMN_ARGUMENTS)}")
        arguments = inferred_columns(column_names(data)) | columns
        super().__init__(val_data is not None, val_size, seed=seed, **arguments)

    def key(self, argument: str) -> str:
        return "val_data" if argument == "val_path" else argument

    def origin(self, split: str) -> str:
        if split in self.rows:
            return self.names[split]
        return f"{self.names['train']} (held-out {split} rows)"

    def whole_origin(self) -> str:
        return self.names["train"]

    def raw(self, split: str, streaming: bool) -> datasets.Dataset | datasets.IterableDataset:
        return self.rows[split].to_iterable_dataset() if streaming else self.rows[split]
