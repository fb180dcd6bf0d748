"""Ranked sources (K ≥ 2 scored responses per prompt): task=local's ranked form, SHP grouped by post, raw
UltraFeedback, and task=sentiment with K samples. Hand-written expected rows, map-style and streaming where a
source streams, every bad input named by its field, and the ConfigErrors of bad key combinations."""

import hashlib
import json
from itertools import pairwise
from pathlib import Path

import datasets
import pytest
from helpers import FIXTURES, compose
from omegaconf import OmegaConf
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from dpo_lightning.conf import CONF_DIR
from dpo_lightning.data.sources.base import is_ranked, row_features
from dpo_lightning.data.sources.local import LocalSource
from dpo_lightning.data.sources.sentiment import (
    SentimentSource,
    generate_sentiment_pairs,
    generate_sentiment_rankings,
)
from dpo_lightning.data.sources.shp import SHPSource
from dpo_lightning.data.sources.ultrafeedback_ranked import UltraFeedbackRankedSource, held_out
from dpo_lightning.errors import ConfigError, DataError, RowProblem
from dpo_lightning.eval.rewards import VaderReward
from dpo_lightning.instantiate import build

LABELLER = VaderReward()  # what labels task=sentiment's pairs

SPLITS = ("train", "validation")
MODES = pytest.mark.parametrize("streaming", [False, True], ids=["map-style", "streaming"])
SAME_SCORES = "every response has the same score, so the ranking states no preference"


def write_jsonl(path: Path, rows: list) -> str:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def ranking(row: dict) -> tuple:
    return row["prompt"], row["responses"], row["scores"]


def problems(rows) -> list[str]:
    return [row["problem"] for row in rows]


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


# --- task=local, ranked --------------------------------------------------------------------------------------

LOCAL_ROWS = [
    {"prompt": "Capital of France?", "responses": [" Lyon.", " Paris.", " Berlin."], "scores": [3, 9.5, 0]},
    {"prompt": "2 + 2?", "responses": [" 4", " 5"], "scores": [1, -1]},
    {"prompt": "Best pet?", "responses": [" A cat.", " A dog.", " A rock."], "scores": [2, 2, 1]},  # a tie: usable
]


def local(tmp_path: Path, rows: list, **options) -> LocalSource:
    path = write_jsonl(tmp_path / "ranked.jsonl", rows)
    return LocalSource(path, val_path=path, responses_column="responses", **options)


@MODES
def test_local_scored_rows(tmp_path, streaming):
    rows = list(local(tmp_path, LOCAL_ROWS).load("train", streaming=streaming))
    assert rows == [
        {
            "row": 0,
            "prompt": "Capital of France?",
            "responses": [" Lyon.", " Paris.", " Berlin."],
            "scores": [3.0, 9.5, 0.0],
            "problem": "",
            "message": "",
        },
        {"row": 1, "prompt": "2 + 2?", "responses": [" 4", " 5"], "scores": [1.0, -1.0], "problem": "", "message": ""},
        {
            "row": 2,
            "prompt": "Best pet?",
            "responses": [" A cat.", " A dog.", " A rock."],
            "scores": [2.0, 2.0, 1.0],
            "problem": "",
            "message": "",
        },
    ]


@MODES
def test_local_ranking_column_becomes_scores(tmp_path, streaming):
    rows = [
        {"question": "Capital of France?", "answers": [" Lyon.", " Paris.", " Berlin."], "order": [1, 0, 2]},
        {"question": "2 + 2?", "answers": [" 5", " 4"], "order": [1, 0]},
    ]
    path = write_jsonl(tmp_path / "ranked.jsonl", rows)
    source = LocalSource(
        path,
        val_path=path,
        prompt_column="question",
        responses_column="answers",
        scores_column=None,
        ranking_column="order",
    )
    loaded = list(source.load("validation", streaming=streaming))
    assert [ranking(row) for row in loaded] == [
        ("Capital of France?", [" Lyon.", " Paris.", " Berlin."], [2.0, 3.0, 1.0]),  # place p of K scores K − p
        ("2 + 2?", [" 5", " 4"], [1.0, 2.0]),
    ]


