"""Labellers: rank a prompt's K samples — the one interface to a task reward, a reward model or a judge.

    prompts [P] + samples [P, K] (texts) ─► Labeller.label ─► Labels: scores [P, K] (None: could not be scored)

A higher score is a better sample; equal scores state no preference. What ranks them:

    RewardLabeller   any `eval.rewards.Reward` scores each sample: the task's ground truth (`vader`,
                     `classifier`) or a trained reward model (`ClassifierReward` with `positive_label: null`).
                     A non-finite score is a failed label, never a number.
    JudgeLabeller    a pairwise judge (`eval.judges`: the reward-model judge, an LLM judge) compares every two
                     samples of a prompt, K(K−1)/2 comparisons; a sample's score is its share of the comparisons it
                     won, a tie counting half:  score_k = (wins_k + ties_k / 2) / judged_k.
                     A failed comparison (timeout, an answer that names neither) is counted and leaves that pair out
                     of both samples' shares; a sample none of whose comparisons was judged has no score (None).
    LLMRanker        listwise: an LLM sees all K samples of a prompt at once (numbered in a seeded random order) and
                     answers with a ranking, best first; place p of K scores K − p. One request per prompt; a failed
                     request or an answer that is not a ranking of every sample is a counted failure (no scores).

Nothing is dropped silently: `Labels.counts` holds the failed scores and judgements (with their reasons) and the
tied comparisons; the rollout counts what becomes of the samples (`online/rollouts.py`).
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

from dpo_lightning.eval.judges import ChatClient, Judge, check_template
from dpo_lightning.eval.rewards import Reward


@dataclass
class Labels:
    """Scores of P prompts' samples, [P, K] (None: that sample could not be scored), and what happened on the way:
    `counts` of failed scores, failed judgements, tied judgements; `reasons` of the failures."""

    scores: list[list[float | None]]
    counts: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)


class Labeller(ABC):
    """Ranks each prompt's samples (module docstring)."""

    name: str = ""

    @abstractmethod
    def label(self, prompts: list[str], samples: list[list[str]]) -> Labels:
        """Scores of `samples` [P, K] (completion texts) of `prompts` [P]."""


class RewardLabeller(Labeller):
    """Scores every sample with a reward function r(x, y) (its texts scored in one batch)."""

    name = "reward"

    def __init__(self, reward: Reward) -> None:
        self.reward = reward

    def label(self, prompts: list[str], samples: list[list[str]]) -> Labels:
        flat_prompts = [prompt for prompt, group in zip(prompts, samples, strict=True) for _ in group]
        flat = self.reward(flat_prompts, [sample for group in samples for sample in group])
        labels = Labels([])
        start = 0
        for group in samples:
            scores = [float(score) for score in flat[start : start + len(group)]]
            start += len(group)
            failed = [not math.isfinite(score) for score in scores]
            if any(failed):
                labels.counts["failed_scores"] += sum(failed)
                labels.reasons["non-finite reward"] += sum(failed)
            labels.scores.append([None if bad else score for score, bad in zip(scores, failed, strict=True)])
        return labels


class JudgeLabeller(Labeller):
    """Scores samples by a pairwise judge's round robin (module docstring); one `compare_many` call for all the
    comparisons of a step, so a judge that batches (reward model) or runs requests concurrently (LLM) can."""

    name = "judge"

    def __init__(self, judge: Judge) -> None:
        self.judge = judge

    def label(self, prompts: list[str], samples: list[list[str]]) -> Labels:
        matches = [(p, i, j) for p, group in enumerate(samples) for i, j in combinations(range(len(group)), 2)]
        verdicts = self.judge.compare_many(
            [prompts[p] for p, _, _ in matches],
            [samples[p][i] for p, i, _ in matches],
            [samples[p][j] for p, _, j in matches],
        )
        points = [[0.0] * len(group) for group in samples]
        judged = [[0] * len(group) for group in samples]
        labels = Labels([])
        for (p, i, j), verdict in zip(matches, verdicts, strict=True):
            if verdict.outcome == "failed":
                labels.counts["failed_judgements"] += 1
                labels.reasons[verdict.reason or "failed"] += 1
                continue
            if verdict.outcome == "tie":
                labels.counts["tied_judgements"] += 1
            judged[p][i] += 1
            judged[p][j] += 1
            won_i = {"first": 1.0, "second": 0.0, "tie": 0.5}[verdict.outcome]
            points[p][i] += won_i
            points[p][j] += 1.0 - won_i
        for p, group in enumerate(samples):
            labels.scores.append([points[p][k] / judged[p][k] if judged[p][k] else None for k in range(len(group))])
        return labels


