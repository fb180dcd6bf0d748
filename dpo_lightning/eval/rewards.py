"""Ground-truth rewards of a task: r(x, y) for a prompt text x and a completion text y (the `reward/` group).

    vader       VADER's compound sentiment score of x + y, in [−1, 1] (offline; `task=sentiment`)
    classifier  p(positive | x + y) from a Hugging Face sequence classifier (the paper's IMDb reward:
                siebert/sentiment-roberta-large-english), or a reward model's scalar output

A task without a reward (`reward=none`, i.e. an empty `task.reward`) gets no `val/reward`; samples and KL
are still reported.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from typing import Any

from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from dpo_lightning.eval.classifier import ClassifierScorer


class Reward(ABC):
    """A configured reward function, scoring texts in batches."""

    name: str = ""

    @abstractmethod
    def __call__(self, prompts: list[str], completions: list[str]) -> list[float]:
        """[B] rewards of the completions of [B] prompts."""


@functools.lru_cache(maxsize=1)
def _vader() -> SentimentIntensityAnalyzer:
    return SentimentIntensityAnalyzer()


def sentiment_reward(prompt: str, completion: str) -> float:
    """VADER compound score in [-1, 1] of the whole review text `prompt + completion` (as the paper scores x, y
    together); `completion` is expected to start with a space."""
    return _vader().polarity_scores(prompt + completion)["compound"]


class VaderReward(Reward):
    """`reward=vader`: VADER's compound score of the whole text (as the paper scores x and y together); it also
    labels the pairs of `task=sentiment` (`task.source.labeller`)."""

    name = "vader"

    def __call__(self, prompts: list[str], completions: list[str]) -> list[float]:
        return [sentiment_reward(prompt, completion) for prompt, completion in zip(prompts, completions, strict=True)]


class ClassifierReward(Reward):
    """`reward=classifier`: a sequence classifier's probability of `positive_label` for x + y (or, with
    `positive_label: null`, a one-output reward model's score). Loaded once, at start-up: a model whose labels
    lack `positive_label` stops the run there."""

    name = "classifier"

    def __init__(self, name_or_path: str, truncation_side: str = "left", **options: Any) -> None:
        """`options`: the other `ClassifierScorer` arguments (positive_label, batch_size, max_length, device,
        trust_remote_code)."""
        self.scorer = ClassifierScorer(
            name_or_path, truncation_side=truncation_side, config_key="task.reward.positive_label", **options
        )

    def __call__(self, prompts: list[str], completions: list[str]) -> list[float]:
        texts = [prompt + completion for prompt, completion in zip(prompts, completions, strict=True)]
        return self.scorer.scores(texts)
