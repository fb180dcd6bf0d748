"""Prefix-shared and packed batches against the padded layout (the reference), the probe and its fallback,
length-grouped sampling, and the naive (`lean=False`) log-prob path."""

import dataclasses
import logging
from functools import partial

import pytest
import torch
from helpers import ADAMW, DEMO, DPO, MODEL, PAD, compose, random_pairs, random_rankings, tiny_causal_lm
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper
from torch.nn.attention.flex_attention import BlockMask, flex_attention
from transformers.integrations import flex_attention as transformers_flex

from dpo_lightning.data.collate import (
    collate_packed,
    collate_padded,
    collate_prefix_shared,
    pack_rows,
    placeholder_batch,
    to_padded,
)
from dpo_lightning.data.sampler import LengthGroupedSampler, ResumableSampler
from dpo_lightning.data.tokenize import TokenizedPair
from dpo_lightning.losses.dpo import dpo_loss
from dpo_lightning.models import layouts as layout_support
from dpo_lightning.models import logprobs
from dpo_lightning.models.loading import load_tokenizer
from dpo_lightning.runtime.run import build_datamodule
from dpo_lightning.training.module import DPOLitModule

# The 4-D-mask layouts under test. "packed": rows of at most 40 tokens (random_pairs(8, seed=4), 9 to 20 tokens
# a pair, makes 3 rows of 2–3 pairs); "packed_to_longest": the default budget, the batch's longest pair.
PACKING_BUDGETS = {"packed": 40, "packed_to_longest": None}
SHARED = {
    "prefix_shared": partial(collate_prefix_shared, pad_token_id=PAD),
    **{name: partial(collate_packed, pad_token_id=PAD, max_tokens=budget) for name, budget in PACKING_BUDGETS.items()},
}


def _length(pair):
    return len(pair.prompt_ids) + len(pair.chosen_ids) + len(pair.rejected_ids)


def _dpo_loss(model, batch, reference_logps):
    logps, _ = logprobs.sequence_logprobs(model, batch)  # [2P]
    num_pairs = batch.num_pairs
    losses, _, _ = dpo_loss(logps[:num_pairs], logps[num_pairs:], *reference_logps.split(num_pairs), beta=0.1)
    return logps, losses.mean()


@pytest.mark.parametrize("layout", sorted(SHARED))
def test_shared_layouts_give_the_padded_logprobs_loss_and_gradients(architecture, layout):
    """Per-sequence log-probs (rel. 1e-5), the DPO loss and every parameter's gradient equal the padded forward's."""
    model = tiny_causal_lm(architecture)
    pairs = random_pairs(8, seed=4)
    reference_logps = -torch.rand(16, generator=torch.Generator().manual_seed(0)) * 40  # [2P], any fixed values
    results = {}
    for name, batch in (("padded", collate_padded(pairs, PAD)), (layout, SHARED[layout](pairs))):
        model.zero_grad()
        logps, loss = _dpo_loss(model, batch, reference_logps)
        loss.backward()
        results[name] = (logps.detach(), loss.detach(), [p.grad.clone() for p in model.parameters()])
    (padded_logps, padded_loss, padded_grads), (logps, loss, grads) = results["padded"], results[layout]
    torch.testing.assert_close(logps, padded_logps, rtol=1e-5, atol=0)
    torch.testing.assert_close(loss, padded_loss, rtol=1e-5, atol=1e-7)
    for grad, padded_grad in zip(grads, padded_grads, strict=True):
        torch.testing.assert_close(grad, padded_grad, rtol=1e-4, atol=1e-6)
    assert any(g.abs().sum() > 0 for g in grads)


def _expected_mask(row_pairs, pairs, width):
    """Independent rule-by-rule mask of one row holding `row_pairs`: True = query q may attend key k."""
    mask = torch.eye(width, dtype=torch.bool)  # padding (and every token) attends to itself
    begin = 0
    for k in row_pairs:
        p, c, r = (len(pairs[k].prompt_ids), len(pairs[k].chosen_ids), len(pairs[k].rejected_ids))
        prompt = range(begin, begin + p)
        chosen = range(begin + p, begin + p + c)
        rejected = range(begin + p + c, begin + p + c + r)
        for q in [*prompt, *chosen]:
            mask[q, begin : q + 1] = True  # causal over prompt (and chosen)
        for q in rejected:
            mask[q, list(prompt)] = True
            mask[q, begin + p + c : q + 1] = True
        begin += p + c + r
    return mask


