"""Truncation follows the reference implementation's rules."""

import pytest

from dpo_lightning.data.tokenize import PairTokenizer, TokenizeSettings, truncate_pair
from dpo_lightning.errors import ConfigError
from dpo_lightning.models.tiny_tokenizer import load_tiny_tokenizer

PROMPT = list(range(100, 120))  # 20 tokens
EOS = 1


def _cut(prompt, chosen, rejected, mode="keep_start", max_length=32, max_prompt_length=16):
    return truncate_pair(
        prompt,
        chosen,
        rejected,
        max_length=max_length,
        max_prompt_length=max_prompt_length,
        truncation_mode=mode,
    )


def test_short_pair_is_untouched():
    pair, cut = _cut(PROMPT[:5], [7, 8, EOS], [9, EOS])
    assert (pair.prompt_ids, pair.chosen_ids, pair.rejected_ids) == (PROMPT[:5], [7, 8, EOS], [9, EOS])
    assert not cut.prompt and not cut.responses


def test_long_prompt_keep_start_and_keep_end():
    chosen, rejected = [7] * 15 + [EOS], [9, EOS]  # 20 + 16 > 32 → cut prompt to 16
    start, cut = _cut(PROMPT, chosen, rejected, "keep_start")
    assert start.prompt_ids == PROMPT[:16] and start.chosen_ids == chosen and cut.prompt and not cut.responses
    end, _ = _cut(PROMPT, chosen, rejected, "keep_end")
    assert end.prompt_ids == PROMPT[-16:] and end.rejected_ids == rejected


def test_long_responses_are_cut_to_the_remaining_budget():
    chosen, rejected = [7] * 30 + [EOS], [9] * 20 + [EOS]
    pair, cut = _cut(PROMPT, chosen, rejected, "keep_end")
    assert pair.prompt_ids == PROMPT[-16:]
    assert pair.chosen_ids == [7] * 16 and pair.rejected_ids == [9] * 16  # 32 − 16, EOS lost as in the reference
    assert cut.prompt and cut.responses
    assert len(pair.prompt_ids) + len(pair.chosen_ids) <= 32


def test_short_prompt_long_response_cuts_only_the_response():
    pair, cut = _cut(PROMPT[:4], [7] * 40 + [EOS], [9, EOS])
    assert pair.prompt_ids == PROMPT[:4] and pair.chosen_ids == [7] * 16 and pair.rejected_ids == [9, EOS]
    assert not cut.prompt and cut.responses


def test_rejects_unknown_mode():
    with pytest.raises(ValueError, match="truncation_mode"):
        _cut(PROMPT, [1], [1], mode="middle")


def test_keep_start_keeps_a_protected_suffix():
    chosen = [7] * 20 + [EOS]  # 20 + 21 > 32 → the prompt is cut to 16 tokens
    pair, cut = truncate_pair(
        PROMPT,
        chosen,
        [9, EOS],
        max_length=32,
        max_prompt_length=16,
        truncation_mode="keep_start",
        protected_suffix=3,
    )
    assert pair.prompt_ids == PROMPT[:13] + PROMPT[-3:] and cut.prompt


def test_pair_tokenizer_encodes_the_suffix_apart_and_keeps_it():
    tokenizer = load_tiny_tokenizer()
    suffix = "\nTL;DR:"
    pairs = PairTokenizer(
        tokenizer,
        TokenizeSettings(max_length=40, max_prompt_length=24, truncation_mode="keep_start", prompt_suffix=suffix),
    )
    post = "POST: " + "the acting was truly wonderful and the ending felt charming " * 20
    (long, long_cut), (short, short_cut) = pairs([post + suffix, "POST: short" + suffix], [" good"] * 2, [" bad"] * 2)
    assert long_cut.prompt and len(long.prompt_ids) == 24
    assert tokenizer.decode(long.prompt_ids).startswith("POST: the acting")
    assert tokenizer.decode(long.prompt_ids).endswith(suffix)
    assert not short_cut.prompt and tokenizer.decode(short.prompt_ids) == "POST: short" + suffix
    assert short.chosen_ids == [*tokenizer(" good", add_special_tokens=False).input_ids, tokenizer.eos_token_id]


def test_a_suffix_that_fills_the_prompt_budget_is_a_config_error():
    with pytest.raises(ConfigError, match=r"^task\.tokenize\.prompt_suffix: is \d+ tokens"):
        PairTokenizer(
            load_tiny_tokenizer(),
            TokenizeSettings(max_length=8, max_prompt_length=2, truncation_mode="keep_start", prompt_suffix="\nTL;DR:"),
        )
