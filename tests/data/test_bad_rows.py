"""Bad input for every task source, through the real path: a composed config → `run.build_datamodule` → `setup`
(and, streaming, one pass of each loader), map-style and streaming alike.

Every bad case either stops the run with one line naming file, row (or line) and field, or, with
`task.skip_bad_rows=true`, is skipped and counted under its reason in the report that summary.json records as
`data`. Usable oddities (a prompt longer than max_length, duplicate pairs) are kept and counted. Hub tasks read
rows in their exact hub schema (a fixture row with some fields replaced) through `task.source.data_files`. task=imdb
(prompts only) is here for its unreadable lines; its bad reviews are in test_imdb.py.
"""

from __future__ import annotations

import copy
import functools
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import FIXTURES, compose
from omegaconf import DictConfig, OmegaConf
from transformers import PreTrainedTokenizerBase

from dpo_lightning.cli.checks import TASK_KEYS, TOKENIZE_KEYS
from dpo_lightning.data.datamodule import PreferenceDataModule
from dpo_lightning.data.prepare import PairPreparer, RowReport
from dpo_lightning.data.tokenize import PairTokenizer, TokenizeSettings
from dpo_lightning.errors import ConfigError, DataError
from dpo_lightning.instantiate import build
from dpo_lightning.models.loading import load_tokenizer
from dpo_lightning.runtime.run import build_datamodule

