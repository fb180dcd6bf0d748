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

With `group_by_post` the rows of a split become rankings instead (`data/rankings.py`), one per `post_id`, in the
order of each post's first row:

    prompt     as above
    responses  " " + the text of each distinct comment of the post (by c_root_id_A/B), in order of first appearance
    scores     their upvotes (score_A/B): higher is better; equal upvotes tie

This needs a whole split at once (map-style, not streaming). A grouped row's `row` is the post's first raw row.
Every raw row of the post is checked as a pair row is (texts, positive scores), and also against the post's
earlier rows: the same `history`, and for a comment seen before the same text and the same score (SHP states one
score per comment, so two are a contradiction, not something to average). The first raw row with a problem makes
the whole post a bad row reported at that raw row, with the pair row's problem (e.g. row 7, "score_B: expected a
positive number, got 0"); the post's other rows go with it, unreported. Neither `min_score_ratio` (a pairwise
filter; grouped, every score difference ranks) nor `labels` (the scores decide) applies to grouped rows.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import datasets

from dpo_lightning.data.rankings import scores_problem
from dpo_lightning.data.sources.base import POSITION, HubSource, as_text
from dpo_lightning.data.sources.files import JSON_ENCODED, UNREADABLE, UNREADABLE_ERROR, decode_json_columns
from dpo_lightning.errors import ConfigError, RowFiltered, RowProblem

DEFAULT_MIN_SCORE_RATIO = 2.0  # the reference implementation's
# Raw columns that grouping reads (`labels` is not among them: the scores rank the comments).
GROUPED_COLUMNS = (
    "post_id",
    "history",
    "human_ref_A",
    "human_ref_B",
    "score_A",
    "score_B",
    "c_root_id_A",
    "c_root_id_B",
)
POST_PROBLEM = "__post_problem__"  # column of a grouped row: the problem of the post's first bad raw row, or ""


def _score(row: dict[str, Any], field: str) -> float:
    """`row[field]`; a `RowProblem` naming `field` if it is not a positive number."""
    value = row[field]
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise RowProblem(f"{field}: expected a positive number, got {value!r}")
    return value


def _prompt(history: str) -> str:
    return "\n\nHuman: " + history + "\n\nAssistant:"


@dataclasses.dataclass
class _Post:
    """The rows of one post read so far: the raw row that names it, its history, its comments."""

    position: int
    history: str | None = None
    comments: dict[str, tuple[str, float, int]] = dataclasses.field(default_factory=dict)  # id → (text, score, raw row)
    problem: str = ""
    unreadable: tuple[str, str] = ("", "")  # a stand-in's (reason, error), for a post of one unreadable line

    def add(self, row: dict[str, Any], position: int) -> None:
        """Check one raw row of the post and add its comments; `RowProblem` naming the field if it is bad."""
        history = as_text(row["history"], "history")  # the pair rows' checks, in their order
        texts = [as_text(row[f"human_ref_{side}"], f"human_ref_{side}") for side in "AB"]
        scores = [float(_score(row, f"score_{side}")) for side in "AB"]
        comments = [as_text(row[f"c_root_id_{side}"], f"c_root_id_{side}") for side in "AB"]
        if comments[0] == comments[1]:
            raise RowProblem("c_root_id_B: the same comment as c_root_id_A")
        if self.history is not None and history != self.history:
            raise RowProblem(f"history: differs from that of row {self.position} (the same post_id)")
        self.history = history
        for side, comment, text, score in zip("AB", comments, texts, scores, strict=True):
            seen_text, seen_score, seen_at = self.comments.setdefault(comment, (text, score, position))
            if text != seen_text:
                raise RowProblem(f"human_ref_{side}: comment {comment} has another text in row {seen_at}")
            if score != seen_score:
                raise RowProblem(f"score_{side}: comment {comment} has another score ({seen_score:g}) in row {seen_at}")

    def as_row(self) -> dict[str, Any]:
        """The grouped raw row that `SHPSource.parse` reads."""
        usable = not self.problem and not self.unreadable[0]
        return {
            POSITION: self.position,
            "history": self.history if usable else None,
            "responses": [text for text, _, _ in self.comments.values()] if usable else None,
            "scores": [score for _, score, _ in self.comments.values()] if usable else None,
            POST_PROBLEM: self.problem,
            UNREADABLE: self.unreadable[0],
            UNREADABLE_ERROR: self.unreadable[1],
        }


