"""Command-line entries (`python train.py …` or `dpo-train …`, and the `python -m dpo_lightning.eval.*`
commands): Hydra composes the config, the command runs it.

Config and data mistakes print as one line, `error: <key or file>: <problem>`, and exit with status 2 — also an
unknown group option, which Hydra itself reports in several lines.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from dpo_lightning.config import check_group_choices
from dpo_lightning.errors import ConfigError, DataError, RunError
from dpo_lightning.sweep import finish_sweep, run_sweep_job

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


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
    """A console entry point around a `hydra.main` function: unknown `group=option` overrides fail in one
    line before Hydra parses the command line, `resume=` picks the run folder (`resume.resume_arguments`), and
    the config Hydra prints for `--cfg` is redacted (`console.printed_config_redacted`).
    A multirun ends with status 1 when any of its jobs did not complete (`sweep.finish_sweep`)."""

    def main() -> None:
        try:
            check_group_choices([arg for arg in sys.argv[1:] if not _hydra_group(arg)], CONF_DIR)
            if any(argument.startswith("resume=") for argument in sys.argv[1:]):
                from dpo_lightning.resume import resume_arguments  # imports Lightning: only when asked

                sys.argv[1:] = resume_arguments(sys.argv[1:])
        except ConfigError as error:
            _fail(error)
        printout = contextlib.nullcontext()
        if any(a in ("--cfg", "-c") or a.startswith("--cfg=") for a in sys.argv[1:]):
            from dpo_lightning.console import printed_config_redacted  # imports Lightning: only when asked

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


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
@one_line_errors
def _train(cfg: DictConfig) -> float | None:
    """Train one run; in a multirun, return the job's objective (`optimized_metric`) and log a failure
    instead of raising it (`sweep.run_sweep_job`), so the other jobs still run."""
    from dpo_lightning.console import redact, secret_values
    from dpo_lightning.run import run  # heavy imports after Hydra has parsed the command line
    from dpo_lightning.wandb_logging import name_sweep_run

    # Hydra's logging already prints and files every record; Lightning's own console handlers would print
    # each of its messages a second time (and keep them out of train.log).
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True

    hydra_config = HydraConfig.get()
    runtime = hydra_config.runtime
    choices = {group: option for group, option in runtime.choices.items() if not group.startswith("hydra")}
    if hydra_config.mode != RunMode.MULTIRUN:
        run(cfg, Path(runtime.output_dir), choices)
        return None
    secrets = secret_values(OmegaConf.to_container(cfg, resolve=False))
    name = redact(hydra_config.job.override_dirname, secrets)  # a W&B run name never shows a secret override
    name_sweep_run(cfg.get("logger"), str(hydra_config.sweep.dir), name)
    return run_sweep_job(lambda: run(cfg, Path(runtime.output_dir), choices), cfg.get("optimized_metric"))


main = command(_train)
