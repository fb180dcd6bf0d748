"""TokenizedPair list → Batch. The only module that knows batch layouts.

A `Batch` carries its own layout: the model inputs (`input_ids`, `attention_mask`, `position_ids`) plus, for
every response token, which row and position predicts it and which sequence it belongs to. `logprobs()`
needs nothing else, so a new layout is a new collate function and nothing more.

Sequences are numbered s ∈ [0, 2P): the chosen response of pair k is s = k, the rejected one s = P + k.
Every layout lists its targets in the same order (sequence by sequence, each in token order), so the same
pairs give elementwise comparable per-token log-probs whatever the layout.

The layouts (`LAYOUTS`, config key `data.layout`), for a pair with prompt x (p tokens), chosen y_w (c) and
rejected y_l (r):

    padded          2 rows per pair: [x y_w] and [x y_l], right-padded      2-D mask [R, T]; the reference
    prefix_shared   1 row per pair:  [x y_w y_l]                            4-D mask [R, 1, T, T]
    packed          several pairs a row: [x y_w y_l][x' y_w' y_l']…         4-D mask, block-diagonal per pair;
                                                                            the default (fastest: README)

In the 4-D-mask layouts a pair's prompt is computed once for both responses: y_l's tokens see x and earlier
y_l tokens, never y_w's, and their positions restart where y_w's started (x: 0..p−1, y_w: p..p+c−1, y_l:
p..p+r−1), so every response token sees exactly the context and positions it has in the padded layout.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from functools import partial
from itertools import accumulate

import torch

from dpo_lightning.data.tokenize import TokenizedPair

IGNORE_INDEX = -100  # label of prompt and padding tokens (Hugging Face convention)
LAYOUTS: tuple[str, ...] = ("prefix_shared", "packed", "padded")  # `data.layout` values


@dataclass
class Batch:
    """P preference pairs laid out for one forward pass; N = total response tokens.

    input_ids, position_ids: [R, T] model inputs (R rows of length T).
    attention_mask: [R, T] int (1 = token, 0 = padding) in the padded layout, where the model adds causality;
        [R, 1, T, T] bool (True = the query token in row r at position i may attend to the key at position j)
        in the prefix-shared and packed layouts. A padding query attends to itself only, so that no mask row
        is empty (an empty row makes NaN in SDPA).
    target_rows, target_positions: [N] where each response token is predicted from: the output at
        (row, position) predicts the response token. In the padded layout that token sits at position + 1; in
        the 4-D-mask layouts a rejected response's first token is predicted from the prompt's last position.
    target_ids: [N] the response tokens themselves.
    target_seqs: [N] the sequence s ∈ [0, 2P) each response token belongs to; targets come sequence by
        sequence (s = 0, 1, …), each in token order.
    num_pairs: P.
    num_tokens: tokens fed to the model, padding excluded (a prompt counts twice in the padded layout, where
        it is fed twice, and once in the others); what `train/tokens_per_s` counts.
    placeholder: a stand-in batch for a rank that has run out of data while others have not (streaming):
        it goes through the model so that collectives match, but its loss is multiplied by zero.
    loss_weight: this rank's share of the step under data parallelism, W × its pairs ÷ all W ranks' pairs
        (streaming, where ranks can hold different numbers of pairs; 1 for equal shares): the module scales its
        loss by it, so that DDP's mean of the ranks' gradients is the gradient of the mean over every pair.
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
    num_tokens: int
    placeholder: bool = False
    pair_keys: torch.Tensor | None = None
    loss_weight: float = 1.0

    @property
    def shares_prompts(self) -> bool:
        """Whether this is a 4-D-mask layout (prefix-shared or packed) rather than the padded one."""
        return self.attention_mask.dim() == 4

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """A copy with every tensor on `device` (also what Lightning calls to move a batch)."""
        tensors = {f.name: getattr(self, f.name) for f in fields(self)}
        moved = {k: v.to(device, non_blocking=non_blocking) for k, v in tensors.items() if isinstance(v, torch.Tensor)}
        return replace(self, **moved)


Collate = Callable[[Sequence[TokenizedPair]], Batch]  # a layout's collate function, its options bound


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


def _pair_keys(pairs: Sequence[TokenizedPair]) -> torch.Tensor:
    return torch.tensor([pair_key(pair) for pair in pairs], dtype=torch.long)  # [P]


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
        num_tokens=int(attention_mask.sum()),
        pair_keys=_pair_keys(pairs),
    )


def _length(pair: TokenizedPair) -> int:
    """Tokens of the pair in a 4-D-mask row: p + c + r."""
    return len(pair.prompt_ids) + len(pair.chosen_ids) + len(pair.rejected_ids)


