"""Config checks that run before any model loads: each failure is one `ConfigError` line naming the key."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import InstantiationException, OverrideParseException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from dpo_lightning.data.collate import LAYOUTS
from dpo_lightning.data.rankings import RANKING_PAIRS, RANKINGS
from dpo_lightning.data.tokenize import TRUNCATION_MODES
from dpo_lightning.errors import ConfigError, DataError

# Keys of a task config that configure tokenization and row checks; the rest are its source's arguments.
TASK_DATA_KEYS: tuple[str, ...] = (
    "name",
    "max_length",
    "max_prompt_length",
    "truncation_mode",
    "prompt_suffix",
    "skip_bad_rows",
    "streaming",
    "shuffle_buffer",
)
# Keys of a task config that configure evaluation (the task's ground-truth reward, `reward/` group).
TASK_EVAL_KEYS: tuple[str, ...] = ("reward",)
# Parameter dtypes a model config may ask for (names of torch dtypes).
DTYPE_NAMES: tuple[str, ...] = ("float32", "bfloat16", "float16")
# Ways to hold the reference model (`conf/reference/<name>.yaml`, `dpo_lightning.reference`), and their keys.
REFERENCE_STRATEGIES: tuple[str, ...] = ("model", "precomputed", "lora", "none", "sync")
REFERENCE_KEYS: dict[str, tuple[str, ...]] = {
    "model": ("dtype",),
    "precomputed": ("dtype", "cache_dir"),
    "lora": ("lora",),
    "none": (),
    "sync": ("alpha", "every_n_steps"),
}
LORA_KEYS: tuple[str, ...] = ("r", "alpha", "dropout", "target_modules", "merge_on_export")


def build(node: Any, **kwargs: Any) -> Any:
    """`hydra.utils.instantiate`, except that a ConfigError or DataError raised by the target comes out as itself,
    one line (instantiate wraps every error in a multi-line InstantiationException)."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as error:
        if isinstance(error.__cause__, (ConfigError, DataError)):
            raise error.__cause__ from None
        raise


def source_arguments(task: Mapping[str, Any]) -> dict[str, Any]:
    """The arguments of a task's source class: its config minus `_target_`, the tokenization keys and the
    evaluation keys."""
    return {k: v for k, v in task.items() if k not in (*TASK_DATA_KEYS, *TASK_EVAL_KEYS, "_target_")}


def check_group_choices(overrides: Sequence[str], conf_dir: Path) -> None:
    """Reject `group=option` command-line overrides that name no `conf/<group>/<option>.yaml`, listing the
    allowed options (Hydra's own message spans several lines and a stack trace hint)."""
    parser = OverridesParser.create()
    for argument in overrides:
        try:
            (override,) = parser.parse_overrides([argument])
        except OverrideParseException:  # not an override (e.g. `--cfg job`): Hydra will judge it
            continue
        group_dir = conf_dir / override.key_or_group
        if override.is_delete() or not group_dir.is_dir() or override.value() is None:
            continue
        if override.is_sweep_override():
            choices = list(override.sweep_string_iterator())
        else:
            choices = [override.get_value_element_as_str()]
        allowed = sorted(p.stem for p in group_dir.glob("*.yaml"))
        for choice in choices:
            if choice not in allowed:
                raise ConfigError(
                    override.key_or_group, f"unknown option {choice!r}; choose one of: {', '.join(allowed)}"
                )


def _require(condition: bool, key: str, problem: str) -> None:
    if not condition:
        raise ConfigError(key, problem)


