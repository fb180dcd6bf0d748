"""The `algorithm=online` settings (`conf/algorithm/online.yaml`), checked before any model loads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig

from dpo_lightning.data.rankings import RANKING_PAIRS
from dpo_lightning.data.tokenize import TokenizeSettings
from dpo_lightning.errors import ConfigError
from dpo_lightning.eval.sampling import SamplingSettings
from dpo_lightning.instantiate import settings


@dataclass(frozen=True)
class OnlineSettings:
    """How rollouts are drawn and turned into training examples (each field is a key of `algorithm`).

    `sampling` holds SamplingSettings' keys (`rollout_sampling`).
    """

    name: str = "online"
    samples_per_prompt: int = 4
    pairs: str = "best_vs_worst"
    skip_bad_samples: bool = True
    max_prompts: int | None = None
    sampling: dict[str, Any] = field(default_factory=dict)
    labeller: Any = None  # the labeller's config node (built by its _target_)

    def __post_init__(self) -> None:
        if not (isinstance(self.samples_per_prompt, int) and self.samples_per_prompt >= 2):
            raise ConfigError(
                "algorithm.samples_per_prompt", f"must be an integer ≥ 2, got {self.samples_per_prompt!r}"
            )
        if self.pairs not in RANKING_PAIRS:
            raise ConfigError("algorithm.pairs", f"must be one of {', '.join(RANKING_PAIRS)}, got {self.pairs!r}")
        if self.max_prompts is not None and self.max_prompts < 1:
            raise ConfigError("algorithm.max_prompts", f"must be null or ≥ 1, got {self.max_prompts}")

    def rollout_sampling(self, tokenize: TokenizeSettings) -> SamplingSettings:
        """The rollouts' SamplingSettings (`rollout_sampling`)."""
        return rollout_sampling(self.sampling, tokenize)


def rollout_sampling(sampling: dict[str, Any], tokenize: TokenizeSettings) -> SamplingSettings:
    """`algorithm.sampling` as SamplingSettings, `max_new_tokens: null` meaning the task's response budget
    (`task.tokenize.max_length − max_prompt_length`); a mistake is named by its `algorithm.sampling` key."""
    values = dict(sampling)
    if values.get("max_new_tokens") is None:
        values["max_new_tokens"] = tokenize.max_length - tokenize.max_prompt_length
    try:
        return SamplingSettings(**values)
    except ConfigError as error:
        raise ConfigError(
            error.key.replace("samples.", "algorithm.sampling.", 1), str(error).split(": ", 1)[1]
        ) from None
    except TypeError as error:
        raise ConfigError("algorithm.sampling", str(error)) from None


def online_settings(cfg: DictConfig) -> OnlineSettings:
    """The checked `algorithm` settings of an online run, and how they meet the rest of the config: the reference
    must be a model that exists during training (not `precomputed`, whose table holds only the dataset's
    responses), and the default labeller needs a task reward."""
    online: OnlineSettings = settings(OnlineSettings, cfg.algorithm, "algorithm")
    online.rollout_sampling(settings(TokenizeSettings, cfg.task.tokenize, "task.tokenize"))
    if cfg.reference.get("_target_", "").endswith(".Precomputed"):
        raise ConfigError(
            "reference",
            "precomputed caches reference log-probs of a fixed dataset; online samples are new at every step — use "
            "reference=model, lora or sync",
        )
    _check_labeller(cfg)
    return online


def _check_labeller(cfg: DictConfig) -> None:
    labeller = cfg.algorithm.get("labeller")
    if not labeller or "_target_" not in labeller:
        raise ConfigError("algorithm.labeller", "required: labeller@algorithm.labeller=reward | reward_model | judge")
    if "reward" in labeller and not labeller.reward:
        raise ConfigError(
            "algorithm.labeller",
            "ranks samples by the task's reward, and this task has none: set reward@task.reward=vader|classifier, or "
            "labeller@algorithm.labeller=reward_model|judge",
        )


@dataclass(frozen=True)
class IterativeSettings:
    """The `algorithm=iterative` settings (`conf/algorithm/iterative.yaml`; `runtime/iterative.py`)."""

    name: str = "iterative"
    rounds: int = 3
    prompts_per_round: int = 512
    validation_prompts: int = 64
    samples_per_prompt: int = 4
    min_margin: float = 0.0
    sampling: dict[str, Any] = field(default_factory=dict)
    labeller: Any = None

    def __post_init__(self) -> None:
        for key, low in (("rounds", 1), ("prompts_per_round", 1), ("validation_prompts", 1), ("samples_per_prompt", 2)):
            value = getattr(self, key)
            if not (isinstance(value, int) and value >= low):
                raise ConfigError(f"algorithm.{key}", f"must be an integer ≥ {low}, got {value!r}")
        if self.min_margin < 0:
            raise ConfigError("algorithm.min_margin", f"must be ≥ 0, got {self.min_margin}")

    def rollout_sampling(self, tokenize: TokenizeSettings) -> SamplingSettings:
        """The samples' SamplingSettings (`rollout_sampling`)."""
        return rollout_sampling(self.sampling, tokenize)


