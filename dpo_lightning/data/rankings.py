"""Ranked preference data: K ≥ 2 responses to one prompt with a score each (higher is better).

A ranked source row holds `prompt`, `responses` [K] and `scores` [K] (see `sources/base.py`). From the scores:

    ranks      competition ranks, 0 = best: a response's rank is the number of responses scored strictly
               higher, so tied responses share a rank and the next rank skips (scores 9, 7, 7, 2 → 0, 1, 1, 3).
    pairs      (better, worse) response indices for the pairwise losses, one of RANKING_PAIRS:
                 all           every two responses with different scores (K(K−1)/2 without ties; the
                               reference implementation's choice for SHP and HH)
                 adjacent      each response against those of the next lower score level (K − 1 without ties)
                 best_vs_rest  the best-scored responses against every lower-scored one (K − 1 without ties)
                 best_vs_worst the best-scored responses against the worst-scored ones (1 without ties; online
                               and iterative DPO's usual pair of K samples)

Tie policy: equal scores state no preference. Tied responses never form a pair, and the Plackett–Luce loss
treats a tied group as unordered: the bottom group (the last rank, tied or not) adds nothing, since it comes
last in any order, and a tied group above it is drawn from the responses not ranked above it by Efron's
approximation (`loss.ties=efron`, the default) or Breslow's (`loss.ties=breslow`) (`losses/plackett_luce.py`).
A ranking needs two score levels at least: one whose responses all tie says nothing and is a bad row. Scores
are never invented: a missing, non-numeric or non-finite score is a bad row naming the `scores` field.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise
from typing import Any

RANKING_PAIRS: tuple[str, ...] = ("all", "adjacent", "best_vs_rest", "best_vs_worst")  # `data.ranking_pairs` values
RANKINGS: tuple[str, ...] = ("whole", "pairs")  # `data.rankings` values: rankings batched whole, or as pairs


def ranks_from_scores(scores: Sequence[float]) -> list[int]:
    """[K] competition ranks of `scores` (higher score, lower rank; ties share a rank): [9, 7, 7, 2] → [0, 1, 1, 3]."""
    return [sum(other > score for other in scores) for score in scores]


def scores_from_ranking(ranking: Sequence[int]) -> list[float]:
    """Scores of K responses from a ranking that lists response indices best first ([2, 0, 1]: response 2 is best):
    the response at place p scores K − p. The ranking must be a permutation of 0..K−1 (`ranking_problem`)."""
    scores = [0.0] * len(ranking)
    for place, response in enumerate(ranking):
        scores[response] = float(len(ranking) - place)
    return scores


def ranking_problem(ranking: Any, num_responses: int, field: str = "ranking") -> str:
    """'' if `ranking` lists each of the `num_responses` response indices once (best first), else the problem,
    e.g. 'ranking: not a permutation of 0..3 (got [0, 0, 1, 2])'."""
    if not isinstance(ranking, list | tuple) or not all(type(i) is int for i in ranking):
        return f"{field}: expected a list of response indices, got {ranking!r}"
    if len(ranking) != num_responses:
        return f"{field}: {len(ranking)} entries for {num_responses} responses"
    if sorted(ranking) != list(range(num_responses)):
        return f"{field}: not a permutation of 0..{num_responses - 1} (got {list(ranking)})"
    return ""


def scores_problem(scores: Any, num_responses: int, field: str = "scores") -> str:
    """'' if `scores` are `num_responses` finite numbers with at least two different values, else the problem."""
    if not isinstance(scores, list | tuple):
        return f"{field}: expected a list of numbers, got {type(scores).__name__}"
    if len(scores) != num_responses:
        return f"{field}: {len(scores)} scores for {num_responses} responses"
    for i, score in enumerate(scores):
        if isinstance(score, bool) or not isinstance(score, int | float):
            return f"{field}: score {i} is not a number ({score!r})"
        if not math.isfinite(score):
            return f"{field}: score {i} is not finite ({score!r})"
    if len(set(scores)) < 2:
        return f"{field}: every response has the same score, so the ranking states no preference"
    return ""


def ranking_pairs(ranks: Sequence[int], mode: str) -> list[tuple[int, int]]:
    """(better, worse) response indices of a ranking for `mode` (one of RANKING_PAIRS); tied responses never pair.

    Pairs come better response first in rank order, then worse response in rank order (ties in index order), so the
    same ranking gives the same pairs in every run.
    """
    if mode not in RANKING_PAIRS:
        raise ValueError(f"unknown ranking_pairs mode {mode!r}; expected one of {', '.join(RANKING_PAIRS)}")
    order = sorted(range(len(ranks)), key=lambda i: (ranks[i], i))
    levels = sorted(set(ranks))  # the distinct ranks, best first
    next_level = dict(pairwise(levels))
    pairs = []
    for better in order:
        for worse in order:
            if ranks[worse] <= ranks[better]:
                continue
            if mode == "adjacent" and ranks[worse] != next_level[ranks[better]]:
                continue
            if mode in ("best_vs_rest", "best_vs_worst") and ranks[better] != levels[0]:
                continue
            if mode == "best_vs_worst" and ranks[worse] != levels[-1]:
                continue
            pairs.append((better, worse))
    return pairs
