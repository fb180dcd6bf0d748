"""Map-style training orders, seeded per epoch and resumable mid-epoch.

`ShuffledSampler`: a random permutation per epoch. `LengthGroupedSampler`: an order in which each batch holds
pairs of similar length. `ResumableSampler` shares either out over the data-parallel ranks and, once, starts a
rank's share of an epoch part-way through (`resume=auto` continuing a run from a mid-epoch checkpoint).

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

DDP: `ResumableSampler` deals the order out in turn (rank r takes indices r, r + W, …) and pads the epoch to a
multiple of W with repeats, as Lightning's `DistributedSamplerWrapper` does. With `group_size` = per-device
batch × W, each group of similar lengths becomes one batch on each rank. Lightning's `set_epoch` reaches this
sampler through it; without it (a plain DataLoader loop) every epoch has epoch 0's order.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DistributedSampler, Sampler


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


class ResumableSampler(DistributedSampler):
    """This rank's share of `order` (a sampler with `set_epoch`, e.g. `ShuffledSampler`), where the first pass
    over epoch `resume_epoch` leaves out the first `skip` indices of the share — those the interrupted run had
    trained on.

    Ranks share out the epoch as Lightning's `DistributedSamplerWrapper` would (the order padded with its first
    indices to a multiple of the W ranks, rank r taking positions r, r + W, …), but here, since a rank's skipped
    indices must come out of its own share: being a `DistributedSampler`, Lightning uses it as it is. `__len__`
    is the whole epoch's share, as Lightning's progress counters (restored from the checkpoint) expect.
    """

    def __init__(self, order: Sampler[int], num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(range(len(order)), num_replicas=num_replicas, rank=rank, shuffle=False)
        self.order = order
        self.resume_epoch: int | None = None
        self.skip = 0

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.order.set_epoch(epoch)

    def resume_at(self, epoch: int, skip: int) -> None:
        self.resume_epoch, self.skip = epoch, skip

    def __iter__(self) -> Iterator[int]:
        indices = list(self.order)  # [N] the epoch's order
        indices += indices[: self.total_size - len(indices)]  # padded to W × num_samples
        share = iter(indices[self.rank : self.total_size : self.num_replicas])  # [num_samples]
        if self.epoch == self.resume_epoch:
            share = itertools.islice(share, self.skip, None)
            self.resume_epoch = None  # once: a later pass over this epoch number is a whole one
        return share
