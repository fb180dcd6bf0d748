"""`task=hh`: Anthropic's Helpful-Harmless dialogues (`Anthropic/hh-rlhf`), the DPO paper's dialogue task.

Each row holds two whole dialogues that share every turn but the last answer:

    chosen:   "\\n\\nHuman: How do I keep basil fresh?\\n\\nAssistant: Stand it in water like cut flowers."
    rejected: "\\n\\nHuman: How do I keep basil fresh?\\n\\nAssistant: Put it in the fridge."

As in the reference implementation (eric-mitchell/direct-preference-optimization, `preference_datasets.py`,
`extract_anthropic_prompt`), the prompt is the chosen dialogue up to and including its last
"\\n\\nAssistant:" (so multi-turn history stays in the prompt), and each response is the rest of its dialogue:

    prompt   "\\n\\nHuman: How do I keep basil fresh?\\n\\nAssistant:"
    chosen   " Stand it in water like cut flowers."       (responses keep their leading space)
    rejected " Put it in the fridge."

Where the reference implementation asserts (no "\\n\\nAssistant:" turn) or silently cuts the rejected dialogue
at the chosen prompt's length (a rejected dialogue with another prompt), a row here gets a `RowProblem`.
"""

from __future__ import annotations

from typing import Any

from dpo_lightning.data.sources.base import HubSource, as_text
from dpo_lightning.errors import RowProblem

ASSISTANT = "\n\nAssistant:"  # the marker of an assistant turn


class HHSource(HubSource):
    """`Anthropic/hh-rlhf` rows (columns chosen, rejected: whole dialogues) → prompt / response triples."""

    required_columns = ("chosen", "rejected")
    text_columns = ("chosen", "rejected")

    def parse(self, row: dict[str, Any]) -> dict[str, Any]:
        chosen, rejected = as_text(row["chosen"], "chosen"), as_text(row["rejected"], "rejected")
        end = chosen.rfind(ASSISTANT)
        if end == -1:
            raise RowProblem(f"chosen: no {ASSISTANT!r} turn")
        prompt = chosen[: end + len(ASSISTANT)]
        if not rejected.startswith(prompt):
            raise RowProblem(f"rejected: does not share the chosen dialogue's prompt (up to its last {ASSISTANT!r})")
        return {"prompt": prompt, "chosen": chosen[len(prompt) :], "rejected": rejected[len(prompt) :]}
