"""Hub task sources (hh, tldr, shp, ultrafeedback) on fixtures in the exact hub schemas: hand-written expected
triples, the problems of the awkward rows, streaming = map-style, configs, and the offline error."""

import json
import socket
import time
from pathlib import Path

import datasets
import huggingface_hub
import pytest
from helpers import FIXTURES, compose, write_jsonl
from omegaconf import OmegaConf

from dpo_lightning.conf import CONF_DIR
from dpo_lightning.data.sources.base import FILTERED, HubSource
from dpo_lightning.data.sources.hh import HHSource
from dpo_lightning.data.sources.shp import SHPSource
from dpo_lightning.data.sources.tldr import TLDRSource
from dpo_lightning.data.sources.ultrafeedback import UltraFeedbackSource
from dpo_lightning.data.validate import triple_problem
from dpo_lightning.errors import ConfigError, DataError, RowProblem
from dpo_lightning.instantiate import build

SOURCES = {"hh": HHSource, "tldr": TLDRSource, "shp": SHPSource, "ultrafeedback": UltraFeedbackSource}
SPLITS = ("train", "validation")


def fixture(task: str, split: str) -> str:
    return str(FIXTURES / task / f"{split}.jsonl")


def source(task: str, **options) -> HubSource:
    """The task's source reading the fixtures (the hub id and split names are never used)."""
    files = {split: fixture(task, split) for split in SPLITS}
    return SOURCES[task](path=f"hub/{task}", splits=dict.fromkeys(SPLITS, "unused"), data_files=files, **options)


def load(task: str, split: str, **options) -> list[dict]:
    return list(source(task, **options).load(split))


def raw_rows(task: str, split: str) -> list[dict]:
    return [json.loads(line) for line in Path(fixture(task, split)).read_text(encoding="utf-8").splitlines()]


def triple(row: dict) -> tuple:
    return row["prompt"], row["chosen"], row["rejected"]


# --- hh ---------------------------------------------------------------------------------------------------------


def test_hh_rows_become_prompt_and_final_answers():
    train, validation = load("hh", "train"), load("hh", "validation")
    assert triple(train[0]) == (
        "\n\nHuman: What are some good ways to keep basil fresh after buying it?\n\nAssistant:",
        " Trim the stems and stand the bunch in a glass of water on the counter, like cut flowers. Basil dislikes the"
        " cold, so the fridge turns its leaves black.",
        " Put it in the fridge.",
    )
    assert triple(train[1]) == (  # multi-turn: the earlier turns stay in the prompt
        "\n\nHuman: Can you help me plan a trip to Lisbon?"
        "\n\nAssistant: Sure! How many days will you be there, and what do you enjoy doing when you travel?"
        "\n\nHuman: Four days. I like food and old neighbourhoods."
        "\n\nAssistant: Then stay in Alfama or Baixa. Spend a morning in Alfama's lanes, have lunch at the Time Out"
        " Market, and ride tram 28 up to Graça."
        "\n\nHuman: Is a day trip to Sintra worth it?"
        "\n\nAssistant:",
        " Yes. Take the train from Rossio early (about 40 minutes) and visit Pena Palace before the tour buses arrive.",
        " I don't know, it depends on what you like.",
    )
    assert triple(train[4]) == (
        '\n\nHuman: ¿Cómo se dice "thank you" en japonés? 🙏\n\nAssistant:',
        " Se dice «ありがとう» (arigatō). Para ser más formal: «ありがとうございます» (arigatō gozaimasu) 😊",
        " Se dice «谢谢» (xièxie).",
    )
    assert triple(train[5])[2] == ""  # an empty answer passes through; the data module reports it
    assert triple(validation[2]) == (
        "\n\nHuman: Qu'est-ce qu'un croque-monsieur ?\n\nAssistant:",
        " C'est un sandwich chaud français : jambon et fromage (souvent de l'emmental ou du gruyère) entre deux"
        " tranches de pain de mie, grillé, parfois nappé de béchamel. 🥪",
        " Un dessert.",
    )
    other_prompt = "rejected: does not share the chosen dialogue's prompt (up to its last '\\n\\nAssistant:')"
    assert [r["problem"] for r in train] == ["", "", "chosen: no '\\n\\nAssistant:' turn", other_prompt, "", ""]
    assert [r["problem"] for r in validation] == ["", "", "", other_prompt]
    assert [r["row"] for r in train] == list(range(6))
    assert triple(train[2]) == (None, None, None)