def validate_config(cfg: DictConfig) -> None:
    """Every check that needs no model, data or network."""
    from dpo_lightning.parallel import check_parallel_config  # parallel imports models, which imports this module

    missing = OmegaConf.missing_keys(cfg)
    _require(
        not missing,
        sorted(missing)[0] if missing else "",
        "required but not set (give it on the command line)",
    )

    _require(cfg.beta > 0, "beta", f"must be > 0, got {cfg.beta}")
    _require(
        cfg.get("resume") is None or cfg.get("ckpt_path") is None,
        "resume",
        "set either resume (continue a run in its folder) or ckpt_path (start from a checkpoint), not both",
    )
    check_parallel_config(cfg)
    check_loss_config(cfg)
    check_samples_config(cfg.samples)
    task = cfg.task
    _require(task.max_length >= 2, "task.max_length", f"must be ≥ 2, got {task.max_length}")
    _require(
        1 <= task.max_prompt_length < task.max_length,
        "task.max_prompt_length",
        f"must be in [1, task.max_length={task.max_length}), got {task.max_prompt_length}",
    )
    _require(
        task.truncation_mode in TRUNCATION_MODES,
        "task.truncation_mode",
        f"must be one of {', '.join(TRUNCATION_MODES)}, got {task.truncation_mode!r}",
    )
    _require(isinstance(task.streaming, bool), "task.streaming", f"must be true or false, got {task.streaming!r}")
    _require(task.shuffle_buffer >= 0, "task.shuffle_buffer", f"must be ≥ 0 rows, got {task.shuffle_buffer}")
    check_data_config(cfg.data, streaming=task.streaming)
    _require(
        cfg.model.dtype in DTYPE_NAMES,
        "model.dtype",
        f"must be one of {', '.join(DTYPE_NAMES)}, got {cfg.model.dtype!r}",
    )
    _require(
        cfg.optimizer.warmup_steps >= 0,
        "optimizer.warmup_steps",
        f"must be ≥ 0, got {cfg.optimizer.warmup_steps}",
    )
    check_model_config(cfg.model)
    _require(
        not (cfg.model.get("attn_implementation") == "flex_attention" and trains_on_cpu(cfg.trainer)),
        "model.attn_implementation",
        "flex_attention has no backward pass on the CPU in torch; use sdpa there (flex_attention is for GPUs)",
    )
    check_reference_config(cfg.reference)
    _require(cfg.optimizer.lr > 0, "optimizer.lr", f"must be > 0, got {cfg.optimizer.lr}")


def trains_on_cpu(trainer: DictConfig) -> bool:
    """Whether the Trainer config puts training on the CPU (`auto` does where there is no GPU)."""
    accelerator = trainer.get("accelerator", "auto")
    return accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())


def init_from_folder(init_from: str | os.PathLike) -> Path:
    """The Hugging Face model folder named by `model.init_from`: a run folder (its `policy/`) or the model
    folder itself; a ConfigError naming the key if neither holds a `config.json`."""
    path = Path(init_from).expanduser()
    for folder in (path / "policy", path):
        if (folder / "config.json").is_file():
            return folder
    raise ConfigError(
        "model.init_from",
        f"{path} is neither a run folder with policy/ nor a model folder (no config.json in either)",
    )


def check_model_config(model: DictConfig) -> None:
    """Checks of `model/` keys that need no model, tokenizer or network."""
    if model.get("init_from") is not None:
        init_from_folder(model.init_from)
    for key in ("block_class", "pad_token"):
        value = model.get(key)
        _require(
            value is None or (isinstance(value, str) and bool(value)),
            f"model.{key}",
            f"must be a non-empty string or null, got {value!r}",
        )
    for key in ("disable_dropout", "lean_logprobs", "compile"):
        _require(
            isinstance(model.get(key), bool),
            f"model.{key}",
            f"must be true or false, got {model.get(key)!r}",
        )


def check_data_config(data: DictConfig, streaming: bool) -> None:
    """Checks of the `data` keys (batching and batch layout)."""
    _require(data.batch_size >= 1, "data.batch_size", f"must be ≥ 1, got {data.batch_size}")
    _require(data.eval_batch_size >= 1, "data.eval_batch_size", f"must be ≥ 1, got {data.eval_batch_size}")
    _require(data.layout in LAYOUTS, "data.layout", f"must be one of {', '.join(LAYOUTS)}, got {data.layout!r}")
    max_tokens = data.packing_max_tokens
    _require(
        max_tokens is None or (isinstance(max_tokens, int) and max_tokens >= 2),
        "data.packing_max_tokens",
        f"must be null (the batch's longest pair) or an integer ≥ 2 (prompt and response token), got {max_tokens!r}",
    )
    _require(
        isinstance(data.group_by_length, bool),
        "data.group_by_length",
        f"must be true or false, got {data.group_by_length!r}",
    )
    _require(
        not (data.group_by_length and streaming),
        "data.group_by_length",
        "needs map-style data (a stream's lengths are not known ahead); set task.streaming=false or turn it off",
    )
    _require(data.rankings in RANKINGS, "data.rankings", f"must be one of {', '.join(RANKINGS)}, got {data.rankings!r}")
    _require(
        data.ranking_pairs in RANKING_PAIRS,
        "data.ranking_pairs",
        f"must be one of {', '.join(RANKING_PAIRS)}, got {data.ranking_pairs!r}",
    )


