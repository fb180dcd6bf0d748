"""Labellers: scores from a reward, a judge's round robin by hand, and every failure counted, never dropped."""

from __future__ import annotations

import math
from itertools import combinations

from helpers import FakeChatServer

from dpo_lightning.eval.judges import Judge, LLMJudge, Verdict
from dpo_lightning.eval.labellers import JudgeLabeller, LLMRanker, RewardLabeller, parse_ranking
from dpo_lightning.eval.rewards import Reward, VaderReward, sentiment_reward


class LengthReward(Reward):
    """r = the completion's length; NaN for a completion that says "nan"."""

    def __call__(self, prompts, completions):
        return [math.nan if c == "nan" else float(len(c)) for c in completions]


def test_a_reward_labeller_scores_each_sample_and_counts_non_finite_rewards():
    labels = RewardLabeller(LengthReward()).label(["p", "q"], [["a", "bbb", "nan"], ["cc", "d", "eeee"]])
    assert labels.scores == [[1.0, 3.0, None], [2.0, 1.0, 4.0]]
    assert labels.counts == {"failed_scores": 1}
    assert labels.reasons == {"non-finite reward": 1}


def test_the_vader_labeller_scores_prompt_and_completion_together():
    prompts, samples = ["The film was"], [[" wonderful and moving.", " dull and awful."]]
    labels = RewardLabeller(VaderReward()).label(prompts, samples)
    assert labels.scores == [[sentiment_reward(prompts[0], sample) for sample in samples[0]]]
    assert labels.scores[0][0] > labels.scores[0][1]


class ScriptedJudge(Judge):
    """Decides by a table of (first, second) → outcome; records the comparisons it was asked."""

    def __init__(self, table):
        self.table, self.asked = table, []

    def compare(self, prompt, first, second):
        self.asked.append((prompt, first, second))
        return Verdict(*self.table[(first, second)])


def test_a_judge_labeller_scores_each_sample_by_its_share_of_wins_in_the_round_robin():
    table = {
        ("a", "b"): ("first",),
        ("a", "c"): ("tie",),
        ("b", "c"): ("failed", "timeout after 30 s"),
        ("x", "y"): ("second",),
    }
    judge = ScriptedJudge(table)
    labels = JudgeLabeller(judge).label(["p", "q"], [["a", "b", "c"], ["x", "y"]])
    # a: won vs b, tied vs c → 1.5 / 2; b: lost vs a, (vs c failed) → 0 / 1; c: tied vs a → 0.5 / 1
    assert labels.scores == [[0.75, 0.0, 0.5], [0.0, 1.0]]
    assert labels.counts == {"failed_judgements": 1, "tied_judgements": 1}
    assert labels.reasons == {"timeout after 30 s": 1}
    assert sorted(judge.asked) == sorted(
        [("p", f, s) for f, s in combinations("abc", 2)] + [("q", "x", "y")]
    )  # every two samples of a prompt, once


def test_a_sample_with_no_judged_comparison_has_no_score():
    judge = ScriptedJudge({("a", "b"): ("failed", "HTTP 500")})
    labels = JudgeLabeller(judge).label(["p"], [["a", "b"]])
    assert labels.scores == [[None, None]]
    assert labels.counts == {"failed_judgements": 1}


def test_an_llm_judge_that_times_out_or_answers_garbage_gives_counted_failures_not_scores():
    prompts = ["Say something"]
    samples = [["GOOD answer", "bad answer", "another bad one"]]
    # three comparisons: one answered, one garbage, one too slow for the timeout (no retry)
    with FakeChatServer(modes=["answer", "garbage", "slow"]) as server:
        judge = LLMJudge(server.url, "m", api_key_env=None, timeout_s=0.3, max_retries=0, concurrency=1)
        labels = JudgeLabeller(judge).label(prompts, samples)
        judge.close()
    assert labels.counts["failed_judgements"] == 2
    assert labels.reasons == {"answer has no final A or B": 1, "timeout after 0.3 s": 1}
    scored = [score for score in labels.scores[0] if score is not None]
    assert labels.scores[0][0] == 1.0 and len(scored) == 2  # GOOD won its one judged comparison


def test_an_llm_ranking_scores_samples_by_their_place_and_counts_failed_rankings():
    prompts = ["first prompt", "second prompt", "third prompt"]
    samples = [["bad one", "GOOD one", "bad two"], ["GOOD a", "bad b"], ["x", "y"]]
    with FakeChatServer(modes=["answer", "answer", "garbage"]) as server:
        ranker = LLMRanker(server.url, "m", api_key_env=None, max_retries=0, concurrency=1, seed=3)
        labels = ranker.label(prompts, samples)
        ranker.close()
    assert labels.scores[0][1] == 3.0 and sorted(labels.scores[0]) == [1.0, 2.0, 3.0]  # GOOD first of three
    assert labels.scores[1] == [2.0, 1.0]
    assert labels.scores[2] == [None, None]
    assert labels.counts == {"failed_judgements": 1} and labels.reasons == {
        "answer has no ranking of every response": 1
    }
    shown = [request["messages"][0]["content"] for request in server.requests]
    assert all("Response 1:" in text and "Ranking:" in text for text in shown)


def test_parse_ranking_accepts_only_a_ranking_of_every_response():
    assert parse_ranking("Comparison: …\nRanking: 2 > 3 > 1", 3) == [1, 2, 0]
    assert parse_ranking("**Ranking:** 3, 1, 2.", 3) == [2, 0, 1]
    assert parse_ranking("Ranking: 2 > 2 > 1", 3) is None  # not a permutation
    assert parse_ranking("Ranking: 1 > 2", 3) is None  # one left out
    assert parse_ranking("Response 2 is best.", 2) is None
