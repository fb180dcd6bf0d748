"""User-facing failures, each printed as one line: a bad config, bad data, and a run that cannot go on."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config value that cannot work; raised before any model loads.

    Prints as `<key>: <problem>`, e.g. `beta: must be > 0, got -1.0`.
    """

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key


class DataError(ValueError):
    """A data file or row that cannot be used, named by origin (file/dataset and split), row and field."""


class RunError(RuntimeError):
    """Training cannot go on (a diverging loss, a checkpoint that cannot be written), with what to do about it."""


class RowProblem(ValueError):
    """Raised by a source's `parse` for a row that cannot become a triple; its message is `<field>: <reason>`.
    The data module reports it as a `DataError` naming the origin and row (or counts it: `task.skip_bad_rows`)."""


class RowFiltered(ValueError):
    """Raised by a source's `parse` for a row that the task's recipe excludes (e.g. SHP pairs with a score ratio
    < 2); counted, never an error."""
