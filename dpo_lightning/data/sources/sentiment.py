"""`task=sentiment`: an offline stand-in for the DPO paper's IMDb controlled-sentiment task.

In the paper, x is the prefix of an IMDb movie review, y a continuation, and the ground-truth reward is a
sentiment classifier's p(positive | x, y); preference pairs are ranked by that reward, and the policy must learn
to continue any prefix positively. Here the project writes the reviews itself, so no download is needed:

- prompts x are short, sentiment-neutral review openings built from templates, invented titles and film
  aspects, e.g. `I watched "The Copper Harbor" last night and the acting was`;
- continuations y are built from word banks (positive, negative and neutral adjectives and phrases,
  intensifiers, negations, connectives) in 1–3 clauses; each continuation has its own random leaning, from
  all-negative through mixed to all-positive, so a pair may be far apart in sentiment or close (both
  positive, both negative);
- the reward is the `labeller` the source is given: the task config gives VADER's compound score of the whole
  text `x + y` (`eval.rewards.VaderReward`), a real and independent lexicon-based scorer whose lexicon ships
  inside the `vaderSentiment` package. The generator's own word banks never decide a preference: `chosen` is
  whichever continuation VADER scores higher, and pairs closer than `min_margin` are redrawn, so there are no
  near-ties.

With `responses_per_prompt` = K ≥ 2 the rows are rankings instead (`data/rankings.py`): K continuations per
prompt, in the order drawn, with their VADER rewards as `scores`; a continuation scored closer than `min_margin`
to one already drawn for the prompt is redrawn, so every two responses are at least `min_margin` apart.

Continuations start with a space, so `prompt + continuation` reads as one text. Everything is drawn from
one `random.Random(seed)`: the same arguments give the same rows in every run and process.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import datasets

from dpo_lightning.data.sources.base import SPLITS, row_features
from dpo_lightning.errors import ConfigError

# --- Prompts: neutral review openings; every word here is outside VADER's lexicon. -------------------------
# Each template ends with a linking verb, so that the continuation completes the sentence.
_PROMPT_TEMPLATES = (
    'I watched "{title}" last night and the {aspect} was',
    "My review of {title}: the {aspect} is",
    "{title} opened this weekend, and the {aspect} is",
    "We rented {title} on a Sunday evening. The {aspect} felt",
    "Everyone keeps talking about {title}. Here goes: the {aspect} seemed",
    "Saw {title} at the matinee today. Overall, the {aspect} was",
    "Quick notes on {title}. The {aspect} was",
    "Two hours of {title} later, I can say the {aspect} was",
    "My sister picked {title} for movie night, and the {aspect} was",
    "{title} is streaming now, and the {aspect} is",
    "Caught the premiere of {title}. To me, the {aspect} felt",
    "Thoughts on {title} right after the screening: the {aspect} was",
)
# fmt: off
_TITLE_FORMATS = (
    "{adjective} {noun}", "The {adjective} {noun}", "Beyond the {adjective} {noun}", "Letters from {adjective} {noun}",
)
_TITLE_ADJECTIVES = (
    "Silent", "Midnight", "Glass", "Iron", "Paper", "Distant", "Crimson", "Hollow", "Winter", "Velvet", "Northern",
    "Neon", "Copper", "Amber", "Violet", "Seventh", "Southern", "Eastern", "Western", "Last", "Marble", "Autumn",
)
_TITLE_NOUNS = (
    "Harbor", "Train", "Garden", "Valley", "Moon", "Shore", "Road", "Compass", "Storm", "Signal", "River", "Bridge",
    "Orchard", "Falcon", "Lantern", "Island", "Tide", "Mirror", "Canyon", "Meadow", "Station", "Tower", "Raven",
    "Atlas",
)
_ASPECTS = (
    "plot", "acting", "soundtrack", "dialogue", "ending", "cinematography", "pacing", "script", "lead performance",
    "direction", "editing", "story", "cast", "camera work", "opening scene", "main character", "costume design",
    "final act",
)

# --- Continuations: the words that carry sentiment (VADER's lexicon has the first two banks, not the third). -
_ADJECTIVES = {
    "positive": (
        "wonderful", "brilliant", "beautiful", "excellent", "charming", "delightful", "great", "superb", "fantastic",
        "clever", "lovely", "impressive", "fun", "gorgeous", "funny", "enjoyable", "pleasant", "satisfying", "good",
    ),
    "negative": (
        "terrible", "boring", "awful", "dull", "painful", "horrible", "weak", "disappointing", "bad", "annoying",
        "ugly", "stupid", "lazy", "messy", "dreadful", "pathetic", "ridiculous", "grim", "exhausting",
    ),
    "neutral": (
        "long", "loud", "slow", "simple", "quiet", "different", "familiar", "short", "dark", "predictable", "ordinary",
        "unusual", "plain", "busy", "colorful", "modern", "conventional", "traditional",
    ),
}
# Phrases that can stand in for an adjective phrase after the prompt's verb ("... the ending was a complete mess").
_PHRASES = {
    "positive": ("a joy to watch", "worth every minute", "a real treat from start to finish", "the best part of it"),
    "negative": ("a waste of time", "a complete mess", "a disaster from start to finish", "the worst part of it"),
    "neutral": ("about what you would expect", "typical of the genre", "hard to describe in a few words"),
}
# Whole clauses about the viewer, for the end of a review.
_CLOSERS = {
    "positive": ("I would happily watch it again", "the audience applauded", "I laughed the whole way through"),
    "negative": ("I want my money back", "I regret buying a ticket", "I was bored the whole way through"),
    "neutral": ("the theater was half full", "it runs about two hours", "we went home right after"),
}
_INTENSIFIERS = ("very", "really", "truly", "extremely", "quite")
_DAMPENERS = ("somewhat", "slightly", "rather")  # read oddly after a negation ("not somewhat good"), so not used there
_SUBJECTS = ("the music", "the ending", "the story", "the cast", "every scene", "the soundtrack", "the script")
# Verbs of later clauses. Negations ("not", "never") let VADER's negation rules flip or damp the adjective.
_VERBS = ("was", "felt", "seemed")
_NEGATED_VERBS = ("was not", "was never", "never felt", "never seemed")
_CONNECTIVES = ("but", "and", "although", "while", "yet")
# fmt: on

# Continuations have at least this many words, and at most 25: at most 3 clauses, the first of ≤ 7 words, a later
# one of ≤ 9 (connective, two-word subject, two-word verb, adjective phrase of ≤ 4 words).
MIN_CONTINUATION_WORDS = 6
# Distinct prompts the templates can make; stay well below it so that redrawing a repeated prompt stays cheap.
PROMPT_SPACE = len(_PROMPT_TEMPLATES) * len(_TITLE_FORMATS) * len(_TITLE_ADJECTIVES) * len(_TITLE_NOUNS) * len(_ASPECTS)
MAX_PAIRS = PROMPT_SPACE // 4
# Redraws of one pair's continuations before `min_margin` is declared unreachable.
MAX_DRAWS_PER_PAIR = 1000


# What decides the preferences: r(x, y) of [B] prompts and their [B] completions, as `eval.rewards.Reward` scores
# them (the task config passes VADER, `eval.rewards.VaderReward`: `task.source.labeller`).
Labeller = Callable[[list[str], list[str]], list[float]]


def _score(labeller: Labeller, prompt: str, completion: str) -> float:
    return labeller([prompt], [completion])[0]


def _prompt(rng: random.Random) -> str:
    title = rng.choice(_TITLE_FORMATS).format(adjective=rng.choice(_TITLE_ADJECTIVES), noun=rng.choice(_TITLE_NOUNS))
    return rng.choice(_PROMPT_TEMPLATES).format(title=title, aspect=rng.choice(_ASPECTS))


def _tone(rng: random.Random, positivity: float) -> str:
    """The sentiment of one word choice: positive with probability 0.85·positivity, negative with
    0.85·(1 − positivity), else neutral."""
    draw = rng.random()
    if draw < 0.15:
        return "neutral"
    return "positive" if draw < 0.15 + 0.85 * positivity else "negative"


def _adjective_phrase(rng: random.Random, positivity: float, negated: bool) -> str:
    """An optionally modified adjective, sometimes paired with a second one: "truly wonderful and fun"."""
    modifiers = _INTENSIFIERS if negated else _INTENSIFIERS + _DAMPENERS
    words = [rng.choice(modifiers)] if rng.random() < 0.5 else []
    words.append(rng.choice(_ADJECTIVES[_tone(rng, positivity)]))
    if rng.random() < 0.3:
        words += ["and", rng.choice(_ADJECTIVES[_tone(rng, positivity)])]
    return " ".join(words)


def _first_clause(rng: random.Random, positivity: float) -> str:
    """What completes the prompt's "... the acting was": an adjective phrase (maybe negated) or a phrase."""
    if rng.random() < 0.25:
        return rng.choice(_PHRASES[_tone(rng, positivity)])
    if rng.random() < 0.15:
        return f"not {_adjective_phrase(rng, positivity, negated=True)}"
    return _adjective_phrase(rng, positivity, negated=False)


