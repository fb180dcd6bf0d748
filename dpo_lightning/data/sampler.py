"""Map-style training orders, seeded per epoch and resumable mid-epoch.

`ShuffledSampler`: a random permutation per epoch. `LengthGroupedSampler`: an order in which each batch holds
pairs of similar length. `ResumableSampler` wraps either and, once, starts an epoch part-way through
(`resume=auto` continuing a run from a mid-epoch checkpoint).

LengthGroupedSampler.

Padding (and, packed, empty row ends) is wasted compute; batches of similar-length pairs waste less. Per
epoch, with a generator seeded by `seed + epoch`:

    order   = a random permutation of the N pairs
    groups  = order cut into mega-batches of `group_size × mega_batches` pairs, each sorted by length
              (longest first), then cut into groups of `group_size` consecutive pairs
    yield   = the full groups in random order, then the one partial group (if N % group_size ≠ 0) last

so every pair comes exactly once per epoch, the same seed and epoch give the same order, and a different epoch
another. Sorting only inside mega-batches (as Hugging Face's `LengthGroupedSampler` does) keeps the order
random at the scale of an epoch. The partial group goes last so that it cannot shift every later batch off
its group boundaries.

DDP: Lightning wraps a custom sampler in `DistributedSamplerWrapper`, which deals its indices out in turn
(rank r takes indices r, r + W, …) and pads the epoch to a multiple of W with repeats. With `group_size` =
per-device batch × W, each group of similar lengths becomes one batch on each rank. Lightning's `set_epoch`
reaches this sampler through the wrapper; without it (a plain DataLoader loop) every epoch has epoch 0's order.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


class LengthGroupedSampler(Sampler[int]):
    """Indices of `lengths` (one per pair: prompt + chosen + rejected tokens) in length-grouped random order.

    Args:
        lengths: [N] token count of each pair.
        group_size: pairs per group: the DataLoader's batch size × the number of data-parallel ranks.
        seed: the run's seed; epoch e shuffles with `seed + e`.
        mega_batches: groups per sorted mega-batch (50, as in Hugging Face transformers).
    """

    def __init__(self, lengths: Sequence[int], group_size: int, seed: int = 0, mega_batches: int = 50) -> None:
        self.lengths = torch.as_tensor(lengths, dtype=torch.long)  # [N]
        self.group_size, self.seed, self.mega_batches = group_size, seed, mega_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        if not len(self.lengths):
            return iter(())
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator)  # [N]
        groups = []
        for mega_batch in order.split(self.group_size * self.mega_batches):
            by_length = mega_batch[self.lengths[mega_batch].argsort(descending=True, stable=True)]
            groups.extend(by_length.split(self.group_size))
        partial = [groups.pop()] if len(groups[-1]) < self.group_size else []
        shuffled = [groups[i] for i in torch.randperm(len(groups), generator=generator).tolist()]
        return iter(torch.cat(shuffled + partial).tolist())


class ShuffledSampler(Sampler[int]):
    """A random permutation of `size` indices per epoch, from a generator seeded by `seed + epoch`: the same
    order for the same seed and epoch in any process (a resumed run draws its epoch again exactly)."""

    def __init__(self, size: int, seed: int = 0) -> None:
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())


class ResumableSampler(Sampler[int]):
    """`order` (a sampler with `set_epoch`), except that the first pass over epoch `resume_epoch` leaves out its
    first `skip` indices — those the interrupted run had trained on.

    DDP: Lightning wraps this sampler in `DistributedSamplerWrapper`, which deals indices out in turn (rank r
    takes r, r + W, …), so skipping steps × per-device batch × W indices here resumes every rank where it was.
    `__len__` stays the whole epoch's, as Lightning's progress counters (restored from the checkpoint) expect.
    """

    def __init__(self, order: Sampler[int]) -> None:
        self.order, self.epoch = order, 0
        self.resume_epoch: int | None = None
        self.skip = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.order.set_epoch(epoch)

    def resume_at(self, epoch: int, skip: int) -> None:
        self.resume_epoch, self.skip = epoch, skip

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self) -> Iterator[int]:
        indices = iter(self.order)
        if self.epoch == self.resume_epoch:
            indices = itertools.islice(indices, self.skip, None)
            self.resume_epoch = None  # once: a later pass over this epoch number is a whole one
        return indices
