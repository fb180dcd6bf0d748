"""Policy and tokenizer loading: the random-init tiny model, or any Hugging Face causal LM.

A model config either names pretrained weights (`name_or_path`: a hub id or a local folder) or, for
`model=tiny`, describes a small random-init model (`architecture` + `config`) seeded by `init_seed`, which
uses the tokenizer the project ships. `init_from` (a run folder or model folder, e.g. the SFT run's) overrides
both: weights, config and tokenizer come from there, and the reference starts as the same model. Nothing here
touches the network unless `name_or_path` is a hub id.
`model.pad_token` says what pads batches (`load_tokenizer`); `model.block_class` names the transformer block,
the unit of sharding, activation checkpointing and `torch.compile` (`transformer_blocks`, `compile_blocks`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from dpo_lightning.conf import CONF_DIR
from dpo_lightning.errors import ConfigError
from dpo_lightning.models.tiny_tokenizer import load_tiny_tokenizer

# Parameter dtypes a model config may ask for (names of torch dtypes).
DTYPE_NAMES: tuple[str, ...] = ("float32", "bfloat16", "float16")
DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}


def model_config(model: str | Mapping[str, Any], **overrides: Any) -> dict[str, Any]:
    """A whole `model/` config from a short description, for use without Hydra: `"tiny"` (the random-init model,
    `conf/model/tiny.yaml`), a hub id or local folder (`conf/model/hf.yaml` with that `name_or_path`), or a
    mapping of keys over `hf.yaml` (or over `tiny.yaml` when it names no weights); `overrides` win."""
    if isinstance(model, str):
        model = {} if model == "tiny" else {"name": Path(model).name or model, "name_or_path": model}
    base = "hf" if model.get("name_or_path") or model.get("init_from") else "tiny"
    config = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "model" / f"{base}.yaml"))
    config.pop("learning_rate")  # the optimizer's default lr in the Hydra config, not a model setting
    return {**config, **model, **overrides}


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


def check_model_config(model: Mapping[str, Any]) -> None:
    """Checks of `model/` keys that need no model, tokenizer or network."""
    if model.get("dtype") not in DTYPE_NAMES:
        raise ConfigError("model.dtype", f"must be one of {', '.join(DTYPE_NAMES)}, got {model.get('dtype')!r}")
    if model.get("init_from") is not None:
        init_from_folder(model["init_from"])
    for key in ("block_class", "pad_token"):
        value = model.get(key)
        if not (value is None or (isinstance(value, str) and bool(value))):
            raise ConfigError(f"model.{key}", f"must be a non-empty string or null, got {value!r}")
    for key in ("disable_dropout", "lean_logprobs", "compile", "activation_checkpointing"):
        if not isinstance(model.get(key), bool):
            raise ConfigError(f"model.{key}", f"must be true or false, got {model.get(key)!r}")


def weights_source(model: Mapping[str, Any]) -> str | None:
    """Where the initial weights come from: `model.init_from` (a run folder's `policy/`, or a model folder —
    the SFT stage of the paper's pipeline), else `model.name_or_path`; None: the random-init model."""
    if model.get("init_from") is not None:
        return str(init_from_folder(model["init_from"]))
    return model.get("name_or_path")


def load_tokenizer(model: Mapping[str, Any]) -> PreTrainedTokenizerBase:
    """The tokenizer of `model`, padding as `model.pad_token` says (padding is always masked, so any token will do).

    `pad_token` null (or absent): keep the tokenizer's own pad token, or pad with EOS if it has none.
    A token string: pad with that token, which must already be in the vocabulary (a new token would need a
    new embedding row).
    """
    source = weights_source(model)
    if source is None:
        tokenizer = load_tiny_tokenizer()
    else:
        tokenizer = AutoTokenizer.from_pretrained(
            model.get("tokenizer") or source, trust_remote_code=model["trust_remote_code"]
        )
    if tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer of {model['name']} has no EOS token; DPO appends EOS to every response")
    pad_token = model.get("pad_token")
    if pad_token is not None:
        if pad_token not in tokenizer.get_vocab():
            raise ConfigError(
                "model.pad_token",
                f"{pad_token!r} is not a token of the tokenizer of {model['name']}; "
                f"use one of its tokens (EOS is {tokenizer.eos_token!r}) or null",
            )
        tokenizer.pad_token = pad_token
    elif tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def without_dropout(config: PretrainedConfig) -> PretrainedConfig:
    """`config` with every dropout probability (`*dropout*`, `*pdrop*` float fields) set to 0.

    DPO compares the policy with a reference that runs in eval mode; dropout in the policy would make the two
    differ at step 0 (Δ ≠ 0 for identical weights) and add noise to the log-ratios. The reference
    implementation and TRL disable it too.
    """
    for key, value in config.to_dict().items():
        if ("dropout" in key or "pdrop" in key) and isinstance(value, float):
            setattr(config, key, 0.0)
    return config


def build_model(model: Mapping[str, Any]) -> PreTrainedModel:
    """Load pretrained weights, or build the seeded random-init model described by `architecture`/`config`;
    dropout off when `model.disable_dropout`, per-block activation checkpointing when
    `model.activation_checkpointing`."""
    dtype = DTYPES[model["dtype"]]
    options = {"attn_implementation": model["attn_implementation"], "trust_remote_code": model["trust_remote_code"]}
    source = weights_source(model)
    if source is not None:
        config = AutoConfig.from_pretrained(source, **options)
    else:
        config = AutoConfig.for_model(model["architecture"], **model["config"], **options)
    if model["disable_dropout"]:
        config = without_dropout(config)
    if source is not None:
        built = AutoModelForCausalLM.from_pretrained(source, config=config, dtype=dtype, **options)
    else:
        with torch.random.fork_rng(devices=[]):  # same weights for the same init_seed, whatever the global seed
            torch.manual_seed(model["init_seed"])
            built = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=model["trust_remote_code"])
    if model.get("activation_checkpointing", False):
        enable_activation_checkpointing(built)
    return built