def _later_clause(rng: random.Random, positivity: float) -> str:
    """A connective and a clause of its own: ", but the music felt very dull" or ", and I want my money back"."""
    if rng.random() < 0.3:
        clause = rng.choice(_CLOSERS[_tone(rng, positivity)])
    else:
        negated = rng.random() < 0.25
        verb = rng.choice(_NEGATED_VERBS if negated else _VERBS)
        clause = f"{rng.choice(_SUBJECTS)} {verb} {_adjective_phrase(rng, positivity, negated)}"
    return f", {rng.choice(_CONNECTIVES)} {clause}"


def _continuation(rng: random.Random) -> str:
    """A review continuation of 1–3 clauses and 6–25 words, starting with a space and ending with a period.

    Its leaning `positivity` is uniform in [0, 1], so continuations range from all-negative through mixed to
    all-positive; clauses are added until there are at least 6 words (a short first clause gets a second).
    """
    positivity = rng.random()
    text = _first_clause(rng, positivity)
    for _ in range(rng.randrange(3)):
        text += _later_clause(rng, positivity)
    while len(text.split()) < MIN_CONTINUATION_WORDS:
        text += _later_clause(rng, positivity)
    return f" {text}."


def generate_sentiment_pairs(
    num_pairs: int, seed: int, min_margin: float = 0.1, *, labeller: Labeller
) -> list[dict[str, str]]:
    """Deterministic list of {"prompt", "chosen", "rejected"} rows whose preferences `labeller` (VADER) decides.

    Each pair's two continuations are drawn independently; `chosen` is the one `labeller` scores higher, and a
    pair whose scores differ by less than `min_margin` (or not at all) is redrawn
    from the same RNG. Every prompt is unique (a repeated one is redrawn), so any split by position shares no
    prompt.
    """
    _check_generator_arguments("num_pairs", num_pairs, min_margin)

    def pair(rng: random.Random, prompt: str) -> dict[str, str]:
        chosen, rejected = _ranked_continuations(rng, prompt, min_margin, labeller)
        return {"chosen": chosen, "rejected": rejected}

    return _rows_for_unique_prompts(num_pairs, seed, pair)


