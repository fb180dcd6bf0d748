"""`python -m dpo_lightning.cli.winrate run_dir=RUN [judge=llm …]`: win rates of a finished run's policy samples
(`dpo_lightning.eval.winrate`), written into the run folder."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from dpo_lightning.cli.command import CONF_DIR, command, one_line_errors
from dpo_lightning.eval.winrate import evaluate


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="winrate")
@one_line_errors
def _winrate(cfg: DictConfig) -> None:
    evaluate(cfg)


main = command(_winrate)

if __name__ == "__main__":
    main()
