"""Checks of the command line itself, before Hydra parses it: each failure is one `ConfigError` line."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import OverrideParseException

from dpo_lightning.errors import ConfigError

# Keys of a task config itself; every other key of a task is its source's (`task.source.*`) or a tokenization
# setting (`task.tokenize.*`).
TASK_KEYS: tuple[str, ...] = ("name", "source", "tokenize", "reward", "skip_bad_rows", "streaming", "shuffle_buffer")
TOKENIZE_KEYS: tuple[str, ...] = ("max_length", "max_prompt_length", "truncation_mode", "prompt_suffix")


def _overrides(arguments: Sequence[str]) -> list:
    parser = OverridesParser.create()
    parsed = []
    for argument in arguments:
        try:
            parsed.extend(parser.parse_overrides([argument]))
        except OverrideParseException:  # not an override (e.g. `--cfg job`): Hydra will judge it
            continue
    return parsed


def check_group_choices(arguments: Sequence[str], conf_dir: Path) -> None:
    """Reject `group=option` command-line overrides that name no `conf/<group>/<option>.yaml`, listing the
    allowed options (Hydra's own message spans several lines and a stack trace hint)."""
    for override in _overrides(arguments):
        group_dir = conf_dir / override.key_or_group
        if override.is_delete() or not group_dir.is_dir() or override.value() is None:
            continue
        if override.is_sweep_override():
            choices = list(override.sweep_string_iterator())
        else:
            choices = [override.get_value_element_as_str()]
        allowed = sorted(p.stem for p in group_dir.glob("*.yaml"))
        for choice in choices:
            if choice not in allowed:
                raise ConfigError(
                    override.key_or_group, f"unknown option {choice!r}; choose one of: {', '.join(allowed)}"
                )


def check_task_spelling(arguments: Sequence[str]) -> None:
    """A task key of the flat layout of earlier versions (`task.max_length=…`, `task.path=…`) fails in one line
    naming its spelling now: tokenization settings under `task.tokenize`, the source's arguments under
    `task.source`."""
    for override in _overrides(arguments):
        key = override.key_or_group
        parts = key.split(".")
        if len(parts) < 2 or parts[0] != "task" or parts[1] in TASK_KEYS:
            continue
        group = "tokenize" if parts[1] in TOKENIZE_KEYS else "source"
        raise ConfigError(key, f"is now task.{group}.{'.'.join(parts[1:])}")
