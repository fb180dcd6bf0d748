"""task=sentiment: deterministic generated reviews whose preferences VADER decides."""

import pytest
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from dpo_lightning.data.sources.sentiment import SentimentSource, generate_sentiment_pairs, sentiment_reward
from dpo_lightning.errors import ConfigError

ROWS = generate_sentiment_pairs(400, seed=5, min_margin=0.3)


def test_same_seed_same_rows_other_seed_other_rows():
    assert generate_sentiment_pairs(400, seed=5, min_margin=0.3) == ROWS
    assert generate_sentiment_pairs(400, seed=6, min_margin=0.3) != ROWS


def test_every_preference_is_vaders_with_the_margin():
    vader = SentimentIntensityAnalyzer()  # an independent instance, scoring the whole review text
    for row in ROWS:
        chosen = vader.polarity_scores(row["prompt"] + row["chosen"])["compound"]
        rejected = vader.polarity_scores(row["prompt"] + row["rejected"])["compound"]
        assert chosen - rejected >= 0.3, row
    assert sentiment_reward("The film was", " wonderful and moving.") > sentiment_reward("The film was", " awful.")


def test_rows_look_like_reviews():
    for row in ROWS:
        assert all(isinstance(row[k], str) and row[k].strip() for k in ("prompt", "chosen", "rejected"))
        assert 6 <= len(row["prompt"].split()) <= 18
        for response in (row["chosen"], row["rejected"]):
            assert response.startswith(" ") and response.endswith(".")
            assert 4 <= len(response.split()) <= 30
        assert row["chosen"] != row["rejected"]
    assert len({row["prompt"] for row in ROWS}) == len(ROWS)


def test_preference_is_about_degree_not_a_constant():
    vader = SentimentIntensityAnalyzer()

    def score(row, key):
        return vader.polarity_scores(row["prompt"] + row[key])["compound"]

    both_positive = sum(score(r, "chosen") > 0 and score(r, "rejected") > 0 for r in ROWS)
    both_negative = sum(score(r, "chosen") < 0 and score(r, "rejected") < 0 for r in ROWS)
    assert both_positive > 20 and both_negative > 10  # the model must learn more than "positive wins"


def test_source_splits_are_fixed_and_disjoint():
    source = SentimentSource(num_train_pairs=300, num_val_pairs=50, seed=9, min_margin=0.3)
    train, validation = source.load("train"), source.load("validation")
    assert (len(train), len(validation)) == (300, 50)
    assert not set(train["prompt"]) & set(validation["prompt"])
    again = SentimentSource(num_train_pairs=300, num_val_pairs=50, seed=9, min_margin=0.3).load("validation")
    assert list(again["chosen"]) == list(validation["chosen"])
    with pytest.raises(ValueError, match="unknown split 'test'"):
        source.load("test")


@pytest.mark.parametrize(
    ("arguments", "key"),
    [
        ({"num_train_pairs": 0}, "task.num_train_pairs"),
        ({"num_val_pairs": 0}, "task.num_val_pairs"),
        ({"min_margin": 2.0}, "task.min_margin"),
        ({"num_train_pairs": 20_000}, "task.num_train_pairs"),
    ],
)
def test_bad_arguments_name_the_key(arguments, key):
    with pytest.raises(ConfigError, match=f"^{key}: "):
        SentimentSource(**arguments)
