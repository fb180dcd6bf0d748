"""`task=local`: preference triples from your own JSONL / JSON / Parquet / CSV files, read with `datasets`."""

from __future__ import annotations

from pathlib import Path

import datasets

from dpo_lightning.errors import ConfigError, DataError

# File suffix → `datasets` builder name.
_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def _check_file(key: str, path: str) -> Path:
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(key, f"file not found: {path}")
    if file.suffix not in _BUILDERS:
        raise ConfigError(key, f"unsupported file type {file.suffix!r}; use one of {sorted(_BUILDERS)}")
    return file


class LocalSource:
    """Rows from local files with (configurable) prompt / chosen / rejected columns.

    Validation comes from `val_path` if given, else a seeded hold-out of `val_size` rows (a fraction in (0, 1)
    or a count) from `path`.
    """

    def __init__(
        self,
        path: str,
        val_path: str | None = None,
        val_size: float = 0.05,
        prompt_column: str = "prompt",
        chosen_column: str = "chosen",
        rejected_column: str = "rejected",
        seed: int = 0,
    ) -> None:
        self.files = {"train": _check_file("task.path", path)}
        if val_path is not None:
            self.files["validation"] = _check_file("task.val_path", val_path)
        elif not val_size > 0:
            raise ConfigError("task.val_size", f"must be a fraction in (0, 1) or a row count ≥ 1, got {val_size}")
        self.val_size = val_size
        self.columns = {prompt_column: "prompt", chosen_column: "chosen", rejected_column: "rejected"}
        self.seed = seed
        self._held_out: datasets.DatasetDict | None = None

    def origin(self, split: str) -> str:
        file = self.files.get(split, self.files["train"])
        return str(file) if split in self.files else f"{file} (held-out {split} rows)"

    def load(self, split: str) -> datasets.Dataset:
        if split not in ("train", "validation"):
            raise ValueError(f"unknown split {split!r}; expected 'train' or 'validation'")
        if "validation" in self.files:
            return self._read(self.files[split])
        if self._held_out is None:
            rows = self._read(self.files["train"])
            test_size = self.val_size if self.val_size < 1 else int(self.val_size)
            self._held_out = rows.train_test_split(test_size=test_size, seed=self.seed, shuffle=True)
        return self._held_out["train" if split == "train" else "test"]

    def _read(self, file: Path) -> datasets.Dataset:
        try:
            rows = datasets.load_dataset(_BUILDERS[file.suffix], data_files=str(file), split="train")
        except Exception as error:  # pyarrow / datasets parse errors: name the file, keep their message
            message = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise DataError(f"{file}: cannot read: {message}") from error
        missing = [column for column in self.columns if column not in rows.column_names]
        if missing:
            raise DataError(f"{file}: missing column(s) {missing}; found {rows.column_names}")
        renames = {old: new for old, new in self.columns.items() if old != new}
        rows = rows.select_columns(list(self.columns)).rename_columns(renames)
        for column in ("prompt", "chosen", "rejected"):
            dtype = rows.features[column]
            if not (isinstance(dtype, datasets.Value) and dtype.dtype in ("string", "large_string")):
                raise DataError(f"{file}: row 0: {column} is not a string (column type {dtype})")
        return rows
