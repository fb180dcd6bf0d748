"""Command-line entry (`python train.py …` or `dpo-train …`): Hydra composes the config, `run` trains.

Config mistakes print as one line, `error: <key>: <problem>`, and exit with status 2.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from dpo_lightning.config import check_group_choices
from dpo_lightning.errors import ConfigError, DataError

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def _fail(error: Exception) -> None:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _train(cfg: DictConfig) -> None:
    from dpo_lightning.run import run  # heavy imports after Hydra has parsed the command line

    # Hydra's logging already prints and files every record; Lightning's own console handlers would print
    # each of its messages a second time (and keep them out of train.log).
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True

    try:
        runtime = HydraConfig.get().runtime
        choices = {group: option for group, option in runtime.choices.items() if not group.startswith("hydra")}
        run(cfg, Path(runtime.output_dir), choices)
    except (ConfigError, DataError) as error:
        _fail(error)


def main() -> None:
    try:
        check_group_choices(sys.argv[1:], CONF_DIR)
    except ConfigError as error:
        _fail(error)
    _train()