def enable_activation_checkpointing(model: PreTrainedModel) -> None:
    """Recompute each transformer block's activations in backward instead of keeping them: transformers' own
    per-block checkpointing, non-reentrant. It acts in training mode only (an eval-mode reference is unaffected)."""
    options = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # recent transformers; the older name is deprecated
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=options)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)


def compile_blocks(model: torch.nn.Module, block_class: str | None) -> None:
    """`torch.compile` each transformer block in place (`model.compile: true`), with dynamic shapes, since every
    batch has its own length. All blocks share one compiled graph, so compiling costs one block's time, once; the
    parameter names (checkpoints, exports) do not change. Apply it before sharding, as FSDP2 expects."""
    for block in transformer_blocks(model, block_class):
        block.compile(dynamic=True)


def transformer_blocks(model: torch.nn.Module, block_class: str | None) -> list[torch.nn.Module]:
    """The transformer blocks of `model` (the units of sharding and activation checkpointing), in order.

    Args:
        model: a causal LM (or any module holding one).
        block_class: the block's class name (`model.block_class`, e.g. `GPT2Block`); None: detect it from
            `_no_split_modules`, where transformers names the blocks, if that names exactly one class present.

    Raises:
        ValueError: one line naming `model.block_class` and the block-like classes found, if no module has
            that class or the class cannot be detected.
    """
    if block_class is None:
        present = {type(module).__name__ for module in model.modules()}
        declared = sorted(
            {name for module in model.modules() for name in getattr(module, "_no_split_modules", None) or ()}
        )
        detected = [name for name in declared if name in present]
        if len(detected) != 1:
            raise ValueError(
                f"model.block_class: cannot detect the transformer block of {type(model).__name__} "
                f"(_no_split_modules: {', '.join(declared) or 'none'}); set it to one of: "
                f"{', '.join(_block_like_classes(model)) or 'none found'}"
            )
        block_class = detected[0]
    blocks = [module for module in model.modules() if type(module).__name__ == block_class]
    if not blocks:
        raise ValueError(
            f"model.block_class: no {block_class} module in {type(model).__name__}; block-like classes found: "
            f"{', '.join(_block_like_classes(model)) or 'none'}"
        )
    return blocks


def _block_like_classes(model: torch.nn.Module) -> list[str]:
    """Class names of the modules held in a ModuleList (where models keep their blocks), in order of appearance."""
    names = [
        type(child).__name__
        for module in model.modules()
        if isinstance(module, torch.nn.ModuleList)
        for child in module
    ]
    return list(dict.fromkeys(names))