@MODES
def test_local_conversational_rankings(tmp_path, streaming):
    system = {"role": "system", "content": "Be brief."}
    rows = [
        {"prompt": [system, *user("Hi")], "responses": [assistant("Hello!"), assistant("Go away.")], "scores": [1, 0]},
        {"prompt": user("Bye"), "responses": [assistant("Bye!"), [{"role": "bot", "content": "x"}]], "scores": [1, 0]},
    ]
    source = local(tmp_path, rows)
    loaded = list(source.load("train", streaming=streaming))
    assert source.conversational and is_ranked(source)
    assert ranking(loaded[0]) == ([system, *user("Hi")], [assistant("Hello!"), assistant("Go away.")], [1.0, 0.0])
    assert problems(loaded) == [
        "",
        "responses[1]: message 0 has role 'bot', expected one of ('system', 'user', 'assistant')",
    ]


def test_local_ranked_rows_have_the_ranked_columns_and_types(tmp_path):
    text = local(tmp_path, LOCAL_ROWS).load("train")
    assert text.features == row_features(conversational=False, ranked=True)
    chat = [{"prompt": user("Hi"), "responses": [assistant("a"), assistant("b")], "scores": [1, 0]}]
    assert local(tmp_path, chat).load("train").features == row_features(conversational=True, ranked=True)


def test_local_ranked_hold_out(tmp_path):
    rows = [{"prompt": f"Q{i}?", "responses": [" yes", " no"], "scores": [i, -i - 1]} for i in range(10)]
    source = LocalSource(write_jsonl(tmp_path / "ranked.jsonl", rows), val_size=3, responses_column="responses")
    train, validation = source.load("train"), source.load("validation")
    assert (len(train), len(validation)) == (7, 3)
    assert sorted([*train["row"], *validation["row"]]) == list(range(10))
    for row in [*train, *validation]:
        assert ranking(row) == (f"Q{row['row']}?", [" yes", " no"], [float(row["row"]), -row["row"] - 1.0])


@MODES
def test_local_bad_ranked_rows_name_the_field(tmp_path, streaming):
    rows = [
        {"prompt": "a?", "responses": [" x", " y"], "scores": [1, "high"]},  # a non-number never reaches float64
        {"prompt": "b?", "responses": [" x", " y", " z"], "scores": [1, 2]},
        {"prompt": "c?", "responses": [" x"], "scores": [1]},
        {"prompt": "d?", "responses": [" x", " y"], "scores": [4, 4]},
        {"prompt": "e?", "responses": [" x", 7], "scores": [1, 2]},
        {"prompt": "f?", "responses": " x", "scores": [1, 2]},
        {"prompt": "g?", "responses": [" x", " y"], "scores": [1, None]},
        {"prompt": None, "responses": [" x", " y"], "scores": [1, 2]},
        {"prompt": "h?", "responses": [" x", " y"], "scores": [1, 2]},
    ]
    loaded = list(local(tmp_path, rows).load("train", streaming=streaming))
    assert problems(loaded) == [
        "scores: score 1 is not a number ('high')",
        "scores: 2 scores for 3 responses",
        "responses: 1 response(s); a ranking needs at least 2",
        f"scores: {SAME_SCORES}",
        "responses[1]: expected a string, got int",
        "responses: expected a list of responses, got str",
        "scores: score 1 is not a number (None)",
        "prompt: missing",
        "",
    ]
    assert [row["scores"] for row in loaded] == [None] * 8 + [[1.0, 2.0]]


@pytest.mark.parametrize(
    ("order", "problem"),
    [
        ([0, 0, 1], "ranking: not a permutation of 0..2 (got [0, 0, 1])"),
        ([0, 1], "ranking: 2 entries for 3 responses"),
        ([0, 1, 3], "ranking: not a permutation of 0..2 (got [0, 1, 3])"),
        ("0,1,2", "ranking: expected a list of response indices, got '0,1,2'"),
        ([0, 1.0, 2], "ranking: expected a list of response indices, got [0, 1.0, 2]"),
    ],
)
def test_local_bad_rankings_name_the_field(tmp_path, order, problem):
    source = local(tmp_path, LOCAL_ROWS[:1], scores_column=None, ranking_column="ranking")
    with pytest.raises(RowProblem) as error:
        source.parse({"prompt": "p", "responses": [" x", " y", " z"], "ranking": order})
    assert str(error.value) == problem


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"responses_column": "responses", "ranking_column": "ranking"}, "task.source.ranking_column"),  # and scores
        ({"responses_column": "responses", "scores_column": None}, "task.source.scores_column"),  # neither
        ({"responses_column": "responses", "prompt_column": None}, "task.source.prompt_column"),  # implicit prompt
        ({"ranking_column": "ranking"}, "task.source.ranking_column"),  # pairs have no ranking
    ],
)
def test_local_ranked_config_errors_name_the_key(tmp_path, options, key):
    path = write_jsonl(tmp_path / "ranked.jsonl", LOCAL_ROWS)
    with pytest.raises(ConfigError, match=rf"^{key}: "):
        LocalSource(path, val_path=path, **options)