def extract_anthropic_prompt(prompt_and_response):
    """Transcribed from eric-mitchell/direct-preference-optimization, preference_datasets.py."""
    search_term = "\n\nAssistant:"
    search_term_idx = prompt_and_response.rfind(search_term)
    assert search_term_idx != -1, f"Prompt and response does not contain '{search_term}'"
    return prompt_and_response[: search_term_idx + len(search_term)]


def split_prompt_and_responses(ex):
    """Transcribed from the same file's `get_hh`."""
    prompt = extract_anthropic_prompt(ex["chosen"])
    chosen_response = ex["chosen"][len(prompt) :]
    rejected_response = ex["rejected"][len(prompt) :]
    return prompt, chosen_response, rejected_response


@pytest.mark.parametrize("split", SPLITS)
def test_hh_agrees_with_the_reference_implementation_on_every_good_row(split):
    good = [(row, raw) for row, raw in zip(load("hh", split), raw_rows("hh", split), strict=True) if not row["problem"]]
    assert len(good) >= 3
    for row, raw in good:
        assert triple(row) == split_prompt_and_responses(raw)


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        ({"chosen": 3, "rejected": "\n\nHuman: hi\n\nAssistant: hey"}, "chosen: expected a string, got int"),
        ({"chosen": "\n\nHuman: hi\n\nAssistant: hey", "rejected": None}, "rejected: missing"),
        ({"chosen": "\n\nHuman: hi", "rejected": "\n\nHuman: hi"}, "chosen: no '\\n\\nAssistant:' turn"),
    ],
)
def test_hh_bad_values_name_the_field(row, problem):
    with pytest.raises(RowProblem) as error:
        source("hh").parse(row)
    assert str(error.value) == problem


# --- tldr -------------------------------------------------------------------------------------------------------


def test_tldr_rows_become_reddit_prompts_and_summaries():
    train, validation = load("tldr", "train"), load("tldr", "validation")
    assert triple(train[0]) == (
        "SUBREDDIT: r/relationships\n"
        "TITLE: My [24 F] boyfriend [26 M] wants to move across the country for a job and I don't know if I should"
        " follow\n"
        "POST: We've been together three years and live together in Boston. He just got an offer in Seattle that pays"
        " almost double, and he wants me to come with him.\n\nI love him, but my whole family is here and I just got"
        " promoted. He says we can try long distance for a year if I don't want to move yet, but we did long distance"
        " in college and it was miserable.\n\nHow do people make this decision?\n"
        "TL;DR:",
        " Boyfriend got a great job offer across the country and wants me to move with him. I love him but would be"
        " leaving my family and a new promotion. How do I decide?",
        " bf wants to move for job, i dont want to leave",
    )
    assert triple(train[1]) == (  # choice 1; the post itself mentions "TL;DR"
        "SUBREDDIT: r/personalfinance\n"
        'TITLE: Landlord wants to keep my whole deposit for "normal wear and tear"\n'
        "POST: I moved out last month after two years. The landlord sent a letter saying he is keeping the full $1,800"
        " deposit for repainting and carpet cleaning. My lease (I actually read past the TL;DR box they put on page"
        " one this time) says the tenant pays for damage beyond normal wear and tear. I have move-in and move-out"
        " photos and the walls just look like two years of living. TL;DR of my question: what do I do next?\n"
        "TL;DR:",
        " Landlord keeps $1,800 deposit for wear and tear; I have photos showing no damage. How do I get it back?",
        " Landlord is keeping my entire deposit for repainting and cleaning. Lease says I only pay for damage beyond"
        " normal wear and tear. What should I do?",
    )
    assert triple(train[3]) == (
        "SUBREDDIT: r/AskEurope\n"
        "TITLE: Is it rude to say « bon appétit » at lunch in a Zürich office? 🇨🇭\n"
        "POST: I moved from Lyon to Zürich for work. At lunch I always say « bon appétit » and my Swiss-German"
        " colleagues answer « än Guete », but my Japanese coworker from 東京 says いただきます and nobody"
        " answers her 😅."
        " Should I switch to « än Guete »? Is saying it in French seen as arrogant here?\n"
        "TL;DR:",
        " I say « bon appétit » at lunch in my Zürich office and colleagues reply « än Guete ». Should I switch, and is"
        " saying it in French rude?",
        " french guy in zürich worried about lunch etiquette 🇨🇭",
    )
    long_prompt = train[2]["prompt"]
    assert long_prompt.startswith(
        "SUBREDDIT: r/CampingandHiking\nTITLE: I quit my thru-hike at day 80. Should I go back and finish next year?\n"
        "POST: I kept a short log every night of my thru-hike attempt this spring"
    )
    assert long_prompt.endswith("or is it better to accept that I stopped?\nTL;DR:")
    assert len(long_prompt.split()) > 2000
    assert validation[1]["rejected"] == " risotto bad"  # " risotto bad \n" on the hub: stripped, one leading space
    assert [r["problem"] for r in train] == [
        "",
        "",
        "",
        "",
        "choice: expected 0 or 1, got 2",
        "summaries: expected two, got 1",
    ]
    assert [r["problem"] for r in validation] == [
        "",
        "",
        "filtered: news article (CNN/DM) comparison",
        "choice: expected 0 or 1, got None",
    ]


