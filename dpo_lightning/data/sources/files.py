"""Local data files: which files a task may name, and reading them so that an unreadable record keeps its place.

JSON Lines files (`.jsonl`, and `.json` files that are not one JSON array) are scanned line by line before
`datasets` reads them. A line that is not UTF-8, not JSON, or JSON but not an object becomes a *stand-in*
record in a copy of the file (kept in a temporary folder for the life of the process):

    {"__unreadable__": "malformed JSON", "__unreadable_error__": "data.jsonl: line 3: malformed JSON (…)"}

so that it keeps its place among the rows, and the data module reports it (with `skip_bad_rows`: skips it and
counts it under its reason). A file without such lines is read as it is. Blank lines are not records.

A `.json` file holding one JSON array and a `.csv` file cannot be read record by record (a CSV record may span
lines), so malformed JSON or invalid UTF-8 there stops the run with an error naming file and line, skip or not.
Parquet files are read as they are (Arrow checks UTF-8 when they are written). A file without rows — empty or
blank lines only, a CSV header alone, a JSON array `[]`, a Parquet file of 0 rows — stops the run with
`<file>: has no rows`.

A CSV file has no types: its text columns (the source's `text_columns`) are read as their text — "42", "3.10",
"NA" and "None" stay those strings, where pandas would make them numbers or missing — and only an empty field is
missing; its other columns as pandas infers them (numbers, with pandas' usual missing-value markers). JSON and
Parquet files keep the types they hold: a number where text belongs is a bad row ("expected a string, got int").
A JSON Lines column that mixes strings with other values is read from a copy that holds its values JSON-encoded
(`JSON_ENCODED`) and decoded again before parsing, since `datasets` would read such a column as JSON and decode a
string that looks like JSON ("42", "true") as that value.
"""

from __future__ import annotations

import codecs
import functools
import hashlib
import json
import tempfile
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

import datasets
import pandas as pd
import pyarrow.parquet as pq
from pandas._libs.parsers import STR_NA_VALUES  # the fields pandas reads as missing by default

from dpo_lightning.errors import ConfigError, DataError

# File suffix → `datasets` builder name.
BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
# Raw columns of a stand-in record: its reason (what summary.json counts) and the whole one-line error.
UNREADABLE, UNREADABLE_ERROR = "__unreadable__", "__unreadable_error__"
# The columns a JSON Lines copy holds JSON-encoded (each value as its JSON text): those mixing strings with other
# values, which `datasets` would store as JSON and then decode a string that looks like JSON ("42") as a number.
JSON_ENCODED = "__json_encoded__"
MALFORMED_JSON, INVALID_UTF8, NOT_AN_OBJECT = "malformed JSON", "invalid UTF-8", "not a JSON object"
NO_ROWS = "has no rows"  # a data file without a single row: `<file>: has no rows`
_JSON_TYPES = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean"}