MAX_LENGTH, MAX_PROMPT_LENGTH = 96, 64  # a cut response keeps 96 − 64 = 32 tokens
LONG = "la " * 50  # 100 tokens: two answers that differ only after it are cut to the same 32 tokens
LONG_PROMPT = "Why " * 80 + "?"  # 162 tokens: longer than max_length itself
MODES = pytest.mark.parametrize("streaming", [False, True], ids=["map-style", "streaming"])
Row = dict[str, Any]


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def assistant(text: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": text}


@functools.cache
def _template(task: str) -> str:
    return (FIXTURES / task / "train.jsonl").read_text(encoding="utf-8").splitlines()[0]


def template(task: str) -> Row:
    """A fresh copy of the first fixture row of a hub task: every column of the hub schema."""
    return json.loads(_template(task))


def local_row(question: str, chosen: Any, rejected: Any) -> Row:
    return {"prompt": question, "chosen": " " + chosen, "rejected": " " + rejected}


def local_chat_row(question: str, chosen: Any, rejected: Any) -> Row:
    return {"prompt": [user(question)], "chosen": [assistant(chosen)], "rejected": [assistant(rejected)]}


def hh_row(question: str, chosen: Any, rejected: Any) -> Row:
    head = f"\n\nHuman: {question}\n\nAssistant: "
    return {"chosen": head + chosen, "rejected": head + rejected}


def tldr_row(question: str, chosen: Any, rejected: Any) -> Row:
    row = template("tldr")
    summaries = [{**summary, "text": text} for summary, text in zip(row["summaries"], (chosen, rejected), strict=True)]
    info = {**row["info"], "title": "Help", "post": question}  # a short title: the prompt fits its budget
    return {**row, "info": info, "summaries": summaries, "choice": 0}


def shp_row(question: str, chosen: Any, rejected: Any) -> Row:
    scores = {"score_A": 30, "score_B": 3, "labels": 1}  # A preferred, score ratio 10: kept
    return {**template("shp"), "history": question, "human_ref_A": chosen, "human_ref_B": rejected, **scores}


def ultrafeedback_row(question: str, chosen: Any, rejected: Any) -> Row:
    chosen_messages, rejected_messages = [user(question), assistant(chosen)], [user(question), assistant(rejected)]
    return {
        **template("ultrafeedback"),
        "prompt": question,
        "chosen": chosen_messages,
        "rejected": rejected_messages,
        "messages": chosen_messages,
    }


# source → (its conf/task option, how (question, chosen answer, rejected answer) becomes a raw row of its schema)
SOURCES: dict[str, tuple[str, Callable[[str, Any, Any], Row]]] = {
    "local": ("local", local_row),
    "local-chat": ("local", local_chat_row),
    "hh": ("hh", hh_row),
    "tldr": ("tldr", tldr_row),
    "shp": ("shp", shp_row),
    "ultrafeedback": ("ultrafeedback", ultrafeedback_row),
}


def good(source: str, k: int) -> Row:
    return SOURCES[source][1](f"Question {k}?", f"Answer {k}.", f"Wrong {k}.")


def without(row: Row, column: str) -> Row:
    return {key: value for key, value in row.items() if key != column}


def bad_rows(source: str) -> dict[str, tuple[Row, str]]:
    """case → (a raw row of `source` with that problem, the problem the data module names)."""
    make = SOURCES[source][1]
    row = make("Is it bad?", "Bad answer.", "Other answer.")
    match source:
        case "local":
            cases = {
                "empty": ({**row, "chosen": " "}, "chosen: empty"),
                "non-string": ({**row, "chosen": 3}, "chosen: expected a string, got int"),
                "missing": (without(row, "rejected"), "rejected: missing"),
            }
        case "local-chat":
            cases = {
                "empty": (make("Is it bad?", "", "Other answer."), "chosen: message 0 has empty content"),
                "non-string": (make("Is it bad?", 3, "Other answer."), "chosen: message 0 has no string 'content'"),
                "missing": (without(row, "rejected"), "rejected: missing"),
                "role order": (
                    {**row, "prompt": [assistant("Hi")]},
                    "prompt: roles ['assistant'] must alternate user/assistant, starting with user",
                ),
            }
        case "hh":
            cases = {
                "empty": (make("Is it bad?", "", "Other answer."), "chosen: empty"),
                "non-string": ({**row, "chosen": 3}, "chosen: expected a string, got int"),
                "missing": (without(row, "rejected"), "rejected: missing"),
            }
        case "tldr":
            cases = {
                "empty": (make("Is it bad?", "  ", "Other answer."), "chosen: empty"),
                "non-string": (make("Is it bad?", 3, "Other answer."), "summaries: a summary has no string 'text'"),
                "missing": (without(row, "summaries"), "summaries: expected two, got NoneType"),
            }
        case "shp":
            cases = {
                "empty": (make("Is it bad?", "", "Other answer."), "chosen: empty"),
                "non-string": (make("Is it bad?", 3, "Other answer."), "human_ref_A: expected a string, got int"),
                "missing": (without(row, "human_ref_B"), "human_ref_B: missing"),
            }
        case "ultrafeedback":
            cases = {
                "empty": (make("Is it bad?", "", "Other answer."), "chosen: message 0 has empty content"),
                "non-string": (make("Is it bad?", 3, "Other answer."), "chosen: message 1 has no string 'content'"),
                "missing": (without(row, "rejected"), "rejected: missing"),
                "role order": (
                    {**row, "chosen": [user("Is it bad?"), user("Bad answer.")]},
                    "chosen: roles ['user'] must alternate assistant/user and end with assistant",
                ),
            }
    return {
        **cases,
        "identical": (make("Same?", "Same.", "Same."), "chosen: identical to rejected"),
        "identical after truncation": (
            make("Cut?", LONG + "A.", LONG + "B."),
            "chosen: identical to rejected after truncation",
        ),
    }


ROW_CASES = [(source, case) for source in SOURCES for case in bad_rows(source)]


def unreadable_line(case: str, source: str) -> tuple[bytes, str]:
    """(a line of `source`'s file that cannot be read as a record, the detail its error gives)."""
    if case == "malformed JSON":
        return b'{"chosen": "a", ', "Expecting property name enclosed in double quotes at column 17"
    if case == "invalid UTF-8":  # "Answer 9." with a Latin-1 é: valid JSON, not UTF-8
        line = json.dumps(good(source, 9)).encode().replace(b"Answer", b"Answ\xe9r")
        return line, f"byte 0xe9 at byte {line.index(0xE9) + 1} of the line"
    return b'["a", "b"]', "got an array"


UNREADABLE = ("malformed JSON", "invalid UTF-8", "not a JSON object")


def write(path: Path, lines: list[Row | bytes]) -> Path:
    """A JSON Lines file: rows as JSON, bytes as they are."""
    path.write_bytes(
        b"".join((line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n" for line in lines)
    )
    return path


@functools.cache
def _composed(task: str) -> DictConfig:
    return compose(f"task={task}")


@functools.cache
def tokenizer() -> PreTrainedTokenizerBase:
    """The tokenizer of the default model (the shipped tiny one), as a run loads it."""
    return load_tokenizer(_composed("local").model)


def config(source: str, train: Path, validation: Path, **task: Any) -> DictConfig:
    """The composed config of `source`'s task reading `train` and `validation`, with `task` keys changed."""
    name = SOURCES[source][0]
    cfg = copy.deepcopy(_composed(name))
    if name == "local":
        files = {"path": train, "val_path": validation}
    else:
        files = {"data_files.train": train, "data_files.validation": validation}
    tokenize = {"max_length": MAX_LENGTH, "max_prompt_length": MAX_PROMPT_LENGTH}
    for key, value in {**files, **tokenize, **task}.items():
        group = "" if key in TASK_KEYS else "tokenize." if key in TOKENIZE_KEYS else "source."
        OmegaConf.update(cfg, f"task.{group}{key}", str(value) if isinstance(value, Path) else value)
    cfg.data.batch_size = cfg.data.eval_batch_size = 64  # streaming: one chunk holds every row
    return cfg


def prepared(cfg: DictConfig) -> PreferenceDataModule:
    """The data module of `cfg` after `setup`; streaming, after one pass of each loader (when rows are read)."""
    datamodule = build_datamodule(cfg, tokenizer())
    datamodule.setup("fit")
    if cfg.task.streaming:
        for loader in (datamodule.train_dataloader(), datamodule.val_dataloader()):
            for _ in loader:
                pass
    return datamodule


def origin(source: str, train: Path) -> str:
    """How errors name the training rows of `source` read from `train`."""
    return str(train) if SOURCES[source][0] == "local" else f"{train} (train)"


def validation_file(source: str, folder: Path) -> Path:
    return write(folder / "validation.jsonl", [good(source, 10), good(source, 11)])


# --- bad rows and lines: an error naming file, row or line, and field ----------------------------------------------


@MODES
@pytest.mark.parametrize(("source", "case"), ROW_CASES, ids=[f"{source}-{case}" for source, case in ROW_CASES])
def test_a_bad_row_stops_the_run_naming_file_row_and_field(source, case, streaming, tmp_path):
    row, problem = bad_rows(source)[case]
    train = write(tmp_path / "train.jsonl", [good(source, 0), good(source, 1), row, good(source, 2)])
    with pytest.raises(DataError) as error:
        prepared(config(source, train, validation_file(source, tmp_path), streaming=streaming))
    assert str(error.value) == f"{origin(source, train)}: row 2: {problem}"


@MODES
@pytest.mark.parametrize("case", UNREADABLE)
@pytest.mark.parametrize("source", SOURCES)
def test_an_unreadable_line_stops_the_run_naming_file_and_line(source, case, streaming, tmp_path):
    line, detail = unreadable_line(case, source)
    lines = [good(source, 0), b"", good(source, 1), line, good(source, 2)]  # line 4; a blank line is no row
    train = write(tmp_path / "train.jsonl", lines)
    with pytest.raises(DataError) as error:
        prepared(config(source, train, validation_file(source, tmp_path), streaming=streaming))
    assert str(error.value) == f"{train}: line 4: {case} ({detail})"


@MODES
@pytest.mark.parametrize("source", SOURCES)
def test_a_missing_column_names_the_file_even_when_skipping(source, streaming, tmp_path):
    column = {"tldr": "choice", "shp": "labels"}.get(source, "rejected")
    rows = [without(good(source, k), column) for k in range(3)]
    train = write(tmp_path / "train.jsonl", rows)
    cfg = config(source, train, validation_file(source, tmp_path), streaming=streaming, skip_bad_rows=True)
    with pytest.raises(DataError) as error:
        prepared(cfg)
    assert str(error.value).startswith(f"{origin(source, train)}: missing column(s) ['{column}']; found [")


# --- skip_bad_rows: every case skipped and counted per reason ---------------------------------------------------


@MODES
@pytest.mark.parametrize("source", SOURCES)
def test_skip_bad_rows_skips_and_counts_every_case_per_reason(source, streaming, tmp_path):
    bad = bad_rows(source)
    lines = [good(source, 0), *(row for row, _ in bad.values()), good(source, 1)]
    lines += [unreadable_line(case, source)[0] for case in UNREADABLE] + [good(source, 2)]
    train = write(tmp_path / "train.jsonl", lines)
    datamodule = prepared(
        config(source, train, validation_file(source, tmp_path), streaming=streaming, skip_bad_rows=True)
    )
    report = datamodule.report()
    assert report["train"] == {
        "rows": 3,
        "skipped": Counter(problem for _, problem in bad.values()) | dict.fromkeys(UNREADABLE, 1),
        "filtered": {},
        "truncated_prompts": 0,
        "truncated_responses": 0,
        "duplicate_pairs": 0,
        "rows_with_special_token_text": 0,
    }
    assert report["validation"]["rows"] == 2 and report["validation"]["skipped"] == {}
    if not streaming:  # the usable rows, in file order, and nothing else
        kept = [tokenizer().decode(ids) for ids in datamodule.pairs["train"]["chosen_ids"]]
        assert [[f"Answer {k}." in text for k in range(3)] for text in kept] == [
            [True, False, False],
            [False, True, False],
            [False, False, True],
        ]


def test_a_kept_pair_is_exactly_its_texts_tokenized(tmp_path):
    """Skipping bad neighbours alters nothing: the kept pair is the tokenizer's own encoding, EOS appended."""
    rows = [bad_rows("local")["empty"][0], good("local", 0), b"{"]
    train = write(tmp_path / "train.jsonl", rows)
    datamodule = prepared(config("local", train, validation_file("local", tmp_path), skip_bad_rows=True))
    encode = tokenizer()
    expected = [encode(text, add_special_tokens=False).input_ids for text in ("Question 0?", " Answer 0.", " Wrong 0.")]
    expected[1].append(encode.eos_token_id)
    expected[2].append(encode.eos_token_id)
    assert list(datamodule.pairs["train"][0].values()) == expected


# --- usable oddities: kept and counted ---------------------------------------------------------------------------


@MODES
@pytest.mark.parametrize("source", SOURCES)
def test_long_prompts_and_duplicate_pairs_are_kept_and_counted(source, streaming, tmp_path):
    long_prompt = SOURCES[source][1](LONG_PROMPT, "Answer 3.", "Wrong 3.")
    rows = [good(source, 0), long_prompt, good(source, 1), good(source, 0), good(source, 0), good(source, 2)]
    train = write(tmp_path / "train.jsonl", rows)
    datamodule = prepared(config(source, train, validation_file(source, tmp_path), streaming=streaming))
    assert datamodule.report()["train"] == {
        "rows": 6,
        "skipped": {},
        "filtered": {},
        "truncated_prompts": 1,
        "truncated_responses": 0,
        "duplicate_pairs": 2,
        "rows_with_special_token_text": 0,
    }
    if not streaming:
        lengths = [len(ids) for ids in datamodule.pairs["train"]["prompt_ids"]]
        assert lengths[1] == MAX_PROMPT_LENGTH and max(lengths[:1] + lengths[2:]) < MAX_PROMPT_LENGTH


def test_duplicates_are_counted_across_the_reports_that_share_seen_pairs():
    """How streaming counts duplicates over several chunks: their reports share one `seen_pairs`."""
    seen: set[str] = set()
    chunk = {"row": [0, 1], "problem": ["", ""], "message": ["", ""], "pair_key": ["a", "b"]}
    chunk |= {"prompt_truncated": [False, False], "responses_truncated": [False, False]}
    chunk |= {"special_token_text": [False, False]}
    first, second, alone = RowReport("o", False, seen), RowReport("o", False, seen), RowReport("o", False)
    first.account(chunk)
    second.account(chunk | {"pair_key": ["b", "c"]})
    alone.account(chunk | {"pair_key": ["b", "c"]})
    assert (first.duplicate_pairs, second.duplicate_pairs, alone.duplicate_pairs) == (0, 1, 0)
    first.merge(second.as_dict())
    assert first.as_dict()["duplicate_pairs"] == 1 and first.rows == 4


def test_different_texts_that_encode_alike_are_a_bad_row():
    """A tokenizer that maps two different answers to the same ids leaves no preference: its own reason."""

    class EncodesAlike(PairTokenizer):
        def _encode(self, texts: list[str]) -> list[list[int]]:
            return [[7, 8] for _ in texts]

    pair_tokenizer = EncodesAlike(tokenizer(), TokenizeSettings(max_length=16, max_prompt_length=8))
    rows = {"row": [0], "prompt": ["Q?"], "chosen": [" yes"], "rejected": [" no"], "problem": [""], "message": [""]}
    prepared = PairPreparer(tokenizer(), pair_tokenizer)(rows)
    assert prepared["problem"] == ["chosen: identical to rejected as tokens"] and prepared["chosen_ids"] == [[]]


@MODES
def test_responses_are_never_empty_at_the_smallest_response_budget(streaming, tmp_path):
    """max_prompt_length = max_length − 1 leaves each cut response one token (its first), never zero."""
    rows = [{"prompt": LONG_PROMPT, "chosen": " good " + LONG, "rejected": " bad " + LONG}] * 2
    train = write(tmp_path / "train.jsonl", rows)
    cfg = config("local", train, train, streaming=streaming, max_length=65, max_prompt_length=64)
    datamodule = prepared(cfg)
    assert datamodule.report()["train"] == {
        "rows": 2,
        "skipped": {},
        "filtered": {},
        "truncated_prompts": 2,
        "truncated_responses": 2,
        "duplicate_pairs": 1,
        "rows_with_special_token_text": 0,
    }
    if not streaming:
        encode = tokenizer()
        pair = datamodule.pairs["train"][0]
        assert pair["chosen_ids"] == encode(" good", add_special_tokens=False).input_ids
        assert pair["rejected_ids"] == encode(" bad", add_special_tokens=False).input_ids
        assert len(pair["chosen_ids"]) == 1 and len(pair["prompt_ids"]) == 64


def test_limits_without_room_for_a_response_are_a_config_error(tmp_path):
    train = write(tmp_path / "train.jsonl", [good("local", 0)])
    with pytest.raises(
        ConfigError,
        match=r"^task\.tokenize\.max_prompt_length: must be in \[1, task\.tokenize\.max_length=32\), got 32$",
    ):
        prepared(config("local", train, train, max_length=32, max_prompt_length=32))


# --- other file formats, hold-out numbering, generated and prompt-only tasks ------------------------------------


@MODES
@pytest.mark.parametrize("skip_bad_rows", [False, True], ids=["error", "skip"])
def test_csv_and_json_array_files_cannot_skip_an_unreadable_record(streaming, skip_bad_rows, tmp_path):
    csv = tmp_path / "train.csv"
    csv.write_bytes(b"prompt,chosen,rejected\nQ0?,A0,B0\nQ1?,Answ\xe9r,B1\nQ2?,A2,B2\n")
    array = tmp_path / "train.json"
    array.write_text('[\n  {"prompt": "Q0?", "chosen": "A0", "rejected": "B0"},\n  {"prompt": "Q1?", "chosen": }\n]\n')
    expected = {
        csv: f"{csv}: line 3: invalid UTF-8 (byte 0xe9 at byte 9 of the line)",
        array: f"{array}: line 3: malformed JSON (Expecting value at column 31)",
    }
    for train, message in expected.items():
        cfg = config("local", train, train, streaming=streaming, skip_bad_rows=skip_bad_rows)
        with pytest.raises(DataError) as error:
            prepared(cfg)
        assert str(error.value) == message


def test_a_file_without_a_readable_line_is_one_error(tmp_path):
    train = write(tmp_path / "train.jsonl", [b"{", b"[]"])
    with pytest.raises(DataError) as error:
        prepared(config("local", train, train, skip_bad_rows=True))
    message = "no line is a readable JSON object (line 1: malformed JSON (Expecting property name enclosed in"
    assert str(error.value).startswith(f"{train}: {message}")


def test_a_held_out_row_is_named_by_its_place_in_the_file(tmp_path):
    rows = [good("local", k) for k in range(12)]
    rows[7] = bad_rows("local")["empty"][0]
    train = write(tmp_path / "train.jsonl", rows)
    cfg = config("local", train, train)
    OmegaConf.update(cfg, "task.source.val_path", None)
    OmegaConf.update(cfg, "task.source.val_size", 4)
    with pytest.raises(DataError) as error:
        prepared(cfg)
    assert str(error.value) in (
        f"{train}: row 7: chosen: empty",
        f"{train} (held-out validation rows): row 7: chosen: empty",
    )


@MODES
def test_generated_sentiment_pairs_have_no_bad_rows(streaming):
    cfg = compose("task.source.num_train_pairs=48", "task.source.num_val_pairs=16", f"task.streaming={streaming}")
    cfg.data.batch_size = cfg.data.eval_batch_size = 64
    report = prepared(cfg).report()
    for split, rows in (("train", 48), ("validation", 16)):
        assert report[split]["rows"] == rows
        assert report[split]["skipped"] == report[split]["filtered"] == {} and report[split]["duplicate_pairs"] == 0


@pytest.mark.parametrize("case", UNREADABLE)
def test_imdb_prompts_stop_at_an_unreadable_line_naming_file_and_line(case, tmp_path):
    review = {"text": "A fine film, all told.", "label": 1}
    line, detail = unreadable_line(case, "local")
    if case == "invalid UTF-8":
        line, detail = b'{"text": "A fine caf\xe9.", "label": 1}', "byte 0xe9 at byte 21 of the line"
    train = write(tmp_path / "reviews.jsonl", [review, line, review])
    cfg = copy.deepcopy(_composed("imdb"))
    OmegaConf.update(cfg, "task.source.data_files.train", str(train))
    prompts = build(cfg.task.source, "task.source").prompts("train")
    assert next(prompts).startswith("A fine")  # the review before it still comes out
    with pytest.raises(DataError) as error:
        next(prompts)
    assert str(error.value) == f"{train}: line 2: {case} ({detail})"