def test_tldr_prompts_end_with_the_configured_suffix():
    suffix = OmegaConf.load(CONF_DIR / "task" / "tldr.yaml").tokenize.prompt_suffix
    assert suffix == "\nTL;DR:"
    prompts = [r["prompt"] for split in SPLITS for r in load("tldr", split) if not r["problem"]]
    assert len(prompts) == 6
    assert all(p.endswith(suffix) and p.count(suffix) == 1 for p in prompts)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"info": None}, "info: expected a record, got NoneType"),
        ({"summaries": [{"text": " a"}, {"text": None}]}, "summaries: a summary has no string 'text'"),
        ({"summaries": None}, "summaries: expected two, got NoneType"),
        ({"choice": True}, "choice: expected 0 or 1, got True"),
        ({"choice": 1.0}, "choice: expected 0 or 1, got 1.0"),
    ],
)
def test_tldr_bad_values_name_the_field(change, problem):
    row = {**raw_rows("tldr", "train")[0], **change}
    with pytest.raises(RowProblem) as error:
        source("tldr").parse(row)
    assert str(error.value) == problem


def test_tldr_post_missing_without_an_article_is_a_problem_not_a_filter():
    row = raw_rows("tldr", "train")[0]
    row["info"] = {**row["info"], "post": None}
    with pytest.raises(RowProblem, match=r"^info.post: missing$"):
        source("tldr").parse(row)


# --- shp --------------------------------------------------------------------------------------------------------


def test_shp_rows_follow_labels_and_the_score_ratio_filter():
    train, validation = load("shp", "train"), load("shp", "validation")
    assert triple(train[0]) == (  # labels 1: A preferred
        "\n\nHuman: What's the actual difference between baking soda and baking powder? Recipes seem to use them"
        " interchangeably but my cookies come out totally different.\n\nAssistant:",
        " Baking soda is pure sodium bicarbonate and needs an acid in the dough (brown sugar, buttermilk) to react."
        " Baking powder already contains the acid, so it works on its own. Soda also browns more, which is why your"
        " cookies spread and darken.",
        " They're basically the same thing.",
    )
    assert triple(train[1]) == (  # labels 0: B preferred
        "\n\nHuman: ELI5: Why do we get goosebumps when we're cold or scared?\n\nAssistant:",
        " Tiny muscles at the base of each hair contract. In furrier ancestors that fluffed up the fur, trapping warm"
        " air or making them look bigger to a threat. We kept the reflex but lost most of the fur.",
        " Hair stands up.",
    )
    assert train[4]["prompt"] == (
        "\n\nHuman: Was bedeutet „Dasein“ bei Heidegger eigentlich? I keep seeing it left untranslated in English"
        ' texts — is it just "existence"? 🤔\n\nAssistant:'
    )
    assert triple(validation[2]) == (  # score ratio exactly 2 (20 / 10): kept
        "\n\nHuman: ELI5: How do touchscreens know where my finger is?\n\nAssistant:",
        " Your finger conducts electricity. The screen has a grid of wires carrying a tiny charge, and touching it"
        " changes the charge at the crossing points under your finger.",
        " Pressure sensors.",
    )
    assert [r["problem"] for r in train] == [
        "",
        "",
        "filtered: score ratio < 2.0",
        "score_B: expected a positive number, got 0",
        "",
        "labels: expected 0 or 1, got 2",
    ]
    assert [r["problem"] for r in validation] == ["", "", "", "filtered: score ratio < 2.0"]


