"""A model, tokenizer or data file that cannot be used fails fast, in one line naming the key (or file), the value
and the fix: no stack trace, no retries against an unreachable hub, nothing read or tokenized first."""

from __future__ import annotations

import logging
import socket
import time
from pathlib import Path

import huggingface_hub.constants
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import compose, offline_env, read_summary, train, write_jsonl
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
)

from dpo_lightning.data.sources.files import check_data_file
from dpo_lightning.data.sources.local import LocalSource
from dpo_lightning.errors import ConfigError, DataError
from dpo_lightning.models.loading import build_model, check_loadable, load_tokenizer, model_config
from dpo_lightning.models.tiny_tokenizer import load_tiny_tokenizer

GPTJ = "EleutherAI/gpt-j-6b"
TINY_GPT2 = dict(n_embd=32, n_layer=1, n_head=4, n_positions=64, vocab_size=1024, bos_token_id=0, eos_token_id=1)
UNREACHABLE = "not a local folder and the Hugging Face hub is unreachable"


def _message(call, *args) -> str:
    """The one-line ConfigError message `call(*args)` raises."""
    with pytest.raises(ConfigError) as error:
        call(*args)
    message = str(error.value)
    assert "\n" not in message
    return message


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache: no hub id is cached."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture
def offline(monkeypatch, empty_hub_cache) -> None:
    """HF_HUB_OFFLINE=1, as set in the environment before the process started."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture
def unreachable_hub(monkeypatch, empty_hub_cache) -> None:
    """Not offline, but the hub refuses connections: a local port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    template = f"http://127.0.0.1:{port}/{{repo_id}}/resolve/{{revision}}/{{filename}}"
    monkeypatch.setattr(huggingface_hub.constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)


def _save(model, folder: Path, tokenizer: bool = True) -> str:
    model.save_pretrained(folder)
    if tokenizer:
        load_tiny_tokenizer().save_pretrained(folder)
    return str(folder)


@pytest.fixture
def causal_lm(tmp_path) -> str:
    return _save(AutoModelForCausalLM.from_config(AutoConfig.for_model("gpt2", **TINY_GPT2)), tmp_path / "causal")


# --- hub ids: offline, unreachable, cached -------------------------------------------------------------------------


@pytest.mark.parametrize("call", [check_loadable, load_tokenizer, build_model])
def test_offline_hub_id_fails_in_one_line_naming_key_value_and_fix(offline, call):
    started = time.perf_counter()
    message = _message(call, model_config(GPTJ))
    assert message == (
        f"model.name_or_path: cannot load '{GPTJ}': {UNREACHABLE} (offline: HF_HUB_OFFLINE is set); "
        "download it once with network, or set model.name_or_path=/path/to/local/folder"
    )
    assert time.perf_counter() - started < 2


def test_unreachable_hub_fails_at_once_without_retries_or_warnings(unreachable_hub, caplog):
    caplog.set_level(logging.INFO)
    started = time.perf_counter()
    message = _message(check_loadable, model_config(GPTJ))
    elapsed = time.perf_counter() - started
    assert message.startswith(f"model.name_or_path: cannot load '{GPTJ}': {UNREACHABLE} (offline: ")
    assert message.endswith("; download it once with network, or set model.name_or_path=/path/to/local/folder")
    assert elapsed < 3, elapsed  # huggingface_hub's own retries back off for 23 s
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text  # "Retrying in 1s …"


def test_unreachable_hub_tokenizer_names_model_tokenizer(unreachable_hub, causal_lm):
    message = _message(load_tokenizer, model_config(causal_lm, tokenizer="someone/tokenizer"))
    assert message.startswith(f"model.tokenizer: cannot load 'someone/tokenizer': {UNREACHABLE} (offline: ")
    assert message.endswith("or set model.tokenizer=/path/to/local/folder")


def test_cached_hub_model_loads_from_its_snapshot_when_the_hub_is_unreachable(unreachable_hub, empty_hub_cache):
    """Without network a cached model loads at once: transformers' own look-ups would each retry for 23 s."""
    snapshot = empty_hub_cache / "models--someone--tiny" / "snapshots" / ("0" * 40)
    (empty_hub_cache / "models--someone--tiny" / "refs").mkdir(parents=True)
    (empty_hub_cache / "models--someone--tiny" / "refs" / "main").write_text("0" * 40)
    _save(AutoModelForCausalLM.from_config(AutoConfig.for_model("gpt2", **TINY_GPT2)), snapshot)
    model = model_config("someone/tiny")
    started = time.perf_counter()
    check_loadable(model)
    tokenizer = load_tokenizer(model)
    built = build_model(model)
    assert time.perf_counter() - started < 20  # generous: ~1 s here; ≥ 2 minutes of retries without the snapshot
    assert tokenizer.get_vocab() == load_tiny_tokenizer().get_vocab()
    assert type(built).__name__ == "GPT2LMHeadModel"


# --- local folders ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/no/such/folder", "./not-here", "runs/x/policy"])
def test_missing_local_folder(path):
    for call in (check_loadable, load_tokenizer, build_model):
        message = _message(call, model_config(path))
        assert message == (
            f"model.name_or_path: cannot load '{path}': no such folder "
            "(and not a hub id, which is 'name' or 'org/name')"
        )


