"""task=sentiment: deterministic generated reviews whose preferences VADER decides."""

import os
import subprocess
import sys

import pytest
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from dpo_lightning.data.sources.sentiment import SentimentSource, generate_sentiment_pairs
from dpo_lightning.eval.rewards import VaderReward, sentiment_reward

LABELLER = VaderReward()  # what labels task=sentiment's pairs

MARGIN = 0.3
ROWS = generate_sentiment_pairs(1000, seed=5, min_margin=MARGIN, labeller=LABELLER)
VADER = SentimentIntensityAnalyzer()  # an instance of our own, independent of the module's cached one


def vader(text: str) -> float:
    return VADER.polarity_scores(text)["compound"]


def test_same_seed_same_rows_other_seed_other_rows():
    assert generate_sentiment_pairs(1000, seed=5, min_margin=MARGIN, labeller=LABELLER) == ROWS
    assert generate_sentiment_pairs(1000, seed=6, min_margin=MARGIN, labeller=LABELLER) != ROWS
    prefix = generate_sentiment_pairs(10, seed=5, min_margin=MARGIN, labeller=LABELLER)
    assert prefix == ROWS[:10]  # a prefix of a longer run


def test_same_rows_in_another_process():
    code = (
        "from dpo_lightning.data.sources.sentiment import generate_sentiment_pairs\n"
        "from dpo_lightning.eval.rewards import VaderReward\n"
        f"print(generate_sentiment_pairs(50, seed=5, min_margin={MARGIN}, labeller=VaderReward()))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "123"}  # another string-hash order than this process's
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert result.stdout.strip() == str(ROWS[:50])


def test_every_preference_is_vaders_with_the_margin():
    for row in ROWS:
        chosen, rejected = vader(row["prompt"] + row["chosen"]), vader(row["prompt"] + row["rejected"])
        assert chosen - rejected >= MARGIN, row
        assert sentiment_reward(row["prompt"], row["chosen"]) == chosen
    assert sentiment_reward("The film was", " wonderful and moving.") > sentiment_reward("The film was", " awful.")


def test_no_ties_even_without_a_margin():
    for row in generate_sentiment_pairs(300, seed=1, min_margin=0.0, labeller=LABELLER):
        assert vader(row["prompt"] + row["chosen"]) > vader(row["prompt"] + row["rejected"]), row


def test_rows_look_like_reviews():
    for row in ROWS:
        assert set(row) == {"prompt", "chosen", "rejected"}
        assert all(isinstance(text, str) and text.strip() for text in row.values())
        assert 6 <= len(row["prompt"].split()) <= 16, row["prompt"]
        for continuation in (row["chosen"], row["rejected"]):
            assert continuation.startswith(" ") and not continuation.startswith("  "), continuation
            assert continuation.endswith("."), continuation
            assert 6 <= len(continuation.split()) <= 25, continuation
        assert row["chosen"] != row["rejected"]
    assert len({row["prompt"] for row in ROWS}) == len(ROWS)  # every prompt is unique
    assert len({row["chosen"] for row in ROWS} | {row["rejected"] for row in ROWS}) > 1500  # varied continuations


def test_prompts_carry_no_sentiment():
    assert all(vader(row["prompt"]) == 0 for row in ROWS)  # the continuation alone decides the reward


def test_preference_is_about_degree_not_a_constant():
    scores = [(vader(row["prompt"] + row["chosen"]), vader(row["prompt"] + row["rejected"])) for row in ROWS]
    both_positive = sum(chosen > 0 and rejected > 0 for chosen, rejected in scores)
    both_negative = sum(chosen < 0 and rejected < 0 for chosen, rejected in scores)
    far_apart = sum(chosen - rejected > 1 for chosen, rejected in scores)
    # The model must learn "more positive wins", not "positive wins": many pairs are on the same side of zero.
    assert both_positive > 100 and both_negative > 50 and far_apart > 100, (both_positive, both_negative, far_apart)


def test_source_splits_are_fixed_and_disjoint():
    source = SentimentSource(LABELLER, num_train_pairs=300, num_val_pairs=50, seed=9, min_margin=MARGIN)
    train, validation = source.load("train"), source.load("validation")
    assert (len(train), len(validation)) == (300, 50)
    assert train.column_names == ["row", "prompt", "chosen", "rejected", "problem", "message"]
    assert list(train["row"]) == list(range(300)) and set(train["problem"]) == {""}
    assert all(train.features[column].dtype == "string" for column in ("prompt", "chosen", "rejected"))
    assert not set(train["prompt"]) & set(validation["prompt"])
    rows = generate_sentiment_pairs(350, seed=9, min_margin=MARGIN, labeller=LABELLER)
    triples = ["prompt", "chosen", "rejected"]
    assert train.select_columns(triples).to_list() == rows[:300]
    assert validation.select_columns(triples).to_list() == rows[300:]
    again = SentimentSource(LABELLER, num_train_pairs=300, num_val_pairs=50, seed=9, min_margin=MARGIN)
    assert again.load("validation").to_list() == validation.to_list()


def test_unknown_split_is_named():
    with pytest.raises(ValueError, match=r"unknown split 'test'.*'train', 'validation'"):
        SentimentSource(LABELLER, num_train_pairs=2, num_val_pairs=1).load("test")


@pytest.mark.parametrize(
    ("arguments", "name"),
    [
        ({"num_train_pairs": 0}, "num_train_pairs"),
        ({"num_val_pairs": 0}, "num_val_pairs"),
        ({"min_margin": -0.1}, "min_margin"),
        ({"min_margin": 2.0}, "min_margin"),
        ({"num_train_pairs": 10_000_000}, "num_train_pairs"),
    ],
)
def test_bad_source_arguments_are_named(arguments, name):
    with pytest.raises(ValueError, match=name):
        SentimentSource(LABELLER, **arguments)


@pytest.mark.parametrize(
    ("arguments", "name"),
    [({"num_pairs": 0}, "num_pairs"), ({"min_margin": 2.0}, "min_margin"), ({"min_margin": 1.99}, "min_margin")],
)
def test_bad_generator_arguments_are_named(arguments, name):
    with pytest.raises(ValueError, match=name):  # 1.99 is valid but unreachable: a clear error, not a hang
        generate_sentiment_pairs(**{"num_pairs": 3, "seed": 0, **arguments}, labeller=LABELLER)
