"""`python -m dpo_lightning.cli.pairs policy=<SFT run> task=sentiment …`: preference pairs sampled from a model and
labelled by the task's reward (`dpo_lightning.eval.pairs`), written as Parquet into the Hydra run folder."""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from dpo_lightning.cli.command import CONF_DIR, command, one_line_errors
from dpo_lightning.eval.pairs import generate


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="pairs")
@one_line_errors
def _pairs(cfg: DictConfig) -> None:
    generate(cfg, Path(HydraConfig.get().runtime.output_dir))


main = command(_pairs)

if __name__ == "__main__":
    main()
