"""The Python API (docs/python-api.md): lazy top-level exports, rows in memory parsed exactly as `task=local` files,
plain objects for the module, and the tiny example, which must learn."""

from __future__ import annotations

import dataclasses
import importlib
import re
import runpy
import subprocess
import sys
from pathlib import Path

import datasets
import lightning as L
import pytest
import torch
from helpers import ROOT, write_jsonl
from hydra.utils import get_object
from omegaconf import OmegaConf
from transformers import LlamaConfig, LlamaForCausalLM

import dpo_lightning
from dpo_lightning import DPO, ConfigError, DataError, DPOLitModule, PreferenceDataModule, load_tokenizer
from dpo_lightning.conf import CONF_DIR
from dpo_lightning.data.sources.local import LocalSource
from dpo_lightning.data.sources.rows import RowsSource
from dpo_lightning.data.tokenize import TokenizeSettings

EXAMPLE = ROOT / "examples" / "train_tiny.py"
DOCS = ROOT / "docs" / "python-api.md"


@pytest.fixture(scope="module")
def example() -> dict:
    """The example's namespace (its functions), run as a module, not as a script."""
    return runpy.run_path(str(EXAMPLE))


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("tiny")


# --- the top-level exports --------------------------------------------------------------------------------------


def test_every_exported_name_resolves_to_its_module_object():
    assert set(dpo_lightning.__all__) == {*dpo_lightning._EXPORTS, "load_tokenizer"}
    for name in dpo_lightning.__all__:
        value = getattr(dpo_lightning, name)
        if name in dpo_lightning._EXPORTS:
            assert value is getattr(importlib.import_module(dpo_lightning._EXPORTS[name]), name), name
    with pytest.raises(AttributeError, match="no attribute 'NotAnExport'"):
        dpo_lightning.NotAnExport  # noqa: B018
    assert set(dpo_lightning.__all__) <= set(dir(dpo_lightning))


def _targets(node: object) -> list[str]:
    """Every `_target_` in a config node, nested ones (combo's parts) included."""
    if isinstance(node, dict):
        own = [node["_target_"]] if "_target_" in node else []
        return own + [t for value in node.values() for t in _targets(value)]
    if isinstance(node, list):
        return [t for value in node for t in _targets(value)]
    return []


@pytest.mark.parametrize("group", ["loss", "reference"])
def test_every_objective_and_reference_strategy_of_the_config_is_exported(group):
    files = sorted((CONF_DIR / group).glob("*.yaml"))
    targets = {t for f in files for t in _targets(OmegaConf.to_container(OmegaConf.load(f)))}
    assert len(targets) >= (20 if group == "loss" else 5)
    for target in targets:
        name = target.rsplit(".", 1)[1]
        assert name in dpo_lightning.__all__, target
        assert getattr(dpo_lightning, name) is get_object(target)


def test_importing_the_package_imports_nothing_heavy():
    """`dpo-train --help` imports the package first: it must not pull in torch, Lightning, transformers or the CLI."""
    heavy = ("torch", "lightning", "transformers", "datasets", "hydra", "omegaconf", "dpo_lightning.cli")
    code = f"import sys, dpo_lightning; print([m for m in {heavy!r} if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_load_tokenizer_by_name(tokenizer):
    assert tokenizer.pad_token_id == 2 and tokenizer.eos_token_id == 1 and tokenizer.chat_template
    with pytest.raises(ConfigError, match=r"^tokenizer: .*dpo_lightning.load_tokenizer\('tiny'\)"):
        PreferenceDataModule(
            [{"prompt": "p", "chosen": " a", "rejected": " b"}] * 4, "tiny", batch_size=2, eval_batch_size=2
        )


# --- rows in memory = the same rows in a task=local file ---------------------------------------------------------

SYSTEM = [{"role": "system", "content": "Answer briefly."}]
FORMATS = {  # format → (row i, LocalSource's column arguments for its file)
    "pairs": (lambda i: {"prompt": f"Question {i}?", "chosen": f" good {i}", "rejected": f" bad {i}"}, {}),
    "implicit prompt": (
        lambda i: {"chosen": f"Say {i}: yes {i}", "rejected": f"Say {i}: no {i}", "extra": i},
        {"prompt_column": None},
    ),
    "conversations": (
        lambda i: {
            "prompt": [*SYSTEM, {"role": "user", "content": f"Which is warmer, take {i}?"}],
            "chosen": [{"role": "assistant", "content": f"The sun, {i}."}],
            "rejected": [{"role": "assistant", "content": f"Ice, {i}."}],
        },
        {},
    ),
    "ranked by scores": (
        lambda i: {"prompt": f"Rank {i}", "responses": [f" a{i}", f" b{i}", f" c{i}"], "scores": [i % 3, 2.5, 0]},
        {"responses_column": "responses"},
    ),
    "ranked by ranking": (
        lambda i: {"prompt": f"Rank {i}", "responses": [f" a{i}", f" b{i}"], "ranking": [i % 2, 1 - i % 2]},
        {"responses_column": "responses", "scores_column": None, "ranking_column": "ranking"},
    ),
}


