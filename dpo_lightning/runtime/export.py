"""The run's `policy/` folder: the trained policy in Hugging Face format."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase


def export_policy(
    policy: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    folder: Path,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Save config, safetensors weights and tokenizer, loadable with the Auto classes offline.

    `state_dict`: the weights to write instead of the policy's own (a sharded policy's gathered full state
    dict, `parallel.full_state_dict`); None: the policy's.
    """
    policy.save_pretrained(folder, state_dict=state_dict)
    tokenizer.save_pretrained(folder)
    return folder