def test_shp_min_score_ratio_is_configurable():
    assert [r["problem"] for r in load("shp", "train", min_score_ratio=1.0)][2] == ""
    assert [r["problem"] for r in load("shp", "validation", min_score_ratio=2.5)] == [
        "",
        "",
        "filtered: score ratio < 2.5",
        "filtered: score ratio < 2.5",
    ]
    with pytest.raises(ConfigError, match=r"^task.source.min_score_ratio: must be ≥ 1"):
        source("shp", min_score_ratio=0.5)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"score_A": "52"}, "score_A: expected a positive number, got '52'"),
        ({"score_B": -3}, "score_B: expected a positive number, got -3"),
        ({"score_A": None}, "score_A: expected a positive number, got None"),
        ({"labels": None}, "labels: expected 0 or 1, got None"),
        ({"history": None}, "history: missing"),
        ({"human_ref_B": 7}, "human_ref_B: expected a string, got int"),
    ],
)
def test_shp_bad_values_name_the_field(change, problem):
    row = {**raw_rows("shp", "train")[0], **change}
    with pytest.raises(RowProblem) as error:
        source("shp").parse(row)
    assert str(error.value) == problem


# --- ultrafeedback ----------------------------------------------------------------------------------------------


def test_ultrafeedback_rows_become_prompt_messages_and_answers():
    train, validation = load("ultrafeedback", "train"), load("ultrafeedback", "validation")
    haiku = "Cold rain on the roof,\nmaple leaves float down the drain —\nthe kettle whistles."
    assert triple(train[0]) == (
        [{"role": "user", "content": "Write a haiku about autumn rain."}],
        [{"role": "assistant", "content": haiku}],
        [{"role": "assistant", "content": "Autumn rain is wet. It falls from the sky in the autumn season. Leaves."}],
    )
    assert train[1]["prompt"] == [  # a system message stays in the prompt
        {"role": "system", "content": "You are a concise literature tutor."},
        {"role": "user", "content": "Summarise the plot of Hamlet in two sentences."},
    ]
    assert triple(train[2]) == (  # a multi-turn prompt
        [
            {"role": "user", "content": "Give me a simple recipe for minestrone."},
            {
                "role": "assistant",
                "content": "Sweat onion, carrot, celery and pancetta, add chicken stock, tomatoes, beans and small"
                " pasta, and simmer for 20 minutes.",
            },
            {"role": "user", "content": "Can you make it vegetarian?"},
        ],
        [
            {
                "role": "assistant",
                "content": "Sure: swap the chicken stock for vegetable stock and the pancetta for smoked"
                " paprika-roasted mushrooms; everything else stays the same.",
            }
        ],
        [{"role": "assistant", "content": "Just leave out the meat."}],
    )
    assert validation[1]["chosen"] == [
        {
            "role": "assistant",
            "content": '「おはようございます」は朝のあいさつで、英語の "Good morning" にあたります。'
            "友達同士なら「おはよう」だけでも大丈夫です。🌅",
        }
    ]
    assert [r["problem"] for r in train] == [
        "",
        "",
        "",
        "chosen: empty message list",
        "rejected: does not share the chosen conversation's prompt",
        "",
        "chosen: expected prompt messages and an answer, got 1 message",
    ]
    assert [r["problem"] for r in validation] == [
        "",
        "",
        "rejected: message 1 has role 'bot', expected one of ('system', 'user', 'assistant')",
    ]


