"""`task=ultrafeedback`: UltraFeedback, binarized (`HuggingFaceH4/ultrafeedback_binarized`), as in Zephyr.

Each prompt of UltraFeedback (Cui et al. 2023) was answered by four models and each answer rated by GPT-4;
the binarized version (Tunstall et al. 2023) pairs the answer with the highest mean rating ("chosen") with one
of the other three at random ("rejected"). Splits train_prefs / test_prefs; a row:

    prompt          "Write a haiku about autumn rain."
    prompt_id       sha256 of the prompt
    chosen          [{"content": "Write a haiku ...", "role": "user"}, {"content": "...", "role": "assistant"}]
    rejected        the same prompt messages, then the other answer
    messages        = chosen
    score_chosen    4.5    (GPT-4's mean rating of each answer)
    score_rejected  2.75

The data is conversational: the triple keeps messages (normalised to {"role", "content"}), split as TRL does,

    prompt   chosen[:-1]     (every message before the answer: a system message, earlier turns, the question)
    chosen   [chosen[-1]]
    rejected [rejected[-1]]

and the data module renders them with the tokenizer's chat template. A conversation of fewer than two
messages, or a rejected conversation whose prompt messages differ from the chosen one's, is a `RowProblem`.
"""

from __future__ import annotations

from typing import Any

from dpo_lightning.data.chat import Messages, as_messages
from dpo_lightning.data.sources.base import HubSource
from dpo_lightning.errors import RowProblem


def _conversation(row: dict[str, Any], field: str) -> Messages:
    """`row[field]` as {"role", "content"} messages: prompt messages and an answer, else a `RowProblem`."""
    messages = as_messages(row[field], field)
    if len(messages) < 2:
        raise RowProblem(f"{field}: expected prompt messages and an answer, got {len(messages)} message")
    return messages


class UltraFeedbackSource(HubSource):
    """`HuggingFaceH4/ultrafeedback_binarized` rows → message-list triples (prompt messages, answer, answer)."""

    required_columns = ("chosen", "rejected")
    conversational = True

    def parse(self, row: dict[str, Any]) -> dict[str, Any]:
        chosen, rejected = _conversation(row, "chosen"), _conversation(row, "rejected")
        if rejected[:-1] != chosen[:-1]:
            raise RowProblem("rejected: does not share the chosen conversation's prompt")
        return {"prompt": chosen[:-1], "chosen": chosen[-1:], "rejected": rejected[-1:]}
