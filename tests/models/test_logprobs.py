"""sequence_logprobs against a plain per-sequence forward, for every supported architecture."""

import dataclasses

import pytest
import torch
from helpers import EOS, PAD, random_pairs, tiny_causal_lm

from dpo_lightning.data.collate import IGNORE_INDEX, collate_padded
from dpo_lightning.models.logprobs import sequence_logprobs


def _plain_logps(model, prompt, response):
    """Independent reference: full-vocabulary log-softmax of one unpadded sequence, in float64."""
    ids = torch.tensor([prompt + response])
    logps = model(input_ids=ids).logits[0].double().log_softmax(-1)  # [T, V]
    return sum(logps[len(prompt) - 1 + i, token] for i, token in enumerate(response))


def test_padded_batch_matches_plain_forward(architecture):
    model = tiny_causal_lm(architecture)
    pairs = random_pairs(6)
    batch = collate_padded(pairs, PAD)
    with torch.no_grad():
        logps, num_tokens = sequence_logprobs(model, batch, chunk_size=7)
        expected = [_plain_logps(model, p.prompt_ids, p.chosen_ids) for p in pairs]
        expected += [_plain_logps(model, p.prompt_ids, p.rejected_ids) for p in pairs]
    assert logps.dtype == torch.float32
    torch.testing.assert_close(logps.double(), torch.stack(expected), rtol=1e-5, atol=1e-5)
    lengths = [len(p.chosen_ids) for p in pairs] + [len(p.rejected_ids) for p in pairs]
    assert num_tokens.tolist() == lengths


def test_collate_masks_prompt_and_padding():
    pairs = random_pairs(3, seed=1)
    batch = collate_padded(pairs, PAD)
    # Exactly the response tokens are targets, in order, each predicted from the position before it.
    responses = [p.chosen_ids for p in pairs] + [p.rejected_ids for p in pairs]
    assert batch.target_ids.tolist() == [t for response in responses for t in response]
    assert torch.equal(batch.input_ids[batch.target_rows, batch.target_positions + 1], batch.target_ids)
    assert batch.num_tokens == sum(len(p.prompt_ids) * 2 + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs)
    assert IGNORE_INDEX not in batch.target_ids.tolist()


def test_padding_and_prompt_token_values_change_nothing():
    model = tiny_causal_lm("llama")
    pairs = random_pairs(4, seed=2)
    batch = collate_padded(pairs, PAD)
    # Other pad ids and extra padding columns: same log-probs.
    wider = collate_padded([*pairs, dataclasses.replace(pairs[0], prompt_ids=[5] * 40)], pad_token_id=EOS)
    with torch.no_grad():
        base, _ = sequence_logprobs(model, batch)
        other, _ = sequence_logprobs(model, wider)
    torch.testing.assert_close(base, torch.cat([other[:4], other[5:9]]), rtol=1e-5, atol=1e-5)


def test_prompt_tokens_are_conditioned_on_not_scored():
    model = tiny_causal_lm("gpt2")
    pair = random_pairs(1, seed=3)[0]
    longer_prompt = dataclasses.replace(pair, prompt_ids=[*pair.prompt_ids, 7, 8, 9])
    with torch.no_grad():
        a, count_a = sequence_logprobs(model, collate_padded([pair], PAD))
        b, count_b = sequence_logprobs(model, collate_padded([longer_prompt], PAD))
    assert torch.equal(count_a, count_b)  # the prompt adds no scored tokens…
    assert not torch.allclose(a, b)  # …but the responses are conditioned on it


@pytest.mark.parametrize("dtype", [torch.bfloat16])
def test_low_precision_model_sums_in_fp32(dtype):
    model = tiny_causal_lm("llama", dtype=dtype)
    batch = collate_padded(random_pairs(2), PAD)
    with torch.no_grad():
        logps, _ = sequence_logprobs(model, batch)
        reference, _ = sequence_logprobs(tiny_causal_lm("llama"), batch)
    assert logps.dtype == torch.float32
    torch.testing.assert_close(logps, reference, rtol=0.05, atol=0.5)  # same model, bf16 weights


def test_gradients_flow_through_logprobs():
    model = tiny_causal_lm("llama").train()
    logps, _ = sequence_logprobs(model, collate_padded(random_pairs(2), PAD))
    logps.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