# Modelled on the pairwise win-rate prompt (judges.DEFAULT_TEMPLATE), for K responses at once.
DEFAULT_RANKING_TEMPLATE = """For the following query to a chatbot, rank the {count} responses from most to least \
helpful.

Query: {prompt}

{responses}

FIRST provide a one-sentence comparison of the responses. SECOND, on a new line, state only the ranking: the \
response numbers from most to least helpful, separated by ">". Your response should use the format:
Comparison: <one-sentence comparison>
Ranking: <e.g. 2 > 3 > 1>"""
RANKING_FIELDS = {"prompt", "responses", "count"}
_RANKING_LINE = re.compile(r"^(?:[^:\n]*:)?[\s*`\"']*(\d+(?:\s*[>,]\s*\d+)+)[\s*`\"'.]*$")


def parse_ranking(answer: str, count: int) -> list[int] | None:
    """The 0-based response indices, best first, that the answer's last non-empty line ranks ("Ranking: 2 > 3 > 1"
    → [1, 2, 0]), or None unless it is a ranking of exactly the `count` responses."""
    lines = [line.strip() for line in answer.strip().splitlines() if line.strip()]
    match = _RANKING_LINE.match(lines[-1]) if lines else None
    if match is None:
        return None
    ranking = [int(number) - 1 for number in re.split(r"\s*[>,]\s*", match.group(1))]
    return ranking if sorted(ranking) == list(range(count)) else None


class LLMRanker(ChatClient, Labeller):
    """Listwise labelling by an LLM behind an OpenAI-compatible endpoint (module docstring; `ChatClient` for the
    connection, retries and the API key). The responses are shown numbered in an order drawn from
    `random.Random(seed)` for each prompt (position-bias control), drawn in input order, so results do not depend
    on `concurrency`.

    Args:
        url: the API base, e.g. `https://api.openai.com/v1` or `http://localhost:8000/v1`.
        model: the model name sent with each request.
        template: the ranking prompt, with `{prompt}`, `{responses}` (the numbered responses) and `{count}`; None:
            `DEFAULT_RANKING_TEMPLATE`.
        **client: `ChatClient`'s other arguments (api_key_env, timeout_s, max_retries, seed, max_tokens, concurrency,
            retry_backoff_s), as `eval.judges.LLMJudge` takes them.
    """

    name = "llm_ranking"

    def __init__(self, url: str, model: str, template: str | None = None, **client: Any) -> None:
        template = DEFAULT_RANKING_TEMPLATE if template is None else template
        check_template(template, RANKING_FIELDS, "algorithm.labeller.template")
        super().__init__(url, model, key="algorithm.labeller", **client)
        self.template = template

    def label(self, prompts: list[str], samples: list[list[str]]) -> Labels:
        orders = [self._rng.sample(range(len(group)), len(group)) for group in samples]  # shown k-th: group[order[k]]
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            results = list(pool.map(self._rank, prompts, samples, orders))
        labels = Labels([])
        for group, (scores, reason) in zip(samples, results, strict=True):
            if scores is None:
                labels.counts["failed_judgements"] += 1
                labels.reasons[reason] += 1
            labels.scores.append(scores if scores is not None else [None] * len(group))
        return labels

    def _rank(self, prompt: str, group: list[str], order: list[int]) -> tuple[list[float] | None, str]:
        shown = "\n\n".join(f"Response {k + 1}:\n{group[index]}" for k, index in enumerate(order))
        answer, failure = self.reply(self.template.format(prompt=prompt, responses=shown, count=len(group)))
        if answer is None:
            return None, failure
        ranking = parse_ranking(answer, len(group))
        if ranking is None:
            return None, "answer has no ranking of every response"
        scores = [0.0] * len(group)
        for place, shown_index in enumerate(ranking):
            scores[order[shown_index]] = float(len(group) - place)
        return scores, ""
