"""Policy and tokenizer loading: the random-init tiny model, or any Hugging Face causal LM.

A model config either names pretrained weights (`name_or_path`: a hub id or a local folder) or, for
`model=tiny`, describes a small random-init model (`architecture` + `config`) seeded by `init_seed`, which
uses the tokenizer the project ships. `init_from` (a run folder or model folder, e.g. the SFT run's) overrides
both: weights, config and tokenizer come from there, and the reference starts as the same model. Nothing here
touches the network unless `name_or_path` is a hub id.
A source that cannot be loaded — a folder that does not exist or holds no model or tokenizer, a model that is not a
causal LM, a hub id that is neither cached nor reachable — is a one-line ConfigError naming the key, the value and
the fix, found before any weights load (`check_loadable`, which a run calls right after validating its config). A
hub id is looked up with one HEAD request without retries (`HUB_TIMEOUT_S`); a cached one whose hub is unreachable
loads from its cached snapshot, without the network round trips (and their retries) of a normal load.
`model.pad_token` says what pads batches (`load_tokenizer`); `model.block_class` names the transformer block,
the unit of sharding, activation checkpointing and `torch.compile` (`transformer_blocks`, `compile_blocks`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url, is_offline_mode, try_to_load_from_cache
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
)
from huggingface_hub.utils import validate_repo_id
from omegaconf import OmegaConf
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from dpo_lightning.conf import CONF_DIR
from dpo_lightning.errors import ConfigError
from dpo_lightning.models.tiny_tokenizer import load_tiny_tokenizer

# Parameter dtypes a model config may ask for (names of torch dtypes).
DTYPE_NAMES: tuple[str, ...] = ("float32", "bfloat16", "float16")
DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}
# Seconds to wait for the Hugging Face hub to answer the one look-up of a hub id that is not cached.
HUB_TIMEOUT_S = 5.0
# Files of a model folder: its config, and its weights (one of these).
CONFIG_FILE = "config.json"
WEIGHTS_FILES: tuple[str, ...] = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
# Files of a tokenizer folder (one of these at least; without any, transformers builds an empty tokenizer).
TOKENIZER_FILES: tuple[str, ...] = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "vocab.txt",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
)
# Class names of the causal LMs transformers knows (what AutoModelForCausalLM builds for each model type).
CAUSAL_LM_CLASSES = frozenset(
    name
    for names in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()
    for name in ((names,) if isinstance(names, str) else names)
)


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

    Raises:
        ConfigError: one line naming the key (`model.tokenizer`, else where the weights come from), if the
            tokenizer cannot be loaded, is empty or has no EOS token.
    """
    key = "model.tokenizer"
    if weights_source(model) is None:
        tokenizer = load_tiny_tokenizer()
    else:
        key, value = _tokenizer_key(model)
        where = locate_tokenizer(key, value)
        try:
            tokenizer = AutoTokenizer.from_pretrained(where, trust_remote_code=model["trust_remote_code"])
        except ConfigError:
            raise
        except (OSError, ValueError, ImportError) as error:  # a bad file, a missing converter or library
            raise ConfigError(key, f"cannot load a tokenizer from {value!r}: {_first_line(error)}") from error
        if not tokenizer("a b", add_special_tokens=False)["input_ids"]:  # built without vocabulary files
            raise ConfigError(key, f"cannot load a tokenizer from {value!r}: it holds no vocabulary")
    if tokenizer.eos_token_id is None:
        raise ConfigError(
            key,
            f"the tokenizer of {model['name']} has no EOS token; DPO appends EOS to every response: "
            "set model.tokenizer to a tokenizer with one",
        )
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


def _weights_key(model: Mapping[str, Any]) -> tuple[str, str | None]:
    """(the key that names the initial weights, its value): `model.init_from` when set, else `model.name_or_path`."""
    if model.get("init_from") is not None:
        return "model.init_from", str(init_from_folder(model["init_from"]))
    return "model.name_or_path", model.get("name_or_path")


def _tokenizer_key(model: Mapping[str, Any]) -> tuple[str, str]:
    """(the key that names the tokenizer, its value): `model.tokenizer` when set, else where the weights come from."""
    if model.get("tokenizer"):
        return "model.tokenizer", str(model["tokenizer"])
    key, value = _weights_key(model)
    return key, str(value)


