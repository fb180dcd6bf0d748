"""Truncation follows the reference implementation's rules."""

import pytest

from dpo_lightning.data.tokenize import truncate_pair

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
