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

Data text stays text. A special token's text inside data (`<|eos|>`, `</s>`, `<|im_start|>`, … — whatever the
tokenizer marks special) is encoded as ordinary text, never as that token, so no row can end a response early or
forge a chat turn: a text (`str`) is encoded with the tokenizer's `split_special_tokens=True`; a conversation
rendered with the chat template (`Rendered`, from `chat.render`) keeps the template's own markup as special tokens,
and only the special-token texts that came from its messages are encoded as text. Text without special-token
texts gets exactly the ids it always had. `task.tokenize.prompt_suffix` is matched against data prompts, so it is data
text too, encoded like the prompt it ends.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from transformers import PreTrainedTokenizerBase

from dpo_lightning.errors import ConfigError

TruncationMode = Literal["keep_start", "keep_end"]
TRUNCATION_MODES: tuple[str, ...] = ("keep_start", "keep_end")


@dataclass(frozen=True)
class TokenizeSettings:
    """How a task's text becomes tokens (`task.tokenize`): the length limits and what truncation keeps.

    A pair longer than `max_length` tokens (prompt + longer response, EOS included) has its prompt cut to
    `max_prompt_length` (its start kept with `keep_start`, its end with `keep_end`), then its responses to the
    room left; `prompt_suffix` is text every prompt ends with that truncation keeps (TL;DR's "\nTL;DR:").
    """

    max_length: int = 512
    max_prompt_length: int = 256
    truncation_mode: str = "keep_start"
    prompt_suffix: str = ""

    def __post_init__(self) -> None:
        if self.max_length < 2:
            raise ConfigError("task.tokenize.max_length", f"must be ≥ 2, got {self.max_length}")
        if not 1 <= self.max_prompt_length < self.max_length:  # else a cut response could be empty (module docstring)
            raise ConfigError(
                "task.tokenize.max_prompt_length",
                f"must be in [1, task.tokenize.max_length={self.max_length}), got {self.max_prompt_length}",
            )
        if self.truncation_mode not in TRUNCATION_MODES:
            raise ConfigError(
                "task.tokenize.truncation_mode",
                f"must be one of {', '.join(TRUNCATION_MODES)}, got {self.truncation_mode!r}",
            )


@dataclass(frozen=True)
class Rendered:
    """A conversation as the chat template rendered it: its special-token texts are the template's markup (encoded
    as special tokens), except those at the `forged` character spans [(start, end)], which came from the messages'
    content (encoded as text)."""

    text: str
    forged: tuple[tuple[int, int], ...] = ()

    def cut(self, at: int) -> tuple[Rendered, Rendered]:
        """(text[:at], text[at:]), each with the forged spans that lie wholly in it (a span cut in two is no
        special token's text any more)."""
        head = tuple((start, end) for start, end in self.forged if end <= at)
        tail = tuple((start - at, end - at) for start, end in self.forged if start >= at)
        return Rendered(self.text[:at], head), Rendered(self.text[at:], tail)


