"""`task=sentiment`: an offline stand-in for the DPO paper's IMDb controlled-sentiment task.

In the paper, x is the prefix of an IMDb review, y a continuation, and the ground-truth reward is a
sentiment classifier's p(positive | x, y). Here the project generates the prefixes and continuations itself
(templates over word lists, so no download is needed) and the reward is VADER's compound score of the whole
text `x + y` — a real, independent sentiment scorer whose lexicon ships inside the `vaderSentiment` package.
Each pair's two continuations are drawn independently; the one VADER scores higher is `chosen`. Pairs whose
scores differ by less than `min_margin` are redrawn, so there are no near-ties. Continuations start with a
space, so `prompt + continuation` reads as one text.
"""

from __future__ import annotations

import functools
import random

import datasets
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from dpo_lightning.errors import ConfigError

SPLITS: tuple[str, ...] = ("train", "validation")

_TITLE_WORDS = (
    "Silent Harbor",
    "Midnight Train",
    "Glass Garden",
    "Last Summer",
    "Iron Valley",
    "Paper Moon",
    "Distant Shore",
    "Crimson Road",
    "Hollow Crown",
    "Winter Light",
    "Broken Compass",
    "Golden Hour",
    "Velvet Storm",
    "Quiet Earth",
    "Lost Signal",
    "Northern Lights",
    "Salt and Smoke",
    "Second Chance",
    "Empty Rooms",
    "Wild River",
    "Stone Bridge",
    "Neon Dreams",
    "Small Hours",
    "Open Water",
)
_TITLE_PREFIXES = ("", "", "The ", "Return to ", "Beyond the ", "Escape from ", "Letters from ", "Under the ")
_ASPECTS = (
    "plot",
    "acting",
    "soundtrack",
    "dialogue",
    "ending",
    "cinematography",
    "pacing",
    "script",
    "lead performance",
    "direction",
    "editing",
    "score",
    "story",
    "cast",
    "humor",
    "visual effects",
)
_PROMPT_TEMPLATES = (
    'I watched "{title}" last night and the {aspect} was',
    "My review of {title}: the {aspect}",
    "So I finally saw {title} with my friends, and honestly the {aspect}",
    "{title} opened this weekend. I have to say the {aspect} is",
    "After two hours of {title}, my verdict on the {aspect}:",
    "We rented {title} on a rainy Sunday. The {aspect} felt",
    "Critics keep talking about {title}, so here goes. The {aspect}",
    "I went into {title} with low expectations, and the {aspect} was",
)
_POSITIVE = (
    "wonderful",
    "brilliant",
    "beautiful",
    "excellent",
    "charming",
    "delightful",
    "great",
    "superb",
    "moving",
    "fantastic",
    "clever",
    "lovely",
    "gripping",
    "impressive",
    "fun",
)
_NEGATIVE = (
    "terrible",
    "boring",
    "awful",
    "dull",
    "painful",
    "horrible",
    "weak",
    "disappointing",
    "bad",
    "annoying",
    "ugly",
    "stupid",
    "tedious",
    "lifeless",
    "poor",
)
_NEUTRAL = ("long", "loud", "slow", "simple", "quiet", "strange", "different", "familiar", "short", "dark")
_INTENSIFIERS = ("", "", "very ", "really ", "truly ", "somewhat ", "extremely ", "quite ")
_NEGATIONS = ("not ", "never ")
_CONNECTIVES = ("but", "and", "although", "while", "yet")
_SUBJECTS = ("the acting", "the music", "the ending", "the story", "the cast", "every scene", "the camera work")
_CLOSERS = (
    "I would watch it again",
    "I want my money back",
    "I left early",
    "the audience applauded",
    "my friends loved it",
    "I fell asleep",
    "it stayed with me",
    "I regret going",
)


# Distinct prompts the templates can make is ~21k; stay well below so that redrawing repeats stays cheap.
MAX_PAIRS = 12_000


@functools.lru_cache(maxsize=1)
def _analyzer() -> SentimentIntensityAnalyzer:
    return SentimentIntensityAnalyzer()


def sentiment_reward(prompt: str, completion: str) -> float:
    """VADER compound score in [-1, 1] of the whole review `prompt + completion`."""
    return _analyzer().polarity_scores(prompt + completion)["compound"]


# A review has a tone that picks its adjectives: mostly from one bank, or evenly for a mixed review.
_TONES = {
    "positive": ((_POSITIVE, 0.8), (_NEUTRAL, 0.1), (_NEGATIVE, 0.1)),
    "negative": ((_NEGATIVE, 0.8), (_NEUTRAL, 0.1), (_POSITIVE, 0.1)),
    "mixed": ((_POSITIVE, 0.4), (_NEUTRAL, 0.2), (_NEGATIVE, 0.4)),
}


