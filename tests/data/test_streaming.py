"""Streaming data: exactly once over ranks × workers, equal steps on every rank, same batches as map-style."""

import json
from collections import Counter
from functools import partial

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import write_jsonl

from dpo_lightning.data.collate import collate_padded, placeholder_batch
from dpo_lightning.data.datamodule import PreferenceDataModule
from dpo_lightning.data.prepare import PairPreparer
from dpo_lightning.data.sources.local import LocalSource
from dpo_lightning.data.streaming import EqualStepsLoader, StreamingPairs
from dpo_lightning.data.tokenize import PairTokenizer, TokenizeSettings
from dpo_lightning.errors import DataError
from dpo_lightning.models.tiny_tokenizer import load_tiny_tokenizer

NUM_ROWS = 37


def _write_rows(path, count=NUM_ROWS, bad=()):
    rows = [{"prompt": f"Question {i}?", "chosen": f" yes {i}", "rejected": f" no {i}"} for i in range(count)]
    for index in bad:
        rows[index]["chosen"] = ""
    write_jsonl(path, rows)
    return path


def _stream(path, *, rank=0, world_size=1, chunk_size=3, shuffle_buffer=0, skip_bad_rows=False):
    tokenizer = load_tiny_tokenizer()
    pair_tokenizer = PairTokenizer(
        tokenizer, TokenizeSettings(max_length=64, max_prompt_length=32, truncation_mode="keep_start")
    )
    source = LocalSource(str(path), val_path=str(path))
    dataset = StreamingPairs(
        source.load("train", streaming=True),
        PairPreparer(tokenizer, pair_tokenizer),
        partial(collate_padded, pad_token_id=tokenizer.pad_token_id),
        chunk_size=chunk_size,
        origin=source.origin("train"),
        skip_bad_rows=skip_bad_rows,
        shuffle_buffer=shuffle_buffer,
        seed=7,
    )
    dataset.rank, dataset.world_size = rank, world_size
    return dataset


def _prompts(batch) -> list[str]:
    """The prompts of a batch's pairs (rows 0..P-1 hold prompt + chosen)."""
    tokenizer = load_tiny_tokenizer()
    texts = tokenizer.batch_decode(batch.input_ids[: batch.num_pairs], skip_special_tokens=True)
    return [text.split("?")[0] + "?" for text in texts]


@pytest.mark.parametrize("shuffle_buffer", [0, 8])
def test_every_row_exactly_once_over_two_ranks_and_two_workers(tmp_path, shuffle_buffer):
    path = _write_rows(tmp_path / "rows.jsonl")
    seen = Counter()
    for rank in range(2):
        dataset = _stream(path, rank=rank, world_size=2, shuffle_buffer=shuffle_buffer)
        loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=2)
        for chunk in loader:
            seen.update(_prompts(chunk.batch))
    assert seen == Counter(f"Question {i}?" for i in range(NUM_ROWS))


def test_shuffling_changes_order_per_epoch_but_not_per_consumer(tmp_path):
    path = _write_rows(tmp_path / "rows.jsonl")

    def order(epoch):
        dataset = _stream(path, shuffle_buffer=16)
        dataset.epoch = epoch
        return [prompt for chunk in dataset for prompt in _prompts(chunk.batch)]

    first = order(0)
    assert sorted(first) == sorted(f"Question {i}?" for i in range(NUM_ROWS))
    assert first != [f"Question {i}?" for i in range(NUM_ROWS)]  # shuffled
    assert order(0) == first and order(1) != first  # same seed and epoch → same order; next epoch reshuffles


@pytest.mark.parametrize("num_workers", [0, 2])
def test_streaming_batches_equal_map_style_batches_without_shuffling(tmp_path, num_workers):
    path = _write_rows(tmp_path / "rows.jsonl")

    def batches(streaming):
        datamodule = PreferenceDataModule(
            LocalSource(str(path), val_path=str(path)),
            load_tiny_tokenizer(),
            batch_size=4,
            eval_batch_size=5,
            tokenize=TokenizeSettings(max_length=64, max_prompt_length=32, truncation_mode="keep_start"),
            streaming=streaming,
            num_workers=num_workers,
        )
        datamodule.setup()
        return list(datamodule.val_dataloader())

    mapped, streamed = batches(False), batches(True)
    assert len(mapped) == len(streamed) == 8
    for a, b in zip(mapped, streamed, strict=True):
        assert not b.placeholder
        for field in ("input_ids", "attention_mask", "target_rows", "target_positions", "target_ids", "target_seqs"):
            assert torch.equal(getattr(a, field), getattr(b, field)), field


def test_bad_row_names_its_row_or_is_counted(tmp_path):
    path = _write_rows(tmp_path / "rows.jsonl", bad=(10, 11))
    loader = EqualStepsLoader(_stream(path), num_workers=2, placeholder=placeholder_batch(2))
    with pytest.raises(DataError, match=r"rows.jsonl: row 10: chosen: empty \(and 1 more bad rows"):
        list(loader)
    loader = EqualStepsLoader(_stream(path, skip_bad_rows=True), num_workers=2, placeholder=placeholder_batch(2))
    prompts = [prompt for batch in loader for prompt in _prompts(batch)]
    assert len(prompts) == NUM_ROWS - 2 and "Question 10?" not in prompts
    assert loader.report.as_dict()["skipped"] == {"chosen: empty": 2}
    assert loader.report.rows == NUM_ROWS - 2


def _equal_steps_worker(rank, path, init_file, results_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        loader = EqualStepsLoader(_stream(path, rank=rank, world_size=2, chunk_size=2), 2, placeholder_batch(2))
        batches = list(loader)
        steps = [[] if batch.placeholder else _prompts(batch) for batch in batches]
        weights = [None if batch.placeholder else batch.loss_weight for batch in batches]
        (results_dir / f"{rank}.json").write_text(
            json.dumps({"steps": steps, "weights": weights, "rows": loader.report.rows})
        )
    finally:
        dist.destroy_process_group()


def test_two_ranks_run_equal_steps_with_placeholders_when_one_runs_dry(tmp_path):
    # 13 rows in chunks of 2 → 7 chunks: rank 0 owns 4 (0, 2, 4, 6), rank 1 owns 3 → one placeholder step.
    path = _write_rows(tmp_path / "rows.jsonl", count=13)
    mp.start_processes(
        _equal_steps_worker, args=(path, tmp_path / "init", tmp_path), nprocs=2, start_method="spawn", join=True
    )
    results = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in range(2)]
    assert [len(r["steps"]) for r in results] == [4, 4]
    assert [sum(not step for step in r["steps"]) for r in results] == [0, 1]
    seen = Counter(prompt for r in results for step in r["steps"] for prompt in step)
    assert seen == Counter(f"Question {i}?" for i in range(13))
    assert [r["rows"] for r in results] == [7, 6]
    # Each batch's share of its step: W × its pairs ÷ the step's pairs (2 + 2 → 1 each; the last step: rank 0's
    # one pair is all of it → 2, so that DDP's mean over ranks is that pair's gradient).
    assert results[0]["weights"] == [1.0, 1.0, 1.0, 2.0] and results[1]["weights"] == [1.0, 1.0, 1.0, None]