def generate_sentiment_rankings(
    num_prompts: int, responses_per_prompt: int, seed: int, min_margin: float = 0.1, *, labeller: Labeller
) -> list[dict[str, Any]]:
    """Deterministic list of {"prompt", "responses", "scores"} rows: `responses_per_prompt` continuations of each
    (unique) prompt in the order drawn, and their `labeller` scores, every two at least `min_margin` apart."""
    _check_generator_arguments("num_prompts", num_prompts, min_margin)
    if responses_per_prompt < 2:
        raise ValueError(f"responses_per_prompt must be ≥ 2, got {responses_per_prompt}")

    def ranking(rng: random.Random, prompt: str) -> dict[str, Any]:
        return _scored_continuations(rng, prompt, responses_per_prompt, min_margin, labeller)

    return _rows_for_unique_prompts(num_prompts, seed, ranking)


def _check_generator_arguments(name: str, count: int, min_margin: float) -> None:
    if not 1 <= count <= MAX_PAIRS:
        raise ValueError(f"{name} must be in [1, {MAX_PAIRS}], got {count}")
    if not 0 <= min_margin < 2:
        raise ValueError(f"min_margin must be in [0, 2), got {min_margin}")


def _rows_for_unique_prompts(
    count: int, seed: int, responses: Callable[[random.Random, str], dict[str, Any]]
) -> list[dict[str, Any]]:
    """`count` rows {"prompt", **responses(rng, prompt)}, all from one `random.Random(seed)`; a prompt drawn
    before is redrawn, so every prompt is unique."""
    rng = random.Random(seed)
    seen_prompts: set[str] = set()
    rows = []
    for _ in range(count):
        prompt = _prompt(rng)
        while prompt in seen_prompts:
            prompt = _prompt(rng)
        seen_prompts.add(prompt)
        rows.append({"prompt": prompt, **responses(rng, prompt)})
    return rows


def _ranked_continuations(rng: random.Random, prompt: str, min_margin: float, labeller: Labeller) -> tuple[str, str]:
    """Two continuations of `prompt` at least `min_margin` apart by `labeller`: (higher-scored, lower-scored)."""
    for _ in range(MAX_DRAWS_PER_PAIR):
        first, second = _continuation(rng), _continuation(rng)
        gap = _score(labeller, prompt, first) - _score(labeller, prompt, second)
        if gap != 0 and abs(gap) >= min_margin:
            return (first, second) if gap > 0 else (second, first)
    raise ValueError(
        f"min_margin={min_margin}: no two continuations that far apart in {MAX_DRAWS_PER_PAIR} draws; use a smaller one"
    )


