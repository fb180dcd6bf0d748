"""`task=imdb` (IMDbPrompts) on the review fixtures through `task.source.data_files`: prompts are review prefixes of
k ∈ [min_prefix_words, max_prefix_words] words, seeded; prompts only (`load` refuses); bad rows and bounds."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from helpers import FIXTURES, compose, write_jsonl

from dpo_lightning.data.sources.imdb import IMDbPrompts
from dpo_lightning.errors import ConfigError, DataError
from dpo_lightning.instantiate import build

IMDB = FIXTURES / "imdb"
SPLITS = ("train", "validation")


def imdb_source(*overrides: str, files: dict[str, Path] | None = None) -> IMDbPrompts:
    """The source of the composed `task=imdb` (as the pairs command builds it), reading local files."""
    files = files or {split: IMDB / f"{split}.jsonl" for split in SPLITS}
    data_files = [f"task.source.data_files.{split}={file}" for split, file in files.items()]
    cfg = compose("policy=unused", "task=imdb", *data_files, *overrides, config="pairs")
    return build(cfg.task.source, "task.source")


def reviews(split: str) -> list[str]:
    lines = (IMDB / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["text"] for line in lines]


def review_words(text: str) -> list[str]:
    """The rule, re-implemented: HTML line breaks become spaces, then split on whitespace."""
    return re.sub(r"<br\s*/?>", " ", text, flags=re.IGNORECASE).split()


def prefix_lengths(source: IMDbPrompts, split: str) -> list[int]:
    """k of every prompt of `split`, after checking that the prompt is the review's first k words."""
    prompts, texts = list(source.prompts(split)), reviews(split)
    assert len(prompts) == len(texts) >= 3, split
    lengths = []
    for row, (prompt, text) in enumerate(zip(prompts, texts, strict=True)):
        words, k = review_words(text), len(prompt.split())
        assert len(words) > source.max_prefix_words, f"{split} row {row}: fixture review too short for the test"
        assert source.min_prefix_words <= k <= source.max_prefix_words, (split, row, prompt)
        assert prompt == " ".join(words[:k]), (split, row, prompt)
        assert "<br" not in prompt.lower(), (split, row, prompt)
        lengths.append(k)
    return lengths


@pytest.mark.parametrize("bounds", [(2, 8), (1, 3), (5, 5), (7, 9)])
def test_prompts_are_the_first_k_words_of_each_review(bounds):
    low, high = bounds
    source = imdb_source(f"task.source.min_prefix_words={low}", f"task.source.max_prefix_words={high}")
    assert (source.min_prefix_words, source.max_prefix_words) == bounds
    for split in SPLITS:
        prefix_lengths(source, split)


def test_line_breaks_become_spaces_in_the_prompt():
    # Train review 1 is "This is a wonderful little production. <br /><br />The filming …": its 7th word is "The".
    source = imdb_source("task.source.min_prefix_words=7", "task.source.max_prefix_words=7")
    assert list(source.prompts("train"))[1] == "This is a wonderful little production. The"


def test_prefix_lengths_are_fixed_by_the_seed():
    lengths = {seed: [prefix_lengths(imdb_source(f"seed={seed}"), s) for s in SPLITS] for seed in (0, 1, 2)}
    assert [prefix_lengths(imdb_source("seed=0"), s) for s in SPLITS] == lengths[0]
    assert lengths[0] != lengths[1] and lengths[0] != lengths[2]
    everything = [k for seed_lengths in lengths.values() for split in seed_lengths for k in split]
    assert len(set(everything)) > 1  # k is drawn, not constant


def test_load_refuses_and_points_to_the_pairs_command():
    source = imdb_source()
    for split in SPLITS:
        with pytest.raises(ConfigError) as error:
            source.load(split)
        message = str(error.value)
        assert error.value.key == "task" and "\n" not in message
        assert message.startswith("task: task=imdb holds prompts only")
        assert "python -m dpo_lightning.cli.pairs task=imdb" in message and "task=local" in message


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (5, "text: expected a string, got int"),
        (["a review"], "text: expected a string, got list"),
        (None, "text: missing"),
        (" <br /><BR/> ", "text: no words"),
    ],
)
def test_a_bad_review_names_file_row_and_field(text, problem, tmp_path):
    bad = tmp_path / "reviews.jsonl"
    rows = [{"text": "A fine film, all told.", "label": 1}, {"text": text, "label": 0}]
    write_jsonl(bad, rows)
    source = imdb_source(files={"train": bad, "validation": IMDB / "validation.jsonl"})
    prompts = source.prompts("train")
    assert next(prompts).split()[0] == "A"  # the good row before the bad one still comes out
    with pytest.raises(DataError) as error:
        next(prompts)
    assert str(error.value) == f"{bad} (train): row 1: {problem}"


def test_a_file_without_text_column_names_the_file(tmp_path):
    bad = tmp_path / "reviews.jsonl"
    bad.write_text('{"review": "Great.", "label": 1}\n', encoding="utf-8")
    source = imdb_source(files={"train": bad})
    with pytest.raises(DataError) as error:
        list(source.prompts("train"))
    assert str(error.value).startswith(f"{bad} (train): missing column(s) ['text']")


@pytest.mark.parametrize(("low", "high"), [(5, 3), (0, 4), (-1, 2)])
def test_impossible_prefix_bounds_are_a_config_error(low, high):
    with pytest.raises(ConfigError) as error:
        imdb_source(f"task.source.min_prefix_words={low}", f"task.source.max_prefix_words={high}")
    assert error.value.key == "task.source.min_prefix_words"
    assert str(error.value).startswith("task.source.min_prefix_words: ") and "\n" not in str(error.value)
    assert f"got {low} and {high}" in str(error.value)