def check_loadable(model: Mapping[str, Any]) -> None:
    """Fail fast, in one line, if the weights or the tokenizer of `model` cannot be loaded: found without loading
    them (a folder's files and config, a hub id's cache entry or one look-up), so that a run stops within seconds,
    before it reads any data. Nothing to check for the random-init model."""
    key, value = _weights_key(model)
    if value is None:
        return
    locate_weights(key, value, model.get("trust_remote_code", False))
    key, value = _tokenizer_key(model)
    locate_tokenizer(key, value)


def locate_weights(key: str, value: str, trust_remote_code: bool = False) -> str:
    """What to pass to `from_pretrained` for the model named by `key`=`value` (the folder, the hub id, or a cached
    snapshot's folder when the hub is unreachable), after checking that it is a causal LM with weights; else a
    ConfigError naming `key`, `value` and the fix."""
    where = _locate(key, value, (CONFIG_FILE,))
    folder = Path(where)
    if not folder.is_dir():  # on the hub, which answered: its config (small, cached for the load that follows)
        try:
            config_file = hf_hub_download(where, CONFIG_FILE, etag_timeout=HUB_TIMEOUT_S)
        except Exception:  # the hub stopped answering: the load that follows reports it
            return where
        _check_causal_lm(key, value, Path(config_file), trust_remote_code)
        return where
    if not (folder / CONFIG_FILE).is_file():
        raise ConfigError(key, f"cannot load {value!r}: the folder holds no {CONFIG_FILE} (not a model folder)")
    _check_causal_lm(key, value, folder / CONFIG_FILE, trust_remote_code)
    if not any((folder / name).is_file() for name in WEIGHTS_FILES):
        raise ConfigError(key, f"cannot load {value!r}: the folder holds no weights ({', '.join(WEIGHTS_FILES)})")
    return where


def locate_tokenizer(key: str, value: str) -> str:
    """What to pass to `AutoTokenizer.from_pretrained` for the tokenizer named by `key`=`value`; a ConfigError if
    it is a folder without tokenizer files, or a hub id that is neither cached nor reachable."""
    where = _locate(key, value, TOKENIZER_FILES)
    folder = Path(where)
    if folder.is_dir() and not any((folder / name).is_file() for name in TOKENIZER_FILES):
        fix = "" if key == "model.tokenizer" else "; set model.tokenizer to a tokenizer's folder or hub id"
        raise ConfigError(
            key,
            f"cannot load a tokenizer from {value!r}: the folder holds no tokenizer files "
            f"({', '.join(TOKENIZER_FILES[:3])}, …){fix}",
        )
    return where


def _locate(key: str, value: str, files: Sequence[str]) -> str:
    """A local folder (as a path), a hub id to load from the hub, or the folder of its cached snapshot when the hub
    is unreachable (offline, or no answer); `files`: the files that mark it (the first: the one a hub look-up asks
    for). A ConfigError naming `key` if it is none of these."""
    path = Path(value).expanduser()
    if path.is_dir():
        return str(path)
    if path.exists():
        raise ConfigError(key, f"cannot load {value!r}: a file, not a folder; set {key} to a model folder or hub id")
    try:
        validate_repo_id(value)
    except HFValidationError:
        raise ConfigError(
            key, f"cannot load {value!r}: no such folder (and not a hub id, which is 'name' or 'org/name')"
        ) from None
    cached = next((c for name in files if isinstance(c := try_to_load_from_cache(value, name), str)), None)
    if is_offline_mode():
        problem: Exception | None = OfflineModeIsEnabled("HF_HUB_OFFLINE is set")
    else:
        problem = _hub_problem(value, files[0])
    if problem is None or (isinstance(problem, RemoteEntryNotFoundError) and files[0] != CONFIG_FILE):
        return value  # on the hub (a tokenizer file may be named otherwise: transformers looks for the others)
    if cached is not None:
        return str(Path(cached).parent)  # the cached snapshot, loaded without asking the hub again
    if isinstance(problem, GatedRepoError):
        reason = "a gated repository: accept its terms on huggingface.co and log in (`hf auth login` or HF_TOKEN)"
    elif isinstance(problem, RepositoryNotFoundError):
        reason = "no such local folder, and no such model on the Hugging Face hub (or a private one: log in)"
    elif isinstance(problem, RemoteEntryNotFoundError):
        reason = f"the hub repository holds no {files[0]}: not a transformers model"
    else:
        reason = (
            f"not a local folder and the Hugging Face hub is unreachable ({_unreachable(problem)}); "
            f"download it once with network, or set {key}=/path/to/local/folder"
        )
    raise ConfigError(key, f"cannot load {value!r}: {reason}")