def _scored_continuations(
    rng: random.Random, prompt: str, count: int, min_margin: float, labeller: Labeller
) -> dict[str, list]:
    """{"responses", "scores"}: `count` continuations of `prompt` and their rewards, in the order drawn; each is
    redrawn (at most MAX_DRAWS_PER_PAIR times) until it is at least `min_margin` from, and unequal to, every
    reward drawn before it."""
    responses: list[str] = []
    scores: list[float] = []
    while len(responses) < count:
        for _ in range(MAX_DRAWS_PER_PAIR):
            continuation = _continuation(rng)
            score = _score(labeller, prompt, continuation)
            if all(score != other and abs(score - other) >= min_margin for other in scores):
                break
        else:
            raise ValueError(
                f"min_margin={min_margin}: no continuation that far from the {len(scores)} drawn before it in "
                f"{MAX_DRAWS_PER_PAIR} draws; use a smaller min_margin or fewer responses_per_prompt"
            )
        responses.append(continuation)
        scores.append(score)
    return {"responses": responses, "scores": scores}


class SentimentSource:
    """Preference source for `task=sentiment`: a `datasets.Dataset` with string columns prompt, chosen, rejected,
    or, with `responses_per_prompt` = K ≥ 2, ranked rows (prompt, K responses, their VADER scores).

    One generator run makes `num_train_pairs + num_val_pairs` rows (pairs, or rankings: then the two count
    prompts): the first `num_train_pairs` are "train", the rest "validation" (so `seed` fixes both the data and
    the split, and the splits share no prompt).
    """

    name = "sentiment"

    def __init__(
        self,
        labeller: Labeller,
        num_train_pairs: int = 4096,
        num_val_pairs: int = 256,
        seed: int = 1234,
        min_margin: float = 0.1,
        responses_per_prompt: int | None = None,
    ) -> None:
        for key, value in (
            ("task.source.num_train_pairs", num_train_pairs),
            ("task.source.num_val_pairs", num_val_pairs),
        ):
            if value < 1:
                raise ConfigError(key, f"must be ≥ 1, got {value}")
        if num_train_pairs + num_val_pairs > MAX_PAIRS:
            raise ConfigError("task.source.num_train_pairs", f"train + validation pairs must be ≤ {MAX_PAIRS}")
        if not 0 <= min_margin < 2:
            raise ConfigError("task.source.min_margin", f"must be in [0, 2), got {min_margin}")
        if responses_per_prompt is not None and responses_per_prompt < 2:
            raise ConfigError(
                "task.source.responses_per_prompt", f"must be ≥ 2 (null: pairs), got {responses_per_prompt}"
            )
        if responses_per_prompt is not None and (responses_per_prompt - 1) * min_margin >= 2:
            raise ConfigError(
                "task.source.responses_per_prompt",
                f"{responses_per_prompt} rewards in [-1, 1] cannot all be min_margin={min_margin} apart",
            )
        self.labeller = labeller
        self.num_train_pairs = num_train_pairs
        self.num_val_pairs = num_val_pairs
        self.seed = seed
        self.min_margin = min_margin
        self.responses_per_prompt = responses_per_prompt
        self.ranked = responses_per_prompt is not None
        self._rows: list[dict[str, Any]] | None = None  # generated on the first `load`

    def origin(self, split: str) -> str:
        """Where `split`'s rows come from, for naming bad rows."""
        return f"sentiment (seed {self.seed}) {split}"

    def load(self, split: str, streaming: bool = False) -> datasets.Dataset | datasets.IterableDataset:
        """The rows of `split` ("train" or "validation"), all usable (`problem` ""); `streaming` streams the
        generated rows (for testing the streaming path on real data without files)."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        if self._rows is None:
            self._rows = self._generate(self.num_train_pairs + self.num_val_pairs)
        rows = self._rows[: self.num_train_pairs] if split == "train" else self._rows[self.num_train_pairs :]
        table = datasets.Dataset.from_list(
            [{"row": i, **row, "problem": "", "message": ""} for i, row in enumerate(rows)],
            features=row_features(conversational=False, ranked=self.ranked),
        )
        return table.to_iterable_dataset() if streaming else table

    def _generate(self, count: int) -> list[dict[str, Any]]:
        if self.responses_per_prompt is None:
            return generate_sentiment_pairs(count, self.seed, self.min_margin, labeller=self.labeller)
        return generate_sentiment_rankings(
            count, self.responses_per_prompt, self.seed, self.min_margin, labeller=self.labeller
        )
