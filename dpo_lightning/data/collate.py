"""TokenizedPair (or TokenizedRanking) list → Batch. The only module that knows batch layouts.

A `Batch` carries its own layout: the model inputs (`input_ids`, `attention_mask`, `position_ids`) plus, for
every response token, which row and position predicts it and which sequence it belongs to. `logprobs()`
needs nothing else, so a new layout is a new collate function and nothing more.

Sequences are numbered s ∈ [0, 2P): the chosen response of pair k is s = k, the rejected one s = P + k. A batch
of G rankings (K_g responses each) numbers its S = Σ K_g sequences ranking by ranking: ranking g's responses are
s = K_0 + … + K_{g−1} + j, j < K_g. Every layout lists its targets in the same order (sequence by sequence, each
in token order), so the same examples give elementwise comparable per-token log-probs whatever the layout.

The layouts (`LAYOUTS`, config key `data.layout`), for a pair with prompt x (p tokens), chosen y_w (c) and
rejected y_l (r):

    padded          2 rows per pair: [x y_w] and [x y_l], right-padded      2-D mask [R, T]; the reference
    prefix_shared   1 row per pair:  [x y_w y_l]                            4-D mask [R, 1, T, T]
    packed          several pairs a row: [x y_w y_l][x' y_w' y_l']…         4-D mask, block-diagonal per pair;
                                                                            the default (fastest: docs/scale.md)

In the 4-D-mask layouts a pair's prompt is computed once for both responses: y_l's tokens see x and earlier
y_l tokens, never y_w's, and their positions restart where y_w's started (x: 0..p−1, y_w: p..p+c−1, y_l:
p..p+r−1), so every response token sees exactly the context and positions it has in the padded layout.

A ranking is laid out the same way with K branches instead of two: padded, a row per response; prefix-shared,
one row `[x y_1 … y_K]` whose branches each see x and themselves only; packed, several rankings a row.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from functools import partial
from itertools import accumulate

import torch

from dpo_lightning.data.rankings import RANKING_PAIRS, ranking_pairs
from dpo_lightning.data.tokenize import TokenizedPair, TokenizedRanking

IGNORE_INDEX = -100  # label of prompt and padding tokens (Hugging Face convention)
LAYOUTS: tuple[str, ...] = ("prefix_shared", "packed", "padded")  # `data.layout` values


@dataclass
class Batch:
    """P preference pairs (or P rankings: `ranked`) laid out for one forward pass; S response sequences (2P for
    pairs), N response tokens in all.

    input_ids, position_ids: [R, T] model inputs (R rows of length T).
    attention_mask: [R, T] int (1 = token, 0 = padding) in the padded layout, where the model adds causality;
        [R, 1, T, T] bool (True = the query token in row r at position i may attend to the key at position j)
        in the prefix-shared and packed layouts. A padding query attends to itself only, so that no mask row
        is empty (an empty row makes NaN in SDPA).
    target_rows, target_positions: [N] where each response token is predicted from: the output at
        (row, position) predicts the response token. In the padded layout that token sits at position + 1; in
        the 4-D-mask layouts a rejected response's first token is predicted from the prompt's last position.
    target_ids: [N] the response tokens themselves.
    target_seqs: [N] the sequence s ∈ [0, S) each response token belongs to; targets come sequence by
        sequence (s = 0, 1, …), each in token order.
    ranks: [S] each sequence's rank in its example: 0 = best, ties share a rank (a pair: chosen 0, rejected 1).
    groups: [S] the example (pair or ranking, 0..P−1) each sequence belongs to.
    pair_index: [2, Q] (better, worse) sequences of the Q preference pairs a pairwise loss sees: a pair batch's
        own pairs (Q = P: s = k against P + k); a ranked batch's pairs chosen by `data.ranking_pairs`.
    num_pairs: P, the examples: preference pairs, or rankings in a `ranked` batch.
    num_tokens: tokens fed to the model, padding excluded (a prompt counts twice in the padded layout, where
        it is fed twice, and once in the others); what `train/tokens_per_s` counts.
    placeholder: a stand-in batch for a rank that has run out of data while others have not (streaming):
        it goes through the model so that collectives match, but its loss is multiplied by zero.
    loss_weight: this rank's share of the step under data parallelism, W × its pairs ÷ all W ranks' pairs
        (streaming, where ranks can hold different numbers of pairs; 1 for equal shares): the module scales its
        loss by it, so that DDP's mean of the ranks' gradients is the gradient of the mean over every pair.
    sequence_keys: [S] int64 content key of each sequence (`sequence_key`: its prompt's and response's token ids),
        whatever the layout; what `reference=precomputed` looks its cached reference log-probs up by.
    ranked: whether the examples are rankings (`TokenizedRanking`) rather than pairs.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    target_rows: torch.Tensor
    target_positions: torch.Tensor
    target_ids: torch.Tensor
    target_seqs: torch.Tensor
    ranks: torch.Tensor
    groups: torch.Tensor
    pair_index: torch.Tensor
    num_pairs: int
    num_tokens: int
    sequence_keys: torch.Tensor
    placeholder: bool = False
    loss_weight: float = 1.0
    ranked: bool = False

    @property
    def num_sequences(self) -> int:
        """S: response sequences in the batch."""
        return self.ranks.numel()

    @property
    def shares_prompts(self) -> bool:
        """Whether this is a 4-D-mask layout (prefix-shared or packed) rather than the padded one."""
        return self.attention_mask.dim() == 4

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """A copy with every tensor on `device` (also what Lightning calls to move a batch)."""
        tensors = {f.name: getattr(self, f.name) for f in fields(self)}
        moved = {k: v.to(device, non_blocking=non_blocking) for k, v in tensors.items() if isinstance(v, torch.Tensor)}
        return replace(self, **moved)


