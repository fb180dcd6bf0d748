"""Prompt-only data: prompt files (bad rows named or counted, a stable held-out split) and the prompt data module."""

from __future__ import annotations

from collections import Counter

import pytest
from helpers import read_summary, run_in_process, train, write_jsonl

from dpo_lightning import load_tokenizer
from dpo_lightning.cli import train as train_command
from dpo_lightning.data.prompts import PromptDataModule, PromptTokenizer, task_prompts
from dpo_lightning.data.sources.local import LocalSource
from dpo_lightning.data.sources.prompts import PromptFile, held_out
from dpo_lightning.data.tokenize import PairTokenizer, TokenizeSettings
from dpo_lightning.errors import ConfigError, DataError

TOKENIZER = load_tokenizer("tiny")


def _file(tmp_path, count=200, bad=None):
    rows = [{"prompt": f"The film number {i} was"} for i in range(count)]
    if bad is not None:
        rows.insert(7, bad)
    return write_jsonl(tmp_path / "prompts.jsonl", rows)


def test_a_prompt_file_is_split_by_a_stable_hash_into_disjoint_train_and_validation_prompts(tmp_path):
    source = PromptFile(str(_file(tmp_path)), val_size=0.1)
    train_prompts, validation = list(source.prompts("train")), list(source.prompts("validation"))
    assert len(train_prompts) + len(validation) == 200 and not set(train_prompts) & set(validation)
    assert validation == [p for p in (f"The film number {i} was" for i in range(200)) if held_out(p, 0.1)]
    assert 5 <= len(validation) <= 40  # about 10 %


@pytest.mark.parametrize(
    ("bad", "problem"),
    [({"prompt": 42}, "prompt: expected a string, got int"), ({"prompt": "  "}, "prompt: blank"),
     ({"text": "x"}, "prompt: missing")],
    ids=["number", "blank", "missing"],
)  # fmt: skip
def test_a_bad_prompt_row_is_an_error_naming_file_row_and_field_or_a_counted_skip(bad, problem, tmp_path):
    path = _file(tmp_path, bad=bad)
    source = PromptFile(str(path), val_path=str(path))
    with pytest.raises(DataError) as error:
        list(task_prompts(source, "train"))
    assert str(error.value) == f"{path}: row 7: {problem} (set task.skip_bad_rows=true to skip and count bad rows)"
    skipped: Counter[str] = Counter()
    assert len(list(task_prompts(source, "train", skipped))) == 200 and skipped == {problem: 1}


def test_a_preference_task_gives_its_prompts_and_names_a_bad_row(tmp_path):
    rows = [{"prompt": f"p{i}", "chosen": " yes", "rejected": " no"} for i in range(5)]
    rows[3]["prompt"] = 42
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    source = LocalSource(str(data), val_path=str(data))
    with pytest.raises(DataError) as error:
        list(task_prompts(source, "train"))
    assert str(error.value).startswith(f"{data}: row 3: prompt: ") and "task.skip_bad_rows=true" in str(error.value)
    skipped: Counter[str] = Counter()
    assert list(task_prompts(source, "train", skipped)) == ["p0", "p1", "p2", "p4"] and skipped.total() == 1


def test_prompts_are_cut_as_training_cuts_them_beside_the_longest_sample():
    settings = TokenizeSettings(max_length=24, max_prompt_length=8)
    encode = PromptTokenizer(TOKENIZER, settings, max_new_tokens=16)
    long_prompt = "one two three four five six seven eight nine ten eleven twelve"
    (ids, cut), (short_ids, short_cut) = encode([long_prompt, "a film"])
    full = PairTokenizer(TOKENIZER, settings).prompt_ids([long_prompt])[0][0]
    assert cut and ids == full[:8] and len(full) > 8  # keep_start, the prompt budget
    assert not short_cut and short_ids == PairTokenizer(TOKENIZER, settings).prompt_ids(["a film"])[0][0]
    with pytest.raises(ConfigError, match=r"algorithm\.sampling\.max_new_tokens: 17 tokens do not fit"):
        PromptTokenizer(TOKENIZER, settings, max_new_tokens=17)


def test_the_prompt_data_module_shares_prompts_out_and_validates_on_prompts_of_a_prompt_file(tmp_path):
    source = PromptFile(str(_file(tmp_path, count=40)), val_size=0.2)
    module = PromptDataModule(
        source, TOKENIZER, batch_size=4, eval_batch_size=8, tokenize=TokenizeSettings(), max_new_tokens=16, seed=3
    )
    module.setup("fit")
    batches = list(module.train_dataloader())
    seen = [ids for batch in batches for ids in batch.ids]
    assert sorted(seen) == sorted(module.prompt_ids["train"]) and len(batches[0].ids) == 4
    assert [ids for batch in module.val_dataloader() for ids in batch.ids] == module.prompt_ids["validation"]
    assert all(pair.chosen_ids == [] for pair in module.evaluation_pairs(3))
    assert module.report()["train"]["prompts"]["prompts"] == len(module.prompt_ids["train"])


def test_online_training_on_a_prompt_file_with_a_bad_row(tmp_path):
    path = _file(tmp_path, count=60, bad={"prompt": None})
    run = ["algorithm=online", "task=prompts", f"task.source.path={path}", "reward@task.reward=vader",
           "algorithm.samples_per_prompt=2", "algorithm.sampling.max_new_tokens=8", "samples.num_prompts=4",
           "samples.max_new_tokens=8", "data.batch_size=4", "trainer.max_steps=2"]  # fmt: skip
    result = run_in_process(train_command.main, *run, f"hydra.run.dir={tmp_path / 'strict'}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {path}: row 7: prompt: missing (set task.skip_bad_rows=true to skip and count bad rows)"
    )
    result = train(*run, "task.skip_bad_rows=true", run_dir=tmp_path / "skip")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = read_summary(tmp_path / "skip")
    assert summary["data"]["train"]["prompts"]["skipped"] == {"prompt: missing": 1}
    assert summary["rollouts"]["counts"]["prompts"] == 8 and "val/reward" in summary["metrics"]