def _jsonl(path: Path, rows: list[dict]) -> str:
    write_jsonl(path, rows)
    return str(path)


def _datamodule(source, tokenizer, **options) -> PreferenceDataModule:
    datamodule = PreferenceDataModule(
        source,
        tokenizer,
        batch_size=4,
        eval_batch_size=3,
        tokenize=TokenizeSettings(max_length=64, max_prompt_length=32),
        **{"seed": 5, **options},
    )
    datamodule.setup()
    return datamodule


def _batches(datamodule: PreferenceDataModule) -> list[dict]:
    """Every training batch (shuffled, seeded) and validation batch, as plain values."""

    def plain(batch) -> dict:
        return {
            f.name: value.tolist() if isinstance(value := getattr(batch, f.name), torch.Tensor) else value
            for f in dataclasses.fields(batch)
        }

    return [plain(b) for b in datamodule.train_dataloader()] + [plain(b) for b in datamodule.val_dataloader()]


@pytest.mark.parametrize("layout", ["packed", "padded"])
@pytest.mark.parametrize("form", sorted(FORMATS))
def test_rows_and_a_dataset_give_the_batches_of_the_same_rows_in_a_jsonl_file(form, layout, tokenizer, tmp_path):
    row, columns = FORMATS[form]
    train, val = [row(i) for i in range(10)], [row(i) for i in range(10, 15)]
    local = LocalSource(_jsonl(tmp_path / "train.jsonl", train), _jsonl(tmp_path / "val.jsonl", val), **columns)
    expected = _datamodule(local, tokenizer, layout=layout)
    from_list = _datamodule(train, tokenizer, val_data=val, layout=layout)
    as_dataset = _datamodule(
        datasets.Dataset.from_list(train), tokenizer, val_data=datasets.Dataset.from_list(val), layout=layout
    )
    assert from_list.source.ranked == local.ranked and from_list.source.conversational == local.conversational
    assert _batches(from_list) == _batches(expected) == _batches(as_dataset)
    assert from_list.report() == expected.report()


def test_a_held_out_fraction_of_rows_is_the_held_out_fraction_of_the_file(tokenizer, tmp_path):
    rows = [FORMATS["pairs"][0](i) for i in range(20)]
    local = LocalSource(_jsonl(tmp_path / "pairs.jsonl", rows), val_size=0.25, seed=5)
    held_out = _datamodule(rows, tokenizer, val_size=0.25)
    assert len(held_out.pairs["validation"]) == 5
    assert _batches(held_out) == _batches(_datamodule(local, tokenizer))
    assert _batches(_datamodule(rows, tokenizer, val_size=0.25)) == _batches(held_out)  # seeded


def test_rows_with_other_keys_name_their_columns(tokenizer):
    rows = [{"question": f"Q{i}?", "good": f" yes {i}", "bad": f" no {i}"} for i in range(6)]
    source = RowsSource(rows, rows, prompt_column="question", chosen_column="good", rejected_column="bad")
    assert _datamodule(source, tokenizer).report()["train"]["rows"] == 6
    with pytest.raises(
        DataError,
        match=r"^data: missing column\(s\) \['prompt', 'chosen', 'rejected'\]; found \['question', 'good', 'bad'\]$",
    ):
        _datamodule(rows, tokenizer, val_data=rows)
    with pytest.raises(ConfigError, match=r"^answer_column: is not a column argument"):
        RowsSource(rows, answer_column="good")


# --- bad rows: the same one-line errors as a file's ------------------------------------------------------------

BAD_ROWS = {  # case → (what to do to row 2, the error's end)
    "blank response": (lambda row: row.update(chosen="   "), "row 2: chosen: empty"),
    "number for text": (lambda row: row.update(rejected=7), "row 2: rejected: expected a string, got int"),
    "missing key": (lambda row: row.pop("prompt"), "row 2: prompt: missing"),
    "null value": (lambda row: row.update(chosen=None), "row 2: chosen: missing"),
}


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_a_bad_row_is_a_one_line_data_error_naming_row_and_field_as_in_a_file(case, tokenizer, tmp_path):
    spoil, end = BAD_ROWS[case]
    rows = [FORMATS["pairs"][0](i) for i in range(6)]
    spoil(rows[2])
    path = _jsonl(tmp_path / "pairs.jsonl", rows)
    with pytest.raises(DataError) as from_file:
        _datamodule(LocalSource(path, val_path=path), tokenizer)
    with pytest.raises(DataError) as from_rows:
        _datamodule(rows, tokenizer, val_data=rows)
    message = str(from_rows.value)
    assert message == f"data: {end}" == str(from_file.value).replace(path, "data")
    assert "\n" not in message
    skipped = _datamodule(rows, tokenizer, val_data=rows[:2], skip_bad_rows=True).report()["train"]
    assert skipped["rows"] == 5 and sum(skipped["skipped"].values()) == 1