def test_local_ranked_missing_column_names_the_file(tmp_path):
    path = write_jsonl(tmp_path / "ranked.jsonl", [{"prompt": "p", "responses": [" a", " b"]}] * 2)
    with pytest.raises(DataError, match=r"ranked.jsonl: missing column\(s\) \['scores'\]"):
        LocalSource(path, val_path=path, responses_column="responses").load("train")


# --- SHP grouped by post -------------------------------------------------------------------------------------


def shp(train: str = str(FIXTURES / "shp" / "posts.jsonl"), **options) -> SHPSource:
    files = {"train": train, "validation": str(FIXTURES / "shp" / "validation.jsonl")}
    return SHPSource(
        path="stanfordnlp/SHP", splits={"train": "train", "validation": "test"}, data_files=files, **options
    )


def shp_rows() -> list[dict]:
    return [json.loads(line) for line in (FIXTURES / "shp" / "posts.jsonl").read_text(encoding="utf-8").splitlines()]


def test_shp_posts_become_rankings_of_their_comments():
    loaded = list(shp(group_by_post=True).load("train"))
    assert [row["row"] for row in loaded] == [0, 3, 5, 7, 8, 10]
    assert ranking(loaded[0]) == (  # three rows, three comments, in order of first appearance
        "\n\nHuman: Why do recipes tell you to salt pasta water? Does it actually make a difference or is it a myth?"
        "\n\nAssistant:",
        [
            " It seasons the pasta from the inside as it absorbs water. Unsalted pasta tastes flat no matter how good"
            " the sauce is.",
            " It makes the water boil faster.",
            " Seasoning, mostly. It does raise the boiling point, but by a fraction of a degree at the amounts anyone"
            " uses, so that part is a myth.",
        ],
        [140.0, 12.0, 61.0],
    )
    assert ranking(loaded[1]) == (  # a post of one row: a ranking of two
        "\n\nHuman: If light has no mass, how can a black hole pull it in?\n\nAssistant:",
        [
            " Gravity in general relativity isn't a force on mass; it curves spacetime, and light follows the"
            " straightest possible path through that curved spacetime. Inside the event horizon every path leads"
            " inward.",
            " Black holes are just really strong.",
        ],
        [212.0, 7.0],
    )
    assert ranking(loaded[4]) == (  # unicode; a comment in two rows counts once
        "\n\nHuman: Что такое «категорический императив» у Канта — simply put? 🤔\n\nAssistant:",
        [
            " Act only on a rule you could will to be a law for everyone. „Lügen“ fails the test: if everyone lied,"
            " promises would mean nothing.",
            " Be nice. 😊",
            " Kant's test for duties: could everyone follow your maxim without contradiction? If not, it's"
            " forbidden — whatever your goals.",
        ],
        [58.0, 5.0, 23.0],
    )
    assert problems(loaded) == [
        "",
        "",
        "score_B: expected a positive number, got 0",  # reported at the bad raw row (5), the whole post is bad
        "score_A: comment h9d2j6t has another score (76) in row 6",
        "",
        f"scores: {SAME_SCORES}",
    ]
    assert ranking(loaded[2]) == (None, None, None)


def test_shp_grouped_rows_apply_no_score_ratio_filter():
    loaded = list(shp(group_by_post=True).load("validation"))  # every row its own post
    assert [row["scores"] for row in loaded] == [[88.0, 15.0], [12.0, 64.0], [20.0, 10.0], [9.0, 6.0]]
    assert problems(loaded) == ["", "", "", ""]  # row 3 (ratio 1.5) is filtered as a pair, ranked here
    assert loaded[1]["responses"][1].startswith(" It's an illusion")


def test_shp_pairs_are_unchanged_without_grouping():
    source = shp()
    assert not is_ranked(source)
    assert source.load("validation")[0]["chosen"].startswith(" Salted butter")


