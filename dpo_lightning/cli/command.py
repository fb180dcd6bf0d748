"""What every Hydra command of the project shares (`dpo-train`, `python -m dpo_lightning.cli.pairs|winrate`):
the config folder, one-line errors, the checks before Hydra parses the command line.

Config and data mistakes print as one line, `error: <key or file>: <problem>`, and exit with status 2 — also an
unknown group option, which Hydra itself reports in several lines.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig

from dpo_lightning.cli.checks import check_group_choices, check_task_spelling
from dpo_lightning.cli.sweep import finish_sweep
from dpo_lightning.conf import CONF_DIR
from dpo_lightning.errors import ConfigError, DataError, RunError
from dpo_lightning.runtime.secrets import printed_config_redacted


def _fail(error: Exception, status: int = 2) -> None:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(status)


def one_line_errors(function: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    """Wrap a Hydra task function: a ConfigError or DataError becomes one line on stderr and exit status 2, a
    RunError (training cannot go on: divergence, a checkpoint that cannot be written) one line and status 1."""

    @functools.wraps(function)
    def wrapped(cfg: DictConfig) -> Any:
        try:
            return function(cfg)
        except (ConfigError, DataError) as error:
            _fail(error)
        except RunError as error:
            _fail(error, status=1)

    return wrapped


def command(hydra_main: Callable[[], Any]) -> Callable[[], None]:
    """A console entry point around a `hydra.main` function: unknown `group=option` overrides and task keys of
    the flat layout of earlier versions fail in one line before Hydra parses the command line, `resume=` picks
    the run folder (`resume.resume_arguments`), and the config Hydra prints for `--cfg` is redacted
    (`secrets.printed_config_redacted`). A multirun ends with status 1 when any of its jobs did not complete
    (`sweep.finish_sweep`)."""

    def main() -> None:
        try:
            check_group_choices([arg for arg in sys.argv[1:] if not _hydra_group(arg)], CONF_DIR)
            check_task_spelling(sys.argv[1:])
            if any(argument.startswith("resume=") for argument in sys.argv[1:]):
                from dpo_lightning.runtime.resume import resume_arguments  # imports Lightning: only when asked

                sys.argv[1:] = resume_arguments(sys.argv[1:])
        except ConfigError as error:
            _fail(error)
        printout = contextlib.nullcontext()
        if any(a in ("--cfg", "-c") or a.startswith("--cfg=") for a in sys.argv[1:]):
            printout = printed_config_redacted(sys.argv[1:])
        try:
            with printout:
                hydra_main()
        finally:
            status = finish_sweep()  # a multirun: sweep_summary.csv written, 1 when a job did not complete
        if status:
            sys.exit(status)

    return main


def _hydra_group(argument: str) -> bool:
    """`hydra/launcher=…`, `hydra/sweeper=…`: Hydra checks these itself (plugins register their options in its
    ConfigStore, next to ours in conf/hydra/)."""
    return argument.lstrip("+~").startswith("hydra/")