@pytest.mark.parametrize("layout", sorted(SHARED))
def test_masks_positions_and_targets_follow_the_layout_rules(layout):
    pairs = random_pairs(8, seed=4)
    batch = SHARED[layout](pairs)
    lengths = [_length(p) for p in pairs]
    budget = PACKING_BUDGETS.get(layout) or max(lengths)
    rows = [[k] for k in range(8)] if layout == "prefix_shared" else pack_rows(lengths, budget)
    width = batch.input_ids.shape[1]
    assert batch.attention_mask.shape == (len(rows), 1, width, width) and batch.attention_mask.dtype == torch.bool
    assert width <= budget
    if layout != "prefix_shared":
        assert len(rows) < len(pairs)
    sources = {}  # sequence → the (row, column) predicting each of its tokens
    for r, row in enumerate(rows):
        assert torch.equal(batch.attention_mask[r, 0], _expected_mask(row, pairs, width))
        begin = 0
        for k in row:  # positions restart at every pair and at the rejected response
            p, c, n = len(pairs[k].prompt_ids), len(pairs[k].chosen_ids), _length(pairs[k])
            assert batch.position_ids[r, begin : begin + n].tolist() == [*range(p + c), *range(p, n - c)]
            sources[k] = [(r, begin + p - 1 + i) for i in range(c)]
            sources[8 + k] = [(r, begin + p + c + j - 1 if j else begin + p - 1) for j in range(n - p - c)]
            assert batch.input_ids[r, begin : begin + n].tolist() == (
                pairs[k].prompt_ids + pairs[k].chosen_ids + pairs[k].rejected_ids
            )
            # a rejected token never sees a chosen token
            assert not batch.attention_mask[r, 0, begin + p + c : begin + n, begin + p : begin + p + c].any()
            begin += n
    assert batch.attention_mask.any(-1).all()  # no empty mask row (SDPA would make NaN)
    expected_sources = [source for s in range(16) for source in sources[s]]
    assert list(zip(batch.target_rows.tolist(), batch.target_positions.tolist(), strict=True)) == expected_sources
    padded = collate_padded(pairs, PAD)
    for field in ("target_ids", "target_seqs", "sequence_keys"):
        assert torch.equal(getattr(batch, field), getattr(padded, field)), field
    assert batch.num_tokens == sum(_length(p) for p in pairs)  # each token once (padded: prompts twice)
    assert padded.num_tokens == batch.num_tokens + sum(len(p.prompt_ids) for p in pairs)


@pytest.mark.parametrize("layout", sorted(SHARED))
def test_a_chosen_token_never_reaches_the_rejected_logprobs(architecture, layout):
    model = tiny_causal_lm(architecture)
    pairs = random_pairs(6, seed=5)
    changed = [dataclasses.replace(pair, chosen_ids=[(t + 1) % 97 or 3 for t in pair.chosen_ids]) for pair in pairs]
    with torch.no_grad():
        before, _ = logprobs.sequence_logprobs(model, SHARED[layout](pairs))
        after, _ = logprobs.sequence_logprobs(model, SHARED[layout](changed))
    torch.testing.assert_close(after[6:], before[6:], rtol=0, atol=0)  # rejected: bit-identical
    assert not torch.allclose(after[:6], before[:6])  # chosen: changed


def test_a_long_pair_gets_a_row_of_its_own_and_rows_fill_first_fit_decreasing():
    assert pack_rows([5, 40, 3, 20, 20, 9], 30) == [[1], [3, 5], [4, 0, 2]]
    assert pack_rows([50], 30) == [[0]]


def test_packing_without_a_budget_keeps_prefix_shared_rows_width_with_fewer_rows():
    pairs = random_pairs(16, seed=8)
    shared, packed = collate_prefix_shared(pairs, PAD), collate_packed(pairs, PAD)
    assert packed.input_ids.shape[1] == shared.input_ids.shape[1] == max(_length(p) for p in pairs)
    assert packed.input_ids.shape[0] < shared.input_ids.shape[0]


def test_placeholder_batches_train_in_every_layout():
    module = DPOLitModule(model=MODEL, loss=DPO, optimizer=ADAMW)
    module.configure_model()
    for collate in SHARED.values():
        batch = placeholder_batch(PAD, collate)
        assert batch.placeholder and batch.attention_mask.dim() == 4
        assert to_padded(batch).placeholder
        loss = module.training_step(batch, 0)
        loss.backward()
        assert loss == 0


