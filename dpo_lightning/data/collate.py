"""TokenizedPair list → Batch. The only module that knows batch layouts.

A `Batch` carries its own layout: the model inputs (`input_ids`, `attention_mask`, `position_ids`) plus, for
every response token, which row and position predicts it and which sequence it belongs to. `logprobs()`
needs nothing else, so a new layout (prefix-shared, packed) is a new collate function and nothing more.

Sequences are numbered s ∈ [0, 2P): the chosen response of pair k is s = k, the rejected one s = P + k.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from dpo_lightning.data.tokenize import TokenizedPair

IGNORE_INDEX = -100  # label of prompt and padding tokens (Hugging Face convention)


@dataclass
class Batch:
    """P preference pairs laid out for one forward pass; N = total response tokens.

    input_ids, attention_mask, position_ids: [R, T] model inputs (R rows of length T).
    target_rows, target_positions: [N] where each response token is predicted from: the output at
        (row, position) predicts the token at (row, position + 1).
    target_ids: [N] the response tokens themselves.
    target_seqs: [N] the sequence s ∈ [0, 2P) each response token belongs to.
    placeholder: a stand-in batch for a rank that has run out of data while others have not (streaming):
        it goes through the model so that collectives match, but its loss is multiplied by zero.
    pair_keys: [P] int64 content key of each pair (`pair_key`), whatever the layout; what
        `reference=precomputed` looks its cached reference log-probs up by.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    target_rows: torch.Tensor
    target_positions: torch.Tensor
    target_ids: torch.Tensor
    target_seqs: torch.Tensor
    num_pairs: int
    placeholder: bool = False
    pair_keys: torch.Tensor | None = None

    @property
    def num_tokens(self) -> int:
        """Real (non-padding) tokens fed to the model."""
        return int(self.attention_mask.sum())


def pair_key(pair: TokenizedPair) -> int:
    """A 64-bit key of the pair's token ids (blake2b, 8 bytes, as a signed int64): equal ids, equal key.

    The three lengths go first, so the split between prompt, chosen and rejected is part of what is hashed;
    swapping chosen and rejected changes the key.
    """
    ids = (pair.prompt_ids, pair.chosen_ids, pair.rejected_ids)
    data = array("q", [len(part) for part in ids])
    for part in ids:
        data.extend(part)
    return int.from_bytes(hashlib.blake2b(data.tobytes(), digest_size=8).digest(), "little", signed=True)


def collate_padded(pairs: Sequence[TokenizedPair], pad_token_id: int) -> Batch:
    """The plain layout, and the correctness reference for every other one.

    Rows 0..P-1 are `prompt + chosen`, rows P..2P-1 are `prompt + rejected`, right-padded to the longest row;
    labels are the input ids with prompt and padding set to IGNORE_INDEX, shifted by one to find targets.
    """
    sequences = [(p.prompt_ids, p.chosen_ids) for p in pairs] + [(p.prompt_ids, p.rejected_ids) for p in pairs]
    num_rows = len(sequences)
    width = max(len(prompt) + len(response) for prompt, response in sequences)
    input_ids = torch.full((num_rows, width), pad_token_id, dtype=torch.long)
    labels = torch.full((num_rows, width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((num_rows, width), dtype=torch.long)
    for row, (prompt, response) in enumerate(sequences):
        length = len(prompt) + len(response)
        input_ids[row, :length] = torch.tensor(prompt + response)
        labels[row, len(prompt) : length] = torch.tensor(response)
        attention_mask[row, :length] = 1
    position_ids = torch.arange(width).expand(num_rows, width).contiguous()

    # The output at position t predicts the token at t + 1: shift labels left by one.
    target_rows, target_positions = (labels[:, 1:] != IGNORE_INDEX).nonzero(as_tuple=True)  # [N], [N]
    return Batch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        target_rows=target_rows,
        target_positions=target_positions,
        target_ids=labels[target_rows, target_positions + 1],
        target_seqs=target_rows.clone(),  # in this layout row r holds sequence r
        num_pairs=len(pairs),
        pair_keys=torch.tensor([pair_key(pair) for pair in pairs], dtype=torch.long),
    )


def placeholder_batch(pad_token_id: int) -> Batch:
    """One pair made of a single padding token each, marked `placeholder` (see `Batch`)."""
    pad = [pad_token_id]
    batch = collate_padded([TokenizedPair(pad, pad, pad)], pad_token_id)
    batch.placeholder = True
    return batch
