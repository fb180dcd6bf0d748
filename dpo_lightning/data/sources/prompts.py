"""`task=prompts`: a file of prompts (JSONL / JSON / Parquet / CSV, one text prompt per row) for on-policy runs.

    {"prompt": "The film opens with"}        (the column is `task.source.prompt_column`)

The policy writes the responses and a labeller ranks them (`algorithm=online`, Best-of-N), so nothing else is read.
Validation prompts come from `val_path`, or, without one, are held out of the file: a prompt is a validation prompt
when the first 8 bytes of the BLAKE2b hash of its text, as a fraction of 2⁶⁴, fall below `val_size` — the same
split in every run, whatever the file's order, and a prompt never on both sides. A row whose prompt is missing, not
text, or blank is a bad row: an error naming the file, row and field, or (`task.skip_bad_rows=true`: the caller
passes a counter) a counted skip.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator

from dpo_lightning.data.sources.base import as_text
from dpo_lightning.data.sources.files import (
    UNREADABLE,
    UNREADABLE_ERROR,
    check_data_file,
    decode_json_columns,
    read_files,
)
from dpo_lightning.errors import ConfigError, DataError, RowProblem


def held_out(prompt: str, val_size: float) -> bool:
    """Whether `prompt` belongs to the held-out validation share `val_size` (module docstring)."""
    digest = hashlib.blake2b(prompt.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") < val_size * 2**64


class PromptFile:
    """Prompts read from `path` (training) and `val_path` (validation; None: a `val_size` share held out).

    Args:
        path: the prompt file.
        val_path: a file of validation prompts; None: hold out `val_size` of `path`'s prompts.
        prompt_column: the column holding each prompt's text.
        val_size: the held-out share in (0, 1) when there is no `val_path`.
    """

    def __init__(
        self,
        path: str,
        val_path: str | None = None,
        prompt_column: str = "prompt",
        val_size: float = 0.05,
    ) -> None:
        self.path = check_data_file("task.source.path", path)
        self.val_path = check_data_file("task.source.val_path", val_path) if val_path is not None else None
        if self.val_path is None and not 0 < val_size < 1:
            raise ConfigError("task.source.val_size", f"must be in (0, 1) without a val_path, got {val_size}")
        self.prompt_column, self.val_size = prompt_column, val_size

    def origin(self, split: str) -> str:
        if split == "validation" and self.val_path is not None:
            return str(self.val_path)
        share = (
            "" if self.val_path is not None else f" ({split}: {'held-out' if split == 'validation' else 'the rest'})"
        )
        return f"{self.path}{share}"

    def prompts(self, split: str, skipped: Counter[str] | None = None) -> Iterator[str]:
        """The prompts of `split` in file order; a bad row raises a DataError naming file, row and field, or, given a
        `skipped` counter, is counted there by its problem."""
        file = self.val_path if split == "validation" and self.val_path is not None else self.path
        rows = read_files([file], streaming=True, text_columns=[self.prompt_column])
        for index, row in enumerate(map(decode_json_columns, rows)):
            if row.get(UNREADABLE):  # a stand-in for an unreadable line (files.py): its error names file and line
                if skipped is None:
                    raise DataError(row[UNREADABLE_ERROR])
                skipped[row[UNREADABLE]] += 1
                continue
            try:
                if self.prompt_column not in row:
                    raise RowProblem(f"{self.prompt_column}: missing")
                prompt = as_text(row[self.prompt_column], self.prompt_column)
                if not prompt.strip():
                    raise RowProblem(f"{self.prompt_column}: blank")
            except RowProblem as problem:
                if skipped is None:
                    raise DataError(
                        f"{file}: row {index}: {problem} (set task.skip_bad_rows=true to skip and count bad rows)"
                    ) from None
                skipped[str(problem)] += 1
                continue
            if self.val_path is not None or held_out(prompt, self.val_size) == (split == "validation"):
                yield prompt

    def load(self, split: str, streaming: bool = False) -> None:
        raise ConfigError(
            "task",
            "task=prompts holds prompts only: train on them with algorithm=online (the policy writes the responses), "
            "or sample and label pairs with `python -m dpo_lightning.cli.pairs task=prompts policy=<run>`",
        )