def check_data_file(key: str, path: str) -> Path:
    """A local data file that exists and that `datasets` can read, else a ConfigError naming `key`; a DataError if
    it has no rows."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(key, f"file not found: {path}")
    if file.suffix not in BUILDERS:
        raise ConfigError(key, f"unsupported file type {file.suffix!r}; use one of {sorted(BUILDERS)}")
    if _has_no_rows(file):  # before anything is read or tokenized
        raise DataError(f"{file}: {NO_ROWS}")
    return file


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type name if it has none)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def read_files(
    files: list[Path], streaming: bool, text_columns: Collection[str] = ()
) -> datasets.Dataset | datasets.IterableDataset:
    """Local files (shards of one split) with the `datasets` builder their suffix names; JSON Lines files with
    unreadable lines are read from copies holding stand-ins for those lines, CSV files' `text_columns` as text
    (module docstring)."""
    readable = [_readable(file, *_version(file)) for file in files]
    try:
        options = _csv_options(readable, text_columns) if files[0].suffix == ".csv" else {}
        return datasets.load_dataset(
            BUILDERS[files[0].suffix],
            data_files=[str(f) for f in readable],
            split="train",
            streaming=streaming,
            **options,
        )
    except Exception as error:  # pyarrow / pandas / datasets parse errors: name the files, keep their message
        raise DataError(f"{', '.join(str(f) for f in files)}: cannot read: {first_line(error)}") from error


def _csv_options(files: list[Path], text_columns: Collection[str]) -> dict[str, Any]:
    """pandas `read_csv` options (which the `datasets` CSV builder passes on) that read the `text_columns` of CSV
    `files` as text, only an empty field missing, and their other columns as pandas does by default."""
    header = {column for file in files for column in pd.read_csv(file, nrows=0).columns}
    text = header & set(text_columns)
    return {
        "converters": dict.fromkeys(text, str),  # the field's text, never a number
        "keep_default_na": False,  # missing-value markers per column instead:
        "na_values": {column: [""] if column in text else sorted(STR_NA_VALUES) for column in header},
    }


def _version(file: Path) -> tuple[int, int]:
    """(size, modification time): a file read again after it has changed is scanned again."""
    stat = file.stat()
    return stat.st_size, stat.st_mtime_ns


@functools.cache
def _readable(file: Path, size: int, mtime_ns: int) -> Path:
    """`file`, or a copy of it with stand-ins for its unreadable JSON lines; `DataError` for a CSV file or a
    JSON array with an unreadable record, and for a file without rows (`_has_no_rows`)."""
    if file.suffix == ".csv" or (file.suffix == ".json" and _is_json_array(file)):
        for number, line in _lines(file):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as error:
                raise DataError(f"{file}: line {number}: {INVALID_UTF8} ({_byte_at(line, error)})") from None
        if file.suffix == ".json" and _check_json_document(file) == []:
            raise DataError(f"{file}: {NO_ROWS}")
    if _has_no_rows(file):
        raise DataError(f"{file}: {NO_ROWS}")
    if file.suffix in (".jsonl", ".json") and not _is_json_array(file):
        return _with_stand_ins(file)
    return file


def _has_no_rows(file: Path) -> bool:
    """Whether a data file holds no rows: nothing but blank lines (also an empty Parquet file), a CSV header
    alone, a JSON array `[]`, or a Parquet file of 0 rows; found from the start of the file (a Parquet file's
    footer). A file that cannot be read is left to `datasets`, which says why."""
    if file.suffix == ".parquet" and file.stat().st_size > 0:
        try:
            return pq.ParquetFile(file).metadata.num_rows == 0
        except Exception:  # not Parquet: `datasets` reports it
            return False
    if next(_lines(file), None) is None:  # `datasets` would fail to infer columns (StopIteration) or read none
        return True
    if file.suffix == ".csv":
        try:
            return pd.read_csv(file, nrows=1).empty
        except Exception:  # not CSV: `datasets` reports it
            return False
    if file.suffix == ".json":
        with file.open("rb") as handle:
            head = handle.read(4096).removeprefix(codecs.BOM_UTF8).lstrip()
        return head.startswith(b"[") and head[1:].lstrip().startswith(b"]")
    return False


def _lines(file: Path) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, bytes) of every non-blank line (a leading byte-order mark removed)."""
    with file.open("rb") as handle:
        for number, line in enumerate(handle, 1):
            line = line.removeprefix(codecs.BOM_UTF8) if number == 1 else line
            if line.strip():
                yield number, line


def _byte_at(line: bytes, error: UnicodeDecodeError) -> str:
    return f"byte {line[error.start]:#04x} at byte {error.start + 1} of the line"


def _read_line(line: bytes) -> tuple[dict[str, Any] | None, tuple[str, str] | None]:
    """(the record, None) if a JSON Lines line is a readable record, else (None, (reason, detail))."""
    try:
        value = json.loads(line.rstrip(b"\r\n").decode("utf-8"))  # without its line end, the column is the line's
    except UnicodeDecodeError as error:
        return None, (INVALID_UTF8, _byte_at(line, error))
    except json.JSONDecodeError as error:
        return None, (MALFORMED_JSON, f"{error.msg} at column {error.colno}")
    if not isinstance(value, dict):
        return None, (NOT_AN_OBJECT, f"got {_JSON_TYPES.get(type(value), 'null')}")
    return value, None