def rows_by_post(rows: datasets.Dataset) -> datasets.Dataset:
    """One row per post (module docstring): POSITION, history, responses (texts), scores, POST_PROBLEM, and the
    stand-in columns (files.py). A row without a usable `post_id`, and a stand-in, is a post of its own."""
    columns = [c for c in (*GROUPED_COLUMNS, UNREADABLE, UNREADABLE_ERROR, JSON_ENCODED) if c in rows.column_names]
    posts: dict[Any, _Post] = {}
    position = 0
    for batch in rows.select_columns(columns).iter(batch_size=1000):
        for values in zip(*(batch[c] for c in columns), strict=True):
            row = decode_json_columns(dict(zip(columns, values, strict=True)))
            post_id = row["post_id"]
            if row.get(UNREADABLE) or not isinstance(post_id, str):
                post_id = (POSITION, position)  # a post of its own
            post = posts.setdefault(post_id, _Post(position))
            if row.get(UNREADABLE):
                post.unreadable = (row[UNREADABLE], row[UNREADABLE_ERROR])
            elif not post.problem:
                try:
                    as_text(row["post_id"], "post_id")  # a row without one is a bad post of its own
                    post.add(row, position)
                except RowProblem as error:
                    post.problem, post.position = str(error), position
            position += 1
    features = datasets.Features(
        {
            POSITION: datasets.Value("int64"),
            "history": datasets.Value("string"),
            "responses": datasets.List(datasets.Value("string")),
            "scores": datasets.List(datasets.Value("float64")),
            POST_PROBLEM: datasets.Value("string"),
            UNREADABLE: datasets.Value("string"),
            UNREADABLE_ERROR: datasets.Value("string"),
        }
    )
    return datasets.Dataset.from_list([post.as_row() for post in posts.values()], features=features)


class SHPSource(HubSource):
    """`stanfordnlp/SHP` rows → triples; pairs with a score ratio below `min_score_ratio` are filtered. With
    `group_by_post`, ranked rows: one per post, its comments ranked by their upvotes."""

    required_columns = ("history", "human_ref_A", "human_ref_B", "score_A", "score_B", "labels")
    text_columns = ("history", "human_ref_A", "human_ref_B", "post_id", "c_root_id_A", "c_root_id_B")

    def __init__(
        self,
        *args: Any,
        min_score_ratio: float = DEFAULT_MIN_SCORE_RATIO,
        group_by_post: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if not min_score_ratio >= 1:
            raise ConfigError("task.source.min_score_ratio", f"must be ≥ 1 (1 keeps every pair), got {min_score_ratio}")
        if group_by_post and min_score_ratio != DEFAULT_MIN_SCORE_RATIO:
            raise ConfigError(
                "task.source.min_score_ratio",
                f"filters pairs only; with task.source.group_by_post=true every score difference ranks (leave it at "
                f"{DEFAULT_MIN_SCORE_RATIO}), got {min_score_ratio}",
            )
        self.min_score_ratio = min_score_ratio
        self.group_by_post = group_by_post
        self.ranked = group_by_post
        if group_by_post:
            self.required_columns = ()  # the raw columns (GROUPED_COLUMNS) are checked before grouping, in `read`

    def read(self, split: str, streaming: bool) -> datasets.Dataset | datasets.IterableDataset:
        if not self.group_by_post:
            return super().read(split, streaming)
        if streaming:
            raise ConfigError(
                "task.source.group_by_post", "groups a whole split by post, so it needs task.streaming=false"
            )
        rows = super().read(split, streaming=False)
        self.check_columns(rows, self.origin(split), GROUPED_COLUMNS)
        return rows_by_post(rows)

    def parse(self, row: dict[str, Any]) -> dict[str, Any]:
        return self._parse_post(row) if self.group_by_post else self._parse_pair(row)

    def _parse_pair(self, row: dict[str, Any]) -> dict[str, Any]:
        prompt = _prompt(as_text(row["history"], "history"))
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

    def _parse_post(self, post: dict[str, Any]) -> dict[str, Any]:
        if post[POST_PROBLEM]:
            raise RowProblem(post[POST_PROBLEM])
        if problem := scores_problem(post["scores"], len(post["responses"])):
            raise RowProblem(problem)
        responses = [" " + text for text in post["responses"]]
        return {"prompt": _prompt(post["history"]), "responses": responses, "scores": post["scores"]}
