"""`task=ultrafeedback_ranked`: raw UltraFeedback (`openbmb/UltraFeedback`), each prompt's completions ranked.

Each of the 63,967 instructions of UltraFeedback (Cui et al. 2023) was answered by four models, and GPT-4 rated
every answer on four aspects, 1–5 or "N/A", and wrote a critique with an overall score. One split, `train`; a row:

    source             "evol_instruct" | "false_qa" | "flan" | "sharegpt" | "truthful_qa" | "ultrachat"
    instruction        "Write a haiku about autumn rain."
    models             the four models sampled for it
    completions        [{"model", "principle", "custom_system_prompt", "response",
                         "annotations": {"helpfulness":           {"Rating": "4", "Rationale", "Rationale For Rating",
                                                                   "Type": ["1", "2"]},
                                         "honesty":               {"Rating": "5", "Rationale"},
                                         "instruction_following": {"Rating": "N/A", "Rationale"},
                                         "truthfulness":          {"Rating", "Rationale", "Rationale For Rating",
                                                                   "Type"}},
                         "critique", "overall_score": 7.5, "fine-grained_score": 4.5}, …]
    correct_answers    reference answers (TruthfulQA, FLAN), else ["None"]
    incorrect_answers  the same for wrong answers

A row becomes one conversational ranking (`data/rankings.py`):

    prompt     [{"role": "user", "content": instruction}]  (the completion's `custom_system_prompt`, the principle
               it was generated under, is not part of the prompt: as in the binarized recipe)
    responses  [[{"role": "assistant", "content": response}], …] for the completions that have a score
    scores     `score`: "mean_rating" (default), the mean of a completion's numeric aspect ratings ("N/A" left out)
               — the binarized recipe's score (HuggingFaceH4/ultrafeedback_binarized) and the dataset's own
               `fine-grained_score` (openbmb's `fix_overall_score_issue.py`, `calculate_average_rating`) — or
               "overall_score", the critique's 1–10 score

A completion without a score (every rating "N/A" or missing; `overall_score` null) is left out of the ranking;
a row with fewer than two scored completions, or whose scores all tie, is a bad row naming `completions`, and
so is a rating that is neither a number nor "N/A".

Validation: the hub has only `train`, so unless `validation` has a split or a file of its own, every row whose
instruction hashes (SHA-256) below `val_fraction` is held out of `train` for validation: the same rows in every run
and process, map-style or streaming, spread over all sources, and a prompt repeated in the data never lands in both
splits. Held-out rows keep their `row` in `train`.
"""

from __future__ import annotations

import hashlib
import math
from functools import partial
from typing import Any

import datasets

from dpo_lightning.data.fingerprint import Versioned
from dpo_lightning.data.rankings import scores_problem
from dpo_lightning.data.sources.base import POSITION, HubSource, as_text
from dpo_lightning.data.sources.files import JSON_ENCODED, decode_json_columns
from dpo_lightning.errors import ConfigError, RowProblem

ASPECTS: tuple[str, ...] = ("helpfulness", "honesty", "instruction_following", "truthfulness")
SCORES: tuple[str, ...] = ("mean_rating", "overall_score")  # `task.source.score` values
NOT_RATED = (None, "N/A")  # an aspect rating that states no rating


def _number(value: Any, field: str) -> float:
    """`value` (a number, or a string of one, as the ratings are) as a finite float; else `RowProblem`."""
    try:
        number = float(value) if isinstance(value, str) else value
    except ValueError:
        number = None
    if isinstance(number, bool) or not isinstance(number, int | float) or not math.isfinite(number):
        raise RowProblem(f"{field}: expected a number, got {value!r}")
    return float(number)


def _record(value: Any, field: str) -> dict[str, Any]:
    """`value` if it is a record, {} if it is missing; else `RowProblem` naming `field`."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RowProblem(f"{field}: expected a record, got {type(value).__name__}")
    return value


def mean_rating(completion: dict[str, Any], field: str) -> float | None:
    """The mean of a completion's numeric aspect ratings; None if it has none (all "N/A" or missing)."""
    annotations = _record(completion.get("annotations"), f"{field}.annotations")
    ratings = []
    for aspect in ASPECTS:
        rating = _record(annotations.get(aspect), f"{field}.annotations.{aspect}").get("Rating")
        if rating not in NOT_RATED:
            ratings.append(_number(rating, f"{field}.annotations.{aspect}.Rating"))
    return sum(ratings) / len(ratings) if ratings else None