@pytest.mark.parametrize("examples", ["pairs", "rankings"])
@pytest.mark.parametrize("layout", sorted(SHARED))
def test_to_padded_rebuilds_the_padded_batch(layout, examples):
    examples = random_pairs(7, seed=6) if examples == "pairs" else random_rankings(7, seed=6)
    padded, rebuilt = collate_padded(examples, PAD), to_padded(SHARED[layout](examples), pad_token_id=PAD)
    fields = ("input_ids", "attention_mask", "position_ids", "target_rows", "target_positions", "target_ids")
    for field in (*fields, "sequence_keys", "ranks", "groups", "pair_index"):
        assert torch.equal(getattr(rebuilt, field), getattr(padded, field)), field
    assert rebuilt.num_tokens == padded.num_tokens and rebuilt.ranked == padded.ranked


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_every_architecture_passes_the_probe(architecture, attn_implementation, monkeypatch):
    """Eager kernels too (GPT-J has no other): `decoder_mask` gives them an additive mask."""
    if architecture == "gptj" and attn_implementation == "sdpa":
        pytest.skip("GPT-J has eager attention only")
    monkeypatch.setattr(layout_support, "_PROBED", {})
    model = tiny_causal_lm(architecture)
    if architecture != "gptj":
        model.set_attn_implementation(attn_implementation)
    assert layout_support.layout_problem(model) is None


def test_sliding_window_attention_is_refused(monkeypatch):
    monkeypatch.setattr(layout_support, "_PROBED", {})
    model = tiny_causal_lm("llama")
    model.config.sliding_window = 16  # as a Mistral-style config would set it
    assert "sliding-window attention (16 tokens)" in layout_support.layout_problem(model)


def test_a_model_that_fails_the_probe_trains_on_the_padded_layout_after_one_notice(monkeypatch, caplog):
    """Fake an unfit model: eager attention handed the boolean mask as it is (the bug `decoder_mask` avoids)."""
    monkeypatch.setattr(layout_support, "_PROBED", {})
    unchanged = lambda model, mask: mask  # noqa: E731
    monkeypatch.setattr(logprobs, "decoder_mask", unchanged)
    monkeypatch.setattr(layout_support, "decoder_mask", unchanged)
    module = DPOLitModule(model={**MODEL, "attn_implementation": "eager"}, loss=DPO, optimizer=ADAMW)
    module.configure_model()
    pairs = random_pairs(4, seed=7)
    with caplog.at_level(logging.WARNING, logger=layout_support.__name__):
        shared = [module.training_step(SHARED[layout](pairs), 0) for layout in sorted(SHARED)]
    padded = module.training_step(collate_padded(pairs, PAD), 0)
    notices = [record.getMessage() for record in caplog.records if record.name == layout_support.__name__]
    assert len(notices) == 1 and "LlamaModel (attn_implementation=eager)" in notices[0]
    assert "4-D causal mask" in notices[0] and "padded layout" in notices[0]
    for loss in shared:
        torch.testing.assert_close(loss, padded, rtol=1e-6, atol=0)


@pytest.mark.parametrize("layout", sorted(SHARED))
def test_flex_attention_block_masks_give_the_padded_logprobs(layout, monkeypatch):
    """`attn_implementation=flex_attention`: the 4-D mask becomes a BlockMask. Forward only, with the uncompiled
    flex kernel: on the CPU torch's flex attention has no backward (training with it is a GPU feature, refused
    on the CPU by the config), and inductor fails to recompile it for a new shape."""
    monkeypatch.setattr(layout_support, "_PROBED", {})
    monkeypatch.setattr(transformers_flex.WrappedFlexAttention, "__call__", lambda self: flex_attention)
    model = tiny_causal_lm("llama")
    pairs = random_pairs(8, seed=4)
    with torch.no_grad():
        padded = logprobs.sequence_logprobs(model, collate_padded(pairs, PAD))[0]
        model.set_attn_implementation("flex_attention")
        batch = SHARED[layout](pairs)
        assert isinstance(logprobs.decoder_mask(model, batch.attention_mask), BlockMask)
        shared = logprobs.sequence_logprobs(model, batch)[0]
    torch.testing.assert_close(shared, padded, rtol=1e-5, atol=0)
    assert layout_support.layout_problem(model) is None


