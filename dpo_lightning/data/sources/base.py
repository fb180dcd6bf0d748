"""The source interface: one small class per task, turning raw rows of any schema into triples.

A source returns, for a split name, a `datasets.Dataset` with string columns `prompt`, `chosen`, `rejected`
(a streaming source will return an `IterableDataset` with the same columns). Sources never tokenize.
"""

from __future__ import annotations

from typing import Protocol

import datasets

TRIPLE_COLUMNS: tuple[str, ...] = ("prompt", "chosen", "rejected")


class PreferenceSource(Protocol):
    """What `PreferenceDataModule` needs from a task."""

    def load(self, split: str) -> datasets.Dataset:
        """Rows of `split` ("train" or "validation") with string columns prompt, chosen, rejected."""
        ...

    def origin(self, split: str) -> str:
        """Where a split's rows come from (a file path, a hub id and split): used to name bad rows."""
        ...
