"""Sampling completions from a causal LM for evaluation, and turning them back into text.

    prompts [B] (token ids, as training tokenizes them) ─► left-pad ─► model.generate ─► completions [B]

A completion is the generated ids up to and including the first EOS (as training responses end with EOS), or
`max_new_tokens` ids if no EOS came (a truncated sample: `truncated`). Sampling is seeded: the same prompts, weights
and seed give the same completions, so validations at different steps differ only through the weights.

K samples of each prompt (`num_samples`, rollouts and Best-of-N) share the prompt's computation: the prompt's
first T − 1 tokens go through the model once, their key/value cache is repeated K times, and generation starts from
the last prompt token of each of the B·K rows (`DynamicCache.batch_repeat_interleave`); without the shared prefill
(`share_prompt=False`) each of the B·K rows recomputes its prompt. Both draw the same samples (the same B·K-row
sampling steps from the same seed), the shared one with K − 1 fewer prompt forwards.

Samples are of π itself (at temperature 1, top_p 1): generation runs on a `GenerationConfig` that holds only the
settings below. The model's own `generation_config` — which hub models ship with `repetition_penalty`,
`no_repeat_ngram_size`, `min_new_tokens`, `suppress_tokens`, bad-words lists … — is set aside for the call, since
transformers would otherwise fill every setting we leave unset from it and sample another distribution.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from transformers import DynamicCache, GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from dpo_lightning.data.collate import collate_padded
from dpo_lightning.data.tokenize import TokenizedPair
from dpo_lightning.errors import ConfigError
from dpo_lightning.models.logprobs import sequence_logprobs


@dataclass(frozen=True)
class SamplingSettings:
    """How completions are drawn (the `samples/` config).

    temperature 1 with top_p 1 samples from π itself — what the Monte-Carlo KL estimate assumes; other values
    sample a sharpened or truncated π, and `val/kl` then describes those samples, not KL(π ‖ π_ref).
    """

    max_new_tokens: int = 48
    temperature: float = 1.0
    top_p: float = 1.0
    batch_size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        for key, low in (("max_new_tokens", 1), ("batch_size", 1)):
            value = getattr(self, key)
            if not (isinstance(value, int) and value >= low):
                raise ConfigError(f"samples.{key}", f"must be an integer ≥ {low}, got {value!r}")
        if self.temperature < 0:
            raise ConfigError("samples.temperature", f"must be ≥ 0 (0: greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError("samples.top_p", f"must be in (0, 1], got {self.top_p}")


@dataclass(frozen=True)
class ValidationSamples(SamplingSettings):
    """The `samples` config: `num_prompts` validation prompts (0: off) sampled at each validation with the
    sampling settings, and whether `val/kl` is reported (`kl`)."""

    num_prompts: int = 64
    kl: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (isinstance(self.num_prompts, int) and self.num_prompts >= 0):
            raise ConfigError("samples.num_prompts", f"must be an integer ≥ 0, got {self.num_prompts!r}")

    @property
    def sampling(self) -> SamplingSettings:
        """The settings `sample_completions` takes."""
        return SamplingSettings(self.max_new_tokens, self.temperature, self.top_p, self.batch_size, self.seed)


def generation_config(
    settings: SamplingSettings, tokenizer: PreTrainedTokenizerBase, use_cache: bool = True
) -> GenerationConfig:
    """A generation config with our settings only: ancestral sampling from softmax(logits / temperature), nucleus
    `top_p` (1: off), no top-k, no penalty or other logits processor; greedy decoding at temperature 0.
    `use_cache=False` recomputes every earlier token at each step (only to measure what the KV cache saves)."""
    sampling = settings.temperature > 0
    return GenerationConfig(
        use_cache=use_cache,
        do_sample=sampling,
        temperature=settings.temperature if sampling else None,
        top_p=settings.top_p if sampling else None,
        top_k=0,  # transformers' default would be 50
        max_new_tokens=settings.max_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


@contextmanager
def only_our_generation_config(model: torch.nn.Module, config: GenerationConfig) -> Iterator[None]:
    """Every Hugging Face model inside `model` (itself, or the one a PEFT wrapper holds) generates with `config` as
    its own `generation_config` inside the block: `generate` fills the settings a call leaves unset from the
    model's config, so a fresh one is the only way that none of the model's settings reach the samples."""
    owners = [m for m in model.modules() if isinstance(vars(m).get("generation_config"), GenerationConfig)]
    saved = [owner.generation_config for owner in owners]
    for owner in owners:
        owner.generation_config = config
    try:
        yield
    finally:
        for owner, original in zip(owners, saved, strict=True):
            owner.generation_config = original


def _left_padded(prompts: list[list[int]], pad_token_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """[B, T] input ids and attention mask, padded on the left so that every prompt ends at the last column."""
    width = max(len(prompt) for prompt in prompts)
    input_ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        input_ids[row, width - len(prompt) :] = torch.tensor(prompt)
        attention_mask[row, width - len(prompt) :] = 1
    return {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device)}


def _until_eos(ids: list[int], eos_token_id: int) -> list[int]:
    """`ids` up to and including the first EOS (padding after it dropped)."""
    return ids[: ids.index(eos_token_id) + 1] if eos_token_id in ids else ids


def truncated(completion: list[int], eos_token_id: int) -> bool:
    """Whether a completion was cut at `max_new_tokens` before its EOS (it then ends with another token)."""
    return completion[-1] != eos_token_id


@torch.no_grad()
def sample_completions(
    model: PreTrainedModel,
    prompts: list[list[int]],
    tokenizer: PreTrainedTokenizerBase,
    settings: SamplingSettings,
    seed_offset: int = 0,
    synced_gpus: bool = False,
    num_samples: int = 1,
    share_prompt: bool = True,
    use_cache: bool = True,
) -> list[list[int]]:
    """`num_samples` completions per prompt: [B·K] lists of token ids (each ≥ 1 token), prompt-major (prompt b's
    samples are b·K … b·K + K − 1).

    Args:
        model: a causal LM; put in eval mode for the call and restored after.
        prompts: [B] prompt token ids.
        tokenizer: gives the pad and EOS ids.
        settings: temperature, top_p, max_new_tokens, batch size (prompts per generate call), seed: the only
            generation settings used (the model's own `generation_config` is set aside for the call).
        seed_offset: added to `settings.seed` (e.g. the process rank, so ranks draw independently).
        synced_gpus: keep generating until every process is done (sharded models: every forward is a
            collective, so all ranks must run the same number of them).
        num_samples: K samples of each prompt.
        share_prompt: with K > 1, compute each prompt once for its K samples (module docstring).
        use_cache: False: no KV cache at all (every step recomputes the whole sequence; benchmarks only).
    """
    training = model.training
    model.train(False)
    device = next(model.parameters()).device
    completions: list[list[int]] = []
    config = generation_config(settings, tokenizer, use_cache)
    try:
        with (
            torch.random.fork_rng(devices=[device] if device.type == "cuda" else []),
            only_our_generation_config(model, config),
        ):
            torch.manual_seed(settings.seed + seed_offset)
            for start in range(0, len(prompts), settings.batch_size):
                chunk = prompts[start : start + settings.batch_size]
                inputs = _left_padded(chunk, tokenizer.pad_token_id, device)  # [b, T]
                if num_samples > 1 and share_prompt and use_cache and inputs["input_ids"].shape[1] > 1:
                    inputs["cache"] = _shared_prefill(model, inputs, num_samples)
                inputs = {
                    name: value.repeat_interleave(num_samples, dim=0) if name != "cache" else value
                    for name, value in inputs.items()
                }  # [b·K, T]
                output = model.generate(**inputs, generation_config=config, synced_gpus=synced_gpus)  # [b·K, T + new]
                generated = output[:, inputs["input_ids"].shape[1] :].tolist()
                completions += [_until_eos(ids, tokenizer.eos_token_id) for ids in generated]
    finally:
        model.train(training)
    return completions


def _shared_prefill(model: PreTrainedModel, inputs: dict[str, torch.Tensor], num_samples: int) -> DynamicCache:
    """The KV cache of the [b, T] left-padded prompts' first T − 1 columns, computed once and repeated K times
    along the batch ([b·K] rows, prompt-major): `generate` then feeds only each row's last prompt token."""
    mask = inputs["attention_mask"]  # [b, T]
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # as `generate` numbers left-padded rows
    cache = DynamicCache(config=model.config)
    model(
        input_ids=inputs["input_ids"][:, :-1],
        attention_mask=mask[:, :-1],
        position_ids=positions[:, :-1],
        cache=cache,
        use_cache=True,
    )
    cache.batch_repeat_interleave(num_samples)
    return cache


@torch.no_grad()
def sample_logprobs(
    model: torch.nn.Module,
    prompts: list[list[int]],
    completions: list[list[int]],
    pad_token_id: int,
    batch_size: int,
) -> torch.Tensor:
    """[B] fp32 summed log-probs of `completions` [B] after `prompts` [B] under `model`, summed over the completion's
    tokens (EOS included) exactly as training sums a response's; `batch_size` completions per forward."""
    device = next(model.parameters()).device
    sums = []
    for start in range(0, len(prompts), batch_size):
        chunk = [
            TokenizedPair(prompt, completion, completion)
            for prompt, completion in zip(
                prompts[start : start + batch_size], completions[start : start + batch_size], strict=True
            )
        ]
        logps, _ = sequence_logprobs(model, collate_padded(chunk, pad_token_id).to(device))  # [2b]: each twice
        sums.append(logps[: len(chunk)].float().cpu())
    return torch.cat(sums)


def completion_text(tokenizer: PreTrainedTokenizerBase, prompt: list[int], completion: list[int]) -> tuple[str, str]:
    """(prompt text, completion text) with special tokens removed; the completion is what decoding the whole
    sequence adds to the decoded prompt, so word-boundary spaces come out as the reader sees them."""
    prompt_text = tokenizer.decode(prompt, skip_special_tokens=True)
    full_text = tokenizer.decode(prompt + completion, skip_special_tokens=True)
    if full_text.startswith(prompt_text):
        return prompt_text, full_text[len(prompt_text) :]
    return prompt_text, tokenizer.decode(completion, skip_special_tokens=True)
