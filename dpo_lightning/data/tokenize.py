"""Triple → TokenizedPair (ranking → TokenizedRanking): the one place that decides tokenization and truncation.

Follows the reference implementation (eric-mitchell/direct-preference-optimization, `tokenize_batch_element`):
prompt, chosen and rejected are tokenized separately without special tokens, EOS is appended to each
response, and if prompt + longer response exceeds `max_length`:
  1. the prompt is cut to `max_prompt_length` tokens (its start for `keep_start`, its end for `keep_end`,
     the right choice for dialogue, where the last turn matters most);
  2. if still too long, both responses are cut to `max_length − max_prompt_length` tokens.

A ranking of K responses follows the same rules with "the longest of its K responses" for "the longer response",
so each response is cut exactly as it would be in a pair with the ranking's longest response.

So a response is never empty: it holds at least its EOS, and a cut leaves it `max_length − max_prompt_length`
≥ 1 tokens (`PairTokenizer` refuses limits without that room). Two different responses can become equal
token ids when cut; the data module reports such a pair (`prepare.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from transformers import PreTrainedTokenizerBase

from dpo_lightning.errors import ConfigError

TruncationMode = Literal["keep_start", "keep_end"]
TRUNCATION_MODES: tuple[str, ...] = ("keep_start", "keep_end")


@dataclass(frozen=True)
class TokenizedPair:
    """Token ids of one preference pair; responses end with EOS unless truncated."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]


@dataclass(frozen=True)
class TokenizedRanking:
    """Token ids of one ranking: a prompt and K ≥ 2 responses (each ending with EOS unless truncated), with the
    competition rank of each response (0 = best, ties share a rank; `data/rankings.py`)."""

    prompt_ids: list[int]
    response_ids: list[list[int]]
    ranks: list[int]


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
    protected_suffix: int = 0,
) -> tuple[TokenizedPair, Truncation]:
    """Apply the reference implementation's truncation rules to already tokenized parts (EOS included).

    `protected_suffix`: the prompt's last this-many tokens survive `keep_start` truncation (TL;DR's
    "\nTL;DR:"): the prompt becomes `prompt[:max_prompt_length − protected_suffix] + prompt[−protected_suffix:]`.
    """
    prompt_ids, (chosen_ids, rejected_ids), cut = truncate(
        prompt_ids,
        [chosen_ids, rejected_ids],
        max_length=max_length,
        max_prompt_length=max_prompt_length,
        truncation_mode=truncation_mode,
        protected_suffix=protected_suffix,
    )
    return TokenizedPair(prompt_ids, chosen_ids, rejected_ids), cut


def truncate(
    prompt_ids: list[int],
    responses: list[list[int]],
    *,
    max_length: int,
    max_prompt_length: int,
    truncation_mode: TruncationMode,
    protected_suffix: int = 0,
) -> tuple[list[int], list[list[int]], Truncation]:
    """`truncate_pair`'s rules for a prompt and any number of responses: (prompt, responses, what was cut)."""
    if truncation_mode not in TRUNCATION_MODES:
        raise ValueError(f"truncation_mode must be one of {TRUNCATION_MODES}, got {truncation_mode!r}")
    longest_response = max(len(response) for response in responses)
    cut_prompt = cut_responses = False
    if len(prompt_ids) + longest_response > max_length and len(prompt_ids) > max_prompt_length:
        cut_prompt = True
        if truncation_mode == "keep_end":
            prompt_ids = prompt_ids[-max_prompt_length:]
        else:
            kept = max_prompt_length - protected_suffix
            prompt_ids = prompt_ids[:kept] + prompt_ids[len(prompt_ids) - protected_suffix :]
    if len(prompt_ids) + longest_response > max_length:
        cut_responses = True
        response_budget = max_length - max_prompt_length
        responses = [response[:response_budget] for response in responses]
    return prompt_ids, responses, Truncation(cut_prompt, cut_responses)


class PairTokenizer:
    """Texts → (TokenizedPair, Truncation) (`rankings`: → (TokenizedRanking, Truncation)): encode without special
    tokens, append EOS to each response, truncate. A prompt ending with `prompt_suffix` is encoded as body +
    suffix, and the suffix is protected.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        *,
        max_length: int,
        max_prompt_length: int,
        truncation_mode: TruncationMode,
        prompt_suffix: str = "",
    ) -> None:
        if not 1 <= max_prompt_length < max_length:  # else a cut response could be empty (module docstring)
            raise ConfigError(
                "task.max_prompt_length", f"must be in [1, task.max_length={max_length}), got {max_prompt_length}"
            )
        self.tokenizer = tokenizer
        self.limits = {
            "max_length": max_length,
            "max_prompt_length": max_prompt_length,
            "truncation_mode": truncation_mode,
        }
        self.prompt_suffix = prompt_suffix
        self.suffix_ids = self._encode([prompt_suffix])[0] if prompt_suffix else []
        if len(self.suffix_ids) >= max_prompt_length:
            raise ConfigError(
                "task.prompt_suffix",
                f"is {len(self.suffix_ids)} tokens, which leaves no room in max_prompt_length={max_prompt_length}",
            )

    def _encode(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []

    def _prompts(self, prompts: list[str]) -> list[tuple[list[int], int]]:
        """Each prompt's ids and its protected suffix length: a prompt ending with `prompt_suffix` is encoded as
        body + suffix, so that the suffix's tokens do not depend on the text before it."""
        suffix = self.prompt_suffix
        has_suffix = [bool(suffix) and prompt.endswith(suffix) for prompt in prompts]
        bodies = [
            prompt[: len(prompt) - len(suffix)] if cut else prompt
            for prompt, cut in zip(prompts, has_suffix, strict=True)
        ]
        return [
            (body_ids + self.suffix_ids, len(self.suffix_ids)) if cut else (body_ids, 0)
            for body_ids, cut in zip(self._encode(bodies), has_suffix, strict=True)
        ]

    def __call__(
        self, prompts: list[str], chosen: list[str], rejected: list[str]
    ) -> list[tuple[TokenizedPair, Truncation]]:
        eos = self.tokenizer.eos_token_id
        return [
            truncate_pair(prompt_ids, [*chosen_ids, eos], [*rejected_ids, eos], protected_suffix=kept, **self.limits)
            for (prompt_ids, kept), chosen_ids, rejected_ids in zip(
                self._prompts(prompts), self._encode(chosen), self._encode(rejected), strict=True
            )
        ]

    def rankings(
        self, prompts: list[str], responses: list[list[str]], ranks: list[list[int]]
    ) -> list[tuple[TokenizedRanking, Truncation]]:
        """Rankings: each prompt with its K responses (texts) and their ranks."""
        eos = self.tokenizer.eos_token_id
        encoded = iter(self._encode([text for texts in responses for text in texts]))  # all responses, one call
        out = []
        for (prompt_ids, kept), texts, ranking_ranks in zip(self._prompts(prompts), responses, ranks, strict=True):
            response_ids = [[*next(encoded), eos] for _ in texts]
            prompt_ids, response_ids, cut = truncate(prompt_ids, response_ids, protected_suffix=kept, **self.limits)
            out.append((TokenizedRanking(prompt_ids, response_ids, list(ranking_ranks)), cut))
        return out