@pytest.mark.parametrize(
    ("row", "change", "problem"),
    [
        (1, {"history": "Why salt pasta water?"}, "history: differs from that of row 0 (the same post_id)"),
        (2, {"human_ref_B": "Seasoning."}, "human_ref_B: comment h2n8w2e has another text in row 1"),
        (1, {"c_root_id_B": "h2n1d3q"}, "c_root_id_B: the same comment as c_root_id_A"),
        (1, {"score_A": "many"}, "score_A: expected a positive number, got 'many'"),
        (2, {"human_ref_A": None}, "human_ref_A: missing"),
        (1, {"c_root_id_A": None}, "c_root_id_A: missing"),
    ],
)
def test_shp_a_bad_raw_row_makes_its_post_bad_at_that_row(tmp_path, row, change, problem):
    rows = shp_rows()
    rows[row].update(change)
    loaded = list(shp(write_jsonl(tmp_path / "posts.jsonl", rows), group_by_post=True).load("train"))
    assert (loaded[0]["row"], loaded[0]["problem"]) == (row, problem)
    assert [r["row"] for r in loaded[1:]] == [3, 5, 7, 8, 10]


def test_shp_rows_without_post_id_and_unreadable_lines_stay_rows_of_their_own(tmp_path):
    rows = shp_rows()
    rows[3]["post_id"] = None
    path = tmp_path / "posts.jsonl"
    lines = [json.dumps(row, ensure_ascii=False) for row in rows]
    lines.insert(1, '{"post_id": "o3x9pa", "history": ')  # a truncated line: a stand-in, at raw row 1
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    loaded = list(shp(str(path), group_by_post=True).load("train"))
    assert [(row["row"], row["problem"]) for row in loaded[:3]] == [
        (0, ""),  # the pasta post: its rows 0, 2, 3 (the stand-in at row 1 is not part of it)
        (1, "malformed JSON"),
        (4, "post_id: missing"),
    ]
    assert loaded[1]["message"].startswith(f"{path}: line 2: malformed JSON")
    assert loaded[0]["scores"] == [140.0, 12.0, 61.0]


def test_shp_grouping_config_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"^task.source.group_by_post: .*task.streaming=false"):
        shp(group_by_post=True).load("train", streaming=True)
    with pytest.raises(ConfigError, match=r"^task.source.min_score_ratio: filters pairs only"):
        shp(group_by_post=True, min_score_ratio=3.0)
    path = write_jsonl(
        tmp_path / "posts.jsonl", [{k: v for k, v in r.items() if k != "c_root_id_B"} for r in shp_rows()]
    )
    with pytest.raises(DataError, match=r"posts.jsonl.*missing column\(s\) \['c_root_id_B'\]"):
        shp(path, group_by_post=True).load("train")


# --- raw UltraFeedback ---------------------------------------------------------------------------------------


def ultrafeedback(files: dict | None = None, **options) -> UltraFeedbackRankedSource:
    if files is None:
        files = {split: str(FIXTURES / "ultrafeedback_raw" / f"{split}.jsonl") for split in SPLITS}
    return UltraFeedbackRankedSource(
        path="openbmb/UltraFeedback", splits={"train": "train"}, data_files=files, **options
    )


