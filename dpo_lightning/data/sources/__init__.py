"""Task sources: one class per task turns raw rows of any schema into preference triples (see base.py)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hydra.utils import get_object

from dpo_lightning.config import source_arguments


def build_source(task: Mapping[str, Any]) -> Any:
    """The source object of a resolved task config: its `_target_` class called with `source_arguments(task)`
    (called directly, not through `instantiate`, so that its ConfigError stays a one-line message)."""
    return get_object(task["_target_"])(**source_arguments(task))
