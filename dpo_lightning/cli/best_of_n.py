"""`python -m dpo_lightning.cli.best_of_n policy=<SFT run> task=sentiment …`: Best-of-N frontier points of a policy
(`dpo_lightning.eval.best_of_n`), written into the Hydra run folder."""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from dpo_lightning.cli.command import CONF_DIR, command, one_line_errors
from dpo_lightning.eval.best_of_n import run_best_of_n


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="best_of_n")
@one_line_errors
def _best_of_n(cfg: DictConfig) -> None:
    run_best_of_n(cfg, Path(HydraConfig.get().runtime.output_dir))


main = command(_best_of_n)

if __name__ == "__main__":
    main()