def uf_rows(split: str = "train") -> list[dict]:
    text = (FIXTURES / "ultrafeedback_raw" / f"{split}.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines()]


@MODES
def test_ultrafeedback_rows_become_rankings_by_mean_rating(streaming):
    train = list(ultrafeedback().load("train", streaming=streaming))
    validation = list(ultrafeedback().load("validation", streaming=streaming))
    assert train[0]["prompt"] == user(
        "Explain the difference between a list and a tuple in Python, and when you would use each."
    )
    assert train[0]["responses"][2] == assistant("Lists and tuples are the same except tuples are older.")
    assert train[1]["responses"][1] == assistant(
        "Cracking your knuckles releases gas from the joints. It is not known to cause arthritis."
    )
    assert ranking(train[3])[1:] == (  # the refusal rated "N/A" on every aspect is not ranked
        [
            assistant(
                "Cats swat objects to play, to explore, and because it gets your attention. Give her scheduled play"
                " sessions with a wand toy, keep the table clear of breakables, and don't react when she does it, so"
                " the trick stops paying off."
            ),
            assistant("It's usually boredom or attention seeking. More play and fewer objects on the table will help."),
            assistant("Cats hate tables. Spray her with water."),
        ],
        [4.75, 4.0, 1.75],
    )
    assert train[4]["prompt"] == user(
        "Explique en deux phrases ce qu'est la photosynthèse, puis donne le mot en japonais. 🌱"
    )
    assert train[4]["responses"][1] == assistant(
        "Les plantes fabriquent leur nourriture à partir de la lumière, de l'eau et du CO₂, et rejettent de"
        " l'oxygène. Japonais : 光合成."
    )
    assert [row["scores"] for row in train] == [
        [5.0, 4.5, 2.5, 3.25],
        [5.0, 13 / 3, 2.0, 3.25],  # honesty "N/A": the mean of the other three
        None,
        [4.75, 4.0, 1.75],
        [5.0, 4.5, 3.5, 4.25],
        None,
    ]
    assert problems(train) == [
        "",
        "",
        "completions: 1 of 4 have a score (mean_rating); a ranking needs 2",
        "",
        "",
        f"completions: {SAME_SCORES}",
    ]
    assert [row["scores"] for row in validation] == [[5.0, 2.0, 13 / 3, 1.25], [4.75, 4.75, 2.25, 3.0], None]
    assert validation[1]["responses"][0] == assistant(
        "The tide writes letters on the sand,\nand takes them back before they're read."
    )
    assert problems(validation) == ["", "", "completions: 0 of 0 have a score (mean_rating); a ranking needs 2"]
    assert [row["row"] for row in train] == list(range(6))


def test_ultrafeedback_mean_rating_is_the_datasets_fine_grained_score():
    for split in SPLITS:
        for raw, row in zip(uf_rows(split), ultrafeedback().load(split), strict=True):
            if not row["problem"]:
                rated = [c["fine-grained_score"] for c in raw["completions"] if c["fine-grained_score"] is not None]
                assert row["scores"] == rated


def test_ultrafeedback_overall_score():
    train = list(ultrafeedback(score="overall_score").load("train"))
    assert [row["scores"] for row in train] == [
        [8.5, 7.5, 4.0, 6.0],
        [9.0, 7.0, 3.0, 5.5],
        [9.0, 1.0, 1.0, 1.0],  # the critique scored the empty answers; the data module reports them empty
        [8.0, 2.0, 7.0, 3.0],
        [9.0, 8.0, 5.0, 7.5],
        [9.0, 8.5, 8.5, 8.0],
    ]
    assert train[2]["responses"][1] == assistant("")
    assert problems(train) == [""] * 6


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"instruction": None}, "instruction: missing"),
        ({"completions": None}, "completions: expected a list, got NoneType"),
        ({"completions": ["a reply"]}, "completions[0]: expected a record, got str"),
        ({(1, "response"): None}, "completions[1].response: missing"),
        (
            {(1, "annotations", "honesty", "Rating"): "good"},
            "completions[1].annotations.honesty.Rating: expected a number, got 'good'",
        ),
        (
            {(2, "annotations", "truthfulness", "Rating"): "inf"},
            "completions[2].annotations.truthfulness.Rating: expected a number, got 'inf'",
        ),
        ({(0, "annotations"): "5"}, "completions[0].annotations: expected a record, got str"),
    ],
)  # fmt: skip
def test_ultrafeedback_bad_values_name_the_field(change, problem):
    """`change`: column → value, or (completion, key, …) → value."""
    row = uf_rows()[0]
    for key, value in change.items():
        if isinstance(key, str):
            row[key] = value
            continue
        target = row["completions"][key[0]]
        for name in key[1:-1]:
            target = target[name]
        target[key[-1]] = value
    with pytest.raises(RowProblem) as error:
        ultrafeedback().parse(row)
    assert str(error.value) == problem


def test_ultrafeedback_unscored_completions_are_left_out():
    row = uf_rows()[0]
    for aspect in row["completions"][1]["annotations"].values():
        aspect["Rating"] = "N/A"
    row["completions"][2]["annotations"] = None
    row["completions"][0]["overall_score"] = None
    assert ultrafeedback().parse(row)["scores"] == [5.0, 3.25]
    assert ultrafeedback(score="overall_score").parse(row)["scores"] == [7.5, 4.0, 6.0]
    row["completions"][1]["overall_score"] = "high"
    with pytest.raises(RowProblem, match=r"^completions\[1\].overall_score: expected a number, got 'high'$"):
        ultrafeedback(score="overall_score").parse(row)


