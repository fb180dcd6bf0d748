"""PreferenceDataModule: source rows → checked, rendered, tokenized pairs → collated batches.

Two paths share every step that touches a row (`PairPreparer`, `RowReport`, the layout's collate function):

- map-style (default): each split is prepared once in `setup` (`datasets.map`, cached in memory); Lightning
  shards it over ranks with a DistributedSampler. `group_by_length`: training batches of similar-length pairs
  (`data/sampler.py`).
- streaming (`task.streaming=true`): rows are read lazily and prepared on the fly by the dataloader
  workers, sharded over ranks and workers with equal steps on every rank (see `data/streaming.py`).

Batches come in the layout `layout` names (`data.layout`: packed (default) | prefix_shared | padded, see
`data/collate.py`); the module falls back to the padded one for a model that cannot take it.

Ranked sources (K responses with scores a prompt, `data/rankings.py`) reach the model whole by default
(`rankings="whole"`: one example a prompt, its K responses branches of one block; `RankingPreparer`), or
flattened into pairs before tokenizing (`rankings="pairs"`: `flatten_rankings`, then the pair path). Either way
`ranking_pairs` picks the pairs a pairwise loss sees.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import datasets
import lightning as L
import numpy as np
import pyarrow.compute as pc
from torch.utils.data import DataLoader, Sampler
from transformers import PreTrainedTokenizerBase

from dpo_lightning.data.collate import LAYOUTS, Batch, Collate, Example, collate_function, placeholder_batch
from dpo_lightning.data.fingerprint import Versioned
from dpo_lightning.data.prepare import (
    REPORT_COLUMNS,
    PairPreparer,
    Preparer,
    RankingPreparer,
    RowReport,
    flatten_rankings,
)
from dpo_lightning.data.rankings import RANKING_PAIRS, RANKINGS
from dpo_lightning.data.sampler import LengthGroupedSampler, ResumableSampler, ShuffledSampler
from dpo_lightning.data.sources.base import SPLITS, PreferenceSource, is_ranked, row_features
from dpo_lightning.data.sources.rows import Rows, RowsSource, is_rows
from dpo_lightning.data.streaming import EqualStepsLoader, StreamingPairs, all_ranks
from dpo_lightning.data.tokenize import PairTokenizer, TokenizedPair, TokenizeSettings
from dpo_lightning.errors import ConfigError, DataError


class PreferenceDataModule(L.LightningDataModule):
    """Preference pairs for training and validation.

    `source` is a task's source (`data/sources/`: the Hydra run builds it from `task.source`) or the training
    rows themselves: a list of dicts or a `datasets.Dataset`, in any of `task=local`'s formats (pairs,
    conversations, ranked rows; `sources/rows.py`), parsed and checked as its files are. Rows get their validation
    rows from `val_data`, else a hold-out of `val_size` of them (a fraction in (0, 1) or a count; default 0.05),
    seeded by `seed`. For rows with other keys, pass `sources.rows.RowsSource(rows, …, prompt_column=…)`.
    `tokenizer`: the model's (`dpo_lightning.load_tokenizer("tiny")`, or any `PreTrainedTokenizerBase`).

    `batch_size` is the global batch in pairs: each device gets
    `batch_size / (world_size × accumulate_grad_batches)` pairs per step, so the optimizer always sees
    `batch_size` pairs whatever the number of devices. `layout` and `packing_max_tokens` choose the collate
    function (`collate.collate_function`); `rankings` and `ranking_pairs` how ranked data is batched (module
    docstring); `group_by_length` orders map-style training pairs with
    `LengthGroupedSampler` (groups of one step's pairs over all ranks), else `ShuffledSampler` (a seeded
    permutation per epoch).

    Checkpoints keep the data position (`state_dict`: the epoch and how many of its batches were trained); a run
    resumed from one continues the epoch with the next batch, map-style and streaming alike.
    """

    def __init__(
        self,
        source: PreferenceSource | Rows,
        tokenizer: PreTrainedTokenizerBase,
        *,
        batch_size: int,
        eval_batch_size: int,
        val_data: Rows | None = None,
        val_size: float | None = None,
        tokenize: TokenizeSettings = TokenizeSettings(),  # noqa: B008 - frozen: shared safely
        skip_bad_rows: bool = False,
        streaming: bool = False,
        shuffle_buffer: int = 10_000,
        seed: int = 0,
        num_workers: int = 0,
        layout: str = "packed",
        packing_max_tokens: int | None = None,
        group_by_length: bool = False,
        rankings: str = "whole",
        ranking_pairs: str = "all",
    ) -> None:
        super().__init__()
        check_batching(
            batch_size, eval_batch_size, layout, packing_max_tokens, group_by_length, rankings, ranking_pairs, streaming
        )
        if isinstance(tokenizer, str):  # loading one by name is the models layer's: data does not import it
            raise ConfigError(
                "tokenizer",
                f"must be a tokenizer object, got the string {tokenizer!r}; load it with "
                f'dpo_lightning.load_tokenizer({tokenizer!r}) (a model name: "tiny", a hub id or a local folder)',
            )
        self.source = as_source(source, val_data, val_size, seed)
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.tokenize = tokenize
        self.skip_bad_rows = skip_bad_rows
        self.streaming = streaming
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.num_workers = num_workers
        self.collate: Collate = collate_function(layout, tokenizer.pad_token_id, packing_max_tokens, ranking_pairs)
        self.group_by_length = group_by_length
        self.rankings, self.ranking_pairs = rankings, ranking_pairs
        self.preparer: Preparer | None = None
        self.pairs: dict[str, datasets.Dataset] = {}  # map-style: prepared usable pairs per split
        self.reports: dict[str, RowReport] = {}  # map-style: per split
        self.streams: dict[str, EqualStepsLoader] = {}  # streaming: per split
        self.resume_point: tuple[int, int] | None = None  # (epoch, batches trained in it), from a checkpoint

    def state_dict(self) -> dict[str, int]:
        """The data position, saved in checkpoints: the epoch, and its batches (per device) processed so far."""
        if self.trainer is None:
            return {}
        progress = self.trainer.fit_loop.epoch_loop.batch_progress.current
        return {"epoch": self.trainer.current_epoch, "batches": progress.processed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume from a checkpoint's data position: the next training loader skips what was trained."""
        self.resume_point = (state["epoch"], state["batches"]) if state else None

    def setup(self, stage: str | None = None) -> None:
        if self.preparer is None:
            preparer = RankingPreparer if self.whole_rankings else PairPreparer
            self.preparer = preparer(self.tokenizer, PairTokenizer(self.tokenizer, self.tokenize))
        if not self.streaming:
            for split in SPLITS:
                if split not in self.pairs:
                    self.pairs[split] = self._prepare(split)

    @property
    def whole_rankings(self) -> bool:
        """Whether examples are whole rankings (a ranked source with `rankings="whole"`) rather than pairs."""
        return is_ranked(self.source) and self.rankings == "whole"

    def _rows(self, split: str) -> datasets.Dataset | datasets.IterableDataset:
        rows = self.source.load(split, streaming=self.streaming)
        conversational = getattr(self.source, "conversational", False)
        if conversational and self.tokenizer.chat_template is None:
            raise ConfigError("model.tokenizer", "has no chat template, and this task's rows are conversations")
        if is_ranked(self.source) and self.rankings == "pairs":
            rows = rows.map(
                Versioned(partial(flatten_rankings, mode=self.ranking_pairs)),
                batched=True,
                remove_columns=list(row_features(conversational, ranked=True)),
                features=row_features(conversational),
            )
        return rows

    def _prepare(self, split: str) -> datasets.Dataset:
        """Map-style: prepare every row of `split` once; keep the usable pairs, report or count the rest."""
        rows = self._rows(split)
        prepared = rows.map(
            Versioned(self.preparer), batched=True, remove_columns=rows.column_names, desc=f"tokenizing {split}"
        )
        report = RowReport(self.source.origin(split), self.skip_bad_rows)
        usable = report.account(prepared.select_columns(list(REPORT_COLUMNS)).to_dict())
        if report.rows == 0:
            raise DataError(f"{self.source.origin(split)}: no usable rows")
        self.reports[split] = report
        return prepared.select([i for i, ok in enumerate(usable) if ok]).select_columns(list(self.preparer.id_columns))

    def _micro_batch_size(self) -> int:
        trainer = self.trainer
        if trainer is None:
            return self.batch_size
        return micro_batch_size(
            self.batch_size, trainer.num_nodes, trainer.num_devices, trainer.accumulate_grad_batches
        )

    def _loader(self, split: str, batch_size: int, shuffle: bool) -> DataLoader | EqualStepsLoader:
        """Batches of `split`; `shuffle` (training): seeded per epoch, and resumed at `resume_point` once."""
        resume = None
        if shuffle:
            resume, self.resume_point = self.resume_point, None
        if self.streaming:
            stream = self._stream(split, batch_size, shuffle)
            if resume is not None:
                stream.resume_at(*resume)
            return stream
        pairs = self.pairs[split]
        sampler = None
        if shuffle:
            world_size = self.trainer.world_size if self.trainer else 1
            order = (
                LengthGroupedSampler(_example_lengths(pairs), batch_size * world_size, seed=self.seed)
                if self.group_by_length
                else ShuffledSampler(len(pairs), seed=self.seed)
            )
            sampler = self.training_sampler(order, batch_size, resume)
        return DataLoader(
            pairs.with_format(None),
            batch_size=batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=partial(_collate_rows, collate=self.collate, example=self.preparer.example),
            persistent_workers=self.num_workers > 0,
        )

    def training_sampler(
        self, order: Sampler[int], batch_size: int, resume: tuple[int, int] | None
    ) -> ResumableSampler:
        """This rank's share of the epoch `order`, started after the `resume` point's (epoch, batches) if given."""
        rank, world_size = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        sampler = ResumableSampler(order, num_replicas=world_size, rank=rank)
        if resume is not None:
            epoch, batches = resume
            sampler.resume_at(epoch, batches * batch_size)
        return sampler

    def _stream(self, split: str, batch_size: int, shuffle: bool) -> EqualStepsLoader:
        dataset = StreamingPairs(
            self._rows(split),
            self.preparer,
            self.collate,
            chunk_size=batch_size,
            origin=self.source.origin(split),
            skip_bad_rows=self.skip_bad_rows,
            shuffle_buffer=self.shuffle_buffer if shuffle else 0,
            seed=self.seed,
        )
        if self.trainer is not None:
            dataset.rank, dataset.world_size = self.trainer.global_rank, self.trainer.world_size
        self.streams[split] = EqualStepsLoader(
            dataset,
            self.num_workers,
            placeholder_batch(self.tokenizer.pad_token_id, self.collate, ranked=self.whole_rankings),
        )
        return self.streams[split]

    def train_dataloader(self) -> DataLoader | EqualStepsLoader:
        return self._loader("train", self._micro_batch_size(), shuffle=True)

    def val_dataloader(self) -> DataLoader | EqualStepsLoader:
        return self._loader("validation", self.eval_batch_size, shuffle=False)

    def evaluation_pairs(self, count: int) -> list[TokenizedPair]:
        """The first `count` usable validation pairs with distinct prompts, in data order (for sampling: see
        `eval/callback.py`); fewer if the split has fewer. Streaming reads just enough of the stream."""
        if self.streaming:
            rows = self._rows("validation")
            prepared = rows.map(self.preparer, batched=True, remove_columns=list(rows.column_names or ()))
            candidates = (row for row in prepared if not row["problem"])
        else:
            candidates = iter(self.pairs["validation"].with_format(None))
        pairs: dict[tuple[int, ...], TokenizedPair] = {}
        for row in candidates:
            if len(pairs) == count:
                break
            pairs.setdefault(tuple(row["prompt_ids"]), self.preparer.evaluation_pair(row))
        return list(pairs.values())

    def report(self) -> dict[str, dict[str, Any]]:
        """Per split: usable rows, skipped and filtered rows per reason, truncations, duplicate pairs and rows whose
        text holds a special token's text (`RowReport`) — over all ranks.

        Map-style counts the whole split; streaming counts the rows of the latest pass (a collective call:
        every rank must make it)."""
        if not self.streaming:
            return {split: report.as_dict() for split, report in self.reports.items()}
        totals = {}
        for split in SPLITS:
            total = RowReport(self.source.origin(split), self.skip_bad_rows)
            mine = self.streams[split].report.as_dict() if split in self.streams else None
            for counts in all_ranks(mine):
                if counts is not None:
                    total.merge(counts)
            totals[split] = total.as_dict()
        return totals


