"""`dpo-train` / `python train.py`: Hydra composes the config (`dpo_lightning/conf/config.yaml`), one run trains."""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from dpo_lightning.cli.command import CONF_DIR, command, one_line_errors
from dpo_lightning.cli.sweep import run_sweep_job
from dpo_lightning.runtime.secrets import redact, secret_values


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
@one_line_errors
def _train(cfg: DictConfig) -> float | None:
    """Train one run; in a multirun, return the job's objective (`optimized_metric`) and log a failure
    instead of raising it (`sweep.run_sweep_job`), so the other jobs still run."""
    from dpo_lightning.runtime.iterative import run_rounds  # heavy imports after Hydra has parsed the command line
    from dpo_lightning.runtime.run import run
    from dpo_lightning.runtime.wandb_logging import name_sweep_run

    # Hydra's logging already prints and files every record; Lightning's own console handlers would print
    # each of its messages a second time (and keep them out of train.log).
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True

    hydra_config = HydraConfig.get()
    runtime = hydra_config.runtime
    choices = {group: option for group, option in runtime.choices.items() if not group.startswith("hydra")}
    train = run_rounds if cfg.get("algorithm", {}).get("name") == "iterative" else run  # rounds of runs, or one
    if hydra_config.mode != RunMode.MULTIRUN:
        train(cfg, Path(runtime.output_dir), choices)
        return None
    secrets = secret_values(OmegaConf.to_container(cfg, resolve=False))
    name = redact(hydra_config.job.override_dirname, secrets)  # a W&B run name never shows a secret override
    name_sweep_run(cfg.get("logger"), str(hydra_config.sweep.dir), name)
    return run_sweep_job(lambda: train(cfg, Path(runtime.output_dir), choices), cfg.get("optimized_metric"))


main = command(_train)

if __name__ == "__main__":
    main()