def test_ultrafeedback_bad_values_name_the_field():
    with pytest.raises(RowProblem, match=r"^rejected: expected a list of messages, got str$"):
        source("ultrafeedback").parse({"chosen": raw_rows("ultrafeedback", "train")[0]["chosen"], "rejected": "hi"})


# --- every source -----------------------------------------------------------------------------------------------

# (usable, bad, filtered) rows of each fixture once the data module's own checks (`triple_problem`) have run too:
# bad rows stop a run or, with skip_bad_rows, are skipped and counted; filtered rows are always skipped and counted.
COUNTS = {
    ("hh", "train"): (3, 3, 0),
    ("hh", "validation"): (3, 1, 0),
    ("tldr", "train"): (4, 2, 0),
    ("tldr", "validation"): (2, 1, 1),
    ("shp", "train"): (3, 2, 1),
    ("shp", "validation"): (3, 0, 1),
    ("ultrafeedback", "train"): (4, 3, 0),
    ("ultrafeedback", "validation"): (2, 1, 0),
}


@pytest.mark.parametrize(("task", "split"), COUNTS)
def test_each_fixture_has_usable_bad_and_filtered_rows(task, split):
    problems = [row["problem"] or triple_problem(*triple(row)) for row in load(task, split)]
    filtered = sum(problem.startswith(FILTERED) for problem in problems)
    usable = problems.count("")
    assert (usable, len(problems) - usable - filtered, filtered) == COUNTS[task, split]


@pytest.mark.parametrize("task", SOURCES)
@pytest.mark.parametrize("split", SPLITS)
def test_streaming_yields_the_same_rows_as_map_style(task, split):
    stream = source(task).load(split, streaming=True)
    assert isinstance(stream, datasets.IterableDataset)
    assert list(stream) == load(task, split)


@pytest.mark.parametrize("task", SOURCES)
@pytest.mark.parametrize("streaming", [False, True], ids=["map-style", "streaming"])
def test_a_missing_required_column_names_the_file_and_column(task, streaming, tmp_path):
    column = SOURCES[task].required_columns[-1]
    path = tmp_path / f"{task}-without-{column}.jsonl"
    rows = [{k: v for k, v in row.items() if k != column} for row in raw_rows(task, "train")]
    write_jsonl(path, rows)
    broken = SOURCES[task](path=task, splits={"train": "train"}, data_files={"train": str(path)})
    with pytest.raises(DataError, match=rf"{path.name}.*missing column.*{column}"):
        list(broken.load("train", streaming=streaming))


EXPECTED_KEYS = {"_target_", "path", "subset", "data_dir", "revision", "splits", "data_files"}  # task.source


@pytest.mark.parametrize("task", SOURCES)
def test_task_configs_compose_and_instantiate_on_the_fixtures(task):
    overrides = [f"task={task}", *(f"task.source.data_files.{split}={fixture(task, split)}" for split in SPLITS)]
    cfg = compose(*overrides)
    options = OmegaConf.to_container(cfg.task.source, resolve=True)
    assert set(options) == EXPECTED_KEYS | ({"min_score_ratio", "group_by_post"} if task == "shp" else set())
    assert set(options["splits"]) == set(options["data_files"]) == set(SPLITS)
    built = build(cfg.task.source, "task.source")  # as run.py does
    assert type(built) is SOURCES[task]
    for split in SPLITS:
        assert list(built.load(split)) == load(task, split)


def test_an_unreachable_hub_dataset_is_one_line_naming_task_data_files(monkeypatch, tmp_path):
    def no_network(*args, **kwargs):
        raise AssertionError("tried to reach the network")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # `datasets` and `huggingface_hub` read those variables when imported: set what they read them into.
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path)  # nothing cached to fall back on
    hub = HHSource(path="dpo-lightning-tests/not-a-dataset", splits={"train": "train"})
    for streaming in (False, True):
        start = time.monotonic()
        with pytest.raises(DataError) as error:
            hub.load("train", streaming=streaming)
        assert time.monotonic() - start < 5  # fails at once: no retries
        message = str(error.value)
        assert "\n" not in message and "'dpo-lightning-tests/not-a-dataset'" in message
        assert "task.source.data_files.train=FILE" in message