Example = TokenizedPair | TokenizedRanking  # what a batch is made of: all pairs, or all rankings
Collate = Callable[[Sequence[Example]], Batch]  # a layout's collate function, its options bound


def sequence_key(prompt_ids: Sequence[int], response_ids: Sequence[int]) -> int:
    """A 64-bit key of a response and its prompt (blake2b of their token ids, 8 bytes, as a signed int64): equal
    ids, equal key. The prompt's length goes first, so where the prompt ends is part of what is hashed."""
    data = array("q", [len(prompt_ids), *prompt_ids, *response_ids])
    return int.from_bytes(hashlib.blake2b(data.tobytes(), digest_size=8).digest(), "little", signed=True)


def sequence_keys(example: Example) -> list[int]:
    """The `sequence_key` of each of an example's responses (a pair: chosen, then rejected)."""
    responses = (
        [example.chosen_ids, example.rejected_ids] if isinstance(example, TokenizedPair) else example.response_ids
    )
    return [sequence_key(example.prompt_ids, response) for response in responses]


@dataclass(frozen=True)
class _Block:
    """One example as every layout sees it: a prompt and its responses (branches), with each response's sequence
    number s."""

    prompt: list[int]
    responses: list[list[int]]
    seqs: list[int]

    def __len__(self) -> int:
        """Tokens of the example in a 4-D-mask row: the prompt once plus every response."""
        return len(self.prompt) + sum(len(response) for response in self.responses)


@dataclass(frozen=True)
class _Examples:
    """A batch's examples as blocks, plus what the Batch records about them whatever the layout."""

    blocks: list[_Block]
    ranks: torch.Tensor  # [S]
    groups: torch.Tensor  # [S]
    pair_index: torch.Tensor  # [2, Q]
    ranked: bool

    @property
    def sequence_keys(self) -> torch.Tensor:
        """[S] `sequence_key` of each sequence."""
        keys = [0] * sum(len(block.seqs) for block in self.blocks)
        for block in self.blocks:
            for s, response in zip(block.seqs, block.responses, strict=True):
                keys[s] = sequence_key(block.prompt, response)
        return torch.tensor(keys, dtype=torch.long)


def _examples(examples: Sequence[Example], pairs_of_rankings: str) -> _Examples:
    """Pairs: pair k's chosen response is sequence k, its rejected one P + k. Rankings: ranking by ranking, the
    pairs a pairwise loss sees chosen by `pairs_of_rankings` (one of RANKING_PAIRS)."""
    count = len(examples)
    if all(isinstance(example, TokenizedPair) for example in examples):
        return _Examples(
            blocks=[
                _Block(p.prompt_ids, [p.chosen_ids, p.rejected_ids], [k, count + k]) for k, p in enumerate(examples)
            ],
            ranks=torch.arange(2).repeat_interleave(count),  # chosen 0, rejected 1
            groups=torch.arange(count).repeat(2),
            pair_index=torch.arange(2 * count).view(2, count),  # [[0 … P−1], [P … 2P−1]]
            ranked=False,
        )
    if not all(isinstance(example, TokenizedRanking) for example in examples):
        raise TypeError("a batch holds either pairs (TokenizedPair) or rankings (TokenizedRanking), not both")
    blocks, pairs, first = [], [], 0
    for ranking in examples:
        size = len(ranking.response_ids)
        blocks.append(_Block(ranking.prompt_ids, ranking.response_ids, list(range(first, first + size))))
        pairs += [(first + better, first + worse) for better, worse in ranking_pairs(ranking.ranks, pairs_of_rankings)]
        first += size
    return _Examples(
        blocks=blocks,
        ranks=torch.tensor([rank for ranking in examples for rank in ranking.ranks], dtype=torch.long),
        groups=torch.tensor([g for g, ranking in enumerate(examples) for _ in ranking.response_ids], dtype=torch.long),
        pair_index=torch.tensor(pairs, dtype=torch.long).view(-1, 2).T.contiguous(),
        ranked=True,
    )


