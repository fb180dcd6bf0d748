"""Rollouts: the policy's own samples, labelled, ranked; seeded draws; every skipped sample counted."""

from __future__ import annotations

import pytest
from helpers import random_pairs, tiny_causal_lm

from dpo_lightning import load_tokenizer
from dpo_lightning.data.rankings import ranks_from_scores
from dpo_lightning.errors import RunError
from dpo_lightning.eval.labellers import RewardLabeller
from dpo_lightning.eval.rewards import Reward
from dpo_lightning.eval.sampling import SamplingSettings, sample_completions
from dpo_lightning.online.rollouts import Rollouts, rank_samples

TOKENIZER = load_tokenizer("tiny")


class TextLength(Reward):
    def __call__(self, prompts, completions):
        return [float(len(c)) for c in completions]


class Constant(Reward):
    def __call__(self, prompts, completions):
        return [1.0] * len(completions)


def _prompts() -> list[list[int]]:
    return [pair.prompt_ids for pair in random_pairs(3, seed=4)]


def test_rank_samples_ranks_the_usable_scored_samples_and_says_why_not_otherwise():
    samples = [[5, 1], [6, 1], [7, 1], [8, 1]]
    ranking, why = rank_samples([3], samples, [0.2, None, 0.9, 0.2], [True, True, True, False])
    assert why == "" and ranking.response_ids == [[5, 1], [7, 1]] and ranking.ranks == [1, 0]
    assert rank_samples([3], samples[:2], [0.5, 0.5], [True, True]) == (None, "tied_prompts")
    assert rank_samples([3], samples[:2], [0.5, None], [True, True]) == (None, "too_few_samples")
    assert rank_samples([3], samples[:3], [0.1, 0.5, 0.1], [True] * 3)[0].ranks == ranks_from_scores([0.1, 0.5, 0.1])


def test_rollouts_are_the_policy_samples_k_per_prompt_ranked_by_the_labeller():
    model = tiny_causal_lm(seed=1)
    settings = SamplingSettings(max_new_tokens=6, seed=3)
    rollouts = Rollouts(TOKENIZER, settings, samples_per_prompt=4, labeller=RewardLabeller(TextLength()))
    rollout = rollouts(model, _prompts(), seed_offset=5)
    expected = sample_completions(model, _prompts(), TOKENIZER, settings, seed_offset=5, share_prompt=False,
                                  num_samples=4)  # fmt: skip
    assert rollout.counts["samples"] == 12 and rollout.counts["prompts"] == 3
    assert rollout.sample_tokens == sum(len(sample) for sample in expected)
    for ranking in rollout.rankings:
        assert ranking.prompt_ids in _prompts()
        b = _prompts().index(ranking.prompt_ids)
        assert all(response in expected[4 * b : 4 * b + 4] for response in ranking.response_ids)
    accounted = len(rollout.rankings) + rollout.counts["tied_prompts"] + rollout.counts["too_few_samples"]
    assert accounted == 3


def test_the_same_draw_number_gives_the_same_rollout_and_another_a_different_one():
    model = tiny_causal_lm(seed=1)
    rollouts = Rollouts(TOKENIZER, SamplingSettings(max_new_tokens=8, seed=0), 3, RewardLabeller(TextLength()))
    first = rollouts(model, _prompts(), seed_offset=7)
    assert rollouts(model, _prompts(), seed_offset=7).rankings == first.rankings
    assert rollouts(model, _prompts(), seed_offset=8).rankings != first.rankings


def test_tied_prompts_are_counted_not_trained_on():
    rollouts = Rollouts(TOKENIZER, SamplingSettings(max_new_tokens=4), 2, RewardLabeller(Constant()))
    rollout = rollouts(tiny_causal_lm(), _prompts())
    assert rollout.rankings == [] and rollout.counts["tied_prompts"] == 3


def test_an_empty_sample_is_counted_and_skipped_or_stops_the_run_when_asked(monkeypatch):
    eos = TOKENIZER.eos_token_id

    def fake_sampling(model, prompts, tokenizer, settings, seed_offset, synced_gpus, num_samples):
        return [[eos] if k % 3 == 0 else [40 + k, eos] for k in range(len(prompts) * num_samples)]

    monkeypatch.setattr("dpo_lightning.online.rollouts.sample_completions", fake_sampling)
    rollouts = Rollouts(TOKENIZER, SamplingSettings(max_new_tokens=4), 3, RewardLabeller(TextLength()))
    rollout = rollouts(tiny_causal_lm(), _prompts())
    assert rollout.counts["empty_samples"] == 3  # samples 0, 3, 6
    assert all(len(ranking.response_ids) == 2 for ranking in rollout.rankings)
    strict = Rollouts(TOKENIZER, SamplingSettings(max_new_tokens=4), 3, RewardLabeller(TextLength()), False)
    with pytest.raises(RunError, match=r"is empty; set algorithm.skip_bad_samples=true"):
        strict(tiny_causal_lm(), _prompts())