def as_source(
    data: PreferenceSource | Rows, val_data: Rows | None = None, val_size: float | None = None, seed: int = 0
) -> PreferenceSource:
    """A source for `PreferenceDataModule`: `data` itself if it is one (has `load`), else a `RowsSource` of the
    rows, validated by `val_data` or a hold-out of `val_size` (default 0.05) seeded by `seed`."""
    if is_rows(data):
        return RowsSource(data, val_data, val_size=0.05 if val_size is None else val_size, seed=seed)
    if not callable(getattr(data, "load", None)):
        raise ConfigError(
            "source", f"must be a preference source, a list of dicts or a datasets.Dataset, got {type(data).__name__}"
        )
    for key, value in (("val_data", val_data), ("val_size", val_size)):
        if value is not None:
            raise ConfigError(key, "applies to rows given in Python; a source brings its own validation split")
    return data


def _collate_rows(rows: list[dict], collate: Collate, example: Callable[[dict], Example]) -> Batch:
    return collate([example(row) for row in rows])


def _example_lengths(examples: datasets.Dataset) -> list[int]:
    """[N] tokens of each example (prompt + every response), from the Arrow columns (no Python lists of ids)."""
    table = examples.with_format("arrow")[:]
    if "response_ids" in table.column_names:  # rankings: the prompt, then the responses' total per ranking
        responses = table.column("response_ids").combine_chunks()  # list<list<int>>: [G] rankings of K_g responses
        tokens = np.concatenate([[0], np.cumsum(pc.list_value_length(responses.values).to_numpy())])  # [Σ K + 1]
        offsets = responses.offsets.to_numpy()  # [G + 1] each ranking's first response
        response_tokens = tokens[offsets[1:]] - tokens[offsets[:-1]]  # [G]
        return (pc.list_value_length(table.column("prompt_ids")).to_numpy() + response_tokens).tolist()
    lengths = [pc.list_value_length(table.column(column)) for column in ("prompt_ids", "chosen_ids", "rejected_ids")]
    return pc.add(pc.add(lengths[0], lengths[1]), lengths[2]).to_pylist()