def _adjective(rng: random.Random, tone: str) -> str:
    banks, weights = zip(*_TONES[tone], strict=True)
    bank = rng.choices(banks, weights)[0]
    negation = rng.choice(_NEGATIONS) if rng.random() < 0.1 else ""
    return f"{negation}{rng.choice(_INTENSIFIERS)}{rng.choice(bank)}"


def _clause(rng: random.Random, tone: str) -> str:
    kind = rng.randrange(3)
    if kind == 0:
        return f"{rng.choice(_SUBJECTS)} was {_adjective(rng, tone)}"
    if kind == 1:
        return f"{rng.choice(_SUBJECTS)} felt {_adjective(rng, tone)} and {_adjective(rng, tone)}"
    return rng.choice(_CLOSERS)


def _continuation(rng: random.Random) -> str:
    """5–25 words in one tone: an adjective phrase for the prompt's aspect, then 0–2 more clauses."""
    tone = rng.choice(tuple(_TONES))
    words = f" {_adjective(rng, tone)}"
    for _ in range(rng.randrange(3)):
        words += f" {rng.choice(_CONNECTIVES)} {_clause(rng, tone)}"
    if len(words.split()) < 6:
        words += f", and {_clause(rng, tone)}"
    return words + "."


def _prompt(rng: random.Random) -> str:
    title = rng.choice(_TITLE_PREFIXES) + rng.choice(_TITLE_WORDS)
    return rng.choice(_PROMPT_TEMPLATES).format(title=title, aspect=rng.choice(_ASPECTS))


def generate_sentiment_pairs(num_pairs: int, seed: int, min_margin: float = 0.1) -> list[dict[str, str]]:
    """Deterministic {"prompt", "chosen", "rejected"} rows with VADER-decided preferences.

    Every prompt is unique (a repeated draw is redrawn), so a split by position never shares prompts.
    """
    if not 1 <= num_pairs <= MAX_PAIRS:
        raise ValueError(f"num_pairs must be in [1, {MAX_PAIRS}], got {num_pairs}")
    if not 0 <= min_margin < 2:
        raise ValueError(f"min_margin must be in [0, 2), got {min_margin}")
    rng = random.Random(seed)
    seen: set[str] = set()
    rows = []
    for _ in range(num_pairs):
        prompt = _prompt(rng)
        while prompt in seen:
            prompt = _prompt(rng)
        seen.add(prompt)
        while True:  # redraw near-ties: every pair has a clear VADER preference
            first, second = _continuation(rng), _continuation(rng)
            first_score, second_score = sentiment_reward(prompt, first), sentiment_reward(prompt, second)
            if abs(first_score - second_score) >= max(min_margin, 1e-6):
                break
        chosen, rejected = (first, second) if first_score > second_score else (second, first)
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return rows


class SentimentSource:
    """Preference source for `task=sentiment`: the first `num_train_pairs` generated rows are "train", the
    next `num_val_pairs` "validation" (one generator run, so the split is fixed by `seed`)."""

    name = "sentiment"

    def __init__(
        self, num_train_pairs: int = 4096, num_val_pairs: int = 256, seed: int = 1234, min_margin: float = 0.1
    ) -> None:
        for key, value in (("task.num_train_pairs", num_train_pairs), ("task.num_val_pairs", num_val_pairs)):
            if value < 1:
                raise ConfigError(key, f"must be ≥ 1, got {value}")
        if num_train_pairs + num_val_pairs > MAX_PAIRS:
            raise ConfigError("task.num_train_pairs", f"train + validation pairs must be ≤ {MAX_PAIRS}")
        if not 0 <= min_margin < 2:
            raise ConfigError("task.min_margin", f"must be in [0, 2), got {min_margin}")
        self.sizes = {"train": num_train_pairs, "validation": num_val_pairs}
        self.seed = seed
        self.min_margin = min_margin
        self._rows: list[dict[str, str]] | None = None

    def origin(self, split: str) -> str:
        return f"sentiment (seed {self.seed}) {split}"

    def load(self, split: str) -> datasets.Dataset:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        if self._rows is None:
            total = self.sizes["train"] + self.sizes["validation"]
            self._rows = generate_sentiment_pairs(total, self.seed, self.min_margin)
        train_size = self.sizes["train"]
        rows = self._rows[:train_size] if split == "train" else self._rows[train_size:]
        return datasets.Dataset.from_list(rows)
