"""task=local: formats, column names, hold-out, and bad input named by file, row and field."""

import csv

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import write_jsonl

from dpo_lightning.data.datamodule import PreferenceDataModule
from dpo_lightning.data.sources.local import LocalSource, split_common_prefix
from dpo_lightning.data.tokenize import TokenizeSettings
from dpo_lightning.errors import ConfigError, DataError
from dpo_lightning.models.tiny_tokenizer import load_tiny_tokenizer

ROWS = [{"prompt": f"Question {i}?", "chosen": f" good answer {i}", "rejected": f" bad answer {i}"} for i in range(20)]


def _write(path, rows):
    if path.suffix == ".jsonl":
        write_jsonl(path, rows)
    elif path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        with path.open("w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet", ".csv"])
def test_reads_every_format_with_a_seeded_hold_out(tmp_path, suffix):
    source = LocalSource(str(_write(tmp_path / f"pairs{suffix}", ROWS)), val_size=4, seed=3)
    train, validation = source.load("train"), source.load("validation")
    assert len(train) == 16 and len(validation) == 4
    assert sorted(list(train["prompt"]) + list(validation["prompt"])) == sorted(r["prompt"] for r in ROWS)
    again = LocalSource(str(tmp_path / f"pairs{suffix}"), val_size=4, seed=3).load("validation")
    assert list(again["prompt"]) == list(validation["prompt"])
    assert validation[0]["chosen"].startswith(" good")


def test_separate_validation_file_and_renamed_columns(tmp_path):
    renamed = [{"question": r["prompt"], "good": r["chosen"], "bad": r["rejected"], "extra": 1} for r in ROWS]
    train = _write(tmp_path / "train.jsonl", renamed)
    val = _write(tmp_path / "val.jsonl", renamed[:3])
    source = LocalSource(
        str(train), val_path=str(val), prompt_column="question", chosen_column="good", rejected_column="bad"
    )
    assert source.load("train").column_names == ["row", "prompt", "chosen", "rejected", "problem", "message"]
    assert len(source.load("train")) == 20 and list(source.load("validation")["prompt"]) == [
        r["prompt"] for r in ROWS[:3]
    ]


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"task.source.path: file not found: .*nope.jsonl"):
        LocalSource(str(tmp_path / "nope.jsonl"))
    with pytest.raises(ConfigError, match=r"task.source.path: unsupported file type '\.txt'"):
        LocalSource(str(_write(tmp_path / "pairs.txt", ROWS)))


def test_missing_column_names_file_and_column(tmp_path):
    path = _write(tmp_path / "pairs.jsonl", [{"prompt": "p", "chosen": "c"}])
    with pytest.raises(DataError, match=r"pairs.jsonl: missing column\(s\) \['rejected'\]"):
        LocalSource(str(path), val_size=0.5).load("train")


def _datamodule(source, skip_bad_rows=False, streaming=False, **options):
    datamodule = PreferenceDataModule(
        source,
        load_tiny_tokenizer(),
        batch_size=4,
        eval_batch_size=4,
        tokenize=TokenizeSettings(
            max_length=options.pop("max_length", 128),
            max_prompt_length=options.pop("max_prompt_length", 64),
            truncation_mode="keep_start",
        ),
        skip_bad_rows=skip_bad_rows,
        streaming=streaming,
        **options,
    )
    datamodule.setup()
    return datamodule


def test_non_string_values_are_reported_not_coerced(tmp_path):
    path = _write(tmp_path / "pairs.jsonl", [{"prompt": "p", "chosen": 3, "rejected": 4}] * 4)
    with pytest.raises(DataError, match=r"pairs.jsonl: row 0: chosen: expected a string, got int \(and 3 more"):
        _datamodule(LocalSource(str(path), val_path=str(path)))


def test_mixed_types_in_a_column_name_the_file(tmp_path):
    rows = [dict(r) for r in ROWS[:4]]
    rows[2]["rejected"] = 17
    path = _write(tmp_path / "pairs.jsonl", rows)
    with pytest.raises(DataError, match=r"pairs.jsonl"):
        _datamodule(LocalSource(str(path), val_size=1))


def test_bad_rows_raise_with_row_and_field_or_are_counted(tmp_path):
    rows = [dict(r) for r in ROWS[:6]]
    rows[2]["chosen"] = "   "
    rows[4]["prompt"] = None
    path = _write(tmp_path / "pairs.jsonl", rows)
    source = LocalSource(str(path), val_path=str(path))
    with pytest.raises(DataError, match=r"pairs.jsonl: row 2: chosen: empty \(and 1 more bad rows"):
        _datamodule(source)
    datamodule = _datamodule(source, skip_bad_rows=True)
    assert datamodule.report()["train"]["skipped"] == {"chosen: empty": 1, "prompt: missing": 1}
    assert datamodule.report()["train"]["rows"] == len(datamodule.pairs["train"]) == 4
    tokenizer = load_tiny_tokenizer()
    kept = [tokenizer.decode(ids) for ids in datamodule.pairs["train"]["prompt_ids"]]
    assert kept == [rows[i]["prompt"] for i in (0, 1, 3, 5)]  # order kept, the bad rows gone