def test_a_file_is_not_a_model_folder(tmp_path):
    file = tmp_path / "model.safetensors"
    file.write_bytes(b"")
    message = _message(check_loadable, model_config(str(file)))
    assert message == (
        f"model.name_or_path: cannot load '{file}': a file, not a folder; set model.name_or_path to a model folder "
        "or hub id"
    )


def test_a_folder_that_is_not_a_model(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    for call in (check_loadable, build_model):
        message = _message(call, model_config(str(tmp_path)))
        assert message == (
            f"model.name_or_path: cannot load '{tmp_path}': the folder holds no config.json (not a model folder)"
        )
    message = _message(load_tokenizer, model_config(str(tmp_path)))
    assert message.startswith(f"model.name_or_path: cannot load a tokenizer from '{tmp_path}': the folder holds no ")
    assert message.endswith("; set model.tokenizer to a tokenizer's folder or hub id")


def test_a_model_folder_without_weights(tmp_path):
    AutoConfig.for_model("gpt2", **TINY_GPT2).save_pretrained(tmp_path)
    message = _message(check_loadable, model_config(str(tmp_path)))
    assert message.startswith(f"model.name_or_path: cannot load '{tmp_path}': the folder holds no weights (")


def test_a_config_that_is_not_json(tmp_path):
    (tmp_path / "config.json").write_text("{nope")
    message = _message(build_model, model_config(str(tmp_path)))
    assert message.startswith(f"model.name_or_path: cannot load '{tmp_path}': config.json is not valid JSON (")


@pytest.mark.parametrize(
    ("kind", "holds"),
    [
        ("sequence classification", "GPT2ForSequenceClassification"),
        ("encoder", "BertModel"),
        ("encoder-decoder", "T5ForConditionalGeneration"),
    ],
)
def test_a_model_that_is_not_a_causal_lm(tmp_path, kind, holds):
    """transformers would load the first two as causal LMs with a new, untrained LM head (and warnings); the third
    it cannot load at all."""
    if kind == "sequence classification":
        model = AutoModelForSequenceClassification.from_config(AutoConfig.for_model("gpt2", **TINY_GPT2))
    elif kind == "encoder":
        bert = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64, vocab_size=1024)
        model = AutoModel.from_config(AutoConfig.for_model("bert", **bert))
    else:
        t5 = dict(d_model=32, d_ff=64, num_layers=1, num_heads=4, d_kv=8, vocab_size=1024)
        model = AutoModelForSeq2SeqLM.from_config(AutoConfig.for_model("t5", **t5))
    folder = _save(model, tmp_path / "m")
    for call in (check_loadable, build_model):
        message = _message(call, model_config(folder))
        assert message == (
            f"model.name_or_path: cannot load '{folder}': it holds {holds}, not a causal language model; "
            "DPO trains a causal language model (a …ForCausalLM or …LMHeadModel): point it at one"
        )


def test_a_causal_lm_folder_passes_and_loads(causal_lm):
    model = model_config(causal_lm)
    check_loadable(model)
    assert type(build_model(model)).__name__ == "GPT2LMHeadModel"
    assert load_tokenizer(model).eos_token == "<|eos|>"


# --- tokenizers ------------------------------------------------------------------------------------------------------


def test_tokenizer_folder_without_tokenizer_files(causal_lm, tmp_path):
    """transformers would build an empty tokenizer (no vocabulary) from such a folder, silently."""
    (tmp_path / "tok").mkdir()
    for call in (check_loadable, load_tokenizer):
        message = _message(call, model_config(causal_lm, tokenizer=str(tmp_path / "tok")))
        assert message.startswith(f"model.tokenizer: cannot load a tokenizer from '{tmp_path / 'tok'}': the folder ")
        assert "holds no tokenizer files (tokenizer.json, " in message


def test_missing_tokenizer_folder(causal_lm):
    message = _message(load_tokenizer, model_config(causal_lm, tokenizer="/no/such/tokenizer"))
    assert message == (
        "model.tokenizer: cannot load '/no/such/tokenizer': no such folder (and not a hub id, which is 'name' or "
        "'org/name')"
    )


def test_tokenizer_that_cannot_be_read(causal_lm, tmp_path):
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "tokenizer.json").write_text("{not json")
    message = _message(load_tokenizer, model_config(causal_lm, tokenizer=str(tmp_path / "tok")))
    assert message.startswith(f"model.tokenizer: cannot load a tokenizer from '{tmp_path / 'tok'}': ")


def test_offline_hub_tokenizer(offline, causal_lm):
    message = _message(check_loadable, model_config(causal_lm, tokenizer="gpt2"))
    assert message == (
        f"model.tokenizer: cannot load 'gpt2': {UNREACHABLE} (offline: HF_HUB_OFFLINE is set); "
        "download it once with network, or set model.tokenizer=/path/to/local/folder"
    )


