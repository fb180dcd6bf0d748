"""The checks every triple (and every ranking) passes, whatever its source: types, emptiness, role order for
conversations, and chosen ≠ rejected (no two responses of a ranking alike).

Sources shape rows into triples; this module decides whether a triple is usable. A problem reads
`<field>: <reason>`, so that an error can name dataset, split, row and field.
"""

from __future__ import annotations

from typing import Any

from dpo_lightning.data.chat import role_order_problem
from dpo_lightning.data.rankings import scores_problem
from dpo_lightning.data.sources.base import TRIPLE_COLUMNS

IDENTICAL = "chosen: identical to rejected"  # the same text, or the same messages: no preference to learn


def _value_problem(field: str, value: Any) -> str:
    if value is None:
        return f"{field}: missing"
    if isinstance(value, str):
        return "" if value.strip() else f"{field}: empty"
    if isinstance(value, list):
        if not value:
            return f"{field}: empty message list"
        if all(isinstance(m, dict) and isinstance(m.get("content"), str) and m.get("role") for m in value):
            empty = [i for i, message in enumerate(value) if not message["content"].strip()]
            return f"{field}: message {empty[0]} has empty content" if empty else ""
    return f"{field}: expected a string or a list of {{role, content}} messages, got {type(value).__name__}"


def triple_problem(prompt: Any, chosen: Any, rejected: Any) -> str:
    """'' if (prompt, chosen, rejected) is a usable triple, else its first problem, e.g. 'chosen: empty'."""
    values = (prompt, chosen, rejected)
    for field, value in zip(TRIPLE_COLUMNS, values, strict=True):
        if problem := _value_problem(field, value):
            return problem
    if len({isinstance(value, str) for value in values}) > 1:
        return "prompt: prompt, chosen and rejected must all be text or all be message lists"
    if isinstance(prompt, list):
        roles = role_order_problem(prompt, chosen, "chosen") or role_order_problem(prompt, rejected, "rejected")
        if roles:
            return roles
    return IDENTICAL if chosen == rejected else ""


def ranked_problem(prompt: Any, responses: Any, scores: Any) -> str:
    """'' if (prompt, responses, scores) is a usable ranking, else its first problem, naming a response by its
    index, e.g. 'responses[2]: empty' or 'responses[3]: identical to responses[0]'."""
    if problem := _value_problem("prompt", prompt):
        return problem
    if not isinstance(responses, list) or len(responses) < 2:
        found = f"{len(responses)}" if isinstance(responses, list) else type(responses).__name__
        return f"responses: expected a list of at least 2 responses, got {found}"
    for i, response in enumerate(responses):
        if problem := _value_problem(f"responses[{i}]", response):
            return problem
    if problem := scores_problem(scores, len(responses)):
        return problem
    if len({isinstance(value, str) for value in (prompt, *responses)}) > 1:
        return "prompt: prompt and responses must all be text or all be message lists"
    for i, response in enumerate(responses):
        if isinstance(prompt, list) and (roles := role_order_problem(prompt, response, f"responses[{i}]")):
            return roles
        if response in responses[:i]:
            return f"responses[{i}]: identical to responses[{responses.index(response)}]"
    return ""
