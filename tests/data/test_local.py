"""task=local: formats, column names, hold-out, and bad input named by file, row and field."""

import csv
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dpo_lightning.data.sources.local import LocalSource
from dpo_lightning.data.validate import check_triples
from dpo_lightning.errors import ConfigError, DataError

ROWS = [{"prompt": f"Question {i}?", "chosen": f" good answer {i}", "rejected": f" bad answer {i}"} for i in range(20)]


def _write(path, rows):
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
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
    assert source.load("train").column_names == ["prompt", "chosen", "rejected"]
    assert len(source.load("train")) == 20 and list(source.load("validation")["prompt"]) == [
        r["prompt"] for r in ROWS[:3]
    ]


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"task.path: file not found: .*nope.jsonl"):
        LocalSource(str(tmp_path / "nope.jsonl"))
    with pytest.raises(ConfigError, match=r"task.path: unsupported file type '\.txt'"):
        LocalSource(str(_write(tmp_path / "pairs.txt", ROWS)))


def test_missing_column_names_file_and_column(tmp_path):
    path = _write(tmp_path / "pairs.jsonl", [{"prompt": "p", "chosen": "c"}])
    with pytest.raises(DataError, match=r"pairs.jsonl: missing column\(s\) \['rejected'\]"):
        LocalSource(str(path), val_size=0.5).load("train")


def test_non_string_column_names_file_row_and_field(tmp_path):
    path = _write(tmp_path / "pairs.jsonl", [{"prompt": "p", "chosen": 3, "rejected": 4}] * 4)
    with pytest.raises(DataError, match=r"pairs.jsonl: row 0: chosen is not a string"):
        LocalSource(str(path), val_size=1).load("train")


def test_mixed_types_are_reported_not_coerced(tmp_path):
    rows = [dict(r) for r in ROWS[:4]]
    rows[2]["rejected"] = 17
    path = _write(tmp_path / "pairs.jsonl", rows)
    with pytest.raises(DataError, match=r"pairs.jsonl"):
        LocalSource(str(path), val_size=1).load("train")


def test_bad_rows_raise_with_row_and_field_or_are_counted(tmp_path):
    rows = [dict(r) for r in ROWS[:6]]
    rows[2]["chosen"] = "   "
    rows[4]["prompt"] = None
    path = _write(tmp_path / "pairs.jsonl", rows)
    source = LocalSource(str(path), val_path=str(path))
    with pytest.raises(DataError, match=r"pairs.jsonl: row 2: chosen is empty \(and 1 more bad rows"):
        check_triples(source.load("train"), source.origin("train"), skip_bad_rows=False)
    kept, skipped = check_triples(source.load("train"), source.origin("train"), skip_bad_rows=True)
    assert len(kept) == 4 and dict(skipped) == {"chosen is empty": 1, "prompt is missing": 1}
    assert "   " not in list(kept["chosen"])
