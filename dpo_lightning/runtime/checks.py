"""Config checks that run before any model loads: `validate_config` calls each part's own check; each failure is
one `ConfigError` line naming the key."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from dpo_lightning.data.datamodule import check_batching
from dpo_lightning.data.tokenize import TokenizeSettings
from dpo_lightning.errors import ConfigError
from dpo_lightning.eval.sampling import ValidationSamples
from dpo_lightning.instantiate import build, settings
from dpo_lightning.models.loading import check_model_config
from dpo_lightning.models.reference import ReferenceStrategy
from dpo_lightning.online.settings import iterative_settings, online_settings, ppo_settings
from dpo_lightning.runtime.trainer import check_trainer_config

ALGORITHMS = ("offline", "online", "iterative", "reward_model", "ppo")  # the `algorithm` options


def _require(condition: bool, key: str, problem: str) -> None:
    if not condition:
        raise ConfigError(key, problem)


def validate_config(cfg: DictConfig) -> None:
    """Every check that needs no model, data or network, in the order of the config's groups."""
    missing = OmegaConf.missing_keys(cfg)
    _require(not missing, sorted(missing)[0] if missing else "", "required but not set (give it on the command line)")
    _require(cfg.beta > 0, "beta", f"must be > 0, got {cfg.beta}")
    _require(
        cfg.get("resume") is None or cfg.get("ckpt_path") is None,
        "resume",
        "set either resume (continue a run in its folder) or ckpt_path (start from a checkpoint), not both",
    )
    check_task_config(cfg.task)
    _require(
        cfg.algorithm.get("name") in ALGORITHMS,
        "algorithm.name",
        f"must be one of {', '.join(ALGORITHMS)}, got {cfg.algorithm.get('name')!r}",
    )
    if cfg.algorithm.name == "online":
        online_settings(cfg)
    if cfg.algorithm.name == "iterative":
        iterative_settings(cfg)
    if cfg.algorithm.name == "ppo":
        ppo_settings(cfg)
    if cfg.algorithm.name == "reward_model":
        _require(
            cfg.algorithm.center_coefficient >= 0,
            "algorithm.center_coefficient",
            f"must be ≥ 0, got {cfg.algorithm.center_coefficient}",
        )
        _require(cfg.algorithm.margin >= 0, "algorithm.margin", f"must be ≥ 0, got {cfg.algorithm.margin}")
    data = cfg.data
    check_batching(
        data.batch_size,
        data.eval_batch_size,
        data.layout,
        data.packing_max_tokens,
        data.group_by_length,
        data.rankings,
        data.ranking_pairs,
        cfg.task.streaming,
    )
    settings(ValidationSamples, cfg.samples, "samples")
    check_model_config(cfg.model)
    check_trainer_config(cfg)
    _require(cfg.optimizer.lr > 0, "optimizer.lr", f"must be > 0, got {cfg.optimizer.lr}")
    _require(
        cfg.optimizer.warmup_steps >= 0, "optimizer.warmup_steps", f"must be ≥ 0, got {cfg.optimizer.warmup_steps}"
    )
    strategy: ReferenceStrategy = build(cfg.reference, "reference")
    objective = build(cfg.loss, "loss")  # its hyperparameter checks raise one-line ConfigErrors
    if strategy.name == "none" and objective.needs_reference and not objective.reference_free_ok:
        raise ConfigError(
            "reference",
            f"loss={cfg.loss.get('name', objective.name)} needs a reference model; reference=none (π_ref ≡ 1) "
            "suits only losses built on the reference implementation's reference-free option",
        )


def check_task_config(task: DictConfig) -> None:
    """The task's keys: its tokenization settings (`TokenizeSettings`), how rows are read, its source's `_target_`."""
    settings(TokenizeSettings, task.tokenize, "task.tokenize")
    _require(isinstance(task.streaming, bool), "task.streaming", f"must be true or false, got {task.streaming!r}")
    _require(
        isinstance(task.skip_bad_rows, bool), "task.skip_bad_rows", f"must be true or false, got {task.skip_bad_rows!r}"
    )
    _require(task.shuffle_buffer >= 0, "task.shuffle_buffer", f"must be ≥ 0 rows, got {task.shuffle_buffer}")
    _require("_target_" in task.source, "task.source._target_", "required: the source class")


def check_rankings(cfg: DictConfig, ranked_source: bool) -> None:
    """Checks of how ranked data (a source with `ranked` rows) meets the loss and the reference strategy; called
    once the source exists (cheap: it reads no data), before any model loads."""
    if not ranked_source:
        return
    objective = build(cfg.loss, "loss")
    loss = cfg.loss.get("name", objective.name)
    whole = cfg.data.rankings == "whole"
    _require(
        whole or not objective.takes_rankings,
        "data.rankings",
        f"loss={loss} trains on whole rankings, and data.rankings=pairs flattens them into pairs; use whole",
    )
    _require(
        not (whole and objective.needs_tokens),
        "data.rankings",
        f"loss={loss} needs per-token log-probs of pairs; set data.rankings=pairs to flatten the rankings",
    )
