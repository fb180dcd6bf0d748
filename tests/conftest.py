"""Shared helpers: tiny random models of each supported architecture and random token pairs."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from dpo_lightning.data.rankings import ranks_from_scores
from dpo_lightning.data.tokenize import TokenizedPair, TokenizedRanking

VOCAB = 97
EOS = 1
PAD = 2

# The smallest config of each architecture the paper (and its successors) trained.
ARCHITECTURES = {
    "llama": dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    ),
    "gpt2": dict(n_embd=32, n_layer=2, n_head=4, n_positions=128),
    "gptj": dict(n_embd=32, n_layer=2, n_head=4, rotary_dim=8, n_positions=128),
    "gpt_neox": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4),
}


def tiny_causal_lm(architecture: str = "llama", seed: int = 0, dtype: torch.dtype = torch.float32):
    config = AutoConfig.for_model(
        architecture,
        vocab_size=VOCAB,
        bos_token_id=0,
        eos_token_id=EOS,
        pad_token_id=PAD,
        **ARCHITECTURES[architecture],
    )
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=dtype).eval()


def random_pairs(count: int, seed: int = 0) -> list[TokenizedPair]:
    """Pairs of varied lengths over token ids 3..VOCAB-1, responses ending with EOS."""
    rng = random.Random(seed)

    def tokens(low: int, high: int) -> list[int]:
        return [rng.randrange(3, VOCAB) for _ in range(rng.randint(low, high))]

    return [TokenizedPair(tokens(1, 12), [*tokens(0, 9), EOS], [*tokens(0, 9), EOS]) for _ in range(count)]


def random_rankings(count: int, seed: int = 0, max_k: int = 5) -> list[TokenizedRanking]:
    """Rankings of 2..max_k responses of varied lengths, ending with EOS, with random scores (some tied)."""
    rng = random.Random(seed)

    def tokens(low: int, high: int) -> list[int]:
        return [rng.randrange(3, VOCAB) for _ in range(rng.randint(low, high))]

    rankings = []
    for _ in range(count):
        k = rng.randint(2, max_k)
        responses = [[*tokens(0, 8), EOS] for _ in range(k)]
        scores = [rng.choice([0, 1, 2, 3]) for _ in range(k - 1)] + [4]
        rankings.append(TokenizedRanking(tokens(1, 10), responses, ranks_from_scores(scores)))
    return rankings


@pytest.fixture(params=sorted(ARCHITECTURES))
def architecture(request) -> str:
    return request.param