def iterative_settings(cfg: DictConfig) -> IterativeSettings:
    """The checked `algorithm` settings of an iterative run (its rounds train offline: any reference works)."""
    iterative: IterativeSettings = settings(IterativeSettings, cfg.algorithm, "algorithm")
    iterative.rollout_sampling(settings(TokenizeSettings, cfg.task.tokenize, "task.tokenize"))
    _check_labeller(cfg)
    if not cfg.task.get("reward"):
        raise ConfigError("task.reward", "iterative DPO reports each round's true reward; this task has none")
    return iterative


@dataclass(frozen=True)
class PPOSettings:
    """The `algorithm=ppo` settings (`conf/algorithm/ppo.yaml`; `online/ppo.py`)."""

    name: str = "ppo"
    kl_coef: float = 0.05
    adaptive_kl: bool = False
    target_kl: float = 6.0
    kl_horizon: int = 10000
    gamma: float = 1.0
    lam: float = 0.95
    clip_range: float = 0.2
    clip_range_value: float = 0.2
    value_coef: float = 0.1
    ppo_epochs: int = 4
    mini_batch_size: int = 8
    whiten_rewards: bool = False
    whiten_advantages: bool = True
    missing_eos_penalty: float | None = None
    sampling: dict[str, Any] = field(default_factory=dict)
    labeller: Any = None

    def __post_init__(self) -> None:
        for key, low in (("ppo_epochs", 1), ("mini_batch_size", 1), ("kl_horizon", 1)):
            value = getattr(self, key)
            if not (isinstance(value, int) and value >= low):
                raise ConfigError(f"algorithm.{key}", f"must be an integer ≥ {low}, got {value!r}")
        for key in ("kl_coef", "value_coef"):
            if getattr(self, key) < 0:
                raise ConfigError(f"algorithm.{key}", f"must be ≥ 0, got {getattr(self, key)}")
        for key in ("clip_range", "clip_range_value", "target_kl"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"algorithm.{key}", f"must be > 0, got {getattr(self, key)}")
        if self.adaptive_kl and not self.kl_coef > 0:
            raise ConfigError(
                "algorithm.kl_coef",
                f"must be > 0 with algorithm.adaptive_kl=true (the controller scales it), got {self.kl_coef}",
            )
        for key in ("gamma", "lam"):
            if not 0 <= getattr(self, key) <= 1:
                raise ConfigError(f"algorithm.{key}", f"must be in [0, 1], got {getattr(self, key)}")

    def rollout_sampling(self, tokenize: TokenizeSettings) -> SamplingSettings:
        """The rollouts' SamplingSettings (`rollout_sampling`)."""
        return rollout_sampling(self.sampling, tokenize)


def ppo_settings(cfg: DictConfig) -> PPOSettings:
    """The checked `algorithm` settings of a PPO run, and how they meet the rest of the config: a reference model
    for the KL penalty (not `precomputed` or `none`), an absolute reward (a reward labeller: the task's reward for
    PPO-GT, a reward model for PPO; judges give only relative scores), no sharded value head (`trainer=fsdp`)."""
    ppo: PPOSettings = settings(PPOSettings, cfg.algorithm, "algorithm")
    ppo.rollout_sampling(settings(TokenizeSettings, cfg.task.tokenize, "task.tokenize"))
    target = cfg.reference.get("_target_", "")
    if target.endswith((".Precomputed", ".ReferenceFree")):
        raise ConfigError(
            "reference", "PPO's KL penalty needs log π_ref of its own samples: use reference=model, lora or sync"
        )
    _check_labeller(cfg)
    if not str(cfg.algorithm.labeller.get("_target_", "")).endswith(".RewardLabeller"):
        raise ConfigError(
            "algorithm.labeller",
            "PPO needs an absolute reward r(x, y): labeller@algorithm.labeller=reward (PPO-GT) or reward_model (PPO)",
        )
    if cfg.trainer.get("accumulate_grad_batches", 1) != 1:
        raise ConfigError(
            "trainer.accumulate_grad_batches",
            "algorithm=ppo steps its optimizer itself (algorithm.mini_batch_size responses a step): set it to 1",
        )
    strategy = cfg.trainer.get("strategy")
    if isinstance(strategy, DictConfig) and str(strategy.get("_target_", "")).endswith("FSDP2Strategy"):
        raise ConfigError(
            "trainer", "algorithm=ppo does not shard its value head: use trainer=default, cpu, gpu or ddp"
        )
    return ppo
