"""Streaming preference data: read lazily, tokenized on the fly, sharded over ranks and workers, equal steps.

Sharding. The stream (through a seeded shuffle buffer, reshuffled every epoch) is cut into chunks of
`chunk_size` rows, one micro-batch each. With R ranks and W dataloader workers per rank, chunk c belongs to
rank c mod R and, on that rank, to worker (c div R) mod W:

    chunk:   0    1    2    3    4    5    6    7   …        R = 2, W = 2
    rank:    0    1    0    1    0    1    0    1
    worker:  0    0    1    1    0    0    1    1

Every consumer reads the stream, but only a chunk's owner renders, tokenizes and collates it, so in one
epoch every row is used by exactly one consumer. A DataLoader takes batches from its workers in turn, so
rank r yields its chunks in stream order (r, r + R, r + 2R, …): with one rank and shuffling off, the
batches are exactly those of the map-style loader.

Equal steps. Ranks may own different numbers of chunks, and skipped rows can empty a chunk. In each
rank's main process `EqualStepsLoader` exchanges, before every step, how many pairs each rank's batch holds
(and any data error): while any rank has one, a rank without one runs a placeholder batch whose loss is
multiplied by zero, so all ranks run the same steps and no collective waits forever; and each real batch
carries its rank's share of the step's pairs (`Batch.loss_weight`), so that the step's gradient is the mean over
its pairs whichever ranks hold them. A data error on one
rank stops every rank with the same message.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import datasets
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from dpo_lightning.data.collate import Batch, Collate
from dpo_lightning.data.prepare import Preparer, RowReport
from dpo_lightning.errors import DataError


@dataclass
class StreamChunk:
    """What a worker sends for one owned chunk: its batch (None if no row was usable), its row counts, or
    the data error that stops the run (raised in the main process, not inside the worker)."""

    batch: Batch | None
    report: dict[str, Any]
    error: str | None = None


class StreamingPairs(IterableDataset):
    """The chunks of `rows` that this rank and worker own, as `StreamChunk`s (see the module docstring)."""

    def __init__(
        self,
        rows: datasets.IterableDataset,
        prepare: Preparer,
        collate: Collate,
        *,
        chunk_size: int,
        origin: str,
        skip_bad_rows: bool,
        shuffle_buffer: int = 0,
        seed: int = 0,
    ) -> None:
        self.rows, self.prepare, self.collate = rows, prepare, collate
        self.chunk_size, self.origin, self.skip_bad_rows = chunk_size, origin, skip_bad_rows
        self.shuffle_buffer, self.seed = shuffle_buffer, seed
        self.rank, self.world_size, self.epoch = 0, 1, 0

    def owns(self, chunk: int, worker: int, num_workers: int) -> bool:
        return chunk % self.world_size == self.rank and (chunk // self.world_size) % num_workers == worker

    def __iter__(self) -> Iterator[StreamChunk]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        rows = self.rows
        if self.shuffle_buffer > 0:
            rows = rows.shuffle(seed=self.seed, buffer_size=self.shuffle_buffer)
            rows.set_epoch(self.epoch)
        seen_pairs: set[str] = set()  # duplicate pairs: counted within what this consumer reads in this pass
        for chunk, raw in enumerate(rows.iter(batch_size=self.chunk_size)):
            if self.owns(chunk, worker, num_workers):
                yield self._chunk(raw, seen_pairs)

    def _chunk(self, raw: dict[str, list], seen_pairs: set[str]) -> StreamChunk:
        prepared = self.prepare(raw)
        report = RowReport(self.origin, self.skip_bad_rows, seen_pairs)
        try:
            usable = report.account(prepared)
        except DataError as error:
            return StreamChunk(None, {}, str(error))
        columns = self.prepare.id_columns
        examples = [
            self.prepare.example(dict(zip(columns, values, strict=True)))
            for *values, ok in zip(*(prepared[column] for column in columns), usable, strict=True)
            if ok
        ]
        return StreamChunk(self.collate(examples) if examples else None, report.as_dict())


def all_ranks(value: Any) -> list[Any]:
    """`value` from every rank, in rank order (just `[value]` without a process group)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [value]
    values: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(values, value)
    return values


class EqualStepsLoader:
    """Iterates a `StreamingPairs` through a DataLoader so that every rank runs the same number of steps.

    Each pass (epoch) reshuffles the stream and starts a fresh `report` of the rows it read on this rank.
    `resume_at(epoch, steps)` makes the next pass epoch `epoch`'s, without its first `steps` steps: the stream is
    read again from its start and those batches are prepared but not yielded, so the rest comes exactly as in
    the interrupted run (and the report counts the whole pass).
    """

    def __init__(self, dataset: StreamingPairs, num_workers: int, placeholder: Batch) -> None:
        self.dataset, self.num_workers, self.placeholder = dataset, num_workers, placeholder
        self.report = RowReport(dataset.origin, dataset.skip_bad_rows)
        self.passes = 0
        self.skip = 0

    def resume_at(self, epoch: int, steps: int) -> None:
        self.passes, self.skip = epoch, steps

    def __iter__(self) -> Iterator[Batch]:
        self.dataset.epoch = self.passes
        self.passes += 1
        skip, self.skip = self.skip, 0
        self.report = RowReport(self.dataset.origin, self.dataset.skip_bad_rows)
        chunks = iter(DataLoader(self.dataset, batch_size=None, num_workers=self.num_workers))
        steps = 0
        while True:
            batch, error = self._next_batch(chunks)
            states = all_ranks((batch.num_pairs if batch is not None else 0, error))  # (pairs, error) per rank
            errors = [error for _, error in states if error]
            if errors:
                raise DataError(errors[0])
            step_pairs = sum(pairs for pairs, _ in states)
            if step_pairs == 0:
                if steps == 0:
                    raise DataError(f"{self.dataset.origin}: no usable rows")
                return
            if batch is not None:  # this rank's share of the step: see Batch.loss_weight
                batch.loss_weight = len(states) * batch.num_pairs / step_pairs
            steps += 1
            if steps > skip:
                yield batch if batch is not None else self.placeholder

    def _next_batch(self, chunks: Iterator[StreamChunk]) -> tuple[Batch | None, str | None]:
        for chunk in chunks:
            if chunk.error is not None:
                return None, chunk.error
            self.report.merge(chunk.report)
            if chunk.batch is not None:
                return chunk.batch, None
        return None, None