@MODES
@pytest.mark.parametrize(
    ("bad", "problem"), [(None, "instruction: missing"), (7, "instruction: expected a string, got int")]
)
def test_ultrafeedback_validation_is_held_out_of_train_by_instruction_hash(tmp_path, streaming, bad, problem):
    """A number among the instructions makes the column one of mixed types (read JSON-encoded, files.py): the text
    instructions still hash as themselves."""
    rows = [{**uf_rows()[0], "instruction": f"Question {i}: what is {i} + {i}?"} for i in range(40)]
    rows[7]["instruction"] = bad  # a bad row stays in train, where it is reported
    files = {"train": write_jsonl(tmp_path / "uf.jsonl", rows), "validation": None}
    source = ultrafeedback(files, val_fraction=0.25)
    train = list(source.load("train", streaming=streaming))
    validation = list(source.load("validation", streaming=streaming))
    expected = [i for i in range(40) if held_out(rows[i]["instruction"], 0.25)]
    assert [row["row"] for row in validation] == expected and 5 <= len(expected) <= 15
    assert [row["row"] for row in train] == [i for i in range(40) if i not in expected]
    assert {row["prompt"][0]["content"] for row in validation} == {rows[i]["instruction"] for i in expected}
    assert problems(train).count(problem) == 1
    assert source.origin("validation") == f"{tmp_path / 'uf.jsonl'} (train), held-out validation rows"
    assert source.origin("train") == f"{tmp_path / 'uf.jsonl'} (train)"
    assert held_out("Question 3: what is 3 + 3?", 0.25) == held_out("Question 3: what is 3 + 3?", 0.25)


def test_ultrafeedback_a_split_of_its_own_is_read_whole():
    assert not ultrafeedback().holds_out  # data_files.validation
    hub = UltraFeedbackRankedSource(path="openbmb/UltraFeedback", splits={"train": "train"})
    assert hub.holds_out and hub.origin("validation") == "openbmb/UltraFeedback split 'train', held-out validation rows"
    both = UltraFeedbackRankedSource(path="openbmb/UltraFeedback", splits={"train": "train", "validation": "train"})
    assert not both.holds_out


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"score": "median"}, "task.source.score"),
        ({"val_fraction": 0.0}, "task.source.val_fraction"),
        ({"val_fraction": 1}, "task.source.val_fraction"),
    ],
)
def test_ultrafeedback_config_errors_name_the_key(options, key):
    with pytest.raises(ConfigError, match=rf"^{key}: "):
        ultrafeedback(**options)


@MODES
def test_ultrafeedback_missing_column_names_the_file(tmp_path, streaming):
    rows = [{k: v for k, v in row.items() if k != "completions"} for row in uf_rows()]
    files = {"train": write_jsonl(tmp_path / "uf.jsonl", rows), "validation": None}
    with pytest.raises(DataError, match=r"uf.jsonl.*missing column.*completions"):
        list(ultrafeedback(files).load("train", streaming=streaming))


def test_ultrafeedback_ranked_config_composes_and_reads_the_fixtures():
    files = [f"task.source.data_files.{split}={FIXTURES / 'ultrafeedback_raw' / f'{split}.jsonl'}" for split in SPLITS]
    cfg = compose("task=ultrafeedback_ranked", *files)
    built = build(cfg.task.source, "task.source")
    assert type(built) is UltraFeedbackRankedSource and built.score == "mean_rating"
    for split in SPLITS:
        assert list(built.load(split)) == list(ultrafeedback().load(split))


# --- task=sentiment, K samples per prompt --------------------------------------------------------------------

VADER = SentimentIntensityAnalyzer()  # our own instance, independent of the module's cached one


def test_sentiment_pairs_are_unchanged():
    """The rows of the pair generator before rankings were added (README figures depend on them)."""
    rows = generate_sentiment_pairs(200, seed=1234, min_margin=0.3, labeller=LABELLER)
    assert rows[0] == {
        "prompt": "My review of Letters from Iron Harbor: the acting is",
        "chosen": " not ridiculous, but the audience applauded.",
        "rejected": " a complete mess, yet I regret buying a ticket.",
    }
    assert rows[1]["chosen"] == (
        " not extremely pleasant and fun, and I would happily watch it again, but the script was funny."
    )
    digest = hashlib.sha256(json.dumps(rows).encode()).hexdigest()
    assert digest == "d17dab53d0403eab09b24ded7027a96cd7875e4069e14cc3d0779a0f1c39de7a"
    source = SentimentSource(LABELLER, num_train_pairs=150, num_val_pairs=50, seed=1234, min_margin=0.3)
    assert not is_ranked(source)
    assert source.load("train").select_columns(["prompt", "chosen", "rejected"]).to_list() == rows[:150]