def _hub_problem(repo_id: str, filename: str) -> Exception | None:
    """Why the hub does not serve `filename` of `repo_id` (one HEAD request, no retries), or None if it does."""
    try:
        get_hf_file_metadata(hf_hub_url(repo_id, filename), timeout=HUB_TIMEOUT_S)
    except Exception as error:  # offline, refused, timed out, not found, gated, an HTTP error
        return error
    return None


def _unreachable(error: Exception) -> str:
    if isinstance(error, OfflineModeIsEnabled):
        return "offline: HF_HUB_OFFLINE is set"
    if "timeout" in type(error).__name__.lower():
        return f"no answer within {HUB_TIMEOUT_S:g} s"
    if isinstance(error, HfHubHTTPError):  # it answered, with an error (a 5xx, a proxy's page)
        return f"it answered: {_first_line(error)}"
    return f"offline: {_first_line(error)}"


def _check_causal_lm(key: str, value: str, config_file: Path, trust_remote_code: bool) -> None:
    """ConfigError unless `config_file` describes a causal LM that AutoModelForCausalLM builds with its own head:
    its `architectures` (when listed) name a causal-LM class, its model type has one, or (remote code) its
    `auto_map` names one."""
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(key, f"cannot load {value!r}: {config_file.name} is not valid JSON ({error})") from None
    if not isinstance(config, dict):
        raise ConfigError(key, f"cannot load {value!r}: {config_file.name} is not a JSON object")
    if trust_remote_code and "AutoModelForCausalLM" in (config.get("auto_map") or {}):
        return
    model_type = config.get("model_type")
    architectures = [a for a in config.get("architectures") or [] if isinstance(a, str)]
    causal = [a for a in architectures if a in CAUSAL_LM_CLASSES or a.endswith(("ForCausalLM", "LMHeadModel"))]
    if model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and (causal or not architectures):
        return
    fix = "DPO trains a causal language model (a …ForCausalLM or …LMHeadModel): point it at one"
    if model_type is None:
        raise ConfigError(key, f"cannot load {value!r}: {config_file.name} names no model_type")
    if model_type not in CONFIG_MAPPING_NAMES and not trust_remote_code:
        raise ConfigError(
            key,
            f"cannot load {value!r}: model type {model_type!r} is unknown to this transformers version; upgrade "
            "transformers, or for a model that ships its own code set model.trust_remote_code=true",
        )
    holds = ", ".join(architectures) if architectures else f"a {model_type} model"
    raise ConfigError(key, f"cannot load {value!r}: it holds {holds}, not a causal language model; {fix}")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


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


def build_model(
    model: Mapping[str, Any], auto_class: type = AutoModelForCausalLM, **config_overrides: Any
) -> PreTrainedModel:
    """Load pretrained weights, or build the seeded random-init model described by `architecture`/`config`;
    dropout off when `model.disable_dropout`, per-block activation checkpointing when
    `model.activation_checkpointing`.

    `auto_class` and `config_overrides`: the same body under another head, e.g. a reward model's
    `AutoModelForSequenceClassification` with `num_labels=1` (pretrained weights: the new head is initialised; the
    random-init model: the same seeded body as the causal LM's, since the head is initialised after it)."""
    dtype = DTYPES[model["dtype"]]
    options = {"attn_implementation": model["attn_implementation"], "trust_remote_code": model["trust_remote_code"]}
    key, source = _weights_key(model)
    if source is not None:
        where = locate_weights(key, source, model["trust_remote_code"])
        try:
            config = AutoConfig.from_pretrained(where, **options, **config_overrides)
            if model["disable_dropout"]:
                config = without_dropout(config)
            built = auto_class.from_pretrained(where, config=config, dtype=dtype, **options)
        except ConfigError:
            raise
        except (OSError, ValueError, ImportError) as error:  # bad files, a download cut off, a missing library
            raise ConfigError(key, f"cannot load {source!r}: {_first_line(error)}") from error
    else:
        config = AutoConfig.for_model(model["architecture"], **{**model["config"], **config_overrides}, **options)
        if model["disable_dropout"]:
            config = without_dropout(config)
        with torch.random.fork_rng(devices=[]):  # same weights for the same init_seed, whatever the global seed
            torch.manual_seed(model["init_seed"])
            built = auto_class.from_config(config, dtype=dtype, trust_remote_code=model["trust_remote_code"])
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
