"""Row checks shared by every source: each bad row is an error naming origin, row and field, or — only when
the task sets `skip_bad_rows: true` — a skip counted per reason. Nothing is dropped silently."""

from __future__ import annotations

from collections import Counter

import datasets

from dpo_lightning.data.sources.base import TRIPLE_COLUMNS
from dpo_lightning.errors import DataError


def _row_problem(values: tuple) -> str:
    """'' if (prompt, chosen, rejected) is usable, else its first problem, e.g. 'chosen is empty'."""
    for field, value in zip(TRIPLE_COLUMNS, values, strict=True):
        if value is None:
            return f"{field} is missing"
        if not isinstance(value, str):
            return f"{field} is not a string ({type(value).__name__})"
        if not value.strip():
            return f"{field} is empty"
    return ""


def check_triples(rows: datasets.Dataset, origin: str, skip_bad_rows: bool) -> tuple[datasets.Dataset, Counter]:
    """Return the good rows and a count of skipped rows per reason; raise `DataError` on the first bad row
    unless `skip_bad_rows`. Row numbers are 0-based indices into the split."""
    missing = [c for c in TRIPLE_COLUMNS if c not in rows.column_names]
    if missing:
        raise DataError(f"{origin}: missing column(s) {missing}; found {rows.column_names}")
    problems = [_row_problem(values) for values in zip(*(rows[c] for c in TRIPLE_COLUMNS), strict=True)]
    bad = [(index, problem) for index, problem in enumerate(problems) if problem]
    if bad and not skip_bad_rows:
        index, problem = bad[0]
        more = f" (and {len(bad) - 1} more bad rows; set task.skip_bad_rows=true to skip them)" if len(bad) > 1 else ""
        raise DataError(f"{origin}: row {index}: {problem}{more}")
    skipped = Counter(problem for _, problem in bad)
    if bad:
        bad_indices = {index for index, _ in bad}
        rows = rows.select([i for i in range(len(rows)) if i not in bad_indices])
    return rows, skipped