def decode_json_columns(row: dict[str, Any]) -> dict[str, Any]:
    """A raw row with the values a JSON Lines copy holds JSON-encoded (`JSON_ENCODED`) decoded: exactly the values
    of the file ("42" a string, 42 a number)."""
    encoded = row.get(JSON_ENCODED) or ()
    return {**row, **{c: json.loads(row[c]) for c in encoded if row.get(c) is not None}} if encoded else row


def _with_stand_ins(file: Path) -> Path:
    """`file` if every line is a readable JSON object and no column mixes strings with other values, else a copy
    with a stand-in record for each line that is not readable, and the mixed columns' values JSON-encoded
    (`JSON_ENCODED`, decoded again by `decode_json_columns`); a `DataError` if no line is readable (there would be
    no columns to read)."""
    first, records = 0, 0  # the first record's line number; how many records (non-blank lines)
    problems: dict[int, tuple[str, str]] = {}  # line number → (reason, detail)
    strings, others = set(), set()  # the columns holding a string somewhere, and those holding another value
    for number, line in _lines(file):
        first, records = first or number, records + 1
        record, problem = _read_line(line)
        if problem:
            problems[number] = problem
            continue
        for column, value in record.items():
            (strings if isinstance(value, str) else others if value is not None else set()).add(column)
    mixed = sorted(strings & others)
    if (not problems and not mixed) or (file.suffix == ".json" and _is_json_document(file)):  # one JSON object
        return file
    if len(problems) == records:
        reason, detail = problems[first]
        raise DataError(f"{file}: no line is a readable JSON object (line {first}: {reason} ({detail}))")
    copy = Path(_copies().name) / hashlib.sha1(str(file).encode()).hexdigest()[:16] / file.name
    copy.parent.mkdir(exist_ok=True)
    with copy.open("wb") as out:
        for number, line in _lines(file):
            if number in problems:
                reason, detail = problems[number]
                record = {UNREADABLE: reason, UNREADABLE_ERROR: f"{file}: line {number}: {reason} ({detail})"}
            else:
                record = json.loads(line)
                record |= {c: json.dumps(record[c]) for c in mixed if record.get(c) is not None}
                if number == first:  # `datasets` takes its columns from the first lines: announce the stand-ins'
                    record = {UNREADABLE: "", UNREADABLE_ERROR: "", **record}
            out.write(_json_line({**record, JSON_ENCODED: mixed} if mixed else record))
    return copy


def _json_line(record: dict[str, Any]) -> bytes:
    return json.dumps(record).encode() + b"\n"


@functools.cache
def _copies() -> tempfile.TemporaryDirectory:
    """The process's folder of file copies with stand-ins (cached, so it stays until the process ends)."""
    return tempfile.TemporaryDirectory(prefix="dpo-lightning-stand-ins-")


def _is_json_array(file: Path) -> bool:
    """Whether a .json file holds one JSON array (read whole), not JSON Lines — as `datasets` decides."""
    with file.open("rb") as handle:
        return handle.read(len(codecs.BOM_UTF8) + 1).removeprefix(codecs.BOM_UTF8).startswith(b"[")


def _is_json_document(file: Path) -> bool:
    try:
        json.loads(file.read_bytes().removeprefix(codecs.BOM_UTF8).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False
    return True


def _check_json_document(file: Path) -> Any:
    """A whole-file JSON document (UTF-8, checked) parsed; `DataError` naming file and line if it is not JSON."""
    try:
        return json.loads(file.read_bytes().removeprefix(codecs.BOM_UTF8).decode("utf-8"))
    except json.JSONDecodeError as error:
        raise DataError(
            f"{file}: line {error.lineno}: {MALFORMED_JSON} ({error.msg} at column {error.colno})"
        ) from None