def overall_score(completion: dict[str, Any], field: str) -> float | None:
    """The critique's overall score; None if it has none."""
    score = completion.get("overall_score")
    return None if score is None else _number(score, f"{field}.overall_score")


def held_out(instruction: Any, fraction: float) -> bool:
    """Whether a row with `instruction` is a validation row: its SHA-256 read as a number in [0, 1) is below
    `fraction`. A row without a text instruction stays in train, where it is reported."""
    if not isinstance(instruction, str):
        return False
    digest = hashlib.sha256(instruction.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def _in_split(instruction: Any, encoded: list[str] | None = None, *, validation: bool, fraction: float) -> bool:
    """Whether a row belongs to the split; `encoded`: the columns a JSON Lines copy holds JSON-encoded (files.py)."""
    instruction = decode_json_columns({"instruction": instruction, JSON_ENCODED: encoded})["instruction"]
    return held_out(instruction, fraction) == validation


def _with_position(row: dict[str, Any], index: int) -> dict[str, int]:
    return {POSITION: index}


class UltraFeedbackRankedSource(HubSource):
    """`openbmb/UltraFeedback` rows → conversational rankings of their scored completions (module docstring)."""

    required_columns = ("instruction", "completions")
    text_columns = ("instruction",)
    conversational = True
    ranked = True

    def __init__(self, *args: Any, score: str = "mean_rating", val_fraction: float = 0.02, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if score not in SCORES:
            raise ConfigError("task.source.score", f"must be one of {', '.join(SCORES)}, got {score!r}")
        if not 0 < val_fraction < 1:
            raise ConfigError("task.source.val_fraction", f"must be in (0, 1), got {val_fraction}")
        self.score, self.val_fraction = score, val_fraction
        self.holds_out = "validation" not in self.splits and "validation" not in self.data_files

    def origin(self, split: str) -> str:
        if self.holds_out and split == "validation":
            return f"{super().origin('train')}, held-out validation rows"
        return super().origin("train" if self.holds_out else split)

    def read(self, split: str, streaming: bool) -> datasets.Dataset | datasets.IterableDataset:
        if not self.holds_out:
            return super().read(split, streaming)
        rows = super().read("train", streaming)
        keep = partial(_in_split, validation=split == "validation", fraction=self.val_fraction)
        if isinstance(rows, datasets.Dataset):  # hashes only the instruction column
            self.check_columns(rows, self.origin(split))
            columns = [c for c in ("instruction", JSON_ENCODED) if c in rows.column_names]
            return rows.add_column(POSITION, range(len(rows))).filter(Versioned(keep), input_columns=columns)
        return rows.map(_with_position, with_indices=True).filter(
            lambda row: keep(row.get("instruction"), row.get(JSON_ENCODED))
        )

    def parse(self, row: dict[str, Any]) -> dict[str, Any]:
        prompt = [{"role": "user", "content": as_text(row["instruction"], "instruction")}]
        completions = row["completions"]
        if not isinstance(completions, list):
            raise RowProblem(f"completions: expected a list, got {type(completions).__name__}")
        score_of = mean_rating if self.score == "mean_rating" else overall_score
        responses, scores = [], []
        for index, completion in enumerate(completions):
            field = f"completions[{index}]"
            score = score_of(_record(completion, field), field)
            if score is None:  # not scored: not ranked
                continue
            response = as_text(completion.get("response"), f"{field}.response")
            responses.append([{"role": "assistant", "content": response}])
            scores.append(score)
        if len(responses) < 2:
            raise RowProblem(
                f"completions: {len(responses)} of {len(completions)} have a score ({self.score}); a ranking needs 2"
            )
        if problem := scores_problem(scores, len(responses), "completions"):
            raise RowProblem(problem)
        return {"prompt": prompt, "responses": responses, "scores": scores}