def micro_batch_size(batch_size: int, num_nodes: int, devices: int, accumulate_grad_batches: int) -> int:
    """Pairs per device per forward of a global batch of `batch_size` pairs: it must divide evenly."""
    shards = num_nodes * devices * accumulate_grad_batches
    if batch_size % shards:
        raise ConfigError(
            "data.batch_size",
            f"{batch_size} pairs (the global batch) is not divisible by trainer.num_nodes × trainer.devices × "
            f"trainer.accumulate_grad_batches = {num_nodes} × {devices} × {accumulate_grad_batches}",
        )
    return batch_size // shards


def check_batching(
    batch_size: int,
    eval_batch_size: int,
    layout: str,
    packing_max_tokens: int | None,
    group_by_length: bool,
    rankings: str,
    ranking_pairs: str,
    streaming: bool,
) -> None:
    """Checks of the batching settings (the `data` keys, and how they meet `task.streaming`); each failure is one
    ConfigError naming the key."""
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ConfigError("data.batch_size", f"must be an integer ≥ 1, got {batch_size!r}")
    if not (isinstance(eval_batch_size, int) and eval_batch_size >= 1):
        raise ConfigError("data.eval_batch_size", f"must be an integer ≥ 1, got {eval_batch_size!r}")
    if layout not in LAYOUTS:
        raise ConfigError("data.layout", f"must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if not (packing_max_tokens is None or (isinstance(packing_max_tokens, int) and packing_max_tokens >= 2)):
        raise ConfigError(
            "data.packing_max_tokens",
            "must be null (the batch's longest pair) or an integer ≥ 2 (prompt and response token), "
            f"got {packing_max_tokens!r}",
        )
    if not isinstance(group_by_length, bool):
        raise ConfigError("data.group_by_length", f"must be true or false, got {group_by_length!r}")
    if group_by_length and streaming:
        raise ConfigError(
            "data.group_by_length",
            "needs map-style data (a stream's lengths are not known ahead); set task.streaming=false or turn it off",
        )
    if rankings not in RANKINGS:
        raise ConfigError("data.rankings", f"must be one of {', '.join(RANKINGS)}, got {rankings!r}")
    if ranking_pairs not in RANKING_PAIRS:
        raise ConfigError("data.ranking_pairs", f"must be one of {', '.join(RANKING_PAIRS)}, got {ranking_pairs!r}")
