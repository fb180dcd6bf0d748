"""Command-line entries (`python train.py …` or `dpo-train …`, and the `python -m dpo_lightning.eval.*`
commands): Hydra composes the config, the command runs it.

Config and data mistakes print as one line, `error: <key or file>: <problem>`, and exit with status 2 — also an
unknown group option, which Hydra itself reports in several lines.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from dpo_lightning.config import check_group_choices
from dpo_lightning.errors import ConfigError, DataError

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def _fail(error: Exception) -> None:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2)


def one_line_errors(function: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    """Wrap a Hydra task function: a ConfigError or DataError becomes one line on stderr and exit status 2."""

    @functools.wraps(function)
    def wrapped(cfg: DictConfig) -> Any:
        try:
            return function(cfg)
        except (ConfigError, DataError) as error:
            _fail(error)

    return wrapped


def command(hydra_main: Callable[[], Any]) -> Callable[[], None]:
    """A console entry point around a `hydra.main` function: unknown `group=option` overrides fail in one
    line before Hydra parses the command line."""

    def main() -> None:
        try:
            check_group_choices(sys.argv[1:], CONF_DIR)
        except ConfigError as error:
            _fail(error)
        hydra_main()

    return main


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
@one_line_errors
def _train(cfg: DictConfig) -> None:
    from dpo_lightning.run import run  # heavy imports after Hydra has parsed the command line

    # Hydra's logging already prints and files every record; Lightning's own console handlers would print
    # each of its messages a second time (and keep them out of train.log).
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True

    runtime = HydraConfig.get().runtime
    choices = {group: option for group, option in runtime.choices.items() if not group.startswith("hydra")}
    run(cfg, Path(runtime.output_dir), choices)


main = command(_train)