Text = str | Rendered  # data text, or a rendered conversation


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
    """Texts → (TokenizedPair, Truncation) (`rankings`: → (TokenizedRanking, Truncation)): encode without adding
    special tokens (and data text as text: module docstring), append EOS to each response, truncate. A prompt ending
    with `prompt_suffix` is encoded as body + suffix, and the suffix is protected.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, settings: TokenizeSettings) -> None:
        self.tokenizer = tokenizer
        self.settings = settings
        # The special tokens: the added tokens marked special, those that `split_special_tokens` encodes as text.
        special = {i: token.content for i, token in tokenizer.added_tokens_decoder.items() if token.special}
        self.special_ids = set(special)
        # Any special token's text, the longest first (it wins over a token it contains); nothing if there are none.
        texts = sorted(special.values(), key=len, reverse=True)
        self.specials = re.compile("|".join(re.escape(text) for text in texts) or "(?!)")
        self.newline_ids = self._plain(["\n"])[0]  # what `_inner_text` encodes a text after
        self.limits = {
            "max_length": settings.max_length,
            "max_prompt_length": settings.max_prompt_length,
            "truncation_mode": settings.truncation_mode,
        }
        self.prompt_suffix = settings.prompt_suffix
        suffix_length = len(self._encode([self.prompt_suffix])[0]) if self.prompt_suffix else 0
        if suffix_length >= settings.max_prompt_length:
            raise ConfigError(
                "task.tokenize.prompt_suffix",
                f"is {suffix_length} tokens, which leaves no room in max_prompt_length={settings.max_prompt_length}",
            )

    def has_special_text(self, text: Text) -> bool:
        """Whether data text holds a special token's text (which it encodes as text): anywhere in a text, in the
        messages of a rendered conversation."""
        return bool(text.forged) if isinstance(text, Rendered) else self.specials.search(text) is not None

    def _encode(self, texts: list[Text]) -> list[list[int]]:
        """[len(texts)] token ids of each text (module docstring): a text with special tokens split, a rendered
        conversation with its template's special tokens, its forged ones replaced by their text's ids."""
        ids: list[list[int]] = [[] for _ in texts]
        plain = [i for i, text in enumerate(texts) if isinstance(text, str)]
        for i, encoded in zip(plain, self._plain([texts[i] for i in plain]), strict=True):
            ids[i] = encoded
        rendered = [i for i, text in enumerate(texts) if isinstance(text, Rendered)]
        if rendered:
            forged = any(texts[i].forged for i in rendered)  # offsets only where needed: not every tokenizer has them
            if forged and not self.tokenizer.is_fast:
                raise ConfigError(
                    "model.tokenizer",
                    "is a Python (slow) tokenizer, without the character offsets that keep a special token's text in "
                    "a message as text; use a fast one",
                )
            encoded = self.tokenizer(
                [texts[i].text for i in rendered],
                add_special_tokens=False,
                split_special_tokens=False,
                return_offsets_mapping=forged,
            )
            for k, i in enumerate(rendered):
                ids[i] = encoded["input_ids"][k]
                if texts[i].forged:
                    ids[i] = self._forged_as_text(ids[i], encoded["offset_mapping"][k], texts[i])
        return ids

    def _plain(self, texts: list[str]) -> list[list[int]]:
        """[len(texts)] ids of each text as plain text: special-token texts encoded like any other text."""
        return self.tokenizer(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"] if texts else []

    def _forged_as_text(self, ids: list[int], offsets: list[tuple[int, int]], text: Rendered) -> list[int]:
        """`ids` [T] of `text` (character `offsets` [T]), each special token from a forged span replaced by the ids
        of its text. The ids around it stay as they are: the tokenizer splits the text at special tokens anyway."""
        out: list[int] = []
        for token, (start, end) in zip(ids, offsets, strict=True):
            if token in self.special_ids and any(a < end and start < b for a, b in text.forged):
                out += self._inner_text(text.text[start:end])
            else:
                out.append(token)
        return out

    def _inner_text(self, text: str) -> list[int]:
        """The plain-text ids of `text` inside a longer text. At the start of a text a SentencePiece-style tokenizer
        adds a word-start marker ("▁") that does not belong there, so `text` is encoded after a newline whose ids are
        then dropped (as transformers' `sanitize_control_tokens` does); on its own if the newline merges with it."""
        after_newline = self._plain(["\n" + text])[0]
        if after_newline[: len(self.newline_ids)] == self.newline_ids:
            return after_newline[len(self.newline_ids) :]
        return self._plain([text])[0]

    def prompt_ids(self, prompts: list[Text]) -> list[tuple[list[int], int]]:
        """Each prompt's ids and its protected suffix length: a prompt ending with `prompt_suffix` is encoded as
        body + suffix, so that the suffix's tokens do not depend on the text before it."""
        suffix = self.prompt_suffix
        parts: list[tuple[Text, Text | None]] = []  # (body, suffix or None)
        for prompt in prompts:
            text = prompt.text if isinstance(prompt, Rendered) else prompt
            if not (suffix and text.endswith(suffix)):
                parts.append((prompt, None))
            elif isinstance(prompt, Rendered):
                parts.append(prompt.cut(len(text) - len(suffix)))
            else:
                parts.append((prompt[: len(text) - len(suffix)], suffix))
        suffixes = iter(self._encode([tail for _, tail in parts if tail is not None]))
        out = []
        for body_ids, (_, tail) in zip(self._encode([body for body, _ in parts]), parts, strict=True):
            tail_ids = next(suffixes) if tail is not None else []
            out.append((body_ids + tail_ids, len(tail_ids)))
        return out

    def __call__(
        self, prompts: list[Text], chosen: list[Text], rejected: list[Text]
    ) -> list[tuple[TokenizedPair, Truncation]]:
        eos = self.tokenizer.eos_token_id
        return [
            truncate_pair(prompt_ids, [*chosen_ids, eos], [*rejected_ids, eos], protected_suffix=kept, **self.limits)
            for (prompt_ids, kept), chosen_ids, rejected_ids in zip(
                self.prompt_ids(prompts), self._encode(chosen), self._encode(rejected), strict=True
            )
        ]

    def rankings(
        self, prompts: list[Text], responses: list[list[Text]], ranks: list[list[int]]
    ) -> list[tuple[TokenizedRanking, Truncation]]:
        """Rankings: each prompt with its K responses (texts) and their ranks."""
        eos = self.tokenizer.eos_token_id
        encoded = iter(self._encode([text for texts in responses for text in texts]))  # all responses, one call
        out = []
        for (prompt_ids, kept), texts, ranking_ranks in zip(self.prompt_ids(prompts), responses, ranks, strict=True):
            response_ids = [[*next(encoded), eos] for _ in texts]
            prompt_ids, response_ids, cut = truncate(prompt_ids, response_ids, protected_suffix=kept, **self.limits)
            out.append((TokenizedRanking(prompt_ids, response_ids, list(ranking_ranks)), cut))
        return out