@pytest.mark.parametrize(
    ("chosen", "rejected", "expected"),
    [
        ("The answer is 42", "The answer is 41", ("The answer is", " 42", " 41")),
        ("Q: yes", "Q: no", ("Q:", " yes", " no")),
        ("Q: a", "Q: a b", ("Q:", " a", " a b")),
        ("Say hi.\nHi there", "Say hi.\nGo away", ("Say hi.", "\nHi there", "\nGo away")),
    ],
)
def test_implicit_prompt_is_the_common_prefix_cut_at_a_word(chosen, rejected, expected):
    assert split_common_prefix(chosen, rejected) == expected


def test_implicit_prompt_rows_text_and_conversation(tmp_path):
    text = _write(tmp_path / "text.jsonl", [{"chosen": "Is it? Yes, it is.", "rejected": "Is it? No."}] * 2)
    rows = LocalSource(str(text), val_path=str(text), prompt_column=None).load("train")
    assert (rows[0]["prompt"], rows[0]["chosen"], rows[0]["rejected"]) == ("Is it?", " Yes, it is.", " No.")
    user = {"role": "user", "content": "Hi"}
    good, bad = {"role": "assistant", "content": "Hello!"}, {"role": "assistant", "content": "Go away."}
    messages = [{"chosen": [user, good], "rejected": [user, bad]}, {"chosen": [good], "rejected": [bad]}]
    chat = _write(tmp_path / "chat.jsonl", messages)
    rows = LocalSource(str(chat), val_path=str(chat), prompt_column=None).load("train")
    assert (rows[0]["prompt"], rows[0]["chosen"], rows[0]["rejected"], rows[0]["problem"]) == (
        [user],
        [good],
        [bad],
        "",
    )
    assert rows[1]["problem"] == "prompt: chosen and rejected share no common prefix (implicit prompt)"


def test_conversational_rows_are_rendered_with_the_chat_template(tmp_path):
    system = {"role": "system", "content": "Be kind."}
    user = {"role": "user", "content": "Hi"}
    rows = [
        {
            "prompt": [system, user],
            "chosen": [{"role": "assistant", "content": "Hello!"}],
            "rejected": [{"role": "assistant", "content": "Go away."}],
        },
        {
            "prompt": [{"role": "assistant", "content": "Hi"}],
            "chosen": [{"role": "assistant", "content": "a"}],
            "rejected": [{"role": "assistant", "content": "b"}],
        },
        {
            "prompt": [user],
            "chosen": [{"role": "user", "content": "a"}],
            "rejected": [{"role": "assistant", "content": "b"}],
        },
        {"prompt": [user], "chosen": [], "rejected": [{"role": "assistant", "content": "b"}]},
        {
            "prompt": [user],
            "chosen": [{"role": "bot", "content": "a"}],
            "rejected": [{"role": "assistant", "content": "b"}],
        },
    ]
    path = _write(tmp_path / "chat.jsonl", rows)
    datamodule = _datamodule(LocalSource(str(path), val_path=str(path)), skip_bad_rows=True)
    tokenizer = load_tiny_tokenizer()
    pair = datamodule.pairs["train"][0]
    assert tokenizer.decode(pair["prompt_ids"]) == "<|system|>\nBe kind.\n<|user|>\nHi\n<|assistant|>\n"
    assert tokenizer.decode(pair["chosen_ids"]) == "Hello!\n<|eos|>"
    assert tokenizer.decode(pair["rejected_ids"]) == "Go away.\n<|eos|>"
    assert datamodule.report()["train"]["skipped"] == {
        "prompt: roles ['assistant'] must alternate user/assistant, starting with user": 1,
        "chosen: roles ['user'] must alternate assistant/user and end with assistant": 1,
        "chosen: empty message list": 1,
        "chosen: message 0 has role 'bot', expected one of ('system', 'user', 'assistant')": 1,
    }


def test_conversations_need_a_chat_template(tmp_path):
    user, answer = {"role": "user", "content": "Hi"}, [{"role": "assistant", "content": "Hello"}]
    path = _write(tmp_path / "chat.jsonl", [{"prompt": [user], "chosen": answer, "rejected": answer}])
    tokenizer = load_tiny_tokenizer()
    tokenizer.chat_template = None
    datamodule = PreferenceDataModule(
        LocalSource(str(path), val_path=str(path)),
        tokenizer,
        batch_size=1,
        eval_batch_size=1,
        tokenize=TokenizeSettings(max_length=64, max_prompt_length=32, truncation_mode="keep_end"),
    )
    with pytest.raises(ConfigError, match=r"model\.tokenizer: has no chat template"):
        datamodule.setup()


def test_streaming_needs_a_validation_file(tmp_path):
    path = _write(tmp_path / "pairs.jsonl", ROWS)
    with pytest.raises(ConfigError, match=r"task\.source\.val_path: streaming needs a separate validation file"):
        LocalSource(str(path)).load("validation", streaming=True)