def collate_prefix_shared(pairs: Sequence[TokenizedPair], pad_token_id: int) -> Batch:
    """One row per pair, `[prompt][chosen][rejected]`, right-padded: each prompt is computed once, not twice.

    Width T = max_k (p_k + c_k + r_k) instead of the padded layout's max_k (p_k + max(c_k, r_k)) over twice the
    rows: Σ_k p_k fewer tokens through the model, less padding when chosen and rejected lengths differ.
    """
    return _collate_rows(pairs, [[k] for k in range(len(pairs))], pad_token_id)


def collate_packed(pairs: Sequence[TokenizedPair], pad_token_id: int, max_tokens: int | None = None) -> Batch:
    """Prefix-shared pairs packed into rows of at most `max_tokens` tokens (`pack_rows`), block-diagonal: a pair
    never attends to another pair, and its positions start from 0.

    `max_tokens` None: the batch's longest pair, so rows are exactly as wide as `collate_prefix_shared`'s and
    there are fewer of them — never more token cells or attention (R × T²) than prefix sharing. A fixed
    `max_tokens` bounds the row width whatever the data (steadier shapes and memory), but a budget above the
    longest pair makes T, and with it each row's T² attention, larger than prefix sharing's.
    """
    lengths = [_length(pair) for pair in pairs]
    return _collate_rows(pairs, pack_rows(lengths, max(lengths) if max_tokens is None else max_tokens), pad_token_id)


