"""`task=shp`: the Stanford Human Preferences dataset (`stanfordnlp/SHP`), Reddit answers ranked by upvotes.

A row is a Reddit post and two top-level comments on it, A and B (columns post_id, domain, upvote_ratio,
history, c_root_id_A/B, created_at_utc_A/B, score_A/B, human_ref_A/B, labels, seconds_difference,
score_ratio). `labels` is 1 when A is preferred (it was written later than B yet has more upvotes), else 0.

Rows become triples exactly as in the reference implementation (eric-mitchell/direct-preference-optimization,
`preference_datasets.py`, `get_shp`):

    prompt   "\\n\\nHuman: " + history + "\\n\\nAssistant:"
    chosen   " " + human_ref_A if labels == 1 else " " + human_ref_B
    rejected the other comment, also with a leading space

and pairs whose score ratio max(score_A / score_B, score_B / score_A) is below `min_score_ratio` (2 there)
are left out (`RowFiltered`): a small upvote margin says little about which answer people preferred. The
ratio is computed from the scores, as there, not read from the `score_ratio` column. Checks follow the
reference implementation's order: texts, scores, ratio, then `labels` (read only for pairs that are kept).
"""

from __future__ import annotations

from typing import Any

from dpo_lightning.data.sources.base import HubSource, RowFiltered, RowProblem, as_text
from dpo_lightning.errors import ConfigError


def _score(row: dict[str, Any], field: str) -> float:
    """`row[field]`; a `RowProblem` naming `field` if it is not a positive number."""
    value = row[field]
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise RowProblem(f"{field}: expected a positive number, got {value!r}")
    return value


class SHPSource(HubSource):
    """`stanfordnlp/SHP` rows → triples; pairs with a score ratio below `min_score_ratio` are filtered."""

    required_columns = ("history", "human_ref_A", "human_ref_B", "score_A", "score_B", "labels")

    def __init__(self, *args: Any, min_score_ratio: float = 2.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not min_score_ratio >= 1:
            raise ConfigError("task.min_score_ratio", f"must be ≥ 1 (1 keeps every pair), got {min_score_ratio}")
        self.min_score_ratio = min_score_ratio

    def parse(self, row: dict[str, Any]) -> dict[str, Any]:
        prompt = "\n\nHuman: " + as_text(row["history"], "history") + "\n\nAssistant:"
        response_a, response_b = (
            " " + as_text(row["human_ref_A"], "human_ref_A"),
            " " + as_text(row["human_ref_B"], "human_ref_B"),
        )
        score_a, score_b = _score(row, "score_A"), _score(row, "score_B")
        if max(score_a / score_b, score_b / score_a) < self.min_score_ratio:
            raise RowFiltered(f"score ratio < {self.min_score_ratio}")
        labels = row["labels"]
        if type(labels) is not int or labels not in (0, 1):
            raise RowProblem(f"labels: expected 0 or 1, got {labels!r}")
        chosen, rejected = (response_a, response_b) if labels == 1 else (response_b, response_a)
        return {"prompt": prompt, "chosen": chosen, "rejected": rejected}