def check_samples_config(samples: DictConfig) -> None:
    """Checks of the `samples` keys (validation-time sampling)."""
    for key, low in (("num_prompts", 0), ("max_new_tokens", 1), ("batch_size", 1)):
        value = samples[key]
        _require(
            isinstance(value, int) and value >= low, f"samples.{key}", f"must be an integer ≥ {low}, got {value!r}"
        )
    _require(samples.temperature >= 0, "samples.temperature", f"must be ≥ 0 (0: greedy), got {samples.temperature}")
    _require(0 < samples.top_p <= 1, "samples.top_p", f"must be in (0, 1], got {samples.top_p}")
    _require(isinstance(samples.kl, bool), "samples.kl", f"must be true or false, got {samples.kl!r}")


def check_loss_config(cfg: DictConfig) -> None:
    """Instantiate the objective (its hyperparameter checks raise one-line ConfigErrors) and check that the
    reference strategy suits it."""
    objective = build(cfg.loss)
    if cfg.reference.name == "none" and objective.needs_reference and not objective.reference_free_ok:
        raise ConfigError(
            "reference",
            f"loss={cfg.loss.get('name', objective.name)} needs a reference model; reference=none (π_ref ≡ 1) "
            "suits only losses built on the reference implementation's reference-free option",
        )


def check_rankings(cfg: DictConfig, ranked_source: bool) -> None:
    """Checks of how ranked data (a source with `ranked` rows) meets the loss and the reference strategy; called
    once the source exists (cheap: it reads no data), before any model loads."""
    if not ranked_source:
        return
    objective = build(cfg.loss)
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


def check_reference_config(reference: DictConfig) -> None:
    """Checks of `reference/` keys that need no model. The strategy is one choice (`reference=<name>`), so
    strategies cannot be combined; a key of another strategy (e.g. `+reference.cache_dir=…` with `sync`,
    whose reference changes during training and so cannot be precomputed) is an error."""
    name = reference.get("name")
    _require(
        name in REFERENCE_STRATEGIES,
        "reference.name",
        f"must be one of {', '.join(REFERENCE_STRATEGIES)}, got {name!r}",
    )
    for key in reference:
        _require(
            key == "name" or key in REFERENCE_KEYS[name],
            f"reference.{key}",
            f"is not a key of reference={name} (its keys: {', '.join(REFERENCE_KEYS[name]) or 'none'})",
        )
    if "dtype" in reference:
        _require(
            reference.dtype is None or reference.dtype in DTYPE_NAMES,
            "reference.dtype",
            f"must be null (the policy's) or one of {', '.join(DTYPE_NAMES)}, got {reference.dtype!r}",
        )
    if name == "sync":
        _require(0 <= reference.alpha <= 1, "reference.alpha", f"must be in [0, 1], got {reference.alpha}")
        _require(
            isinstance(reference.every_n_steps, int) and reference.every_n_steps >= 1,
            "reference.every_n_steps",
            f"must be an integer ≥ 1, got {reference.every_n_steps!r}",
        )
    if name == "lora":
        _require(
            importlib.util.find_spec("peft") is not None,
            "reference",
            "reference=lora needs the peft package: pip install peft",
        )
        lora = reference.lora
        for key in lora:
            _require(key in LORA_KEYS, f"reference.lora.{key}", f"unknown key; the keys are: {', '.join(LORA_KEYS)}")
        _require(isinstance(lora.r, int) and lora.r >= 1, "reference.lora.r", f"must be an integer ≥ 1, got {lora.r!r}")
        _require(lora.alpha > 0, "reference.lora.alpha", f"must be > 0, got {lora.alpha}")
        _require(0 <= lora.dropout < 1, "reference.lora.dropout", f"must be in [0, 1), got {lora.dropout}")