def test_init_from_pointing_at_nothing(tmp_path):
    model = {**model_config("tiny"), "init_from": str(tmp_path / "no-run")}
    for call in (check_loadable, load_tokenizer, build_model):
        message = _message(call, model)
        assert message == (
            f"model.init_from: {tmp_path / 'no-run'} is neither a run folder with policy/ nor a model folder "
            "(no config.json in either)"
        )


def test_random_init_model_needs_no_check():
    check_loadable(model_config("tiny"))  # nothing to look up: no error, no network


# --- the run checks before it reads any data ------------------------------------------------------------------------


def test_the_run_checks_the_model_before_reading_data(tmp_path, monkeypatch):
    from dpo_lightning.runtime import run as run_module

    def no_data(*args, **kwargs):
        raise AssertionError("data was built before the model was checked")

    monkeypatch.setattr(run_module, "build_datamodule", no_data)
    monkeypatch.setattr(run_module, "load_tokenizer", no_data)
    cfg = compose("model=hf", f"model.name_or_path={tmp_path / 'nowhere'}", run_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"^model.name_or_path: cannot load '.*nowhere': no such folder"):
        run_module.run(cfg, tmp_path)


def test_flagship_command_offline_fails_in_one_line_within_seconds(tmp_path):
    """`python train.py task=tldr model=gptj beta=0.5` without the model: one line, exit 2. It took about a minute
    (three chained stack traces, retry warnings) before; < 20 s is a generous bound — nearly all of it is importing
    Lightning and transformers (~12 s on 2 busy cores, a few seconds on an idle machine).

    The suite's one config mistake run as the real command in a process of its own (the whole CLI: interpreter,
    imports, Hydra, the exit status); the other mistakes call the commands' entry points in-process."""
    env = offline_env(HF_HUB_CACHE=str(tmp_path / "hf-cache"))
    started = time.perf_counter()
    result = train("task=tldr", "model=gptj", "beta=0.5", run_dir=tmp_path / "run", env=env, cwd=tmp_path)
    elapsed = time.perf_counter() - started
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith(f"error: model.name_or_path: cannot load '{GPTJ}': {UNREACHABLE}")
    assert "Traceback" not in result.stdout + result.stderr
    assert elapsed < 20, elapsed
    summary = read_summary(tmp_path / "run")
    assert summary["status"] == "failed" and "cannot load" in summary["error"]


# --- data files without rows -----------------------------------------------------------------------------------------


def _parquet(path: Path, rows: int) -> None:
    columns = {c: pa.array([f"{c}{i}" for i in range(rows)], pa.string()) for c in ("prompt", "chosen", "rejected")}
    pq.write_table(pa.table(columns), path)


EMPTY_FILES = {
    "empty.jsonl": b"",
    "blank_lines.jsonl": b"\n\n  \n",
    "empty.json": b"",
    "empty_array.json": b"[ ]\n",
    "empty.csv": b"",
    "header_only.csv": b"prompt,chosen,rejected\n",
    "empty.parquet": b"",
    "no_rows.parquet": None,  # a Parquet file with the columns and 0 rows
}


def _empty_file(folder: Path, name: str) -> Path:
    path = folder / name
    if EMPTY_FILES[name] is None:
        _parquet(path, 0)
    else:
        path.write_bytes(EMPTY_FILES[name])
    return path


@pytest.fixture
def good_file(tmp_path) -> Path:
    path = tmp_path / "good.jsonl"
    write_jsonl(path, [{"prompt": f"p{i}", "chosen": "c", "rejected": "r"} for i in range(8)])
    return path


@pytest.mark.parametrize("name", sorted(EMPTY_FILES))
def test_empty_data_file_has_no_rows(tmp_path, good_file, name):
    path = _empty_file(tmp_path, name)
    with pytest.raises(DataError, match=rf"^{path}: has no rows$"):
        LocalSource(str(path))  # task.source.path
    with pytest.raises(DataError, match=rf"^{path}: has no rows$"):
        LocalSource(str(good_file), val_path=str(path))  # task.source.val_path
    with pytest.raises(DataError, match=rf"^{path}: has no rows$"):
        check_data_file("task.source.data_files.train", str(path))  # hub tasks' local files


@pytest.mark.parametrize("streaming", [False, True])
@pytest.mark.parametrize("name", sorted(EMPTY_FILES))
def test_a_file_emptied_after_the_check_has_no_rows_when_read(tmp_path, good_file, name, streaming):
    """Where `datasets` stopped with `cannot read: StopIteration` (JSON) or its own messages."""
    path = tmp_path / name
    if name.endswith(".parquet"):
        _parquet(path, 4)
    elif name.endswith(".csv"):
        path.write_text("prompt,chosen,rejected\np,c,r\n")
    else:
        path.write_text(good_file.read_text())
    source = LocalSource(str(good_file), val_path=str(path))
    _empty_file(tmp_path, name)
    with pytest.raises(DataError, match=rf"^{path}: has no rows$"):
        source.load("validation", streaming=streaming)


def test_a_file_with_rows_is_read(tmp_path, good_file):
    _parquet(tmp_path / "rows.parquet", 3)
    assert len(LocalSource(str(good_file), val_path=str(tmp_path / "rows.parquet")).load("validation")) == 3