def test_bad_rows_are_named_by_their_argument_and_position(tokenizer):
    rows = [FORMATS["pairs"][0](i) for i in range(8)]
    with pytest.raises(DataError, match=r"^val_data: row 1: not a dict \(got str\)$"):
        _datamodule(rows, tokenizer, val_data=[rows[0], "a row?"])
    spoiled = [dict(row) for row in rows]
    spoiled[6]["chosen"] = ""
    for seed in range(3):  # held out or not, a row is named by its place in `data`
        with pytest.raises(DataError, match=r"^data( \(held-out validation rows\))?: row 6: chosen: empty$"):
            _datamodule(spoiled, tokenizer, val_size=2, seed=seed)


@pytest.mark.parametrize("empty", [[], datasets.Dataset.from_list([])])
def test_empty_data_says_it_has_no_rows(empty, tokenizer):
    rows = [FORMATS["pairs"][0](i) for i in range(4)]
    with pytest.raises(DataError, match=r"^data: has no rows$"):
        PreferenceDataModule(empty, tokenizer, batch_size=2, eval_batch_size=2)
    with pytest.raises(DataError, match=r"^val_data: has no rows$"):
        PreferenceDataModule(rows, tokenizer, val_data=empty, batch_size=2, eval_batch_size=2)


def test_rows_options_do_not_apply_to_a_source(tokenizer, tmp_path):
    path = _jsonl(tmp_path / "pairs.jsonl", [FORMATS["pairs"][0](i) for i in range(4)])
    with pytest.raises(ConfigError, match=r"^val_data: applies to rows given in Python"):
        PreferenceDataModule(LocalSource(path), tokenizer, val_data=[], batch_size=2, eval_batch_size=2)
    with pytest.raises(ConfigError, match=r"^source: must be a preference source, a list of dicts"):
        PreferenceDataModule(path, tokenizer, batch_size=2, eval_batch_size=2)


# --- the module with plain objects, and the example ------------------------------------------------------------


def test_the_module_trains_a_given_model_with_an_objective_object(example, tokenizer):
    config = LlamaConfig(
        vocab_size=1024, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    initial = [p.detach().clone() for p in model.parameters()]
    module = DPOLitModule(model=model, loss=DPO(beta=0.1), optimizer={"lr": 1e-2})
    data = PreferenceDataModule(example["preference_rows"](16), tokenizer, val_size=4, batch_size=4, eval_batch_size=4)
    trainer = L.Trainer(
        max_steps=3,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(module, datamodule=data)
    assert module.policy is model and trainer.global_step == 3
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), initial, strict=True))
    assert all(not p.requires_grad for p in module.reference.parameters())  # the frozen copy did not move
    assert all(torch.equal(p, q) for p, q in zip(module.reference.model.parameters(), initial, strict=True))


def test_the_example_learns_the_preference(example):
    metrics = example["train_tiny"](epochs=2)
    assert metrics["accuracy_before"] == 0.0  # policy = reference: every reward 0, no pair ranked right
    assert metrics["loss_before"] == pytest.approx(0.6931, abs=1e-3)  # log 2
    assert metrics["accuracy_after"] >= 0.9
    assert metrics["loss_after"] < 0.4


def _code_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def test_the_docs_example_is_the_example_file():
    """Every line of the page's first Python block is a line of examples/train_tiny.py, in the same order."""
    block = re.search(r"```python\n(.*?)```", DOCS.read_text(), re.DOTALL)
    assert block is not None, "docs/python-api.md has no ```python block"
    shown, source = _code_lines(block.group(1)), iter(_code_lines(EXAMPLE.read_text()))
    missing = [line for line in shown if not any(line == candidate for candidate in source)]
    assert not missing, f"lines of docs/python-api.md not in {EXAMPLE.name} (in order): {missing}"
    assert len(shown) >= 10


def test_the_on_policy_example_of_the_page_trains_on_its_own_rollouts():
    """The page's on-policy block, run as it is shown."""
    text = DOCS.read_text()
    block = re.search(r"## On-policy training.*?```python\n(.*?)```", text, re.DOTALL)
    assert block is not None, "docs/python-api.md has no on-policy example"
    namespace: dict = {}
    exec(compile(block.group(1), str(DOCS), "exec"), namespace)  # our own documentation's code
    counts = namespace["module"].rollout_counts
    assert counts["prompts"] == 4 * 8 and counts["samples"] == 4 * 8 * 4