def test_sentiment_rankings_are_scored_by_vader_and_spread_by_the_margin():
    rows = generate_sentiment_rankings(60, responses_per_prompt=4, seed=5, min_margin=0.2, labeller=LABELLER)
    assert generate_sentiment_rankings(60, responses_per_prompt=4, seed=5, min_margin=0.2, labeller=LABELLER) == rows
    assert (
        generate_sentiment_rankings(10, responses_per_prompt=4, seed=5, min_margin=0.2, labeller=LABELLER) == rows[:10]
    )
    assert len({row["prompt"] for row in rows}) == 60
    pairs = generate_sentiment_pairs(60, seed=5, min_margin=0.2, labeller=LABELLER)
    assert [row["prompt"] for row in rows[:1]] == [pairs[0]["prompt"]]  # the same first prompt as the pairs
    for row in rows:
        assert len(row["responses"]) == len(set(row["responses"])) == len(row["scores"]) == 4
        assert row["scores"] == [VADER.polarity_scores(row["prompt"] + r)["compound"] for r in row["responses"]]
        ordered = sorted(row["scores"])
        assert all(b - a >= 0.2 for a, b in pairwise(ordered)), row
        assert all(r.startswith(" ") and r.endswith(".") for r in row["responses"])
    best_first = sum(row["scores"][0] == max(row["scores"]) for row in rows)
    assert 5 < best_first < 30  # responses stay in the order drawn: the best is anywhere


@MODES
def test_sentiment_source_with_rankings(streaming):
    source = SentimentSource(
        LABELLER, num_train_pairs=5, num_val_pairs=2, seed=3, min_margin=0.1, responses_per_prompt=3
    )
    assert is_ranked(source)
    rows = generate_sentiment_rankings(7, 3, seed=3, min_margin=0.1, labeller=LABELLER)
    train, validation = source.load("train", streaming=streaming), source.load("validation", streaming=streaming)
    assert list(train) == [{"row": i, **row, "problem": "", "message": ""} for i, row in enumerate(rows[:5])]
    assert list(validation) == [{"row": i, **row, "problem": "", "message": ""} for i, row in enumerate(rows[5:])]
    if not streaming:
        assert train.features == row_features(conversational=False, ranked=True)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"responses_per_prompt": 1}, r"^task.source.responses_per_prompt: must be ≥ 2"),
        ({"responses_per_prompt": 5, "min_margin": 0.5}, r"^task.source.responses_per_prompt: 5 rewards in \[-1, 1\]"),
    ],
)
def test_sentiment_ranking_config_errors(options, message):
    with pytest.raises(ConfigError, match=message):
        SentimentSource(LABELLER, num_train_pairs=2, num_val_pairs=1, **options)


def test_sentiment_an_unreachable_margin_fails_instead_of_hanging():
    with pytest.raises(ValueError, match=r"min_margin=0.999: no continuation that far"):
        generate_sentiment_rankings(1, responses_per_prompt=3, seed=0, min_margin=0.999, labeller=LABELLER)
    with pytest.raises(ValueError, match="responses_per_prompt"):
        generate_sentiment_rankings(1, responses_per_prompt=1, seed=0, labeller=LABELLER)


def test_sentiment_config_keeps_pairs_by_default():
    cfg = compose("task=sentiment", "task.source.responses_per_prompt=3", "task.source.num_train_pairs=4")
    built = build(cfg.task.source, "task.source", num_val_pairs=2)
    assert is_ranked(built) and len(built.load("validation")[0]["responses"]) == 3
    assert OmegaConf.load(CONF_DIR / "task" / "sentiment.yaml").source.responses_per_prompt is None


def test_every_ranked_split_is_a_dataset_of_the_ranked_features():
    sources = [shp(group_by_post=True), ultrafeedback()]
    for source in sources:
        rows = source.load("train")
        assert isinstance(rows, datasets.Dataset)
        assert rows.features == row_features(source.conversational, ranked=True)
