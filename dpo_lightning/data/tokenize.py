"""Triple → TokenizedPair: the one place that decides tokenization and truncation.

Follows the reference implementation (eric-mitchell/direct-preference-optimization, `tokenize_batch_element`):
prompt, chosen and rejected are tokenized separately without special tokens, EOS is appended to each
response, and if prompt + longer response exceeds `max_length`:
  1. the prompt is cut to `max_prompt_length` tokens (its start for `keep_start`, its end for `keep_end`,
     the right choice for dialogue, where the last turn matters most);
  2. if still too long, both responses are cut to `max_length − max_prompt_length` tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

TruncationMode = Literal["keep_start", "keep_end"]
TRUNCATION_MODES: tuple[str, ...] = ("keep_start", "keep_end")


@dataclass(frozen=True)
class TokenizedPair:
    """Token ids of one preference pair; responses end with EOS unless truncated."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]


@dataclass(frozen=True)
class Truncation:
    """Which parts of a pair were cut to fit `max_length` (counted and reported, never silent)."""

    prompt: bool
    responses: bool


def truncate_pair(
    prompt_ids: list[int],
    chosen_ids: list[int],
    rejected_ids: list[int],
    *,
    max_length: int,
    max_prompt_length: int,
    truncation_mode: TruncationMode,
) -> tuple[TokenizedPair, Truncation]:
    """Apply the reference implementation's truncation rules to already tokenized parts (EOS included)."""
    if truncation_mode not in TRUNCATION_MODES:
        raise ValueError(f"truncation_mode must be one of {TRUNCATION_MODES}, got {truncation_mode!r}")
    longer_response = max(len(chosen_ids), len(rejected_ids))
    cut_prompt = cut_responses = False
    if len(prompt_ids) + longer_response > max_length and len(prompt_ids) > max_prompt_length:
        cut_prompt = True
        if truncation_mode == "keep_start":
            prompt_ids = prompt_ids[:max_prompt_length]
        else:
            prompt_ids = prompt_ids[-max_prompt_length:]
    if len(prompt_ids) + longer_response > max_length:
        cut_responses = True
        response_budget = max_length - max_prompt_length
        chosen_ids = chosen_ids[:response_budget]
        rejected_ids = rejected_ids[:response_budget]
    return TokenizedPair(prompt_ids, chosen_ids, rejected_ids), Truncation(cut_prompt, cut_responses)


def tokenize_rows(
    rows: dict[str, list[str]],
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_length: int,
    max_prompt_length: int,
    truncation_mode: TruncationMode,
) -> dict[str, list]:
    """Batched `datasets.map` function: prompt/chosen/rejected → token-id columns and truncation flags."""
    eos = tokenizer.eos_token_id

    def encode(texts: list[str]) -> list[list[int]]:
        return tokenizer(texts, add_special_tokens=False)["input_ids"]

    out: dict[str, list] = {
        "prompt_ids": [],
        "chosen_ids": [],
        "rejected_ids": [],
        "prompt_truncated": [],
        "responses_truncated": [],
    }
    for prompt_ids, chosen_ids, rejected_ids in zip(
        encode(rows["prompt"]), encode(rows["chosen"]), encode(rows["rejected"]), strict=True
    ):
        pair, cut = truncate_pair(
            prompt_ids,
            [*chosen_ids, eos],
            [*rejected_ids, eos],
            max_length=max_length,
            max_prompt_length=max_prompt_length,
            truncation_mode=truncation_mode,
        )
        out["prompt_ids"].append(pair.prompt_ids)
        out["chosen_ids"].append(pair.chosen_ids)
        out["rejected_ids"].append(pair.rejected_ids)
        out["prompt_truncated"].append(cut.prompt)
        out["responses_truncated"].append(cut.responses)
    return out