@pytest.mark.slow  # compiling takes ≈ 15 s on 2 cores
def test_compiled_blocks_give_the_eager_loss_and_gradients():
    """`model.compile: true` compiles the policy's blocks; loss and gradients equal the eager policy's."""
    pairs = random_pairs(6, seed=3)
    results = []
    for compile_blocks in (False, True):
        module = DPOLitModule(model={**MODEL, "compile": compile_blocks}, loss=DPO, optimizer=ADAMW)
        module.configure_model()
        loss = module.training_step(SHARED["packed"](pairs), 0)
        loss.backward()
        results.append((loss.detach(), [p.grad for p in module.policy.parameters()]))
    (eager_loss, eager_grads), (compiled_loss, compiled_grads) = results
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-5, atol=1e-6)
    for compiled, eager in zip(compiled_grads, eager_grads, strict=True):
        torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-6)


def test_lean_and_full_logprobs_are_equal(architecture):
    model = tiny_causal_lm(architecture)
    for batch in (collate_padded(random_pairs(5), PAD), SHARED["packed"](random_pairs(5))):
        with torch.no_grad():
            lean = logprobs.token_logprobs(model, batch, chunk_size=7)
            full = logprobs.token_logprobs(model, batch, lean=False)
        torch.testing.assert_close(full, lean, rtol=1e-6, atol=1e-6)


def test_length_grouping_keeps_every_pair_once_per_epoch_deterministically():
    lengths = [int(n) for n in torch.randint(5, 500, (203,), generator=torch.Generator().manual_seed(1))]
    sampler = LengthGroupedSampler(lengths, group_size=8, seed=3, mega_batches=4)
    orders = {}
    for epoch in (0, 1, 0):
        sampler.set_epoch(epoch)
        order = list(sampler)
        assert sorted(order) == list(range(203)) and len(sampler) == 203
        assert orders.setdefault(epoch, order) == order  # same seed and epoch: same order
    assert orders[0] != orders[1]
    assert list(LengthGroupedSampler(lengths, group_size=8, seed=4, mega_batches=4)) != orders[0]

    def spread(order):  # mean max − min length within the full groups of 8
        groups = torch.tensor([lengths[i] for i in order[:200]]).view(25, 8)
        return float((groups.max(1).values - groups.min(1).values).float().mean())

    shuffled = torch.randperm(203, generator=torch.Generator().manual_seed(0)).tolist()
    assert spread(orders[0]) < spread(shuffled) / 3


def test_length_groups_become_one_batch_per_rank_under_ddp():
    """ResumableSampler deals the order out in turn (rank r: r, r + W, …), exactly as Lightning's
    DistributedSamplerWrapper would: with group_size = batch × W, each rank's batch comes from one group, and the
    ranks together see every pair."""
    lengths = list(range(3, 67))  # 64 pairs, all lengths different
    sampler = LengthGroupedSampler(lengths, group_size=2 * 4, seed=0, mega_batches=8)
    groups = [list(sampler)[i : i + 8] for i in range(0, 64, 8)]
    seen = []
    for rank in range(2):
        order = list(ResumableSampler(sampler, num_replicas=2, rank=rank))
        assert order == list(DistributedSamplerWrapper(sampler, num_replicas=2, rank=rank, shuffle=False))
        for step, batch in enumerate(order[i : i + 4] for i in range(0, len(order), 4)):
            assert set(batch) <= set(groups[step])
            seen.extend(batch)
    assert sorted(seen) == list(range(64))


def test_prefix_sharing_needs_a_prompt():
    with pytest.raises(ValueError, match="prompts of at least one token"):
        collate_prefix_shared([TokenizedPair([], [5, 1], [6, 1])], PAD)


def test_the_config_picks_layout_and_length_grouping(tmp_path):
    overrides = ["data.batch_size=8", "data.layout=packed", "data.packing_max_tokens=256", "data.group_by_length=true"]
    cfg = compose(*DEMO, *overrides, run_dir=tmp_path)
    datamodule = build_datamodule(cfg, load_tokenizer(cfg.model))
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    assert isinstance(loader.sampler.order, LengthGroupedSampler)  # inside the ResumableSampler
    batch = next(iter(loader))
    assert batch.attention_mask.dim() == 4 and batch.num_pairs == 8
    assert batch.attention_mask.shape[-1] <= 256 and batch.attention_mask.shape[0] < 8  # several pairs a row
    assert next(iter(datamodule.val_dataloader())).attention_mask.dim() == 4