def pack_rows(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """First-fit decreasing: pairs by length, longest first (ties in index order), each into the first row
    whose total stays ≤ `max_tokens`, else into a new row; a pair longer than `max_tokens` gets a row of its
    own. Returns the pair indices of each row, rows in order of opening.

    Every row is as wide as the widest, so fewer, fuller rows mean less padding: first-fit decreasing needs at
    most 11/9 × the optimum + 6/9 rows, where filling rows in data order can need nearly twice the optimum.
    Where a pair lands changes nothing else (targets are listed by sequence, whatever the row).
    """
    rows: list[list[int]] = []
    totals: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        row = next((r for r, total in enumerate(totals) if total + lengths[index] <= max_tokens), None)
        if row is None:
            rows.append([])
            totals.append(0)
            row = len(rows) - 1
        rows[row].append(index)
        totals[row] += lengths[index]
    return rows


# Parts of a pair's block in a 4-D-mask row (padding is marked PROMPT with pair −1).
PROMPT, CHOSEN, REJECTED = 0, 1, 2


def _predicted_from(first: int, rest: int, count: int) -> torch.Tensor:
    """[count] columns predicting a response's tokens: its first token from column `first`, token j ≥ 1 from
    column `rest + j − 1` (the response's own previous token)."""
    return torch.cat([torch.tensor([first]), rest + torch.arange(max(count - 1, 0))])[:count]


def _collate_rows(pairs: Sequence[TokenizedPair], rows: Sequence[Sequence[int]], pad_token_id: int) -> Batch:
    """The 4-D-mask layouts: row r holds the pairs `rows[r]`, each as a block `[prompt][chosen][rejected]`.

    For a block starting at column b (p, c, r tokens; p ≥ 1):
        columns   b..b+p−1 prompt, b+p..b+p+c−1 chosen, b+p+c..b+p+c+r−1 rejected
        positions 0..p−1,          p..p+c−1,            p..p+r−1
        chosen token i   predicted from column b+p−1+i                       (as in `[prompt][chosen]`)
        rejected token j predicted from column b+p−1 (j = 0), else b+p+c+j−1  (as in `[prompt][rejected]`)
    """
    num_pairs = len(pairs)
    width = max(sum(_length(pairs[k]) for k in row) for row in rows)
    shape = (len(rows), width)
    input_ids = torch.full(shape, pad_token_id, dtype=torch.long)
    position_ids = torch.zeros(shape, dtype=torch.long)
    pair_of = torch.full(shape, -1, dtype=torch.long)  # pair index of each cell, −1: padding
    part_of = torch.full(shape, PROMPT, dtype=torch.long)
    targets: list[tuple[int, torch.Tensor, list[int]]] = [(0, torch.zeros(0, dtype=torch.long), [])] * (2 * num_pairs)
    for r, row in enumerate(rows):
        begin = 0
        for k in row:
            pair = pairs[k]
            p, c, n = len(pair.prompt_ids), len(pair.chosen_ids), _length(pair)
            if p == 0:
                raise ValueError("the prefix-shared and packed layouts need prompts of at least one token")
            end = begin + n
            input_ids[r, begin:end] = torch.tensor(pair.prompt_ids + pair.chosen_ids + pair.rejected_ids)
            position_ids[r, begin:end] = torch.cat([torch.arange(p + c), torch.arange(p, n - c)])
            pair_of[r, begin:end] = k
            part_of[r, begin + p : begin + p + c] = CHOSEN
            part_of[r, begin + p + c : end] = REJECTED
            prompt_last = begin + p - 1
            targets[k] = (r, _predicted_from(prompt_last, begin + p, c), pair.chosen_ids)
            targets[num_pairs + k] = (r, _predicted_from(prompt_last, begin + p + c, n - p - c), pair.rejected_ids)
            begin = end
    return Batch(
        input_ids=input_ids,
        attention_mask=_block_mask(pair_of, part_of),
        position_ids=position_ids,
        target_rows=torch.cat([torch.full_like(positions, r) for r, positions, _ in targets]),  # [N]
        target_positions=torch.cat([positions for _, positions, _ in targets]),  # [N]
        target_ids=torch.tensor([token for _, _, ids in targets for token in ids], dtype=torch.long),  # [N]
        target_seqs=torch.cat([torch.full_like(positions, s) for s, (_, positions, _) in enumerate(targets)]),
        num_pairs=num_pairs,
        num_tokens=int((pair_of >= 0).sum()),
        pair_keys=_pair_keys(pairs),
    )


def _block_mask(pair_of: torch.Tensor, part_of: torch.Tensor) -> torch.Tensor:
    """[R, T] pair index (−1: padding) and part of each cell → [R, 1, T, T] bool attention mask:

        mask[r, 0, q, k] = (pair(q) = pair(k) ≥ 0 ∧ k ≤ q ∧ (part(k) = PROMPT ∨ part(k) = part(q)))  ∨  q = k

    so prompt and chosen tokens are causal, rejected tokens see the prompt and earlier rejected tokens (never
    chosen ones), no token sees another pair, and padding sees itself only.
    """
    width = pair_of.shape[1]
    columns = torch.arange(width)
    causal = columns[None, :] <= columns[:, None]  # [T, T]: key ≤ query
    same_pair = (pair_of[:, :, None] == pair_of[:, None, :]) & (pair_of[:, :, None] >= 0)  # [R, T, T]
    visible = (part_of[:, None, :] == PROMPT) | (part_of[:, None, :] == part_of[:, :, None])  # [R, T, T]
    return ((same_pair & causal & visible) | torch.eye(width, dtype=torch.bool)).unsqueeze(1)  # [R, 1, T, T]


def to_padded(batch: Batch, pad_token_id: int = 0) -> Batch:
    """The same pairs in the padded layout, rebuilt from the batch's own tokens (any layout; a padded batch is
    returned as it is): for a model that cannot take 4-D masks (see `layout_support`).

    Targets come sequence by sequence, so sequence s's response is the s-th run of `target_ids`. A pair's
    prompt ends at the column t that predicts the first token of either response and starts at
    t − position_ids[row, t] (positions count from 0 at every prompt). Padding is masked, so its id
    (`pad_token_id`, default 0) changes nothing.
    """
    if not batch.shares_prompts:
        return batch
    num_pairs = batch.num_pairs
    counts = torch.bincount(batch.target_seqs, minlength=2 * num_pairs).tolist()  # [2P]
    firsts = [0, *accumulate(counts)]  # index of each sequence's first target
    responses = [ids.tolist() for ids in batch.target_ids.cpu().split(counts)]
    rows, columns = batch.target_rows.tolist(), batch.target_positions.tolist()
    input_ids, position_ids = batch.input_ids.cpu(), batch.position_ids.cpu()
    pairs = []
    for k in range(num_pairs):
        scored = [s for s in (k, num_pairs + k) if counts[s]]
        if not scored:
            raise ValueError(f"pair {k} has no response tokens: its prompt cannot be recovered")
        row, last = rows[firsts[scored[0]]], columns[firsts[scored[0]]]
        prompt = input_ids[row, last - int(position_ids[row, last]) : last + 1].tolist()
        pairs.append(TokenizedPair(prompt, responses[k], responses[num_pairs + k]))
    padded = collate_padded(pairs, pad_token_id).to(batch.input_ids.device)
    padded.placeholder, padded.loss_weight = batch.placeholder, batch.loss_weight
    return padded


def collate_function(layout: str, pad_token_id: int, max_tokens: int | None = None) -> Collate:
    """The collate function of `layout` (one of LAYOUTS), its pad token and (packed) row budget bound."""
    if layout == "padded":
        return partial(collate_padded, pad_token_id=pad_token_id)
    if layout == "prefix_shared":
        return partial(collate_prefix_shared, pad_token_id=pad_token_id)
    if layout == "packed":
        return partial(collate_packed, pad_token_id=pad_token_id, max_tokens=max_tokens)
    raise ValueError(f"unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")


def placeholder_batch(pad_token_id: int, collate: Collate | None = None) -> Batch:
    """One pair made of a single padding token each, marked `placeholder` (see `Batch`), laid out by `collate`
    (default: the padded layout)."""
    pad = [pad_token_id]
    collate = collate or partial(collate_padded, pad_token_id=pad_token_id)
    batch = collate([TokenizedPair(pad, pad, pad)])
    batch.placeholder = True
    return batch
