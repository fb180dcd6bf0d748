"""Policy and tokenizer loading: the random-init tiny model, or any Hugging Face causal LM.

A model config either names pretrained weights (`name_or_path`: a hub id or a local folder) or, for
`model=tiny`, describes a small random-init model (`architecture` + `config`) seeded by `init_seed`, which
uses the tokenizer the project ships. Nothing here touches the network unless `name_or_path` is a hub id.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from dpo_lightning.config import DTYPE_NAMES
from dpo_lightning.tiny_tokenizer import load_tiny_tokenizer

DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}


def load_tokenizer(model: Mapping[str, Any]) -> PreTrainedTokenizerBase:
    """The tokenizer of `model`; a tokenizer without a pad token pads with EOS (padding is always masked)."""
    if model.get("name_or_path") is None:
        tokenizer = load_tiny_tokenizer()
    else:
        tokenizer = AutoTokenizer.from_pretrained(
            model.get("tokenizer") or model["name_or_path"], trust_remote_code=model["trust_remote_code"]
        )
    if tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer of {model['name']} has no EOS token; DPO appends EOS to every response")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def build_model(model: Mapping[str, Any]) -> PreTrainedModel:
    """Load pretrained weights, or build the seeded random-init model described by `architecture`/`config`."""
    dtype = DTYPES[model["dtype"]]
    if model.get("name_or_path") is not None:
        return AutoModelForCausalLM.from_pretrained(
            model["name_or_path"],
            dtype=dtype,
            trust_remote_code=model["trust_remote_code"],
            attn_implementation=model["attn_implementation"],
        )
    config = AutoConfig.for_model(
        model["architecture"], **model["config"], attn_implementation=model["attn_implementation"]
    )
    with torch.random.fork_rng(devices=[]):  # same weights for the same init_seed, whatever the global seed
        torch.manual_seed(model["init_seed"])
        return AutoModelForCausalLM.from_config(config, dtype=dtype)