def _batch(examples: _Examples, **layout: torch.Tensor | int) -> Batch:
    """The Batch of `examples` with the layout's tensors (inputs, mask, targets, num_tokens)."""
    return Batch(
        **layout,
        ranks=examples.ranks,
        groups=examples.groups,
        pair_index=examples.pair_index,
        num_pairs=len(examples.blocks),
        sequence_keys=examples.sequence_keys,
        ranked=examples.ranked,
    )


def collate_padded(examples: Sequence[Example], pad_token_id: int, ranking_pairs: str = "all") -> Batch:
    """The plain layout, and the correctness reference for every other one.

    Row s holds sequence s, `prompt + response` (pairs: rows 0..P-1 `prompt + chosen`, rows P..2P-1
    `prompt + rejected`), right-padded to the longest row.
    """
    described = _examples(examples, ranking_pairs)
    return _batch(described, **_padded_rows(described.blocks, pad_token_id))


def _padded_rows(blocks: Sequence[_Block], pad_token_id: int) -> dict[str, torch.Tensor | int]:
    """The padded layout's tensors: labels are the input ids with prompt and padding set to IGNORE_INDEX, shifted
    by one to find targets."""
    sequences = sorted(
        (s, block.prompt, response) for block in blocks for s, response in zip(block.seqs, block.responses, strict=True)
    )
    num_rows = len(sequences)
    width = max(len(prompt) + len(response) for _, prompt, response in sequences)
    input_ids = torch.full((num_rows, width), pad_token_id, dtype=torch.long)
    labels = torch.full((num_rows, width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((num_rows, width), dtype=torch.long)
    for row, (_, prompt, response) in enumerate(sequences):
        length = len(prompt) + len(response)
        input_ids[row, :length] = torch.tensor(prompt + response)
        labels[row, len(prompt) : length] = torch.tensor(response)
        attention_mask[row, :length] = 1
    position_ids = torch.arange(width).expand(num_rows, width).contiguous()

    # The output at position t predicts the token at t + 1: shift labels left by one.
    target_rows, target_positions = (labels[:, 1:] != IGNORE_INDEX).nonzero(as_tuple=True)  # [N], [N]
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "position_ids": position_ids,
        "target_rows": target_rows,
        "target_positions": target_positions,
        "target_ids": labels[target_rows, target_positions + 1],
        "target_seqs": target_rows.clone(),  # in this layout row r holds sequence r
        "num_tokens": int(attention_mask.sum()),
    }


def collate_prefix_shared(examples: Sequence[Example], pad_token_id: int, ranking_pairs: str = "all") -> Batch:
    """One row per example, `[prompt][chosen][rejected]` (a ranking: `[prompt][y_1]…[y_K]`), right-padded: each
    prompt is computed once, not once per response.

    Width T = max_k (p_k + c_k + r_k) instead of the padded layout's max_k (p_k + max(c_k, r_k)) over twice the
    rows: Σ_k p_k fewer tokens through the model, less padding when chosen and rejected lengths differ.
    """
    described = _examples(examples, ranking_pairs)
    return _batch(described, **_shared_rows(described.blocks, [[k] for k in range(len(examples))], pad_token_id))


def collate_packed(
    examples: Sequence[Example], pad_token_id: int, max_tokens: int | None = None, ranking_pairs: str = "all"
) -> Batch:
    """Prefix-shared examples packed into rows of at most `max_tokens` tokens (`pack_rows`), block-diagonal: an
    example never attends to another, and its positions start from 0.

    `max_tokens` None: the batch's longest example, so rows are exactly as wide as `collate_prefix_shared`'s and
    there are fewer of them — never more token cells or attention (R × T²) than prefix sharing. A fixed
    `max_tokens` bounds the row width whatever the data (steadier shapes and memory), but a budget above the
    longest example makes T, and with it each row's T² attention, larger than prefix sharing's.
    """
    described = _examples(examples, ranking_pairs)
    lengths = [len(block) for block in described.blocks]
    rows = pack_rows(lengths, max(lengths) if max_tokens is None else max_tokens)
    return _batch(described, **_shared_rows(described.blocks, rows, pad_token_id))


def pack_rows(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """First-fit decreasing: examples by length, longest first (ties in index order), each into the first row
    whose total stays ≤ `max_tokens`, else into a new row; an example longer than `max_tokens` gets a row of its
    own. Returns the example indices of each row, rows in order of opening.

    Every row is as wide as the widest, so fewer, fuller rows mean less padding: first-fit decreasing needs at
    most 11/9 × the optimum + 6/9 rows, where filling rows in data order can need nearly twice the optimum.
    Where an example lands changes nothing else (targets are listed by sequence, whatever the row).
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


PROMPT = 0  # part of a prompt cell in a 4-D-mask row (and of padding, whose example is −1); branch j is part j + 1


def _predicted_from(first: int, rest: int, count: int) -> torch.Tensor:
    """[count] columns predicting a response's tokens: its first token from column `first`, token j ≥ 1 from
    column `rest + j − 1` (the response's own previous token)."""
    return torch.cat([torch.tensor([first]), rest + torch.arange(max(count - 1, 0))])[:count]


def _shared_rows(blocks: Sequence[_Block], rows: Sequence[Sequence[int]], pad_token_id: int) -> dict:
    """The 4-D-mask layouts' tensors: row r holds the examples `rows[r]`, each as a block `[prompt][y_1]…[y_K]`
    (a pair: `[prompt][chosen][rejected]`).

    For a block starting at column b (p prompt tokens, p ≥ 1), whose branch j starts at column b_j:
        columns   b..b+p−1 prompt, b_j..b_j+n_j−1 branch j (the branches one after another)
        positions 0..p−1,          p..p+n_j−1      (every branch continues the prompt)
        branch j's token i predicted from column b+p−1 (i = 0), else b_j+i−1  (as in `[prompt][y_j]`)
    """
    width = max(sum(len(blocks[k]) for k in row) for row in rows)
    shape = (len(rows), width)
    input_ids = torch.full(shape, pad_token_id, dtype=torch.long)
    position_ids = torch.zeros(shape, dtype=torch.long)
    example_of = torch.full(shape, -1, dtype=torch.long)  # example index of each cell, −1: padding
    part_of = torch.full(shape, PROMPT, dtype=torch.long)
    num_sequences = sum(len(block.seqs) for block in blocks)
    targets: list[tuple[int, torch.Tensor, list[int]]] = [(0, torch.zeros(0, dtype=torch.long), [])] * num_sequences
    for r, row in enumerate(rows):
        begin = 0
        for k in row:
            block = blocks[k]
            p = len(block.prompt)
            if p == 0:
                raise ValueError("the prefix-shared and packed layouts need prompts of at least one token")
            input_ids[r, begin : begin + p] = torch.tensor(block.prompt)
            position_ids[r, begin : begin + p] = torch.arange(p)
            prompt_last, start = begin + p - 1, begin + p
            for j, (s, response) in enumerate(zip(block.seqs, block.responses, strict=True)):
                n = len(response)
                input_ids[r, start : start + n] = torch.tensor(response, dtype=torch.long)
                position_ids[r, start : start + n] = torch.arange(p, p + n)
                part_of[r, start : start + n] = j + 1
                targets[s] = (r, _predicted_from(prompt_last, start, n), response)
                start += n
            example_of[r, begin:start] = k
            begin = start
    return {
        "input_ids": input_ids,
        "attention_mask": _block_mask(example_of, part_of),
        "position_ids": position_ids,
        "target_rows": torch.cat([torch.full_like(positions, r) for r, positions, _ in targets]),  # [N]
        "target_positions": torch.cat([positions for _, positions, _ in targets]),  # [N]
        "target_ids": torch.tensor([token for _, _, ids in targets for token in ids], dtype=torch.long),  # [N]
        "target_seqs": torch.cat([torch.full_like(positions, s) for s, (_, positions, _) in enumerate(targets)]),
        "num_tokens": int((example_of >= 0).sum()),
    }


def _block_mask(example_of: torch.Tensor, part_of: torch.Tensor) -> torch.Tensor:
    """[R, T] example index (−1: padding) and part of each cell → [R, 1, T, T] bool attention mask:

        mask[r, 0, q, k] = (ex(q) = ex(k) ≥ 0 ∧ k ≤ q ∧ (part(k) = PROMPT ∨ part(k) = part(q)))  ∨  q = k

    so prompt tokens are causal, a branch's tokens see the prompt and earlier tokens of their own branch (never
    another branch's: a rejected response never sees the chosen one), no token sees another example, and padding
    sees itself only.
    """
    width = example_of.shape[1]
    columns = torch.arange(width)
    causal = columns[None, :] <= columns[:, None]  # [T, T]: key ≤ query
    same_example = (example_of[:, :, None] == example_of[:, None, :]) & (example_of[:, :, None] >= 0)  # [R, T, T]
    visible = (part_of[:, None, :] == PROMPT) | (part_of[:, None, :] == part_of[:, :, None])  # [R, T, T]
    return ((same_example & causal & visible) | torch.eye(width, dtype=torch.bool)).unsqueeze(1)  # [R, 1, T, T]


def to_padded(batch: Batch, pad_token_id: int = 0) -> Batch:
    """The same examples in the padded layout, rebuilt from the batch's own tokens (any layout; a padded batch is
    returned as it is): for a model that cannot take 4-D masks (see `layout_support`).

    Targets come sequence by sequence, so sequence s's response is the s-th run of `target_ids`. An example's
    prompt ends at the column t that predicts the first token of any of its responses and starts at
    t − position_ids[row, t] (positions count from 0 at every prompt). Padding is masked, so its id
    (`pad_token_id`, default 0) changes nothing.
    """
    if not batch.shares_prompts:
        return batch
    counts = torch.bincount(batch.target_seqs, minlength=batch.num_sequences).tolist()  # [S]
    firsts = [0, *accumulate(counts)]  # index of each sequence's first target
    responses = [ids.tolist() for ids in batch.target_ids.cpu().split(counts)]
    rows, columns = batch.target_rows.tolist(), batch.target_positions.tolist()
    input_ids, position_ids = batch.input_ids.cpu(), batch.position_ids.cpu()
    groups = batch.groups.cpu()
    blocks = []
    for k in range(batch.num_pairs):
        seqs = (groups == k).nonzero().flatten().tolist()
        scored = [s for s in seqs if counts[s]]
        if not scored:
            raise ValueError(f"example {k} has no response tokens: its prompt cannot be recovered")
        row, last = rows[firsts[scored[0]]], columns[firsts[scored[0]]]
        prompt = input_ids[row, last - int(position_ids[row, last]) : last + 1].tolist()
        blocks.append(_Block(prompt, [responses[s] for s in seqs], seqs))
    layout = {
        k: v.to(batch.input_ids.device) if isinstance(v, torch.Tensor) else v
        for k, v in _padded_rows(blocks, pad_token_id).items()
    }
    return replace(batch, **layout)


def collate_function(
    layout: str, pad_token_id: int, max_tokens: int | None = None, ranking_pairs: str = "all"
) -> Collate:
    """The collate function of `layout` (one of LAYOUTS), its pad token, (packed) row budget and the pairs a
    pairwise loss takes from a ranking (`ranking_pairs`, one of RANKING_PAIRS) bound."""
    if ranking_pairs not in RANKING_PAIRS:
        raise ValueError(f"unknown ranking_pairs {ranking_pairs!r}; expected one of {', '.join(RANKING_PAIRS)}")
    if layout == "padded":
        return partial(collate_padded, pad_token_id=pad_token_id, ranking_pairs=ranking_pairs)
    if layout == "prefix_shared":
        return partial(collate_prefix_shared, pad_token_id=pad_token_id, ranking_pairs=ranking_pairs)
    if layout == "packed":
        return partial(collate_packed, pad_token_id=pad_token_id, max_tokens=max_tokens, ranking_pairs=ranking_pairs)
    raise ValueError(f"unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")


def placeholder_batch(pad_token_id: int, collate: Collate | None = None, ranked: bool = False) -> Batch:
    """One pair (`ranked`: a ranking of two) made of a single padding token each, marked `placeholder` (see
    `Batch`), laid out by `collate` (default: the padded layout). A ranked run's placeholder is ranked, so that
    it logs the same metrics as the ranks' real batches."""
    pad = [pad_token_id]
    collate = collate or partial(collate_padded, pad_token_id=pad_token_id)
    batch = collate([TokenizedRanking(pad, [pad, pad], [0, 1]) if ranked else TokenizedPair(pad, pad, pad)])
    batch.placeholder = True
    return batch
